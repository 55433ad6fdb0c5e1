"""The graph IR: a networkx.DiGraph whose nodes are `Node` records and whose edges carry operand
positions. It is plain data: passes are functions Graph -> Graph, and `compiler.interp` runs any
graph on numpy, which is how every pass is tested.

Node ops are either primitive names from `graphgrad.PRIMITIVES` or one of the structural ops in
`STRUCTURAL` (graph inputs, constants). A graph's `G.graph` dict holds:
  inputs:  list of node ids of the graph's inputs, in call order
  outputs: list of node ids whose values the graph returns, in order
  roles:   {input node id: "param" | "x" | "state" | "ct" | ...}  (used by the loop passes)
  names:   {input node id: name}  (parameter names, "x", "state[0]", "ct:y", ...)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

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
        a = ", ".join(f"{k}={v!r}" for k, v in self.attrs if k != "value" or not isinstance(v, tuple))
        return f"{self.op}{'[' + a + ']' if a else ''} : {self.dtype}{list(self.shape)}"


class FrozenSlice(NamedTuple):
    """A hashable stand-in for `slice` (slices are unhashable before Python 3.12)."""
    start: int | None
    stop: int | None
    step: int | None

    def __repr__(self):
        s = f"{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}"
        return s if self.step is None else f"{s}:{self.step}"


def _freeze(v):
    if isinstance(v, np.dtype):
        return v.name
    if isinstance(v, slice):
        return FrozenSlice(v.start, v.stop, v.step)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (list, tuple)) and not isinstance(v, FrozenSlice):
        return tuple(_freeze(x) for x in v)
    hash(v)  # TypeError for anything a CSE key could not hold
    return v


def _thaw(v):
    if isinstance(v, FrozenSlice):
        return slice(*v)
    if isinstance(v, tuple):
        return tuple(_thaw(x) for x in v)
    return v


def freeze_attrs(attrs: dict) -> tuple:
    return tuple((k, _freeze(v)) for k, v in sorted(attrs.items()))


def thaw_attrs(node: Node) -> dict:
    """The keyword arguments the primitive's fwd/rule/vjp expect."""
    out = {k: _thaw(v) for k, v in node.attrs if k != "value"}
    if "dtype" in out and node.op in ("astype", "one_hot"):
        out["dtype"] = np.dtype(out["dtype"])
    return out


def const_node(value, dtype=None, src="") -> Node:
    """A "const" node; the value is kept as a hashable (nested) tuple or Python scalar."""
    arr = np.asarray(value, dtype=dtype)
    return Node("const", arr.shape, arr.dtype.name, (("value", arr.tolist() if arr.ndim == 0
                                                      else _freeze(arr.tolist())),), src)


def const_value(node: Node) -> np.ndarray:
    return np.array(node.attr["value"], dtype=node.dtype).reshape(node.shape)


def input_node(shape, dtype) -> Node:
    return Node("input", tuple(shape), np.dtype(dtype).name)


def aval_of(n: Node):
    from graphgrad.core import AVal
    return AVal(tuple(n.shape), np.dtype(n.dtype))


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


def copy_graph(G) -> nx.DiGraph:
    """A copy whose bookkeeping lists/dicts are not shared with G (Node records are immutable)."""
    H = G.copy()
    H.graph = {k: (v.copy() if isinstance(v, (list, dict, set)) else v) for k, v in G.graph.items()}
    return H


def replace_uses(G, old: int, new: int):
    """Make every user of `old` (and the graph outputs) read `new` instead."""
    if old == new:
        return
    for s in list(G.successors(old)):
        pos = G.edges[old, s]["pos"]
        G.remove_edge(old, s)
        if G.has_edge(new, s):
            G.edges[new, s]["pos"] = tuple(sorted(G.edges[new, s]["pos"] + pos))
        else:
            G.add_edge(new, s, pos=pos)
    G.graph["outputs"] = [new if o == old else o for o in G.graph["outputs"]]


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
