"""Each weight's gradient split by temporal distance: the textbook BPTT sum over lags.

For a loss term at step t and a use of the weight at step q, the chain rule gives a product of
t - q state-to-state Jacobians; the lag-k part of dL/dW collects every such path that crosses
exactly k recurrent transitions (across all layers of a stack). It is computed exactly, all time
steps at once: b^(0)_n is the cotangent that enters step n from outside (dL/dy_n, and dL/ds_T at
the last step), b^(k+1)_{n-1} is the state cotangent that step n's VJP sends back from b^(k)_n,
and the lag-k part of dL/dW is the VJP of all steps applied to b^(k). By linearity the parts sum
to the whole gradient (trace.propagate does the recursion; this module reports it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LagTable:
    lags: np.ndarray        # 0 .. K-1
    parts: dict             # weight name -> (K, *shape): the lag-k part of dL/dW
    total: dict             # weight name -> sum of the parts

    def norms(self, w):
        return np.sqrt((self.parts[w].reshape(len(self.lags), -1) ** 2).sum(1))

    def shares(self, w):
        """||part_k|| / sum_j ||part_j||: non-negative, sums to 1."""
        n = self.norms(w)
        return n / max(n.sum(), 1e-300)

    def projection_shares(self, w):
        """<part_k, G> / ||G||^2: the signed fraction of the gradient; sums to exactly 1."""
        g = self.total[w].ravel()
        return self.parts[w].reshape(len(self.lags), -1) @ g / max(g @ g, 1e-300)

    def bucket(self, w, edges=(0, 1, 2, 5, 10, 25, 50)):
        """Norm shares summed over lag ranges [edges[i], edges[i+1]), the last one open."""
        s, out = self.shares(w), []
        for i, lo in enumerate(edges):
            hi = edges[i + 1] if i + 1 < len(edges) else len(s)
            out.append(float(s[lo:hi].sum()))
        return out

    def mean_lag(self, w):
        return float(self.lags @ self.shares(w))


def lag_table(flow, weights=None) -> LagTable:
    K = 1 + max(max(L.param_lags, default=0) for L in flow.layers)
    parts = {}
    for L in flow.layers:
        for k, d in L.param_lags.items():
            for name, v in d.items():
                if name not in parts:
                    parts[name] = np.zeros((K,) + v.shape)
                parts[name][k] += v
    if weights is not None:
        parts = {w: parts[w] for w in weights}
    return LagTable(np.arange(K), parts, {w: p.sum(0) for w, p in parts.items()})


def bucket_labels(edges=(0, 1, 2, 5, 10, 25, 50)):
    out = []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] - 1 if i + 1 < len(edges) else None
        out.append(f"{lo}" if hi == lo else (f"{lo}-{hi}" if hi is not None else f"{lo}+"))
    return out
