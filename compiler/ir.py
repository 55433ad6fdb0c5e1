"""The graph IR: a networkx.DiGraph whose nodes are `Node` records and whose edges carry operand
positions. It is plain data: passes are functions Graph -> Graph, and `compiler.interp` runs any
graph on numpy, which is how every pass is tested.

Node ops are either primitive names from `graphgrad.PRIMITIVES` or one of the structural ops in
`STRUCTURAL` (graph inputs, constants). A graph's `G.graph` dict holds:
  inputs:  list of node ids of the graph's inputs, in call order
  outputs: list of node ids whose values the graph returns, in order
  roles:   {input node id: "param" | "x" | "state" | "ct" | ...}  (used by the loop passes)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

STRUCTURAL = {"input", "const"}


@dataclass(frozen=True)
class Node:
    op: str
    shape: tuple
    dtype: str                       # numpy dtype name, e.g. "float32"
    attrs: tuple = ()                # sorted ((key, value), ...) with hashable values
    src: str = field(default="", compare=False)   # "file:line (function)" of the user's code

    @property
    def attr(self) -> dict:
        return dict(self.attrs)

    def __str__(self):
        a = ", ".join(f"{k}={v!r}" for k, v in self.attrs if k != "value")
        return f"{self.op}{'[' + a + ']' if a else ''} : {self.dtype}{list(self.shape)}"


def freeze_attrs(attrs: dict) -> tuple:
    out = []
    for k, v in sorted(attrs.items()):
        if isinstance(v, np.dtype):
            v = v.name
        elif isinstance(v, list):
            v = tuple(v)
        out.append((k, v))
    return tuple(out)


def thaw_attrs(node: Node) -> dict:
    out = dict(node.attrs)
    if "dtype" in out and node.op in ("astype", "one_hot"):
        out["dtype"] = np.dtype(out["dtype"])
    return out


def new_graph() -> nx.DiGraph:
    G = nx.DiGraph()
    G.graph.update(inputs=[], outputs=[], roles={}, names={}, next_id=0)
    return G


def add_node(G, node: Node, args=()) -> int:
    nid = G.graph["next_id"]
    G.graph["next_id"] = nid + 1
    G.add_node(nid, node=node)
    for pos, a in enumerate(args):
        if G.has_edge(a, nid):   # x * x: one edge, several positions
            G.edges[a, nid]["pos"] = G.edges[a, nid]["pos"] + (pos,)
        else:
            G.add_edge(a, nid, pos=(pos,))
    return nid


def args_of(G, nid) -> list:
    """Operand node ids of `nid` in position order."""
    pairs = [(p, u) for u in G.predecessors(nid) for p in G.edges[u, nid]["pos"]]
    return [u for _, u in sorted(pairs)]


def node(G, nid) -> Node:
    return G.nodes[nid]["node"]


def order(G) -> list:
    """Deterministic topological order (ties broken by node id)."""
    return list(nx.lexicographical_topological_sort(G, key=lambda n: n))


def dump(G) -> str:
    lines = []
    names = G.graph.get("names", {})
    for nid in order(G):
        n = node(G, nid)
        args = ", ".join(f"%{a}" for a in args_of(G, nid))
        role = G.graph["roles"].get(nid)
        tag = f"  # {role} {names.get(nid, '')}".rstrip() if role else ""
        lines.append(f"%{nid} = {n}({args}){tag}")
    lines.append("return " + ", ".join(f"%{o}" for o in G.graph["outputs"]))
    return "\n".join(lines)
