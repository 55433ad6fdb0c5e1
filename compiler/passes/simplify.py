"""Simplifying passes, each Graph -> Graph: dead-code elimination, common-subexpression
elimination, constant folding, and algebraic identities written as a (pattern, fn) table that one
driver applies to a fixed point (tinygrad's PatternMatcher idea on our networkx IR).

Every rewrite preserves the values the interpreter computes (identities that are not exact for
NaN/Inf, such as x*0 -> 0, are deliberately absent).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import networkx as nx
import numpy as np

from graphgrad import ops as gops
from graphgrad.core import PRIMITIVES

from .. import ir
from ..trace import GraphTrace

# Ops whose nodes DCE keeps even when no output needs them (JAX's dce_rules idea); none yet.
DCE_KEEP: set = set()


def _prune(G):
    live = set(G.graph["inputs"]) | set(G.graph["outputs"])
    for o in G.graph["outputs"]:
        live |= nx.ancestors(G, o)
    live |= {n for n in G.nodes if ir.node(G, n).op in DCE_KEEP}
    G.remove_nodes_from([n for n in list(G.nodes) if n not in live])
    return G


def dce(G):
    """Drop nodes no output depends on (inputs always stay: they are the call signature)."""
    return _prune(ir.copy_graph(G))


def _key(G, nid):
    n = ir.node(G, nid)
    args = ir.args_of(G, nid)
    if n.op == "const":   # by bytes, so -0.0 and 0.0 (or two NaNs) are told apart correctly
        return ("const", n.shape, n.dtype, ir.const_value(n).tobytes())
    if PRIMITIVES[n.op].commutative:
        args = sorted(args)
    return (n.op, n.shape, n.dtype, n.attrs, tuple(args))


def cse(G):
    """Merge nodes with the same op, attributes and operands (inputs are never merged)."""
    H = ir.copy_graph(G)
    seen = {}
    for nid in ir.order(H):
        if ir.node(H, nid).op == "input":
            continue
        k = _key(H, nid)
        if k in seen:
            ir.replace_uses(H, nid, seen[k])
            H.remove_node(nid)
        else:
            seen[k] = nid
    return H


def fold_constants(G):
    """Evaluate ops whose operands are all constants, unless that would make a larger constant
    (broadcast zeros stay a broadcast, not a materialised array)."""
    H = ir.copy_graph(G)
    for nid in ir.order(H):
        n = ir.node(H, nid)
        args = ir.args_of(H, nid)
        if n.op in ir.STRUCTURAL or not args or any(ir.node(H, a).op != "const" for a in args):
            continue
        vals = [ir.const_value(ir.node(H, a)) for a in args]
        if int(np.prod(n.shape, dtype=np.int64)) > max(1, max(v.size for v in vals)):
            continue
        with np.errstate(all="ignore"):
            v = np.asarray(PRIMITIVES[n.op].fwd(*vals, **ir.thaw_attrs(n)))
        c = ir.add_node(H, ir.const_node(v.astype(n.dtype).reshape(n.shape), src=n.src))
        ir.replace_uses(H, nid, c)
    return _prune(H)


# ---------------------------------------------------------------- patterns
@dataclass(frozen=True)
class Pat:
    """Matches a node: op name(s), operand patterns (None: any), a name to bind, a predicate."""
    op: str | tuple | None = None
    src: tuple | None = None
    name: str | None = None
    pred: Callable | None = None     # (Node) -> bool

    def match(self, G, nid, b: dict) -> bool:
        n = ir.node(G, nid)
        if self.op is not None and n.op not in ((self.op,) if isinstance(self.op, str) else self.op):
            return False
        if self.pred is not None and not self.pred(n):
            return False
        if self.name is not None:
            if b.get(self.name, nid) != nid:
                return False
            b[self.name] = nid
        if self.src is None:
            return True
        args = ir.args_of(G, nid)
        if len(args) != len(self.src):
            return False
        orders = [args]
        if n.op in PRIMITIVES and PRIMITIVES[n.op].commutative:
            orders.append(args[::-1])
        for a in orders:
            b2 = dict(b)
            if all(p.match(G, x, b2) for p, x in zip(self.src, a)):
                b.update(b2)
                return True
        return False


def const(value, name=None):
    return Pat("const", name=name, pred=lambda n: bool(np.all(ir.const_value(n) == value)))


X, Y = Pat(name="x"), Pat(name="y")


def nd(t) -> ir.Node:
    """The Node record behind a tracer handed to a rule."""
    return ir.node(t._trace.G, t.nid)


def _same(x, out):
    return gops.broadcast_to(x, nd(out).shape)


def _full_slices(index):
    return all(i is Ellipsis or (isinstance(i, slice) and i.step in (None, 1)) for i in index)


def _getitem_of_concat(x, out):
    n, c = nd(out), nd(x)
    axis, index = c.attr["axis"], ir.thaw_attrs(n)["index"]
    if len(index) != axis + 1 or not _full_slices(index[:axis]) or not isinstance(index[axis], slice):
        return None
    start, stop, step = index[axis].indices(c.shape[axis])
    pieces = ir.args_of(x._trace.G, x.nid)
    lo = 0
    for p in pieces:
        hi = lo + ir.node(x._trace.G, p).shape[axis]
        if (start, stop, step) == (lo, hi, 1):
            return x._trace.tracer(p)
        lo = hi
    return None


def _batch_sum_first(x, out):
    """A sum of a (batch, features) value over both axes (the gradient of a scalar parameter
    broadcast over a step's values) = the batch sum, which BPTT hoists as a contraction, then
    the sum over features of its small result."""
    n = nd(out)
    if len(nd(x).shape) != 2 or tuple(sorted(n.attr["axis"])) != (0, 1):
        return None
    return gops.reshape(gops.sum(gops.sum(x, axis=0), axis=0), n.shape)   # keepdims: (1, 1)


def _keepdims_reduction(x, out):
    """A sum or max over the features of a (rows, features) value without keepdims = the
    keepdims form, reshaped: lowering then sees one (rows, 1) form, and the reshape back
    that usually follows (`s[:, None]`) cancels."""
    n = nd(out)
    if len(nd(x).shape) != 2 or n.attr["axis"] != (1,) or n.attr["keepdims"]:
        return None
    reduce = gops.sum if n.op == "sum" else gops.max
    return gops.reshape(reduce(x, axis=1, keepdims=True), n.shape)


def _only_new_axes(x, out):
    """x[:, None] (and its VJP, pad_into with that index) moves no data: a reshape, which
    folds into the reshapes around it."""
    index = ir.thaw_attrs(nd(out))["index"]
    if all(i is None or i == slice(None) for i in index) and \
            int(np.prod(nd(x).shape)) == int(np.prod(nd(out).shape)):
        return gops.reshape(x, nd(out).shape)
    return None


def _per_row_elementwise(out):
    """Elementwise math on (rows,) values that are reshaped (rows, 1) columns (a mean over the
    features without keepdims, then x[:, None]) runs on the columns, reshaped after: the
    reshapes then meet and cancel, and lowering sees (rows, 1) values only."""
    n, G = nd(out), out._trace.G
    if len(n.shape) != 1:
        return None
    args, cols = ir.args_of(G, out.nid), None
    for a in args:
        an = ir.node(G, a)
        if an.op == "reshape" and len(an.shape) == 1 and an.shape == n.shape:
            src = ir.node(G, ir.args_of(G, a)[0]).shape
            if len(src) != 2 or src[1] != 1 or cols not in (None, src):
                return None
            cols = src
        elif int(np.prod(an.shape)) != 1 or len(an.shape) > 1:
            return None
    if cols is None:
        return None
    new = [out._trace.tracer(ir.args_of(G, a)[0]) if ir.node(G, a).op == "reshape"
           else out._trace.tracer(a) for a in args]
    return gops.reshape(gops.bind(n.op, *new, **ir.thaw_attrs(n)), n.shape)


RULES = [
    (Pat("add", (X, const(0.0)), "out"), lambda x, out: _same(x, out)),
    (Pat("sub", (X, const(0.0)), "out"), lambda x, out: _same(x, out)),
    (Pat("sub", (const(0.0), X), "out"), lambda x, out: _same(gops.neg(x), out)),
    (Pat("mul", (X, const(1.0)), "out"), lambda x, out: _same(x, out)),
    (Pat("div", (X, const(1.0)), "out"), lambda x, out: _same(x, out)),
    (Pat("pow", (X, const(1.0)), "out"), lambda x, out: _same(x, out)),
    (Pat("mul", (X, const(-1.0)), "out"), lambda x, out: _same(gops.neg(x), out)),
    (Pat("neg", (Pat("neg", (X,)),)), lambda x: x),
    (Pat("add", (X, Pat("neg", (Y,)))), lambda x, y: gops.sub(x, y)),
    (Pat("sub", (X, Pat("neg", (Y,)))), lambda x, y: gops.add(x, y)),
    (Pat("reshape", (Pat("reshape", (X,)),), "out"), lambda x, out: gops.reshape(x, nd(out).shape)),
    (Pat(("reshape", "broadcast_to"), (X,), "out"),
     lambda x, out: x if nd(x).shape == nd(out).shape else None),
    (Pat("transpose", (Pat("transpose", (X,), "inner"),), "out"),
     lambda x, inner, out: gops.transpose(x, tuple(nd(inner).attr["axes"][i]
                                                   for i in nd(out).attr["axes"]))),
    (Pat("astype", (X,), "out"), lambda x, out: x if nd(x).dtype == nd(out).dtype else None),
    (Pat("astype", (Pat("astype", (X,), "mid"),), "out"),
     lambda x, mid, out: x if nd(x).dtype == nd(out).dtype and
     np.dtype(nd(mid).dtype).itemsize >= np.dtype(nd(x).dtype).itemsize else None),
    (Pat(("sum", "max"), (X,), "out"),   # reducing only size-1 axes moves no data
     lambda x, out: gops.reshape(x, nd(out).shape)
     if all(nd(x).shape[a] == 1 for a in nd(out).attr["axis"]) else None),
    (Pat("getitem", (X,), "out"),
     lambda x, out: x if nd(x).shape == nd(out).shape and
     _full_slices(ir.thaw_attrs(nd(out))["index"]) else None),
    (Pat("getitem", (Pat("concat", name="x"),), "out"), _getitem_of_concat),
    (Pat("sum", (X,), "out"), _batch_sum_first),
    (Pat(("sum", "max"), (X,), "out"), _keepdims_reduction),
    (Pat(("getitem", "pad_into"), (X,), "out"), _only_new_axes),
    (Pat(pred=lambda n: n.op in PRIMITIVES and PRIMITIVES[n.op].kind == "elementwise",
         name="out"), _per_row_elementwise),
]

# Once the graph is differentiated, stop_gradient has done its work: it is the identity.
DIFFERENTIATED_RULES = RULES + [(Pat("stop_gradient", (X,)), lambda x: x)]


def rewrite(G, rules=None, max_sweeps=50):
    """Apply the first matching rule at every live node, sweep after sweep, to a fixed point.

    A rule fn gets the bound nodes as tracers (so it builds replacements with graphgrad ops,
    checked by their shape rules) and returns a tracer of the same aval, or None to decline.
    """
    rules = RULES if rules is None else rules
    H = _prune(ir.copy_graph(G))
    tr = GraphTrace(H)
    for _ in range(max_sweeps):
        changed = False
        for nid in ir.order(H):
            if nid not in H or nid in H.graph["inputs"]:
                continue
            n = ir.node(H, nid)
            if n.op in ir.STRUCTURAL:
                continue
            for pat, fn in rules:
                b = {}
                if not pat.match(H, nid, b):
                    continue
                tr.src = n.src or None
                out = fn(**{k: tr.tracer(v) for k, v in b.items()})
                tr.src = None
                if out is None or out.nid == nid:
                    continue
                if ir.aval_of(ir.node(H, out.nid)) != ir.aval_of(n):
                    raise AssertionError(f"rule for {pat} turned {n} into {ir.node(H, out.nid)}")
                ir.replace_uses(H, nid, out.nid)
                changed = True
                break
        _prune(H)
        if not changed:
            return H
    return H


def simplify(G, max_rounds=10, rules=None):
    """rewrite -> fold_constants -> cse -> dce until the graph stops changing."""
    H = G
    for _ in range(max_rounds):
        before = ir.dump(H)
        H = dce(cse(fold_constants(rewrite(H, rules))))
        if ir.dump(H) == before:
            break
    return H
