"""Reverse mode on the IR, derived by tracing graphgrad's own VJP rules.

`vjp_graph` walks the forward graph backwards and calls `graphgrad.core.apply_vjp` (the very
function the eager tape uses, unbroadcasting included) on tracers, so the backward nodes are
recorded into the same graph. The forward nodes stay in the result: the backward part reads the
forward intermediates it needs, and a later pass decides whether to save or recompute them.
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from graphgrad import ops as gops
from graphgrad.core import FLOAT_DTYPES, PRIMITIVES, apply_vjp

from . import ir
from .trace import GraphTrace


def differentiable_inputs(G) -> list:
    return [i for i in G.graph["inputs"] if np.dtype(ir.node(G, i).dtype) in FLOAT_DTYPES]


def vjp_graph(G, wrt=None):
    """Forward graph -> graph with inputs (G's inputs..., one "ct" per output) and outputs the
    cotangents of the `wrt` inputs (node ids of G's inputs; default: every float input).

    Input and forward node ids are preserved, so ids in G name the same values in the result.
    """
    wrt = differentiable_inputs(G) if wrt is None else list(wrt)
    for w in wrt:
        if w not in G.graph["inputs"]:
            raise ValueError(f"vjp_graph: wrt node %{w} is not an input of the graph")
    H = ir.copy_graph(G)
    tr = GraphTrace(H)
    outs = list(G.graph["outputs"])
    out_names = G.graph.get("out_names") or [f"out[{k}]" for k in range(len(outs))]
    cts = {}

    def accumulate(nid, ct):
        cts[nid] = ct if nid not in cts else gops.add(cts[nid], ct)

    for o, name in zip(outs, out_names):
        accumulate(o, tr.new_input(ir.aval_of(ir.node(G, o)), "ct", f"ct:{name}"))
    # Only values that depend on a wrt input need a cotangent.
    live = set(wrt).union(*(nx.descendants(G, w) for w in wrt))
    for nid in reversed(ir.order(G)):
        n = ir.node(G, nid)
        g = cts.get(nid)
        if g is None or n.op in ir.STRUCTURAL:
            continue
        op = PRIMITIVES[n.op]
        arg_ids = ir.args_of(G, nid)
        args = tuple(tr.tracer(a) for a in arg_ids)
        tr.src = n.src or None
        for i, a in enumerate(arg_ids):
            if a not in live:
                continue
            ct = apply_vjp(op, i, g, tr.tracer(nid), args, ir.thaw_attrs(n))
            if ct is not None:
                accumulate(a, ct)
        tr.src = None
    results = []
    for w in wrt:
        ct = cts.get(w)
        if ct is None:   # the outputs do not depend on this input
            n = ir.node(G, w)
            zero = tr.tracer(ir.add_node(H, ir.const_node(0.0, n.dtype)))
            ct = gops.broadcast_to(zero, n.shape) if n.shape else zero
        results.append(ct.nid)
    H.graph["outputs"] = results
    names = G.graph.get("names", {})
    H.graph["out_names"] = [f"d:{names.get(w, w)}" for w in wrt]
    H.graph["wrt"] = list(wrt)
    # forward node -> node holding its accumulated cotangent (dL/dv in total), for callers that
    # want per-step adjoints of intermediate values (gradient-flow inspection)
    H.graph["ct_of"] = {nid: ct.nid for nid, ct in cts.items()}
    return H
