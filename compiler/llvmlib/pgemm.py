"""Packed, cache-blocked GEMM emitted as LLVM IR (the kernel library's matrix products).

C[M,N] (+)= op(A)[M,K] @ op(B)[K,N], row-major. op(A) is read through element strides
(sai, sak): A[i,k] at A + i*sai + k*sak, so A^T costs nothing (the A scalars are broadcast, never
loaded as vectors). B is packed into panels of NR = 4 vectors (64 float32 / 32 float64 columns):
panel p holds B[k, p*NR : p*NR+NR] for every k, contiguous, zero-padded past N.

Functions, per dtype tag ("f32"/"f64"), all `void`:
  gg_pack_<tag>(B, ldb, trans_b, kc, nc, dst)          pack a kc x nc block (trans_b: B is N x K)
  gg_prepack_<tag>(B, ldb, trans_b, K, N, dst)         pack a whole operand once (a loop-invariant
      weight reused every step): K block k0 (kc rows) holds all panels at dst + k0 * Npad, Npad =
      N rounded up to NR, so the chunk (k0, j0) of gg_gemm starts at dst + k0*Npad + j0*kc.
  gg_gemm_<tag>(A, sai, sak, B, ldb, trans_b, C, ldc, M, N, K, acc, ws, packed)
      K blocks x N chunks of NCB columns: the chunk is packed into `ws` (KC*NCB elements, 1 MB;
      an A slice of MR*KC follows it) unless packed=1 (B is then a gg_prepack buffer with K
      blocks of KC_P; ldb/trans_b/ws unused). Few rows (M <= MC, the per-step products):
      panels outer, rows inner, so each KC_P x NR panel stays in L1 while every MR-row block
      streams past it. A prepacked operand over PF_NEXT_BYTES does not fit in L2 and comes
      from L3 every call: each row block also fetches its share of the next panel into L2.
      Many rows (the whole-sequence products): MR-row blocks outer (their MR x KC slice of A
      stays in L1), panels inner streamed from the L2-resident chunk. The MR broadcast scalars
      per k come straight from A through its strides, except for A^T with many rows: there the
      MR x kc slice is first copied k-major into ws (after the B chunk), because its k steps are
      one cache line each and a power-of-two row count makes them collide in L1 (measured
      45-58 -> 86-97 GFLOP/s at M=2048, K=3200, N=512). Measured against OpenBLAS in
      docs/runtime.md.
The micro-kernel keeps MR x 4 accumulators (6 x 4 = 24 zmm) and per k step loads 4 panel vectors
and broadcasts MR A scalars; rows past a multiple of MR use the exact-height kernel, columns past
N use masked stores. acc (0/1) selects C += instead of C =.
"""
from __future__ import annotations

from llvmlite import ir

from compiler.llvmlib.gemm import _Kit, _row_blocks as _blocks
from compiler.llvmlib.vecops import I32, I64, PTR, i64, loop, smin
from compiler.llvmlib.vecmath import prefetch

MR, NV, UNROLL = 6, 4, 4
KC = 256           # K block of products packed on the fly (chunk KC x NCB = 1 MB, in L2)
KC_T = 128         # K block when A is read across rows (sak != 1): fewer A lines held in L1
KC_P = 128         # K block of prepacked operands: a KC_P x NR panel (32 KB) stays in L1
MC = 192           # M <= MC: panels outer, rows inner (each panel in L1 while all rows pass)
PF_C = True        # prefetch the C tile at the start of each micro-kernel call
PACK_A = True      # pack the A slice of an A^T product with many rows (see gg_gemm)
PF_B = 16          # prefetch the B panel this many k steps ahead (0: rely on hardware)
PF_NEXT = 4        # lines of the next panel fetched into L2 per unrolled k step (see gg_gemm)
PF_NEXT_BYTES = 1 << 20   # ... for prepacked operands larger than this (smaller ones stay in L2)


def ncb(dtype):
    """Columns per packed chunk of the general kernel (KC x NCB is 1 MB)."""
    return 1024 if dtype == "float32" else 512


def nr(dtype):
    return NV * (16 if dtype == "float32" else 8)


def tag(dtype):
    return "f32" if dtype == "float32" else "f64"


def workspace_elems(dtype):
    return KC * ncb(dtype) + MR * max(KC, KC_T)     # the B chunk, then an A slice


def packed_elems(dtype, K, N):
    """Elements of a gg_prepack copy of a K x N operand (N rounded up to panels)."""
    n = nr(dtype)
    return -(-N // n) * n * K


SIGS = {  # name prefix -> argument kinds ("p" pointer, "i" i64)
    "gg_pack": "pii" "iip",
    "gg_prepack": "pii" "iip",
    "gg_gemm": "pii" "pii" "pi" "iiii" "pi",
}


def fn_type(prefix):
    return ir.FunctionType(ir.VoidType(), [PTR if c == "p" else I64 for c in SIGS[prefix]])


def declare(module, prefix, dtype):
    name = f"{prefix}_{tag(dtype)}"
    return module.globals.get(name) or ir.Function(module, fn_type(prefix), name=name)


def _masks(kit, b, nrem):
    """NV lane masks: column v*w + lane < nrem."""
    vi = ir.VectorType(I64, kit.w)
    s = b.insert_element(ir.Constant(vi, None), nrem, ir.Constant(I32, 0))
    s = b.shuffle_vector(s, s, ir.Constant(ir.VectorType(I32, kit.w), [0] * kit.w))
    return [b.icmp_signed("<", ir.Constant(vi, [v * kit.w + i for i in range(kit.w)]), s)
            for v in range(NV)]


def _microkernel(kit, mr, pf_next=False):
    """The MR x NV tile kernel; with pf_next it also fetches PF_NEXT lines from `pf` into L2
    per unrolled k step (pf advances with k)."""
    name = f"gg_mk_{kit.tag}_{mr}{'_pf' if pf_next else ''}"
    if name in kit.mod.globals:
        return kit.mod.globals[name]
    fn = ir.Function(kit.mod, ir.FunctionType(ir.VoidType(), [PTR] * 4 + [I64] * 6), name=name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    A, Bp, C, pf, sai, sak, ldc, kc, nrem, acc = fn.args
    for a in (A, Bp, C):
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    w, nrv = kit.w, NV * kit.w
    arows = [kit.gep(b, A, b.mul(i64(i), sai)) for i in range(mr)]

    def kstep(k, accs):
        bp = kit.gep(b, Bp, b.mul(k, i64(nrv)))
        bv = [kit.vload(b, kit.gep(b, bp, i64(v * w))) for v in range(NV)]
        out = []
        for i in range(mr):
            a = kit.splat(b, b.load(kit.gep(b, arows[i], b.mul(k, sak)), typ=kit.fty))
            out += [kit.fma(b, a, bv[v], accs[i * NV + v]) for v in range(NV)]
        return out

    def unrolled(k, accs):
        if PF_B:
            ahead = kit.gep(b, Bp, b.mul(b.add(k, i64(PF_B)), i64(nrv)))
            for line in range(UNROLL * nrv * kit.esize // 64):
                prefetch(b, kit.gep(b, ahead, i64(line * 64 // kit.esize)), write=False)
        if pf_next:
            nxt = kit.gep(b, pf, b.mul(b.sdiv(k, i64(UNROLL)), i64(PF_NEXT * 64 // kit.esize)))
            for line in range(PF_NEXT):
                prefetch(b, kit.gep(b, nxt, i64(line * 64 // kit.esize)), write=False,
                         locality=2)
        for u in range(UNROLL):
            accs = kstep(b.add(k, i64(u)) if u else k, accs)
        return accs

    if PF_C:    # the C tile is needed only in the epilogue: start fetching it now
        for i in range(mr):
            crow = kit.gep(b, C, b.mul(i64(i), ldc))
            for v in range(NV):
                prefetch(b, kit.gep(b, crow, i64(v * w)), write=True)
    zero = ir.Constant(kit.vty, 0.0)
    kfull = b.mul(b.sdiv(kc, i64(UNROLL)), i64(UNROLL))
    accs = loop(b, i64(0), kfull, i64(UNROLL), unrolled, [zero] * (mr * NV))
    accs = loop(b, kfull, kc, i64(1), kstep, accs)
    masks = _masks(kit, b, nrem)
    add_blk, set_blk = fn.append_basic_block("acc"), fn.append_basic_block("set")
    b.cbranch(b.icmp_signed("!=", acc, i64(0)), add_blk, set_blk)
    for blk, add in ((add_blk, True), (set_blk, False)):
        b.position_at_end(blk)
        for i in range(mr):
            crow = kit.gep(b, C, b.mul(i64(i), ldc))
            for v in range(NV):
                p, x = kit.gep(b, crow, i64(v * w)), accs[i * NV + v]
                if add:
                    x = b.fadd(kit.vload(b, p, masks[v]), x)
                kit.vstore(b, x, p, masks[v])
        b.ret_void()
    return fn


def _new(kit, prefix):
    fn = ir.Function(kit.mod, fn_type(prefix), name=f"{prefix}_{tag_of(kit)}")
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def tag_of(kit):
    return "f64" if kit.f64 else "f32"


def _emit_pack(kit):
    """dst[p][k][0:NR] = B[k, p*NR + 0:NR] for k < kc, zero past nc."""
    fn, b = _new(kit, "gg_pack")
    B, ldb, trans_b, kc, nc, dst = fn.args
    w, nrv = kit.w, NV * kit.w
    npan = b.sdiv(b.add(nc, i64(nrv - 1)), i64(nrv))
    nn_blk, nt_blk, done = (fn.append_basic_block(n) for n in ("nn", "nt", "done"))
    b.cbranch(b.icmp_signed("!=", trans_b, i64(0)), nt_blk, nn_blk)

    b.position_at_end(nn_blk)

    def nn_panel(p, _):
        masks = _masks(kit, b, b.sub(nc, b.mul(p, i64(nrv))))
        dp = kit.gep(b, dst, b.mul(b.mul(p, kc), i64(nrv)))

        def row(k, _):
            src = kit.gep(b, B, b.add(b.mul(k, ldb), b.mul(p, i64(nrv))))
            d = kit.gep(b, dp, b.mul(k, i64(nrv)))
            for v in range(NV):
                kit.vstore(b, kit.vload(b, kit.gep(b, src, i64(v * w)), masks[v]),
                           kit.gep(b, d, i64(v * w)))
        loop(b, i64(0), kc, i64(1), row)
    loop(b, i64(0), npan, i64(1), nn_panel)
    b.branch(done)

    b.position_at_end(nt_blk)   # B stored N x K: B[k, j] = Bt[j*ldb + k]

    def nt_col(j, _):
        p, jj = b.sdiv(j, i64(nrv)), b.srem(j, i64(nrv))
        dp = kit.gep(b, dst, b.add(b.mul(b.mul(p, kc), i64(nrv)), jj))
        inside = b.icmp_signed("<", j, nc)
        src = kit.gep(b, B, b.mul(b.select(inside, j, i64(0)), ldb))

        def elem(k, _):
            x = b.load(kit.gep(b, src, k), typ=kit.fty)
            b.store(b.select(inside, x, ir.Constant(kit.fty, 0.0)),
                    kit.gep(b, dp, b.mul(k, i64(nrv))))
        loop(b, i64(0), kc, i64(1), elem)
    loop(b, i64(0), b.mul(npan, i64(nrv)), i64(1), nt_col)
    b.branch(done)
    b.position_at_end(done)
    b.ret_void()
    return fn


def _emit_prepack(kit):
    """Pack a whole K x N operand once: K blocks of KC_P, each as panels of kc x NR."""
    fn, b = _new(kit, "gg_prepack")
    B, ldb, trans_b, K, N, dst = fn.args
    nrv = NV * kit.w
    npad = b.mul(b.sdiv(b.add(N, i64(nrv - 1)), i64(nrv)), i64(nrv))
    pack = kit.mod.globals["gg_pack_" + tag_of(kit)]

    def kblock(k0, _):
        kc = smin(b, i64(KC_P), b.sub(K, k0))
        src = b.select(b.icmp_signed("!=", trans_b, i64(0)), k0, b.mul(k0, ldb))
        b.call(pack, [kit.gep(b, B, src), ldb, trans_b, kc, N, kit.gep(b, dst, b.mul(k0, npad))])
    loop(b, i64(0), K, i64(KC_P), kblock)
    b.ret_void()
    return fn


def _emit_gemm(kit, dtype):
    fn, b = _new(kit, "gg_gemm")
    A, sai, sak, B, ldb, trans_b, C, ldc, M, N, K, acc, ws, packed = fn.args
    nrv, chunk = NV * kit.w, ncb(dtype)
    pack = kit.mod.globals["gg_pack_" + tag_of(kit)]
    npad = b.mul(b.sdiv(b.add(N, i64(nrv - 1)), i64(nrv)), i64(nrv))
    is_packed = b.icmp_signed("!=", packed, i64(0))

    few_rows = b.icmp_signed("<=", M, i64(MC))
    kc_many = b.select(b.icmp_signed("==", sak, i64(1)), i64(KC), i64(KC_T))
    # A read down its columns (A^T): its MR x kc slice is packed once per row block (into ws
    # past the B chunk) and reused by every panel; its lines would alias in L1 at power-of-two
    # row strides. Only when ws is ours: with a prepacked B, ws may hold the caller's data.
    pack_a = b.and_(b.icmp_signed("==", sai, i64(1)), b.icmp_signed("!=", sak, i64(1)))
    pack_a = b.and_(pack_a, b.not_(is_packed)) if PACK_A else ir.Constant(ir.IntType(1), 0)
    apk = kit.gep(b, ws, i64(KC * chunk))
    kcmax = b.select(b.or_(is_packed, few_rows), i64(KC_P), kc_many)   # few rows: L1 panels
    # A prepacked operand too big for L2 streams from L3 once per call: see the panel loop.
    big = b.icmp_signed(">", b.mul(b.mul(K, npad), i64(kit.esize)), i64(PF_NEXT_BYTES))
    stream = b.and_(is_packed, big)

    def kblock(k0, _):
        kc = smin(b, kcmax, b.sub(K, k0))
        accf = b.select(b.icmp_signed(">", k0, i64(0)), i64(1), acc)
        a0 = kit.gep(b, A, b.mul(k0, sak))

        def chunk_(j0, _):
            nc = smin(b, i64(chunk), b.sub(N, j0))
            src = b.select(b.icmp_signed("!=", trans_b, i64(0)), b.add(b.mul(j0, ldb), k0),
                           b.add(b.mul(k0, ldb), j0))
            do_pack, after = fn.append_basic_block("pack"), fn.append_basic_block("packed")
            b.cbranch(is_packed, after, do_pack)
            b.position_at_end(do_pack)
            b.call(pack, [kit.gep(b, B, src), ldb, trans_b, kc, nc, ws])
            b.branch(after)
            b.position_at_end(after)
            bp = b.select(is_packed, kit.gep(b, B, b.add(b.mul(k0, npad), b.mul(j0, kc))), ws)
            npan = b.sdiv(b.add(nc, i64(nrv - 1)), i64(nrv))

            def rows_order():
                def rows(i0, mr):
                    ai = kit.gep(b, a0, b.mul(i0, sai))
                    ci = kit.gep(b, C, b.add(b.mul(i0, ldc), j0))
                    with b.if_then(pack_a):     # every k of this slice is its own cache line
                        def kstep(k, _):
                            for i in range(mr):
                                x = b.load(kit.gep(b, ai, b.add(b.mul(k, sak), i64(i))),
                                           typ=kit.fty)
                                b.store(x, kit.gep(b, apk, b.add(b.mul(k, i64(mr)), i64(i))))
                        loop(b, i64(0), kc, i64(1), kstep)
                    a_, sai_ = b.select(pack_a, apk, ai), b.select(pack_a, i64(1), sai)
                    sak_ = b.select(pack_a, i64(mr), sak)

                    def panel(p, _):
                        jp = b.mul(p, i64(nrv))
                        bpp = kit.gep(b, bp, b.mul(jp, kc))
                        b.call(_microkernel(kit, mr), [a_, bpp, kit.gep(b, ci, jp), bpp, sai_,
                                                       sak_, ldc, kc, b.sub(nc, jp), accf])
                    loop(b, i64(0), npan, i64(1), panel)
                _blocks(b, M, MR, rows)

            def mblock(i0, _):
                mc = smin(b, i64(MC), b.sub(M, i0))

                def panel(p, _):      # this kc x NR panel stays in L1 for the mc rows
                    jp = b.mul(p, i64(nrv))
                    bpp, nrem = kit.gep(b, bp, b.mul(jp, kc)), b.sub(nc, jp)
                    # The panel after this one, in memory order (a prepacked operand is walked
                    # linearly): its row blocks share out fetching it into L2, so the L3 reads
                    # spread over the whole panel instead of bursting in its first row block.
                    share = b.mul(b.sdiv(kc, i64(UNROLL)), i64(PF_NEXT * 64 // kit.esize))
                    nxt = kit.gep(b, bpp, b.mul(kc, i64(nrv)))

                    def call(ir_, mr):
                        i = b.add(i0, ir_)
                        mine = b.mul(b.sdiv(ir_, i64(MR)), share)
                        pf = b.select(b.icmp_signed("<", mine, b.mul(kc, i64(nrv))),
                                      kit.gep(b, nxt, mine), bpp)
                        args = [kit.gep(b, a0, b.mul(i, sai)), bpp,
                                kit.gep(b, C, b.add(b.mul(i, ldc), b.add(j0, jp))), pf,
                                sai, sak, ldc, kc, nrem, accf]
                        with b.if_else(stream) as (yes, no):
                            with yes:
                                b.call(_microkernel(kit, mr, PF_NEXT > 0), args)
                            with no:
                                b.call(_microkernel(kit, mr), args)
                    _blocks(b, mc, MR, call)
                loop(b, i64(0), npan, i64(1), panel)
            few, many, joined = (fn.append_basic_block(n) for n in ("few", "many", "joined"))
            b.cbranch(few_rows, few, many)
            b.position_at_end(few)
            loop(b, i64(0), M, i64(MC), mblock)
            b.branch(joined)
            b.position_at_end(many)
            rows_order()
            b.branch(joined)
            b.position_at_end(joined)
        loop(b, i64(0), N, i64(chunk), chunk_)
    loop(b, i64(0), K, kcmax, kblock)
    b.ret_void()
    return fn


def emit_all(module: ir.Module, dtype: str):
    """Emit gg_pack/gg_prepack/gg_gemm for dtype into module (external linkage)."""
    kit = _Kit(module, dtype)
    _emit_pack(kit)
    _emit_prepack(kit)
    _emit_gemm(kit, dtype)
