"""The scheduled program: what the graph passes hand to the code generator.

After merging, hoisting, fusion and memory planning, a recurrent program is four lists of
kernels over named buffers:
  pre       runs once, on all T steps at once (e.g. the input projection X @ W_ih^T: T*B rows)
  fwd_loop  runs for t = 0 .. T-1
  bwd_loop  runs for t = T-1 .. 0
  post      runs once after the reverse loop (weight gradients as one product over T*B rows)

Every buffer is a row-major matrix (rows, cols) or a vector (cols,). A time-indexed buffer has T
or T+1 slots of that shape (states keep slot 0 for the initial state, so step t reads slot t and
writes slot t+1). A `Ref` names a buffer, which slot relative to the loop index (or "all": the
T slots seen as one (T*rows, cols) matrix), and a column window, so gate slices of a packed
(B, 4H) buffer need no copies.

Semantics shared by the numpy executor (compiler/sched_numpy.py, the oracle) and the native code
(compiler/lower.py); tests/sched_fixtures.py holds worked RNN/LSTM/GRU programs:
  * Slots. Loop stages see t = 0..T-1 (fwd ascending, bwd descending); Ref.t = k means slot t+k.
    "first" is slot 0, "last" the final slot (T-1 or T). "all" is slots 0..T-1 as one matrix
    (for a "T+1" state these are the states each step read: H_prev for dW_hh); "all+1" is slots
    1..T of a "T+1" buffer (the states each step wrote: the output sequence). Integer offsets are
    only legal inside the loops.
  * Kernels run in list order and see every earlier write, including in-place updates: a Fused
    kernel may read and write the same window (each element is read before it is written) but
    an output must not partially overlap an input, and a colsum target must not be read or
    written by anything else in its kernel (it is updated row by row). A Gemm's output must not
    overlap its operands (accumulate=True reads it only as C).
  * Fused iterates over the (rows, cols) of its first output (or, without outputs, its first
    "full" input). Every full input and output window must have that shape; "row" inputs are
    (cols,) windows, "col" inputs (rows, 1) windows (one value per row), "scalar" inputs one
    element. Colsums sum a local over all rows; with accumulate=False they overwrite their
    target. Rowreds reduce a local over the columns of each row into a (rows, 1) window (layer
    norm's mean, softmax's max and sum); nothing else in their kernel may read that window.
  * Batch. meta["batch"] is B. meta["batched"], if present, lists the batch-major buffers
    (rows = B). Otherwise: buffers of kind "param" and "grad" (parameter gradients) do not depend
    on B and every other 2-d buffer whose rows equal B is batch-major. A program can then be
    rebuilt for a slice of the batch (`with_batch`), which the 2-thread runtime uses; "grad"
    buffers of the slices are summed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Buffer:
    name: str
    dtype: str                 # "float32" | "float64"
    shape: tuple               # per-slot shape: (rows, cols) or (cols,)
    steps: str | None = None   # None | "T" | "T+1"
    kind: str = "temp"         # input | output | param | grad | temp


@dataclass(frozen=True)
class Ref:
    buf: str
    t: int | str | None = None  # None (not time-indexed), an offset from the loop index
                                # (0, -1, +1; +1 into a "T+1" buffer is the slot written by step t),
                                # an absolute slot ("first"/"last"), or "all"
    col: int = 0                # first column of the window
    cols: int | None = None     # window width (None: to the end)


@dataclass(frozen=True)
class Gemm:
    out: Ref
    a: Ref
    b: Ref
    trans_a: bool = False
    trans_b: bool = False
    accumulate: bool = False    # out += a' @ b' instead of out = a' @ b'


@dataclass(frozen=True)
class Fused:
    """One loop nest over the (rows, cols) of its outputs running `body` elementwise.

    inputs: (Ref, bcast) with bcast "full" (rows, cols), "row" (a (cols,) vector repeated on every
      row), "col" (a (rows, 1) column repeated across the columns) or "scalar". body: (dst, op, args, attrs) in order; op is a primitive with a `lower`
      rule; args name "in<k>", an earlier dst, or a float constant. outputs: (local name, Ref).
      colsums: (local name, Ref, accumulate) epilogues summing a local over rows into a (cols,)
      vector (bias gradients). rowreds: (local name, Ref, op) epilogues reducing a local over
      each row's columns (op "sum" or "max", NaN-propagating like numpy) into a (rows, 1) window.
    """
    name: str
    inputs: tuple
    body: tuple
    outputs: tuple
    colsums: tuple = ()
    sources: tuple = ()        # the IR node ids fused here, for the fusion report
    rowreds: tuple = ()


@dataclass(frozen=True)
class Copy:
    out: Ref
    src: Ref


@dataclass(frozen=True)
class Fill:
    out: Ref
    value: float = 0.0


@dataclass
class Program:
    buffers: dict = field(default_factory=dict)     # name -> Buffer
    pre: list = field(default_factory=list)
    fwd_loop: list = field(default_factory=list)
    bwd_loop: list = field(default_factory=list)
    post: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)        # batch, dims, names of user-facing buffers

    def kernels(self):
        for stage in ("pre", "fwd_loop", "bwd_loop", "post"):
            for k in getattr(self, stage):
                yield stage, k


# ---------------------------------------------------------------- helpers for executors
SLOT_WORDS = ("first", "last", "all", "all+1")
STAGES = ("pre", "fwd_loop", "bwd_loop", "post")


def nslots(buf: Buffer, T: int) -> int:
    return {None: 1, "T": T, "T+1": T + 1}[buf.steps]


def mat_shape(buf: Buffer) -> tuple:
    """Per-slot shape as a matrix: vectors are one row."""
    return tuple(buf.shape) if len(buf.shape) == 2 else (1, buf.shape[0])


def ref_window(prog: Program, ref: Ref):
    """(rows, rows_scale_T, col, cols, ld): the window of `ref` as a matrix.

    rows_scale_T: the row count is rows * T (a whole-sequence "all"/"all+1" view). ld is the
    row stride in elements (the buffer's full column count).
    """
    buf = prog.buffers[ref.buf]
    rows, ld = mat_shape(buf)
    cols = ld - ref.col if ref.cols is None else ref.cols
    if ref.col < 0 or cols <= 0 or ref.col + cols > ld:
        raise ValueError(f"Ref {ref}: column window [{ref.col}, {ref.col + cols}) does not fit "
                         f"buffer {buf.name} with {ld} columns")
    return rows, ref.t in ("all", "all+1"), ref.col, cols, ld


def slot_of(buf: Buffer, t_ref, t, T):
    """Absolute slot index for a Ref's t given the loop index t (None outside loops)."""
    if buf.steps is None:
        if t_ref is not None:
            raise ValueError(f"buffer {buf.name} is not time-indexed but a Ref gives t={t_ref!r}")
        return 0
    if t_ref is None:
        raise ValueError(f"buffer {buf.name} is time-indexed ({buf.steps}); the Ref needs t")
    if t_ref in ("first", "all"):
        return 0
    if t_ref == "all+1":
        if buf.steps != "T+1":
            raise ValueError(f"'all+1' needs a T+1 buffer, {buf.name} has {buf.steps}")
        return 1
    if t_ref == "last":
        return nslots(buf, T) - 1
    if t is None:
        raise ValueError(f"Ref to {buf.name} with loop offset t={t_ref} outside a loop stage")
    s = t + t_ref
    if not 0 <= s < nslots(buf, T):
        raise IndexError(f"Ref to {buf.name} slot {s} (t={t}, offset {t_ref}) is out of range")
    return s


def kernel_refs(k):
    """(reads, writes) of a kernel as lists of Refs."""
    if isinstance(k, Gemm):
        return [k.a, k.b] + ([k.out] if k.accumulate else []), [k.out]
    if isinstance(k, Fused):
        reads = [r for r, _ in k.inputs] + [r for _, r, acc in k.colsums if acc]
        return reads, ([r for _, r in k.outputs] + [r for _, r, _ in k.colsums] +
                       [r for _, r, _ in k.rowreds])
    if isinstance(k, Copy):
        return [k.src], [k.out]
    if isinstance(k, Fill):
        return [], [k.out]
    raise TypeError(f"unknown kernel {type(k).__name__}")


def fused_domain(prog: Program, k: Fused):
    """(rows, rows_scale_T, cols) of a Fused kernel's iteration space."""
    for r in [r for _, r in k.outputs] + [r for r, bc in k.inputs if bc == "full"]:
        rows, per_t, _, cols, _ = ref_window(prog, r)
        return rows, per_t, cols
    raise ValueError(f"Fused {k.name}: no output or full input fixes the iteration space")


def validate(prog: Program) -> Program:
    """Raise ValueError naming the first malformed kernel; returns prog for chaining."""
    for stage in STAGES:
        for k in getattr(prog, stage):
            reads, writes = kernel_refs(k)
            for r in reads + writes:
                if r.buf not in prog.buffers:
                    raise ValueError(f"{stage}: {k} names unknown buffer {r.buf!r}")
                buf = prog.buffers[r.buf]
                if isinstance(r.t, int) and stage not in ("fwd_loop", "bwd_loop"):
                    raise ValueError(f"{stage}: Ref {r} uses a loop offset outside the loops")
                if (r.t is None) != (buf.steps is None):
                    raise ValueError(f"{stage}: Ref {r} and buffer steps={buf.steps} disagree")
                if isinstance(r.t, str) and r.t not in SLOT_WORDS:
                    raise ValueError(f"{stage}: Ref {r} has unknown slot {r.t!r}")
                ref_window(prog, r)
            if isinstance(k, Gemm):
                _check_gemm(prog, k)
            elif isinstance(k, Fused):
                _check_fused(prog, k)
            elif isinstance(k, Copy) and _dims(prog, k.out) != _dims(prog, k.src):
                raise ValueError(f"{stage}: Copy {k.src} -> {k.out} shapes differ")
    return prog


def _dims(prog, ref):
    rows, per_t, _, cols, _ = ref_window(prog, ref)
    return rows, per_t, cols


def _check_gemm(prog, k):
    def mat(ref, trans):   # ((n, scaled by T), (n, scaled)) of op(X)
        rows, per_t, cols = _dims(prog, ref)
        r, c = (rows, per_t), (cols, False)
        return (c, r) if trans else (r, c)
    (m, ka), (kb, n) = mat(k.a, k.trans_a), mat(k.b, k.trans_b)
    if ka != kb:
        raise ValueError(f"Gemm {k}: inner dimensions {ka} and {kb} differ")
    if n[1] or _dims(prog, k.out) != (m[0], m[1], n[0]):
        raise ValueError(f"Gemm {k}: output window {_dims(prog, k.out)} is not {m} x {n}")


def _check_fused(prog, k):
    dom = fused_domain(prog, k)
    for r, bc in k.inputs:
        rows, per_t, cols = _dims(prog, r)
        want = {"full": dom, "row": (1, False, dom[2]), "col": (dom[0], dom[1], 1),
                "scalar": (1, False, 1)}.get(bc)
        if want is None:
            raise ValueError(f"Fused {k.name}: unknown broadcast {bc!r}")
        if (rows, per_t, cols) != want:
            raise ValueError(f"Fused {k.name}: input {r} ({bc}) has shape {(rows, per_t, cols)}, "
                             f"expected {want}")
    for _, r in k.outputs:
        if _dims(prog, r) != dom:
            raise ValueError(f"Fused {k.name}: output {r} does not match the domain {dom}")
    for _, r, _ in k.colsums:
        if _dims(prog, r)[1:] != (False, dom[2]) or _dims(prog, r)[0] != 1:
            raise ValueError(f"Fused {k.name}: colsum target {r} is not a ({dom[2]},) vector")
        used = ([q for q, _ in k.inputs] + [q for _, q in k.outputs] +
                [q for _, q, _ in k.colsums])
        if sum(q.buf == r.buf and q.t == r.t and _overlap(prog, q, r) for q in used) > 1:
            raise ValueError(f"Fused {k.name}: colsum target {r.buf} is also used elsewhere in "
                             f"the kernel")
    reads, writes = kernel_refs(k)
    for _, r, op in k.rowreds:
        if op not in ("sum", "max"):
            raise ValueError(f"Fused {k.name}: unknown row reduction {op!r}")
        if _dims(prog, r) != (dom[0], dom[1], 1):
            raise ValueError(f"Fused {k.name}: rowred target {r} is not a ({dom[0]}, 1) column")
        used = reads + writes
        if sum(q.buf == r.buf and q.t == r.t and _overlap(prog, q, r) for q in used) > 1:
            raise ValueError(f"Fused {k.name}: rowred target {r.buf} is also used elsewhere in "
                             f"the kernel")
    for _, o in k.outputs:
        for r, _ in k.inputs:
            if r.buf == o.buf and r.t == o.t and r != o and _overlap(prog, r, o):
                raise ValueError(f"Fused {k.name}: output {o} partially overlaps input {r}")


def _overlap(prog, a, b):
    _, _, ca, na, _ = ref_window(prog, a)
    _, _, cb, nb, _ = ref_window(prog, b)
    return ca < cb + nb and cb < ca + na


def is_batched(prog: Program, name: str) -> bool:
    """Whether a buffer's rows are the batch (the rule in the module docstring)."""
    b = prog.buffers[name]
    if "batched" in prog.meta:
        return name in prog.meta["batched"]
    return (b.kind not in ("param", "grad") and len(b.shape) == 2 and
            b.shape[0] == prog.meta["batch"])


def with_batch(prog: Program, batch: int) -> Program:
    """The same program for a batch of `batch` rows (see the batch rule in the module doc)."""
    bufs = {n: replace(b, shape=(batch,) + tuple(b.shape[1:])) if is_batched(prog, n) else b
            for n, b in prog.buffers.items()}
    return Program(bufs, list(prog.pre), list(prog.fwd_loop), list(prog.bwd_loop),
                   list(prog.post), dict(prog.meta, batch=batch))
