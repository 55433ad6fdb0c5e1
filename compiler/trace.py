"""Tracing: run a user's step function on symbolic values and record every primitive as an IR node.

`IRTracer` is a `graphgrad.Tracer`, so `bind` hands each op to `GraphTrace.process`, which checks
shapes with the primitive's own rule (the same errors as eager mode), freezes the attributes and
adds one `Node`. Python scalars and numpy arrays met on the way become "const" nodes. Every node
remembers the line of user code that created it, so later errors can point at the step function.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

from graphgrad import core, ops as gops
from graphgrad.core import AVal, Tensor, Tracer

from . import ir
from .errors import CompileError

IR_KINDS = {"elementwise", "reduce", "matmul", "layout", "index"}

_GG = os.path.dirname(os.path.abspath(core.__file__))
_PLUMBING = {os.path.join(_GG, f) for f in ("core.py", "ops.py", "functional.py")}
_COMPILER = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_src() -> str:
    """'file:line (function)' of the innermost frame outside graphgrad's op plumbing and compiler/."""
    f = sys._getframe(1)
    while f is not None:
        fn = os.path.abspath(f.f_code.co_filename)
        if fn not in _PLUMBING and not fn.startswith(_COMPILER):
            return f"{_rel(fn)}:{f.f_lineno} ({f.f_code.co_name})"
        f = f.f_back
    return ""


def _rel(path: str) -> str:
    """path relative to the working directory, as errors show it (absolute on another drive)."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def to_aval(v) -> AVal:
    if isinstance(v, AVal):
        return v
    return AVal(tuple(int(n) for n in v.shape), np.dtype(v.dtype))


# ---------------------------------------------------------------- pytrees of state
def flatten(tree):
    """(leaves, treedef); a treedef is None for a leaf or a tuple of treedefs."""
    if isinstance(tree, (tuple, list)):
        leaves, defs = [], []
        for t in tree:
            ls, d = flatten(t)
            leaves += ls
            defs.append(d)
        return leaves, tuple(defs)
    return [tree], None


def unflatten(treedef, leaves):
    it = iter(leaves)

    def build(d):
        return next(it) if d is None else tuple(build(s) for s in d)
    return build(treedef)


# ---------------------------------------------------------------- tracer and trace


class IRTracer(Tracer):
    __array_priority__ = 100

    def __init__(self, trace, aval, nid):
        self._trace, self.aval, self.nid = trace, aval, nid

    def __repr__(self):
        return f"IRTracer(%{self.nid}: {self.aval})"

    def __len__(self):
        return self.shape[0]

    def _concrete(self, what, hint="use graphgrad ops instead"):
        raise CompileError(f"{what} needs the concrete value of a traced array; a compiled step "
                           f"cannot branch on or export data ({hint})", op=what, src=user_src())

    # comparisons are ops (0/1 masks, installed with the other operators); branching on one is not
    def __bool__(self): self._concrete("bool()", "to choose between values per element, use "
                                       "gg.where(cond, a, b) with cond from a comparison such as "
                                       "a > b")
    def __float__(self): self._concrete("float()")
    def __int__(self): self._concrete("int()")
    def __index__(self): self._concrete("using it as an index")
    def __array__(self, *a, **k): self._concrete("np.asarray()")
    def numpy(self): self._concrete(".numpy()")
    def item(self): self._concrete(".item()")
    data = property(lambda self: self._concrete(".data"))

    def __array_ufunc__(self, ufunc, method, *inputs, **kw):
        # ndarray (op) tracer lands here rather than in our reflected operators.
        op = gops.ufunc_op(ufunc, method, kw)
        if op is not None:
            return op(*inputs)
        name, hint = gops.ufunc_hint(ufunc, method, kw)
        # (graphgrad has no op named like most ufuncs: np.maximum, np.abs, np.sqrt, ...)
        raise CompileError(f"numpy function {name} applied to a traced array; use {hint}",
                           op=ufunc.__name__, src=user_src())


class GraphTrace:
    """Appends to graph G the ops bound on its tracers."""

    def __init__(self, G):
        self.G = G
        self.src = None      # set by autodiff: backward nodes inherit their forward node's line

    def tracer(self, nid) -> IRTracer:
        return IRTracer(self, ir.aval_of(ir.node(self.G, nid)), nid)

    def new_input(self, aval, role, name) -> IRTracer:
        nid = ir.add_node(self.G, ir.input_node(aval.shape, aval.dtype))
        self.G.graph["inputs"].append(nid)
        self.G.graph["roles"][nid] = role
        self.G.graph["names"][nid] = name
        return self.tracer(nid)

    def lift(self, a, fdt, op="") -> int:
        """Node id of an operand: a tracer of this trace, or a new const."""
        if isinstance(a, IRTracer) and a._trace is self:
            return a.nid
        if isinstance(a, Tracer):
            raise CompileError(f"{op}: operand belongs to another trace", op, user_src())
        if isinstance(a, Tensor):
            if a.requires_grad:
                raise CompileError(f"{op}: the step function uses a Tensor with requires_grad=True "
                                   f"that is not in its parameter dict {list(a.shape)}; pass it "
                                   f"in the params so it gets a gradient", op, user_src())
            arr = a.data
        else:
            arr = core._as_array(op, a, fdt)
        return ir.add_node(self.G, ir.const_node(arr, src=self.src or user_src()))

    def process(self, op, args, attrs):
        src = self.src or user_src()
        if op.kind not in IR_KINDS:
            raise CompileError(f"primitive {op.name!r} has no IR support (kind {op.kind!r})",
                               op.name, src)
        try:
            fdt = core._float_dtype_of(op.name, args)
            ids = [self.lift(a, fdt, op.name) for a in args]
            out = op.rule(*(ir.aval_of(ir.node(self.G, i)) for i in ids), **attrs)
        except (ValueError, TypeError, IndexError) as e:
            raise type(e)(f"{e} (at {src})") from None
        try:
            frozen = ir.freeze_attrs(attrs)
        except TypeError:
            raise CompileError(f"{op.name}: attributes {attrs} cannot be frozen into the IR",
                               op.name, src) from None
        node = ir.Node(op.name, tuple(out.shape), np.dtype(out.dtype).name, frozen, src)
        return self.tracer(ir.add_node(self.G, node, ids))


# ---------------------------------------------------------------- step graphs
@dataclass
class StepGraph:
    """One time step as a graph: inputs params..., x, state leaves...; outputs y, new state leaves."""
    G: object
    params: dict                 # name -> input node id
    x: int
    state: list                  # input node ids of the flattened state
    state_tree: object           # treedef (see flatten)
    y: int
    new_state: list = field(default_factory=list)

    def run(self, params: dict, x, state):
        from .interp import run
        leaves, _ = flatten(state)
        outs = run(self.G, *[params[k] for k in self.params], x, *leaves)
        return outs[0], unflatten(self.state_tree, outs[1:])


def _step_name(fn) -> str:
    """'name (file:line)' of a step function's definition (functions, lambdas, methods,
    functools.partial), for errors about what it returned; the bare name when unknown."""
    f = getattr(fn, "func", fn)           # functools.partial
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or "step"
    code = getattr(f, "__code__", None)   # bound methods forward it from __func__
    if code is None:
        return name
    return f"{name} ({_rel(code.co_filename)}:{code.co_firstlineno})"


def trace_step(step_fn, params, x_aval, state_avals) -> StepGraph:
    """Trace `step_fn(p, x_t, state) -> (y_t, new_state)` on abstract values into a StepGraph."""
    G = ir.new_graph()
    tr = GraphTrace(G)
    p = {k: tr.new_input(to_aval(v), "param", k) for k, v in params.items()}
    x = tr.new_input(to_aval(x_aval), "x", "x")
    leaves, tree = flatten(state_avals)
    st = [tr.new_input(to_aval(a), "state", f"state[{i}]") for i, a in enumerate(leaves)]
    out = step_fn(p, x, unflatten(tree, st))
    where = _step_name(step_fn)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"{where}: a step function must return (y_t, new_state), got "
                        f"{type(out).__name__}")
    y, ns = out
    ns_leaves, ns_tree = flatten(ns)
    if ns_tree != tree:
        raise ValueError(f"{where}: returns a new state structured as {ns_tree}, but the state "
                         f"is {tree} (None marks one array)")
    fdt = x.dtype if x.dtype in core.FLOAT_DTYPES else None
    y_id = tr.lift(y, fdt, "output")
    ns_ids = []
    for i, (a, v) in enumerate(zip(leaves, ns_leaves)):
        nid = tr.lift(v, fdt, "output")
        got = ir.aval_of(ir.node(G, nid))
        if got != to_aval(a):
            src = ir.node(G, nid).src     # the user's line that computed the leaf
            raise ValueError(f"{where}: new state leaf {i} is {got}, the state is {to_aval(a)}; "
                             f"a step must keep the state's shape and dtype"
                             + (f" (at {src})" if src else ""))
        ns_ids.append(nid)
    G.graph["outputs"] = [y_id] + ns_ids
    G.graph["out_names"] = ["y"] + [f"new_state[{i}]" for i in range(len(ns_ids))]
    return StepGraph(G, {k: t.nid for k, t in p.items()}, x.nid, [t.nid for t in st], tree,
                     y_id, ns_ids)
