"""IR checker: re-derives every node's shape and dtype from its primitive's rule.

Passes may only produce graphs this accepts; tests call it after every pass.
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from graphgrad.core import PRIMITIVES

from . import ir
from .errors import IRError


def verify(G) -> None:
    """Raise IRError describing the first broken invariant of G."""
    if not nx.is_directed_acyclic_graph(G):
        raise IRError(f"graph has a cycle: {nx.find_cycle(G)}")
    ins, outs = G.graph.get("inputs"), G.graph.get("outputs")
    if ins is None or outs is None:
        raise IRError("graph lacks G.graph['inputs'] / ['outputs']")
    if len(set(ins)) != len(ins):
        raise IRError(f"duplicate graph inputs {ins}")
    for nid in outs:
        if nid not in G:
            raise IRError(f"output %{nid} is not a node")
    for nid in G.graph.get("roles", {}):
        if nid not in ins:
            raise IRError(f"%{nid} has a role but is not a graph input")
    for nid in G.nodes:
        if not isinstance(G.nodes[nid].get("node"), ir.Node):
            raise IRError(f"%{nid} carries no Node record")
        if nid >= G.graph.get("next_id", 0):
            raise IRError(f"%{nid} is not below next_id {G.graph.get('next_id')}")
    for nid in ir.order(G):
        _check_node(G, nid, ins)


def _check_node(G, nid, ins):
    n = ir.node(G, nid)
    where = f"%{nid} = {n}"
    positions = sorted(p for u in G.predecessors(nid) for p in G.edges[u, nid]["pos"])
    if positions != list(range(len(positions))):
        raise IRError(f"{where}: operand positions {positions} are not 0..n-1")
    if n.op == "input":
        if nid not in ins or positions:
            raise IRError(f"{where}: inputs must be listed in G.graph['inputs'] and take no operands")
        return
    if nid in ins:
        raise IRError(f"{where}: listed as a graph input but is a {n.op}")
    if n.op == "const":
        v = np.asarray(n.attr.get("value"), dtype=n.dtype)
        if positions or v.size != int(np.prod(n.shape, dtype=np.int64)):
            raise IRError(f"{where}: const value does not fill {list(n.shape)} or has operands")
        return
    op = PRIMITIVES.get(n.op)
    if op is None:
        raise IRError(f"{where}: unknown op {n.op!r}")
    try:
        want = op.rule(*(ir.aval_of(ir.node(G, a)) for a in ir.args_of(G, nid)),
                       **ir.thaw_attrs(n))
    except (ValueError, TypeError, IndexError) as e:
        raise IRError(f"{where}: its rule rejects the operands: {e}") from None
    if tuple(want.shape) != tuple(n.shape) or np.dtype(want.dtype).name != n.dtype:
        raise IRError(f"{where}: the rule gives {want}")
