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
"""
from __future__ import annotations

from dataclasses import dataclass, field


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
      row) or "scalar". body: (dst, op, args, attrs) in order; op is a primitive with a `lower`
      rule; args name "in<k>", an earlier dst, or a float constant. outputs: (local name, Ref).
      colsums: (local name, Ref, accumulate) epilogues summing a local over rows into a (cols,)
      vector (bias gradients).
    """
    name: str
    inputs: tuple
    body: tuple
    outputs: tuple
    colsums: tuple = ()
    sources: tuple = ()        # the IR node ids fused here, for the fusion report


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
