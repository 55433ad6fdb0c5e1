"""Recompute cheap forward values in the reverse step instead of saving them per step.

A forward value the backward reads is saved for every step: written by the forward loop, read
back by the reverse loop, usually from L3 or memory once T steps of them no longer fit in L2.
When it is one cheap elementwise op away from values the backward reads anyway (layer norm's
output is its centred input times a (rows, 1) scale; the GRU's 1 - z is one subtraction from the
saved z), the reverse step recomputes it: one multiply per element instead of a stored and
reloaded (rows, features) buffer per step.

Run last on the joint graph, after simplify: CSE would merge each clone back into its original.
"""
from __future__ import annotations

import networkx as nx

from .. import ir

CHEAP = {"add", "sub", "mul", "div", "neg", "broadcast_to"}


def recompute_cheap(J, n_fwd_outputs):
    """A copy of J whose backward reads clones of the cheap forward values it can recompute."""
    J = ir.copy_graph(J)
    outs = J.graph["outputs"]
    kept = set(outs[:n_fwd_outputs])            # stored anyway (the new states, the output)
    fwd = kept.union(*(nx.ancestors(J, o) for o in kept))
    clones = {}

    def small(v):       # (rows, 1), (features,), scalars: saving them costs next to nothing
        shape = ir.node(J, v).shape
        return len(shape) < 2 or shape[-1] == 1

    def backward_users(v):
        return [u for u in J.successors(v) if u not in fwd]

    def at_hand(a):     # the backward reads it without saving anything more
        return (a in clones or a in kept or ir.node(J, a).op in ("input", "const") or small(a)
                or bool(backward_users(a)))

    for v in ir.order(J):
        n = ir.node(J, v)
        if v not in fwd or v in kept or n.op not in CHEAP or small(v):
            continue
        users, args = backward_users(v), ir.args_of(J, v)
        if not users or not all(at_hand(a) for a in args):
            continue
        c = ir.add_node(J, n, [clones.get(a, a) for a in args])
        for u in users:
            pos = J.edges[v, u]["pos"]
            J.remove_edge(v, u)
            J.add_edge(c, u, pos=pos)
        clones[v] = c
    return J
