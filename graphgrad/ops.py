"""The primitive table: every differentiable operation graphgrad knows, each defined once.

A row gives the numpy forward, the shape/dtype rule, one VJP per argument written in graphgrad
functions (so the compiler can trace it), and for elementwise ops a lowering against an emitter
(`e.add(x, y)`, `e.tanh(x)`, ...) that the code generator implements. Composite functions
(softmax, cross_entropy, ...) live in functional.py and are built from these.
"""
from __future__ import annotations

import builtins

import numpy as np

from .core import AVal, FLOAT_DTYPES, Tensor, Tracer, bind, defop

_int = builtins.int


# ---------------------------------------------------------------- shape/dtype rules
def _fmt(avals):
    return ", ".join(f"{a.dtype.name}{list(a.shape)}" for a in avals)


def _floats(op, *avals):
    for a in avals:
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: expects float32 or float64 operands, got {_fmt(avals)}")
    if len({a.dtype for a in avals}) > 1:
        raise TypeError(f"{op}: operands mix dtypes ({_fmt(avals)}); convert one explicitly "
                        f"with astype")
    return avals[0].dtype


def _unary_rule(name):
    return lambda x: AVal(x.shape, _floats(name, x))


def _binary_rule(name):
    def rule(x, y):
        dt = _floats(name, x, y)
        try:
            return AVal(np.broadcast_shapes(x.shape, y.shape), dt)
        except ValueError:
            raise ValueError(f"{name}: shapes {list(x.shape)} and {list(y.shape)} do not "
                             f"broadcast") from None
    return rule


def _norm_axes(op, axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (_int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"{op}: axis {a} is out of range for a {ndim}-d operand")
        out.append(_int(a) % ndim)
    return tuple(sorted(set(out)))


def _reduced(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else n for i, n in enumerate(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)


# ---------------------------------------------------------------- elementwise
def _ew(name, fwd, vjps, lower, nargs, **kw):
    rule = _unary_rule(name) if nargs == 1 else _binary_rule(name)
    return defop(name, fwd, rule, vjps, lower=lower, kind="elementwise", **kw)


_ew("add", np.add, (lambda g, a, x, y: g, lambda g, a, x, y: g),
    lambda e, x, y: e.add(x, y), 2, commutative=True)
_ew("sub", np.subtract, (lambda g, a, x, y: g, lambda g, a, x, y: neg(g)),
    lambda e, x, y: e.sub(x, y), 2)
_ew("mul", np.multiply, (lambda g, a, x, y: g * y, lambda g, a, x, y: g * x),
    lambda e, x, y: e.mul(x, y), 2, commutative=True)
_ew("div", np.divide, (lambda g, a, x, y: g / y, lambda g, a, x, y: neg(g) * a / y),
    lambda e, x, y: e.div(x, y), 2)
# At x = 0 the plain formulas give 0 * inf = NaN; like torch, x**0 has derivative 0 in x
# everywhere, and x**y (y >= 0) has derivative 0 in y at x = 0 (log(x) is replaced by log(1) there).
_ew("pow", np.power, (lambda g, a, x, y: g * y * power(x, y - 1.0 + equal(y, 0.0)),
                      lambda g, a, x, y: g * a * log(x + equal(x, 0.0))),
    lambda e, x, y: e.pow(x, y), 2)
_ew("neg", np.negative, (lambda g, a, x: neg(g),), lambda e, x: e.neg(x), 1)
_ew("exp", np.exp, (lambda g, a, x: g * a,), lambda e, x: e.exp(x), 1)
_ew("log", np.log, (lambda g, a, x: g / x,), lambda e, x: e.log(x), 1)
# tanh' and sigmoid' from the saved output, so BPTT reuses activations instead of recomputing.
_ew("tanh", np.tanh, (lambda g, a, x: g * (1.0 - a * a),), lambda e, x: e.tanh(x), 1)
_ew("sigmoid", lambda x: _sigmoid_np(x), (lambda g, a, x: g * a * (1.0 - a),),
    lambda e, x: e.sigmoid(x), 1)
_ew("relu", lambda x: np.maximum(x, 0).astype(x.dtype, copy=False),
    (lambda g, a, x: g * positive(x),), lambda e, x: e.relu(x), 1)
# Piecewise-constant masks: zero derivative almost everywhere, so no VJP rows.
_ew("positive", lambda x: (x > 0).astype(x.dtype), None, lambda e, x: e.positive(x), 1)
_ew("equal", lambda x, y: (x == y).astype(np.result_type(x, y)), None,
    lambda e, x, y: e.equal(x, y), 2, commutative=True)
# x > y and x >= y as 0/1 masks of the operands' dtype (x < y is greater(y, x)); NaN compares
# false, as in numpy
_ew("greater", lambda x, y: (x > y).astype(np.result_type(x, y)), None,
    lambda e, x, y: e.greater(x, y), 2)
_ew("greater_equal", lambda x, y: (x >= y).astype(np.result_type(x, y)), None,
    lambda e, x, y: e.greater_equal(x, y), 2)


def _where_rule(c, x, y):
    dt = _floats("where", c, x, y)
    try:
        return AVal(np.broadcast_shapes(c.shape, x.shape, y.shape), dt)
    except ValueError:
        raise ValueError(f"where: shapes {list(c.shape)}, {list(x.shape)} and {list(y.shape)} "
                         f"do not broadcast") from None


# where(cond, x, y): x where cond is nonzero (NaN counts, as in np.where), else y. A select, not
# cond*x + (1-cond)*y: an inf or NaN in the branch not taken stays out of the value and of the
# gradient. cond is a mask (from greater, equal, ...) and carries no gradient.
defop("where", lambda c, x, y: np.where(c != 0, x, y), _where_rule,
      (None, lambda g, a, c, x, y: where(c, g, 0.0), lambda g, a, c, x, y: where(c, 0.0, g)),
      lower=lambda e, c, x, y: e.where(c, x, y), kind="elementwise", nondiff=(0,))


def _sigmoid_np(x):
    # Split by sign so exp never overflows: sigmoid(x) = 1/(1+e^-x) = e^x/(1+e^x).
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + z), z / (1 + z)).astype(x.dtype, copy=False)


def _astype_rule(x, dtype):
    _floats("astype", x)
    return AVal(x.shape, np.dtype(dtype))


defop("astype", lambda x, dtype: x.astype(dtype), _astype_rule,
      (lambda g, a, x, dtype: astype(g, x.dtype),), lower=lambda e, x, dtype: e.cast(x, dtype),
      kind="elementwise", doc="the one explicit float32 <-> float64 conversion")
defop("stop_gradient", lambda x: x, lambda x: x, None, lower=lambda e, x: x, kind="elementwise")


# ---------------------------------------------------------------- matmul
def _matmul_rule(a, b):
    dt = _floats("matmul", a, b)
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise ValueError(f"matmul: operands must be at least 2-d, got {list(a.shape)} @ "
                         f"{list(b.shape)} (reshape vectors to (1, n) or (n, 1))")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: inner dimensions differ: {list(a.shape)} @ {list(b.shape)}")
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: batch dimensions of {list(a.shape)} and {list(b.shape)} do "
                         f"not broadcast") from None
    return AVal(tuple(batch) + (a.shape[-2], b.shape[-1]), dt)


def _mT(x):
    return transpose(x, tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2))


defop("matmul", np.matmul, _matmul_rule,
      (lambda g, a, x, y: g @ _mT(y), lambda g, a, x, y: _mT(x) @ g), kind="matmul")


# ---------------------------------------------------------------- reductions
def _reduce_rule(name):
    def rule(x, axis, keepdims):
        _floats(name, x)
        if axis != _norm_axes(name, axis, len(x.shape)):
            raise ValueError(f"{name}: axis must be normalised, got {axis}")
        return AVal(_reduced(x.shape, axis, keepdims), x.dtype)
    return rule


def _expand_back(g, x, axis, keepdims):
    if not keepdims:
        g = reshape(g, _reduced(x.shape, axis, True))
    return g


defop("sum", lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims),
      _reduce_rule("sum"),
      (lambda g, a, x, axis, keepdims: broadcast_to(_expand_back(g, x, axis, keepdims), x.shape),),
      kind="reduce")


def _max_vjp(g, a, x, axis, keepdims):
    mask = equal(x, broadcast_to(_expand_back(a, x, axis, keepdims), x.shape))
    share = mask / sum(mask, axis, keepdims=True)  # ties split the gradient evenly
    return share * _expand_back(g, x, axis, keepdims)


defop("max", lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims),
      _reduce_rule("max"), (_max_vjp,), kind="reduce")


# ---------------------------------------------------------------- layout
def _reshape_rule(x, shape):
    if _int(np.prod(shape, dtype=np.int64)) != _int(np.prod(x.shape, dtype=np.int64)):
        raise ValueError(f"reshape: cannot reshape {list(x.shape)} to {list(shape)}")
    return AVal(tuple(shape), x.dtype)


defop("reshape", lambda x, shape: np.reshape(x, shape), _reshape_rule,
      (lambda g, a, x, shape: reshape(g, x.shape),), kind="layout")


def _transpose_rule(x, axes):
    if sorted(axes) != list(range(len(x.shape))):
        raise ValueError(f"transpose: axes {axes} are not a permutation for {list(x.shape)}")
    return AVal(tuple(x.shape[i] for i in axes), x.dtype)


defop("transpose", lambda x, axes: np.transpose(x, axes), _transpose_rule,
      (lambda g, a, x, axes: transpose(g, tuple(np.argsort(axes).tolist())),), kind="layout")


def _broadcast_rule(x, shape):
    try:
        if np.broadcast_shapes(x.shape, shape) == tuple(shape):
            return AVal(tuple(shape), x.dtype)
    except ValueError:
        pass
    raise ValueError(f"broadcast_to: cannot broadcast {list(x.shape)} to {list(shape)}")


defop("broadcast_to", lambda x, shape: np.broadcast_to(x, shape).copy(), _broadcast_rule,
      (lambda g, a, x, shape: _sum_to(g, x.shape),), kind="layout")


def _sum_to(g, shape):
    from .core import sum_to_shape
    return sum_to_shape(g, shape)


def _getitem_rule(x, index):
    try:
        return AVal(np.empty(x.shape, dtype=np.bool_)[index].shape, x.dtype)
    except (IndexError, TypeError) as e:
        raise IndexError(f"getitem: index {index} does not fit shape {list(x.shape)}: {e}") from None


defop("getitem", lambda x, index: x[index].copy(), _getitem_rule,
      (lambda g, a, x, index: pad_into(g, index, x.shape),), kind="layout",
      doc="basic indexing only: ints, slices, None, Ellipsis")


def _pad_fwd(g, index, shape):
    out = np.zeros(shape, dtype=g.dtype)
    out[index] = g
    return out


def _pad_rule(g, index, shape):
    want = _getitem_rule(AVal(tuple(shape), g.dtype), index).shape
    if tuple(g.shape) != tuple(want):
        raise ValueError(f"pad_into: {list(g.shape)} does not fill index {index} of {list(shape)}")
    return AVal(tuple(shape), g.dtype)


defop("pad_into", _pad_fwd, _pad_rule, (lambda g, a, x, index, shape: getitem(g, index),),
      kind="layout", doc="zeros of `shape` with x written at `index` (the VJP of getitem)")


def _concat_rule(*xs, axis):
    dt = _floats("concat", *xs)
    nd = len(xs[0].shape)
    if not 0 <= axis < nd:
        raise ValueError(f"concat: axis {axis} is out of range for {nd}-d operands")
    for x in xs:
        if len(x.shape) != nd or any(a != b for i, (a, b) in enumerate(zip(x.shape, xs[0].shape))
                                     if i != axis):
            raise ValueError(f"concat: shapes {[list(x.shape) for x in xs]} differ off axis {axis}")
    shape = list(xs[0].shape)
    shape[axis] = builtins.sum(x.shape[axis] for x in xs)
    return AVal(tuple(shape), dt)


def _concat_vjp(i, g, a, *xs, axis):
    start = builtins.sum(x.shape[axis] for x in xs[:i])
    index = (slice(None),) * axis + (slice(start, start + xs[i].shape[axis]),)
    return getitem(g, index)


defop("concat", lambda *xs, axis: np.concatenate(xs, axis=axis), _concat_rule, _concat_vjp,
      kind="layout")


# ---------------------------------------------------------------- integer lookups
def _take_rule(w, ids):
    _floats("take", w)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"take: indices must be integers, got {ids.dtype}")
    if len(w.shape) != 2:
        raise ValueError(f"take: the table must be 2-d (rows, features), got {list(w.shape)}")
    return AVal(tuple(ids.shape) + (w.shape[1],), w.dtype)


def check_ids(what, ids, n, error=IndexError):
    """Integer ids must index one of n rows/classes; the message names both ends found."""
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise error(f"{what} must lie in [0, {n}), got min {int(ids.min())} max {int(ids.max())}")


def _take_fwd(w, ids):
    check_ids(f"take: indices into a table of {w.shape[0]} rows", ids, w.shape[0])
    return w[ids]


defop("take", _take_fwd, _take_rule,
      (lambda g, a, w, ids: take_grad(g, ids, w.shape[0]),), kind="index", nondiff=(1,))


def _take_grad_fwd(g, ids, rows):
    out = np.zeros((rows, g.shape[-1]), dtype=g.dtype)
    np.add.at(out, ids.reshape(-1), g.reshape(-1, g.shape[-1]))  # repeated ids accumulate
    return out


defop("take_grad", _take_grad_fwd, lambda g, ids, rows: AVal((rows, g.shape[-1]), g.dtype),
      (lambda g, a, gg, ids, rows: take(g, ids),), kind="index", nondiff=(1,))


def _one_hot_rule(ids, n, dtype):
    if ids.dtype.kind not in "iu":
        raise TypeError(f"one_hot: indices must be integers, got {ids.dtype}")
    return AVal(tuple(ids.shape) + (n,), np.dtype(dtype))


def _one_hot_fwd(ids, n, dtype):
    check_ids(f"one_hot: indices into {n} classes", ids, n)
    return (ids[..., None] == np.arange(n)).astype(dtype)


defop("one_hot", _one_hot_fwd, _one_hot_rule, None, kind="index", nondiff=(0,))


# ---------------------------------------------------------------- public functions
def add(x, y): return bind("add", x, y)
def sub(x, y): return bind("sub", x, y)
def mul(x, y): return bind("mul", x, y)
def div(x, y): return bind("div", x, y)
def power(x, y): return bind("pow", x, y)
def neg(x): return bind("neg", x)
def exp(x): return bind("exp", x)
def log(x): return bind("log", x)
def tanh(x): return bind("tanh", x)
def sigmoid(x): return bind("sigmoid", x)
def relu(x): return bind("relu", x)
def positive(x): return bind("positive", x)
def equal(x, y): return bind("equal", x, y)
def greater(x, y): return bind("greater", x, y)
def greater_equal(x, y): return bind("greater_equal", x, y)
def less(x, y): return bind("greater", y, x)
def less_equal(x, y): return bind("greater_equal", y, x)
def where(cond, x, y): return bind("where", cond, x, y)
def stop_gradient(x): return bind("stop_gradient", x)
def matmul(x, y): return bind("matmul", x, y)
def _ids(ids):
    # integer ids stay integers: bind would turn a bare Python int into a float like any scalar
    return ids if isinstance(ids, (Tensor, Tracer)) else np.asarray(ids)


def take(w, ids): return bind("take", w, _ids(ids))
def take_grad(g, ids, rows): return bind("take_grad", g, ids, rows=rows)
def one_hot(ids, n, dtype=np.float64):
    return bind("one_hot", _ids(ids), n=_int(n), dtype=np.dtype(dtype))
def pad_into(g, index, shape): return bind("pad_into", g, index=index, shape=tuple(shape))


def astype(x, dtype):
    dtype = np.dtype(dtype)
    return x if x.dtype == dtype else bind("astype", x, dtype=dtype)


def sum(x, axis=None, keepdims=False):
    return bind("sum", x, axis=_norm_axes("sum", axis, x.ndim), keepdims=keepdims)


def max(x, axis=None, keepdims=False):
    return bind("max", x, axis=_norm_axes("max", axis, x.ndim), keepdims=keepdims)


def reshape(x, shape):
    shape = tuple(_int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    if -1 in shape:
        known = _int(np.prod([s for s in shape if s != -1]))
        if shape.count(-1) > 1 or (known and _int(np.prod(x.shape)) % known):
            raise ValueError(f"reshape: cannot reshape {list(x.shape)} to {list(shape)}")
        shape = tuple(_int(np.prod(x.shape)) // builtins.max(known, 1) if s == -1 else s
                      for s in shape)
    return x if tuple(x.shape) == shape else bind("reshape", x, shape=shape)


def transpose(x, axes=None):
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(_int(a) for a in axes)
    if all(-x.ndim <= a < x.ndim for a in axes):   # negative axes count from the end, as numpy
        axes = tuple(a % x.ndim for a in axes)
    return x if axes == tuple(range(x.ndim)) else bind("transpose", x, axes=axes)


def broadcast_to(x, shape):
    shape = tuple(_int(s) for s in shape)
    return x if tuple(x.shape) == shape else bind("broadcast_to", x, shape=shape)


def getitem(x, index):
    if not isinstance(index, tuple):
        index = (index,)
    for i in index:
        if not (i is None or i is Ellipsis or isinstance(i, (slice, _int, np.integer))):
            raise TypeError(f"getitem: only ints, slices, None and ... are supported as indices "
                            f"(got {type(i).__name__}); use take() for integer-array lookups")
    index = tuple(_int(i) if isinstance(i, np.integer) else i for i in index)
    if builtins.sum(i is Ellipsis for i in index) == 1:
        # spell `...` out as the full slices it stands for, so x[..., a:b] and x[:, a:b] are one
        # index (the compiler recognizes column windows by their explicit form)
        k = index.index(Ellipsis)
        fill = builtins.max(x.ndim - builtins.sum(i is not None for i in index) + 1, 0)
        index = index[:k] + (slice(None),) * fill + index[k + 1:]
    return bind("getitem", x, index=index)


def concat(xs, axis=0):
    xs = list(xs)
    if not xs:
        raise ValueError("concat: needs at least one tensor")
    axis = _norm_axes("concat", axis, xs[0].ndim)[0]
    return xs[0] if len(xs) == 1 else bind("concat", *xs, axis=axis)


# ---------------------------------------------------------------- operators on values
# numpy ufuncs with a graphgrad op of the same meaning: ndarray * t and np.exp(t) stay on the tape
# (numpy would otherwise make an object array of per-element Tensors, or drop the gradient)
UFUNCS = {np.add: add, np.subtract: sub, np.multiply: mul, np.true_divide: div, np.power: power,
          np.matmul: matmul, np.negative: neg, np.exp: exp, np.log: log, np.tanh: tanh}


def ufunc_op(ufunc, method, kw):
    """The graphgrad op standing for a numpy ufunc call on Tensors or tracers, or None."""
    return UFUNCS.get(ufunc) if method == "__call__" and not kw else None


def _array_ufunc(self, ufunc, method, *inputs, **kw):
    op = ufunc_op(ufunc, method, kw)
    if op is not None:
        return op(*inputs)
    if all(t.endswith("?") for t in ufunc.types if "O" not in t):
        # comparisons and tests (==, <, isnan, ...) give booleans, which carry no gradient:
        # they read the values (`ndarray == t` compares numbers, as with two arrays)
        return getattr(ufunc, method)(*[x.data if isinstance(x, Tensor) else x for x in inputs],
                                      **kw)
    name, hint = ufunc_hint(ufunc, method, kw)
    raise TypeError(f"{name} on a graphgrad Tensor would leave the tape (no gradient); use "
                    f"{hint}, or .data for a plain array")


def ufunc_hint(ufunc, method, kw):
    """(the call's name, what to use instead): gg.<name> where graphgrad has that function."""
    import graphgrad
    name = f"np.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
    hint = f"gg.{ufunc.__name__}" if method == "__call__" and not kw and \
        hasattr(graphgrad, ufunc.__name__) else "graphgrad ops"
    return name, hint


def _swap(f):
    return lambda self, other: f(other, self)


def _install_operators(cls):
    cls.__add__, cls.__radd__ = add, _swap(add)
    cls.__sub__, cls.__rsub__ = sub, _swap(sub)
    cls.__mul__, cls.__rmul__ = mul, _swap(mul)
    cls.__truediv__, cls.__rtruediv__ = div, _swap(div)
    cls.__pow__, cls.__rpow__ = power, _swap(power)
    cls.__matmul__, cls.__rmatmul__ = matmul, _swap(matmul)
    cls.__neg__ = neg
    # comparisons give float 0/1 masks of the operands' dtype (for where, or to multiply by);
    # == stays identity, so Tensors can still be dict keys and set members
    cls.__gt__, cls.__ge__, cls.__lt__, cls.__le__ = greater, greater_equal, less, less_equal
    cls.__getitem__ = getitem
    cls.T = property(lambda self: transpose(self))
    cls.transpose = lambda self, *axes: transpose(self, axes[0] if len(axes) == 1 and
                                                  isinstance(axes[0], (tuple, list)) else
                                                  (axes or None))
    cls.reshape = lambda self, *shape: reshape(self, shape[0] if len(shape) == 1 else shape)
    cls.sum = lambda self, axis=None, keepdims=False: sum(self, axis, keepdims)
    cls.max = lambda self, axis=None, keepdims=False: max(self, axis, keepdims)
    cls.exp, cls.log, cls.tanh, cls.sigmoid, cls.relu = exp, log, tanh, sigmoid, relu
    cls.astype = astype


for _cls in (Tensor, Tracer):
    _install_operators(_cls)
Tensor.__array_ufunc__ = _array_ufunc
