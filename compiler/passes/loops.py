"""Loop structure of step graphs: what must stay in the time loop and what can leave it.

Each node gets a class by what it depends on (the join over its operands):
  invariant  only parameters and constants: computed once
  time       also per-step inputs (x_t; in the backward step also the saved forward state and
             the output cotangent d_y_t), but not the carried value: computable for all T steps
             at once, as one product over T*B rows
  carried    depends on the value carried from the previous step (forward: the state; backward:
             the state cotangent): must run in the loop
`hoist_plan` turns the classes into stages matching compiler.schedule's pre / loop / post, and
`merge_matmuls` packs products that share an operand (x @ W_i, x @ W_f, ... -> x @ [W_i W_f ..]).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from graphgrad import ops as gops
from graphgrad.core import PRIMITIVES

from .. import ir
from ..trace import GraphTrace
from .simplify import dce

INV, TIME, CARRIED = "invariant", "time", "carried"
_RANK = {INV: 0, TIME: 1, CARRIED: 2}
FORWARD = {"param": INV, "x": TIME, "state": CARRIED}
BACKWARD = {"param": INV, "x": TIME, "state": TIME, "ct:y": TIME, "ct:new_state": CARRIED}


def _input_class(G, nid, table):
    role, name = G.graph["roles"].get(nid), G.graph["names"].get(nid, "")
    if role == "ct":
        return table["ct:y" if name == "ct:y" else "ct:new_state"]
    return table[role]


def classify(G, table=None) -> dict:
    """nid -> invariant | time | carried. table maps input roles to classes; the default is
    BACKWARD for graphs with cotangent inputs and FORWARD otherwise."""
    if table is None:
        table = BACKWARD if "ct" in G.graph["roles"].values() else FORWARD
    cls = {}
    for nid in ir.order(G):
        n = ir.node(G, nid)
        if n.op == "input":
            cls[nid] = _input_class(G, nid, table)
        elif n.op == "const":
            cls[nid] = INV
        else:
            cls[nid] = max((cls[a] for a in ir.args_of(G, nid)), key=_RANK.get, default=INV)
    return cls


# ---------------------------------------------------------------- merging products
def merge_matmuls(G):
    """a @ W1, a @ W2, ... with invariant 2-d W's of equal rows -> slices of a @ concat(W's)."""
    H = dce(G)
    cls = classify(H)
    tr = GraphTrace(H)
    groups = {}
    for nid in ir.order(H):
        n = ir.node(H, nid)
        if n.op != "matmul":
            continue
        a, w = ir.args_of(H, nid)
        wn = ir.node(H, w)
        if cls[w] == INV and len(wn.shape) == 2 and len(ir.node(H, a).shape) == 2 and a != w:
            groups.setdefault(a, []).append(nid)
    for a, mms in groups.items():
        if len(mms) < 2:
            continue
        ws = [ir.args_of(H, m)[1] for m in mms]
        tr.src = ir.node(H, mms[0]).src or None
        packed = gops.matmul(tr.tracer(a), gops.concat([tr.tracer(w) for w in ws], axis=1))
        lo = 0
        for m in mms:
            width = ir.node(H, m).shape[1]
            piece = gops.getitem(packed, (slice(None), slice(lo, lo + width)))
            ir.replace_uses(H, m, piece.nid)
            lo += width
    return dce(H)


# ---------------------------------------------------------------- hoisting
@dataclass
class LoopPlan:
    classes: dict
    once: list = field(default_factory=list)    # invariant nodes: before everything
    pre: list = field(default_factory=list)     # time nodes run for all T at once (T*B rows)
    loop: list = field(default_factory=list)    # per step
    post: list = field(default_factory=list)    # after the loop: one product over T*B rows
    saved: list = field(default_factory=list)   # loop values the post stage reads (T slots each)


def _row_mappable(G, nid, cls, batch):
    """Can this time node run on the T steps stacked as T*B rows, with unchanged attributes?"""
    n = ir.node(G, nid)
    if not n.shape or n.shape[0] != batch or len(n.shape) != 2:
        return False
    if n.op == "matmul":
        a, w = ir.args_of(G, nid)
        return cls[w] == INV and ir.node(G, a).shape[0] == batch
    if PRIMITIVES[n.op].kind == "elementwise":
        return all(cls[a] == INV and len(ir.node(G, a).shape) < 2 or
                   ir.node(G, a).shape == n.shape for a in ir.args_of(G, nid))
    return n.op == "getitem" and ir.thaw_attrs(n)["index"][0] == slice(None)


def hoist_plan(G, batch) -> LoopPlan:
    """Stages for one step graph (forward or backward) with `batch` rows per step."""
    cls = classify(G)
    plan = LoopPlan(cls)
    outs = set(G.graph["outputs"])
    # pre: every time-class node whose whole time-class cone is row-mappable, e.g. x @ W_ih^T + b.
    for nid in ir.order(G):
        n = ir.node(G, nid)
        if n.op in ir.STRUCTURAL:
            continue
        if cls[nid] == INV:
            plan.once.append(nid)
        elif cls[nid] == TIME and _row_mappable(G, nid, cls, batch) and all(
                cls[a] == INV or a in plan.pre or ir.node(G, a).op == "input"
                for a in ir.args_of(G, nid)):
            plan.pre.append(nid)
    # Keep the products, what feeds them, and bias adds on them; other time-class elementwise
    # work stays in the loop, where it fuses with the carried gate math instead of costing memory.
    cand = set(plan.pre)
    mms = {p for p in cand if ir.node(G, p).op == "matmul"}
    keep = mms | {a for m in mms for a in nx.ancestors(G, m) if a in cand}
    keep |= {p for p in cand if ir.node(G, p).op == "add" and any(a in mms for a in ir.args_of(G, p))
             and all(a in mms or cls[a] == INV for a in ir.args_of(G, p))}
    plan.pre = [p for p in plan.pre if p in keep]
    if "ct" in G.graph["roles"].values():
        _plan_param_grads(G, cls, plan, batch)
    taken = set(plan.once) | set(plan.pre) | set(plan.post)
    plan.loop = [n for n in ir.order(G) if n not in taken and ir.node(G, n).op not in ir.STRUCTURAL]
    plan.saved = sorted({a for p in plan.post for a in ir.args_of(G, p)
                         if a not in plan.post and cls[a] == CARRIED})
    assert not (set(plan.post) & outs - set(_param_outputs(G)))
    return plan


def _param_outputs(G):
    wrt = G.graph.get("wrt", [])
    return [o for o, w in zip(G.graph["outputs"], wrt) if G.graph["roles"].get(w) == "param"]


def _plan_param_grads(G, cls, plan, batch):
    """Parameter gradients are sums over t of per-step contractions over the batch axis
    (A_t^T @ G_t, column sums of G_t); everything after the contraction is linear and
    parameter-sized, so sum_t f(C_t) = f(sum_t C_t): contract once over T*B rows after the loop."""
    others = set()
    for o, w in zip(G.graph["outputs"], G.graph.get("wrt", [])):
        if G.graph["roles"].get(w) != "param":
            others |= nx.ancestors(G, o) | {o}
    linear = {"transpose", "reshape", "add", "pad_into", "getitem", "concat", "broadcast_to"}
    for o in _param_outputs(G):
        if cls[o] == INV:
            continue
        cone = (nx.ancestors(G, o) | {o}) - others
        for nid in cone:
            n = ir.node(G, nid)
            if cls[nid] == INV or n.op in ir.STRUCTURAL or nid in plan.post:
                continue
            arg_rows = [ir.node(G, a).shape[:1] for a in ir.args_of(G, nid)]
            contracts = (n.op == "matmul" and len(n.shape) == 2 and
                         ir.node(G, ir.args_of(G, nid)[0]).shape[-1] == batch) or \
                        (n.op == "sum" and n.attr["axis"] == (0,) and arg_rows == [(batch,)])
            after = all(d in cone for d in nx.descendants(G, nid))
            if contracts and after:
                path = {d for d in nx.descendants(G, nid) if d in cone}
                if all(ir.node(G, d).op in linear for d in path):
                    plan.post += [nid] + sorted(path - set(plan.post))
    plan.post = [n for n in ir.order(G) if n in set(plan.post)]
