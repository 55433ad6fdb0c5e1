"""Layout passes that let gate math run on (batch, hidden) windows of packed buffers.

sink_slices    getitem(f(a, b), cols) -> f(getitem(a, cols), getitem(b, cols)) for elementwise
               f whose every user is a column slice: the four gates of an LSTM then read windows
               of the packed projections directly, and the full-width sums disappear.
pads_to_concat add(pad_into(g0, w0), pad_into(g1, w1), ...) with disjoint column windows ->
               concat of the pieces (zeros in the gaps): the VJP of a gate split becomes one
               packed gradient that the producers write in place.
group_invariant_adds  (x W + b_ih) + (h U + b_hh) -> (x W + (b_ih + b_hh)) + h U, so the
               parameter terms join the hoisted part.
"""
from __future__ import annotations

from graphgrad import ops as gops
from graphgrad.core import PRIMITIVES, bind

from .. import ir
from ..trace import GraphTrace
from .simplify import dce


def _col_window(n):
    if n.op != "getitem" or len(n.shape) != 2:
        return None
    idx = ir.thaw_attrs(n)["index"]
    if len(idx) == 2 and idx[0] == slice(None) and isinstance(idx[1], slice) and \
            idx[1].step in (None, 1):
        return idx[1]
    return None


def sink_slices(G):
    H = ir.copy_graph(G)
    for _ in range(20):
        tr = GraphTrace(H)
        changed = False
        for nid in ir.order(H):
            if nid not in H:
                continue
            n = ir.node(H, nid)
            if n.op in ir.STRUCTURAL or PRIMITIVES[n.op].kind != "elementwise" or \
                    len(n.shape) != 2 or nid in H.graph["outputs"]:
                continue
            users = list(H.successors(nid))
            if not users or any(_col_window(ir.node(H, u)) is None for u in users):
                continue
            args = ir.args_of(H, nid)
            shapes = [ir.node(H, a).shape for a in args]
            if not all(s == n.shape or s == () or (len(s) == 1 and s[0] == n.shape[1]) or
                       (len(s) == 2 and s[0] == 1 and s[1] == n.shape[1]) for s in shapes):
                continue
            tr.src = n.src or None
            for u in users:
                w = _col_window(ir.node(H, u))
                lo, hi, _ = w.indices(n.shape[1])
                pieces = []
                for a, s in zip(args, shapes):
                    t = tr.tracer(a)
                    if s == () or (len(s) == 2 and s[1] == 1):
                        pieces.append(t)
                    elif len(s) == 1:
                        pieces.append(gops.getitem(t, (slice(lo, hi),)))
                    else:
                        pieces.append(gops.getitem(t, (slice(None), slice(lo, hi))))
                new = bind(n.op, *pieces, **ir.thaw_attrs(n))
                ir.replace_uses(H, u, new.nid)
            tr.src = None
            changed = True
        H = dce(H)
        if not changed:
            break
    return H


def _pad_leaves(H, nid, shape):
    """[(lo, hi, source)] if nid is a sum of column pad_intos into `shape`, else None."""
    n = ir.node(H, nid)
    if n.shape != shape:
        return None
    if n.op == "pad_into" and len(shape) == 2:
        idx = ir.thaw_attrs(n)["index"]
        if len(idx) == 2 and idx[0] == slice(None) and isinstance(idx[1], slice):
            lo, hi, step = idx[1].indices(shape[1])
            if step == 1:
                return [(lo, hi, ir.args_of(H, nid)[0])]
        return None
    if n.op == "add":
        a, b = ir.args_of(H, nid)
        la, lb = _pad_leaves(H, a, shape), _pad_leaves(H, b, shape)
        if la is not None and lb is not None:
            return la + lb
    return None


def pads_to_concat(G):
    H = ir.copy_graph(G)
    tr = GraphTrace(H)
    for nid in reversed(ir.order(H)):
        if nid not in H or ir.node(H, nid).op != "add":
            continue
        n = ir.node(H, nid)
        leaves = _pad_leaves(H, nid, n.shape)
        if not leaves or len(leaves) < 2:
            continue
        leaves.sort()
        if any(leaves[i][1] > leaves[i + 1][0] for i in range(len(leaves) - 1)):
            continue      # overlapping windows: leave the sum alone
        tr.src = n.src or None
        parts, col = [], 0
        for lo, hi, src in leaves + [(n.shape[1], n.shape[1], None)]:
            if lo > col:
                zero = tr.tracer(ir.add_node(H, ir.const_node(0.0, n.dtype)))
                parts.append(gops.broadcast_to(zero, (n.shape[0], lo - col)))
            if src is not None:
                parts.append(tr.tracer(src))
            col = hi
        ir.replace_uses(H, nid, gops.concat(parts, axis=1).nid)
        tr.src = None
    return dce(H)


def _add_leaves(H, nid, root):
    """Leaves of the tree of single-use adds under `nid` (the root may have many users)."""
    n = ir.node(H, nid)
    single = nid == root or (len(list(H.successors(nid))) == 1 and
                             nid not in H.graph["outputs"])
    if n.op != "add" or not single:
        return [nid]
    a, b = ir.args_of(H, nid)
    return _add_leaves(H, a, root) + _add_leaves(H, b, root)


def group_invariant_adds(G):
    """Re-associate sums so parameter-only terms meet the per-step inputs first:
    (x W + b_ih) + (h U + b_hh) -> (x W + (b_ih + b_hh)) + h U. The first part then runs once
    over all steps before the loop (and b_ih + b_hh once per call); the loop adds one term less.
    Float sums are re-ordered, so results change by rounding only."""
    from ..stages import deps
    H = ir.copy_graph(G)
    dep = deps(H)
    tr = GraphTrace(H)
    for nid in reversed(ir.order(H)):
        if nid not in H:
            continue
        n = ir.node(H, nid)
        if n.op != "add" or len(n.shape) != 2:
            continue
        leaves = _add_leaves(H, nid, nid)
        if len(leaves) < 3:
            continue
        inv = [a for a in leaves if not dep[a]]
        time = [a for a in leaves if dep[a] and dep[a] <= {"x"}]
        rest = [a for a in leaves if a not in inv and a not in time]
        if not inv or not rest or (len(inv) == 1 and not time):
            continue     # nothing to gain: no invariant term is stuck next to carried work
        tr.src = n.src or None
        t = [tr.tracer(a) for a in leaves]
        by = dict(zip(leaves, t))
        acc = by[inv[0]]
        for a in inv[1:]:
            acc = gops.add(acc, by[a])
        for a in time:
            acc = gops.add(by[a], acc)
        for a in rest:
            acc = gops.add(acc, by[a])
        if tuple(acc.shape) != tuple(n.shape):
            continue
        ir.replace_uses(H, nid, acc.nid)
        tr.src = None
    return dce(H)
