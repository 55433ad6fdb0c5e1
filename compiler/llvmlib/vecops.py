"""Vectors of one float type in llvmlite IR: element pointers, (masked) loads and stores, splats,
FMA, horizontal sums, and the counted loop every emitted kernel is built from.

Shared by the GEMM kernels (compiler/llvmlib/gemm.py, pgemm.py) and the fused elementwise kernels
(compiler/lower_fused.py), so a masked access or a loop is written one way only.
"""
from __future__ import annotations

from llvmlite import ir

from compiler.llvmlib.vecmath import declare, intrinsic

I1, I32, I64, PTR = ir.IntType(1), ir.IntType(32), ir.IntType(64), ir.PointerType()


def i64(v):
    """The i64 constant v (sizes, strides, offsets, flags of every emitted call)."""
    return ir.Constant(I64, v)


class VecOps:
    """`width` lanes of float type `fty` (ir.FloatType or ir.DoubleType) in `module`."""

    def __init__(self, module: ir.Module, fty, width: int):
        self.mod, self.fty, self.w = module, fty, width
        self.f64 = isinstance(fty, ir.DoubleType)
        self.vty = ir.VectorType(fty, width)
        self.esize = 8 if self.f64 else 4
        self.tag = f"v{width}f{self.esize * 8}"

    def decl(self, name, ret, args):
        return declare(self.mod, name, ret, args)

    def gep(self, b, p, off):
        """Pointer to element `off` of the float array at p."""
        return b.gep(p, [off], inbounds=True, source_etype=self.fty)

    def mask(self, b, nrem):
        """Lanes i < nrem (a runtime i64) on."""
        iota = ir.Constant(ir.VectorType(I64, self.w), list(range(self.w)))
        v = b.insert_element(ir.Constant(ir.VectorType(I64, self.w), None), nrem,
                             ir.Constant(I32, 0))
        v = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, self.w), [0] * self.w))
        return b.icmp_signed("<", iota, v)

    def vload(self, b, p, mask=None):
        """A vector at p (element-aligned); with a mask, lanes off read as 0 and touch no
        memory."""
        if mask is None:
            return b.load(p, typ=self.vty, align=self.esize)
        f = self.decl(f"llvm.masked.load.{self.tag}.p0", self.vty,
                      [PTR, I32, mask.type, self.vty])
        return b.call(f, [p, ir.Constant(I32, self.esize), mask, ir.Constant(self.vty, 0.0)])

    def vstore(self, b, v, p, mask=None):
        if mask is None:
            return b.store(v, p, align=self.esize)
        f = self.decl(f"llvm.masked.store.{self.tag}.p0", ir.VoidType(),
                      [self.vty, PTR, I32, mask.type])
        return b.call(f, [v, p, ir.Constant(I32, self.esize), mask])

    def splat(self, b, s):
        """Every lane = the scalar SSA value s."""
        v = b.insert_element(ir.Constant(self.vty, None), s, ir.Constant(I32, 0))
        return b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, self.w), [0] * self.w))

    def fma(self, b, x, y, z):
        return b.call(intrinsic(b, "fma", self.vty, 3), [x, y, z])

    def hsum(self, b, v):
        f = self.decl(f"llvm.vector.reduce.fadd.{self.tag}", self.fty, [self.fty, self.vty])
        return b.call(f, [ir.Constant(self.fty, -0.0), v], fastmath=("reassoc",))

    @staticmethod
    def vmax(b, a, x):
        """max(a, x) lane by lane, a NaN in either winning as in np.max (llvm.maxnum would drop
        it; the vector form of llvm.maximum is not relied on here)."""
        return b.select(b.or_(b.fcmp_ordered(">", x, a), b.fcmp_unordered("uno", x, x)), x, a)

    def hmax(self, b, v):
        """The NaN-propagating max of v's lanes: halves folded onto each other."""
        n = self.w
        while n > 1:
            n //= 2
            lo, hi = (b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, n),
                                                         list(range(s, s + n))))
                      for s in (0, n))
            v = self.vmax(b, lo, hi)
        return b.extract_element(v, ir.Constant(I32, 0))


def smin(b: ir.IRBuilder, x, y):
    """min(x, y) of two i64 values (signed)."""
    return b.select(b.icmp_signed("<", x, y), x, y)


def loop(b: ir.IRBuilder, start, stop, step, body, carried=()):
    """for (i = start; i < stop; i += step): carried = body(i, carried).

    `carried` are SSA values threaded through the iterations as phis (body returns their next
    values; without carried values its result is ignored); returns their final values and leaves
    b after the loop."""
    fn, pre = b.function, b.block
    head, blk, done = (fn.append_basic_block(n) for n in ("head", "body", "done"))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64)
    i.add_incoming(start, pre)
    phis = []
    for v in carried:
        p = b.phi(v.type)
        p.add_incoming(v, pre)
        phis.append(p)
    b.cbranch(b.icmp_signed("<", i, stop), blk, done)
    b.position_at_end(blk)
    new = body(i, phis)
    step = step if isinstance(step, ir.Value) else ir.Constant(I64, step)
    i.add_incoming(b.add(i, step), b.block)
    for p, v in zip(phis, new if carried else (), strict=True):
        p.add_incoming(v, b.block)
    b.branch(head)
    b.position_at_end(done)
    return phis
