"""Paths in the unrolled graph the tape recorded: how many distinct routes lead from a weight to
the loss, by length and by the time step at which the weight is used.

The sum-over-paths view of BPTT says dL/dW adds one product of local derivatives per path; the
counts show why the number of terms explodes with T while each long product shrinks or grows.
The graph is a networkx MultiDiGraph (an op that reads the same tensor twice, as in x * x, gives
two parallel edges, i.e. two chain-rule terms). Counts are exact Python integers, obtained by
dynamic programming over a topological order instead of enumerating paths.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from ..core import _toposort
from .stepgraph import leaves
from .trace import model_layout, _prepare, _run, readout


def unrolled_graph(model, xs, state0=None, loss="last", seed=0):
    """(G, {param name: node}, loss node). Node attrs: op, shape, step (time index or None)."""
    specs, kind, xs, state0 = _prepare(model, xs, state0)
    out, final, recs = _run(specs, kind, xs, state0, True)
    r = readout(out.shape[-1], seed)
    L = (out[xs.shape[0] - 1] * r).sum() if loss == "last" else \
        (out * r).sum() if loss == "all" else loss(model_layout(model, out), final)
    step_of = {}
    for rec in recs:   # tag each node with the time step that created it
        order = range(xs.shape[0] - 1, -1, -1) if rec["reverse"] else range(xs.shape[0])
        for t, s in zip(order, rec["states"][1:]):
            stack = list(leaves(s))
            while stack:
                v = stack.pop()
                if id(v) in step_of or v._op is None:
                    continue
                step_of[id(v)] = t
                stack.extend(v._parents)
    G = nx.MultiDiGraph()
    for v in _toposort(L, lambda t: t.requires_grad):
        G.add_node(id(v), op=v._op.name if v._op else "leaf", shape=v.shape,
                   step=step_of.get(id(v)))
        for i, p in enumerate(v._parents):
            if p.requires_grad:
                G.add_edge(id(p), id(v), key=i)
    weights = {rec["names"][k]: id(p) for rec in recs for k, p in rec["P"].items()}
    return G, weights, id(L)


@dataclass
class PathCount:
    weight: str
    total: int
    by_length: dict        # path length (edges) -> number of paths
    by_step: dict          # time step where the weight is used -> number of paths


def count_paths(G, source, target):
    """(total, {length: count}, {first node after source: {length: count}}) — exact integers."""
    topo = list(nx.topological_sort(G))
    n = len(topo) + 1
    to_target = {}
    for v in reversed(topo):
        if v == target:
            vec = np.zeros(n, dtype=object)
            vec[0] = 1
        else:
            vec = np.zeros(n, dtype=object)
            for _, w, _k in G.out_edges(v, keys=True):
                if w in to_target:
                    vec[1:] += to_target[w][:-1]
        to_target[v] = vec
    firsts = {}
    for _, w, _k in G.out_edges(source, keys=True):
        vec = np.zeros(n, dtype=object)
        vec[1:] = to_target[w][:-1]
        firsts[w] = firsts.get(w, 0) + vec
    total_vec = to_target[source]
    by_len = {i: int(c) for i, c in enumerate(total_vec) if c}
    return int(sum(total_vec)), by_len, firsts


def path_counts(model, xs, weight, state0=None, loss="last") -> PathCount:
    G, ws, L = unrolled_graph(model, xs, state0, loss)
    if weight not in ws:
        raise KeyError(f"path_counts: no parameter {weight!r}; the model has {sorted(ws)}")
    total, by_len, firsts = count_paths(G, ws[weight], L)
    by_step = {}
    for node, vec in firsts.items():
        t = G.nodes[node]["step"]
        by_step[t] = by_step.get(t, 0) + int(sum(vec))
    return PathCount(weight, total, by_len, dict(sorted(by_step.items(),
                                                        key=lambda kv: (kv[0] is None, kv[0]))))


def path_growth(model, xs, weight, Ts=(1, 2, 4, 8, 16, 32), state0=None, loss="last"):
    """{T: number of paths from `weight` to the loss} on the first T steps of xs."""
    xs = model_layout(model, np.asarray(xs))          # time-major, to cut the first T steps
    return {T: path_counts(model, model_layout(model, xs[:T]), weight, state0, loss).total
            for T in Ts if T <= len(xs)}
