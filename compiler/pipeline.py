"""Two threads as a pipeline: which kernels the second thread streams beside the loops.

The hoisted whole-sequence kernels (pre: the input projection of all T steps; post: the weight
gradients and the input gradient) need not wait for the loops to start or finish: the input
projection of steps t0..t1 is all the forward loop needs before step t0, and the weight-gradient
products are sums over time that can take in each block of steps as soon as the reverse loop has
passed it. So with split="pipeline" thread 0 runs the loops alone (full products, no barriers)
while thread 1 runs the pre stage ahead of the forward loop and the post stage behind the
reverse loop, in chunks of steps, each side publishing how far it got through a counter in the
workspace. For a model whose loop products and hoisted products are of similar size (the small
and medium configurations, where the column split spends its time in barriers) the step then
costs about the larger of the two halves.

This module only decides what may be streamed and how far ahead the forward loop must see;
compiler/lower.py emits it. A kernel streams when it can be cut along time:
  * "rows": its iteration space (a Gemm's output rows, a Fused kernel's domain) is a
    whole-sequence "all"/"all+1" window and every other operand is loop-invariant;
  * "reduce": a Gemm out = A^T @ B whose inner dimension is the time-scaled rows of A and B
    (a weight gradient): each chunk adds its part, the first in the kernel's own mode;
    a Fused kernel's column sums likewise accumulate after the first chunk;
and when streaming keeps every dependency: it touches no buffer the loops write except through
time windows the loop has finished (reverse-loop writes at slot offsets <= 0), and no kernel
left in the cooperative (non-streamed) part of its stage depends on it out of order.

The weight-gradient sums keep thread 1 busy past the end of the reverse loop. The streamed post
kernels that write their own rows and share no buffer with the rest of the stream (the input
gradient dX = dG @ W) are therefore "shared": their chunks go to whichever thread claims them
first, thread 1 from the latest steps while it would otherwise wait for the reverse loop,
thread 0 from step 0 up once the reverse loop is done, so the two finish together.
"""
from __future__ import annotations

from dataclasses import dataclass

from compiler.schedule import Gemm, Program, fused_domain, kernel_refs, ref_window
from compiler.lower_fused import as_fused

# Rows of a chunk (steps x rows per step): enough for the products to run near full speed,
# few enough that the reverse loop's tail (the last chunk, which only starts after step 0)
# stays short.
CHUNK_ROWS = 256


@dataclass(frozen=True)
class PipelinePlan:
    pre_stream: tuple       # indices into prog.pre that thread 1 streams ahead of the loop
    pre_rest: tuple         # the others, run by both threads before (column/row split)
    post_stream: tuple      # indices into prog.post streamed behind the reverse loop
    post_rest: tuple        # run by both threads after the reverse loop and the stream
    lookahead: int          # forward step t needs pre chunks covering indices < t + 1 + this
    chunk: int              # time steps per chunk
    kinds: dict             # (stage, index) -> "rows" | "reduce" for streamed kernels
    post_shared: tuple = () # the post_stream kernels either thread may run chunk by chunk

    @property
    def streams(self) -> bool:
        return bool(self.pre_stream or self.post_stream)


def slice_kind(prog: Program, k) -> str | None:
    """"rows", "reduce" or None: how a pre/post kernel can be cut into chunks of steps."""
    def per_t(ref):
        return ref_window(prog, ref)[1]

    if isinstance(k, Gemm):
        if per_t(k.out):
            ok = not k.trans_a and per_t(k.a) and not per_t(k.b)
            return "rows" if ok else None
        if k.trans_a and per_t(k.a) and not k.trans_b and per_t(k.b):
            return "reduce"
        return None
    f = as_fused(k)
    try:
        _, domain_per_t, _ = fused_domain(prog, f)
    except ValueError:
        return None
    return "rows" if domain_per_t else None


def _slot_base(t) -> int:
    """Slot of chunk index 0 for a whole-sequence window ("all": slot i, "all+1": slot i+1)."""
    return 1 if t == "all+1" else 0


def _slots(kernels, side: int) -> dict:
    """buffer -> set of Ref.t values the kernels read (side 0) or write (side 1) it with."""
    out = {}
    for k in kernels:
        for r in kernel_refs(k)[side]:
            out.setdefault(r.buf, set()).add(r.t)
    return out


def _bufs(refs):
    return {r.buf for r in refs}


def _conflict(k1, k2) -> bool:
    """Whether running k2 before k1 (or beside it) could change either's results."""
    r1, w1 = map(_bufs, kernel_refs(k1))
    r2, w2 = map(_bufs, kernel_refs(k2))
    return bool(w1 & (r2 | w2) or w2 & r1)


def _split_stage(prog, stage, candidates, rest_first: bool):
    """Streamed and cooperative indices of a stage. The cooperative kernels run before the
    stream (pre, rest_first) or after it (post); a streamed kernel that conflicts with a
    cooperative one on the wrong side of it in list order becomes cooperative too."""
    kernels = getattr(prog, stage)
    stream = [i for i in range(len(kernels)) if i in candidates]
    changed = True
    while changed:
        changed = False
        rest = [i for i in range(len(kernels)) if i not in stream]
        for i in list(stream):
            # pre: rest runs first, so a rest kernel after i must not conflict with i;
            # post: rest runs last, so a rest kernel before i must not conflict with i.
            wrong_side = [j for j in rest if (j > i if rest_first else j < i)]
            if any(_conflict(kernels[i], kernels[j]) for j in wrong_side):
                stream.remove(i)
                changed = True
    rest = tuple(i for i in range(len(kernels)) if i not in stream)
    return tuple(stream), rest


def misaligned(kernels, stream) -> set:
    """Streamed kernels that read what another streamed kernel writes through a different slot
    window ("all" against "all+1"): chunk by chunk, they would read a slot that belongs to the
    writer's next chunk."""
    written = _slots([kernels[i] for i in stream], 1)
    return {i for i in stream for r in kernel_refs(kernels[i])[0]
            if r.buf in written and written[r.buf] != {r.t}}


def shared(kernels, stream, kinds) -> tuple:
    """The streamed "rows" kernels without column sums whose buffers no other streamed kernel
    writes, and which write nothing another reads: any thread may run any of their chunks, in
    any order relative to the rest of the stream."""
    out = []
    for i in stream:
        k = kernels[i]
        if kinds[i] != "rows" or (not isinstance(k, Gemm) and as_fused(k).colsums):
            continue
        reads, writes = map(_bufs, kernel_refs(k))
        others = [kernel_refs(kernels[j]) for j in stream if j != i]
        o_reads = {r.buf for rd, _ in others for r in rd}
        o_writes = {r.buf for _, wr in others for r in wr}
        if not (writes & (o_reads | o_writes) or reads & o_writes):
            out.append(i)
    return tuple(out)


def plan(prog: Program) -> PipelinePlan:
    """What thread 1 streams for a two-thread pipeline run of prog (see the module doc)."""
    kinds = {}
    bwd_w = _slots(prog.bwd_loop, 1)
    loop_w = set(_slots(prog.fwd_loop, 1)) | set(bwd_w)
    loop_r = set(_slots(prog.fwd_loop, 0)) | set(_slots(prog.bwd_loop, 0))

    pre_ok = set()
    for i, k in enumerate(prog.pre):
        kind = slice_kind(prog, k)
        reads, writes = map(_bufs, kernel_refs(k))
        # the loops must neither write what a pre chunk reads or writes nor be racing it
        if kind and not (reads | writes) & loop_w:
            pre_ok.add(i)
            kinds["pre", i] = kind

    post_ok = set()
    # without a reverse loop nothing tells the stream when the forward loop is done
    for i, k in enumerate(prog.post if prog.bwd_loop else ()):
        kind = slice_kind(prog, k)
        if not kind:
            continue
        reads, writes = kernel_refs(k)
        if _bufs(writes) & (loop_r | loop_w):
            continue        # the reverse loop would read or overwrite what the stream writes
        # what it reads from the reverse loop must be finished slot by slot: written at slot
        # offsets <= 0 (step t writes slot t or t-1, which the descending loop has passed), and
        # read through time windows only
        fine = True
        for r in reads:
            if r.buf in bwd_w and (r.t not in ("all", "all+1") or
                                   any(not isinstance(t, int) or t > 0 for t in bwd_w[r.buf])):
                fine = False
        if fine:
            post_ok.add(i)
            kinds["post", i] = kind

    while True:
        pre_stream, pre_rest = _split_stage(prog, "pre", pre_ok, rest_first=True)
        post_stream, post_rest = _split_stage(prog, "post", post_ok, rest_first=False)
        bad_pre, bad_post = misaligned(prog.pre, pre_stream), misaligned(prog.post, post_stream)
        if not bad_pre and not bad_post:
            break
        pre_ok, post_ok = pre_ok - bad_pre, post_ok - bad_post

    # How far ahead of step t the forward loop reads what the stream writes: a read at offset
    # o of a window the stream writes at slot base a needs chunk index t + o - a.
    streamed_w = _slots([prog.pre[i] for i in pre_stream], 1)
    lookahead = 0
    T_ALL = 1 << 30     # "everything": a loop read that is not a per-step slot
    # (the reverse loop needs nothing more: the forward loop waits for the whole stream at its
    # end)
    for k in prog.fwd_loop:
        for r in kernel_refs(k)[0]:
            for a in map(_slot_base, streamed_w.get(r.buf, ())):
                need = r.t - a if isinstance(r.t, int) else T_ALL
                lookahead = max(lookahead, need)
    batch = max(1, int(prog.meta.get("batch") or 1))
    chunk = max(1, -(-CHUNK_ROWS // batch))
    post_kinds = {i: kinds["post", i] for i in post_stream}
    return PipelinePlan(pre_stream, pre_rest, post_stream, post_rest, lookahead, chunk,
                        {key: v for key, v in kinds.items()
                         if key[1] in (pre_stream if key[0] == "pre" else post_stream)},
                        shared(prog.post, post_stream, post_kinds))
