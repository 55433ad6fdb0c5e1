"""Per-step gradient norms ||dL/dh_t|| (and ||dL/dc_t|| for an LSTM), every layer, time order.

The adjoint reported is the gradient the tape leaves on the state tensor produced at step t
(what `retain_grad()` on h_t would show): everything downstream of h_t, its own output included.
"""
from __future__ import annotations

import numpy as np


def grad_norms(flow):
    """{layer name: {leaf name: (T, B) array}}, row t = the state produced at time step t."""
    out = {}
    for L in flow.layers:
        adj = np.empty_like(L.adj_total)
        adj[L.order] = L.adj_total           # processing order -> time order
        res, start = {}, 0
        for name, n in zip(L.leaf_names(), L.leaf_sizes):
            res[name] = np.sqrt((adj[..., start:start + n] ** 2).sum(-1))
            start += n
        out[L.name] = res
    return out
