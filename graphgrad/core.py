"""Primitives, dispatch and the eager tape.

Every primitive is one `OpDef` row (see ops.py): a numpy forward, a shape/dtype rule, one
vector-Jacobian product per argument written in graphgrad functions, and (for elementwise ops) a
lowering written against an abstract emitter. `bind` is the single entry point: it runs the
forward eagerly on `Tensor`s and records the tape, or hands the op to the trace a `Tracer`
belongs to. Because VJPs are themselves written with `bind`-ed functions, the compiler derives
backward graphs by running the same rules on tracers.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class AVal:
    """Abstract value: what the shape rules and the compiler's IR know about an array."""
    shape: tuple
    dtype: np.dtype

    def __repr__(self):
        return f"{self.dtype.name}{list(self.shape)}"


@dataclass(eq=False)
class OpDef:
    name: str
    fwd: Callable                    # (*ndarrays, **attrs) -> ndarray
    rule: Callable                   # (*AVal, **attrs) -> AVal; raises ValueError/TypeError
    vjps: Any = None                 # tuple of per-argument fns (g, ans, *args, **attrs) -> ct,
                                     # or one fn (i, g, ans, *args, **attrs) for variadic ops;
                                     # None: derivative is zero almost everywhere
    lower: Callable | None = None    # elementwise only: (emitter, *values, **attrs) -> value
    kind: str = "other"              # elementwise | reduce | matmul | layout | index | other
    nondiff: tuple = ()              # argument positions that never carry a gradient
    commutative: bool = False
    doc: str = ""

    def vjp(self, i, g, ans, args, attrs):
        if self.vjps is None or i in self.nondiff:
            return None
        if callable(self.vjps):
            return self.vjps(i, g, ans, *args, **attrs)
        return self.vjps[i](g, ans, *args, **attrs)


PRIMITIVES: dict[str, OpDef] = {}


def defop(name, fwd, rule, vjps=None, **kw) -> OpDef:
    if name in PRIMITIVES:
        raise ValueError(f"primitive {name!r} is already defined")
    op = PRIMITIVES[name] = OpDef(name, fwd, rule, vjps, **kw)
    return op


# ---------------------------------------------------------------- global modes
class _Modes(threading.local):
    grad_enabled = True
    anomaly = False
    in_vjp = False       # backward() is evaluating VJP rules (see _evaluating_vjps)
    recorders: list = []

    def __init__(self):
        self.recorders = []


_modes = _Modes()


@contextlib.contextmanager
def _mode(name, value):
    """Set one of the thread's modes for the block, restoring it (nesting-safe) after."""
    prev = getattr(_modes, name)
    setattr(_modes, name, value)
    try:
        yield
    finally:
        setattr(_modes, name, prev)


def no_grad():
    """Run ops without recording them on the tape (evaluation, optimizer updates)."""
    return _mode("grad_enabled", False)


def is_grad_enabled() -> bool:
    return _modes.grad_enabled


def detect_anomaly():
    """Raise FloatingPointError naming the first op whose forward or backward made NaN/Inf."""
    return _mode("anomaly", True)


def _evaluating_vjps():
    """While backward() runs VJP rules, a NaN/Inf they make is reported once, by the walk, as the
    backward of the op the rule belongs to, not as the forward of a primitive the rule uses."""
    return _mode("in_vjp", True)


@dataclass
class TapeEntry:
    op: str
    in_shapes: list
    out_shape: tuple
    dtype: str
    attrs: dict = field(default_factory=dict)

    def __repr__(self):
        ins = ", ".join(str(list(s)) for s in self.in_shapes)
        return f"{self.op}({ins}) -> {list(self.out_shape)} {self.dtype}"


@contextlib.contextmanager
def record():
    """Collect a `TapeEntry` for every primitive executed eagerly inside the block."""
    entries: list[TapeEntry] = []
    _modes.recorders.append(entries)
    try:
        yield entries
    finally:
        _modes.recorders.remove(entries)


# ---------------------------------------------------------------- values
class Tracer:
    """Base class of symbolic values; the compiler subclasses it. `bind` defers to `_trace`."""
    _trace: Any = None
    aval: AVal

    @property
    def shape(self):
        return self.aval.shape

    @property
    def dtype(self):
        return self.aval.dtype

    @property
    def ndim(self):
        return len(self.aval.shape)


class Tensor:
    """An n-d array on the tape. `.data` and `.grad` are numpy arrays."""
    __array_priority__ = 100  # so ndarray (op) Tensor defers to Tensor's reflected operators

    def __init__(self, data, requires_grad=False, *, _op=None, _parents=(), _attrs=None):
        arr = data.data if isinstance(data, Tensor) else np.asarray(data)
        if requires_grad and arr.dtype not in FLOAT_DTYPES:
            raise TypeError(f"Tensor: requires_grad needs float32 or float64 data, got {arr.dtype}")
        self.data = arr
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._op, self._parents, self._attrs = _op, _parents, _attrs or {}
        self._retain = False

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    aval = property(lambda self: AVal(self.data.shape, self.data.dtype))

    def numpy(self):
        return self.data

    def item(self):
        return self.data.item()

    def detach(self):
        return Tensor(self.data)

    def retain_grad(self):
        """Keep `.grad` on this intermediate after backward (as torch's retain_grad)."""
        self._retain = True
        return self

    def __repr__(self):
        rg = ", requires_grad=True" if self.requires_grad else ""
        op = f", op={self._op.name}" if self._op else ""
        return f"Tensor({np.array2string(self.data, threshold=8, precision=4)}{rg}{op})"

    def __len__(self):
        return len(self.data)

    def __bool__(self):
        # numpy's rule (one element, else "ambiguous"), not __len__'s: `if t > 0` on a mask of
        # many elements would otherwise be true whenever the mask is non-empty
        return bool(self.data)

    def backward(self, grad=None):
        backward(self, grad)

    def tape(self):
        """The recorded ops that produced this tensor, in execution order."""
        return [TapeEntry(t._op.name, [p.shape for p in t._parents], t.shape, t.dtype.name,
                          dict(t._attrs)) for t in _toposort(self, lambda t: t._op is not None)]


# ---------------------------------------------------------------- dispatch
def _float_dtype_of(op, args):
    dts = {np.dtype(a.dtype) for a in args if isinstance(a, (Tensor, Tracer, np.ndarray))
           and np.dtype(a.dtype) in FLOAT_DTYPES}
    if len(dts) > 1:
        raise TypeError(f"{op}: operands mix float32 and float64; convert one explicitly with "
                        f"astype (graphgrad never casts silently)")
    return dts.pop() if dts else None


def bind(name: str, *args, **attrs):
    op = PRIMITIVES[name]
    for a in args:
        if isinstance(a, Tracer):
            return a._trace.process(op, args, attrs)
    fdt = _float_dtype_of(name, args)
    ts = tuple(a if isinstance(a, Tensor) else Tensor(_as_array(name, a, fdt)) for a in args)
    op.rule(*(t.aval for t in ts), **attrs)  # shape and dtype errors before numpy sees the data
    with np.errstate(all="ignore"):
        out = np.asarray(op.fwd(*(t.data for t in ts), **attrs))
    if (_modes.anomaly and not _modes.in_vjp and out.dtype in FLOAT_DTYPES
            and not np.isfinite(out).all()):
        raise FloatingPointError(f"anomaly: forward of {name} produced NaN/Inf "
                                 f"(inputs {[t.shape for t in ts]}, attrs {attrs})")
    for rec in _modes.recorders:
        rec.append(TapeEntry(name, [t.shape for t in ts], out.shape, out.dtype.name, dict(attrs)))
    needs = _modes.grad_enabled and any(t.requires_grad for i, t in enumerate(ts)
                                        if i not in op.nondiff)
    if needs:
        return Tensor(out, requires_grad=True, _op=op, _parents=ts, _attrs=attrs)
    return Tensor(out)


def _as_array(op, a, fdt):
    if isinstance(a, (bool, int, float, np.number)):   # a scalar takes the operands' dtype
        return np.asarray(a, dtype=fdt or np.float64)
    arr = np.asarray(a)
    if arr.dtype == object:
        raise TypeError(f"{op}: cannot use an argument of type {type(a).__name__}")
    return arr


# ---------------------------------------------------------------- the tape walk
def _toposort(root, keep):
    order, seen, stack = [], set(), [(root, False)]
    while stack:  # iterative: an unrolled sequence of 1000 steps would overflow recursion
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in seen or not keep(t):
            continue
        seen.add(id(t))
        stack.append((t, True))
        stack.extend((p, False) for p in t._parents)
    return order


def sum_to_shape(ct, shape):
    """Undo broadcasting: sum a cotangent down to the shape of the operand it belongs to."""
    from . import ops
    shape = tuple(shape)
    if tuple(ct.shape) == shape:
        return ct
    lead = len(ct.shape) - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape)
                                      if n == 1 and ct.shape[i + lead] != 1)
    out = ops.sum(ct, axis=axes, keepdims=True) if axes else ct
    return ops.reshape(out, shape)


def apply_vjp(op: OpDef, i, g, ans, args, attrs):
    """The i-th cotangent of `op`, reduced to the operand's shape. Shared by tape and compiler."""
    ct = op.vjp(i, g, ans, args, attrs)
    if ct is None:
        return None
    ct = sum_to_shape(ct, args[i].shape)
    if tuple(ct.shape) != tuple(args[i].shape):
        raise AssertionError(f"VJP of {op.name} wrt argument {i} has shape {ct.shape}, "
                             f"expected {args[i].shape}")
    return ct


def backward(root: Tensor, grad=None):
    if not root.requires_grad:
        raise RuntimeError("backward: this tensor does not require grad (no input it depends on "
                           "has requires_grad=True, or it was computed under no_grad)")
    if grad is None:
        if root.size != 1:
            raise ValueError(f"backward: output has shape {root.shape}; pass grad= of that shape "
                             f"for a non-scalar output")
        grad = np.ones_like(root.data)
    grad = np.asarray(grad)
    if grad.shape != root.shape or grad.dtype != root.dtype:
        raise ValueError(f"backward: grad has shape {grad.shape} {grad.dtype}, the output is "
                         f"{root.shape} {root.dtype}")
    order = _toposort(root, lambda t: t.requires_grad)
    cts = {id(root): Tensor(grad)}
    with no_grad(), _evaluating_vjps():
        for t in reversed(order):
            g = cts.pop(id(t), None)
            if g is None:
                continue
            if t._op is None or t._retain:
                # asarray: 0-d + 0-d gives a numpy scalar, which the in-place users of .grad
                # (clip_grad_norm, zero_grad(set_to_none=False)) cannot update
                t.grad = g.data.copy() if t.grad is None else np.asarray(t.grad + g.data)
            if t._op is None:
                continue
            ans = Tensor(t.data)
            parents = tuple(Tensor(p.data) for p in t._parents)
            for i, p in enumerate(t._parents):
                if not p.requires_grad:
                    continue
                ct = apply_vjp(t._op, i, g, ans, parents, t._attrs)
                if ct is None:
                    continue
                if _modes.anomaly and not np.isfinite(ct.data).all():
                    raise FloatingPointError(f"anomaly: backward of {t._op.name} produced NaN/Inf "
                                             f"in the gradient of argument {i} {p.shape}")
                prev = cts.get(id(p))
                cts[id(p)] = ct if prev is None else Tensor(prev.data + ct.data)
