"""The reference interpreter: runs any graph on numpy with each primitive's own forward.

Every pass and the native backend are tested against it, so it stays small and obvious.
"""
from __future__ import annotations

import numpy as np

from graphgrad.core import PRIMITIVES

from . import ir


def check_inputs(G, inputs):
    ins = G.graph["inputs"]
    if len(inputs) != len(ins):
        raise TypeError(f"graph takes {len(ins)} inputs, got {len(inputs)}")
    names = G.graph.get("names", {})
    for nid, v in zip(ins, inputs):
        n, v = ir.node(G, nid), np.asarray(v)
        if tuple(v.shape) != tuple(n.shape):
            raise ValueError(f"input {names.get(nid, nid)}: shape {list(v.shape)}, the graph "
                             f"expects {list(n.shape)}")
        if v.dtype.name != n.dtype:
            raise TypeError(f"input {names.get(nid, nid)}: dtype {v.dtype}, the graph expects "
                            f"{n.dtype}")


def run(G, *inputs) -> list:
    """Values of G's outputs for the given input arrays (in G.graph['inputs'] order)."""
    check_inputs(G, inputs)
    env = dict(zip(G.graph["inputs"], (np.asarray(v) for v in inputs)))
    with np.errstate(all="ignore"):
        for nid in ir.order(G):
            n = ir.node(G, nid)
            if n.op == "input":
                continue
            if n.op == "const":
                env[nid] = ir.const_value(n)
                continue
            args = [env[a] for a in ir.args_of(G, nid)]
            env[nid] = out = np.asarray(PRIMITIVES[n.op].fwd(*args, **ir.thaw_attrs(n)))
            if out.shape != n.shape or out.dtype.name != n.dtype:
                raise AssertionError(f"%{nid} {n}: computed {out.dtype}{list(out.shape)}")
    return [env[o] for o in G.graph["outputs"]]
