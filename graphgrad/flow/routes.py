"""Exact split of a state adjoint by the route its paths take through time (built-in gated cells).

LSTM: every path from c_k to the loss either crosses time only along the cell state (c_j ->
c_{j+1}, multiplied by the forget gate f_{j+1}, gates held at their values) and leaves through
h_j at some j >= k, or it crosses at least one step through the hidden state (h_j -> gates of
step j+1, i.e. through W_hh). With e_j the part of dL/dc_j that leaves at step j itself and
v_j the part arriving at c_j through h_j from later steps:
    cell_k   = e_k + f_{k+1} * cell_{k+1}        hidden_k = v_k + f_{k+1} * hidden_{k+1}
and cell_k + hidden_k = dL/dc_k. Equivalently cell_k is dL/dc_k with the recurrent h cut by
stop_gradient, which is how the tests check it.
GRU (h' = (1 - z) * n + z * h in PyTorch's convention, so z is the carry gate; the lecture notes
write the same carry as (1 - z)): the carry route multiplies by z_{k+1} only; the candidate route
is every path that crosses a step at least once through n, r or z's dependence on h.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import cells


@dataclass
class RouteSplit:
    name: str
    cell: str               # "lstm" | "gru"
    total: np.ndarray       # (T, B, H) time order: dL/dc_t (LSTM) or dL/dh_t (GRU)
    parts: dict             # route name -> (T, B, H), summing to total

    def norms(self):
        out = {"total": np.linalg.norm(self.total, axis=-1)}
        out.update({k: np.linalg.norm(v, axis=-1) for k, v in self.parts.items()})
        return out


def _sig(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))     # overflow-free logistic


def _pre(L, n_rows):
    """Gate pre-activations of every step, (T, B, G*H), processing order."""
    p = L.params
    x = L.xs[L.order]
    h = L.flat_states()[:-1, :, :n_rows]
    out = x @ p["weight_ih"].T + h @ p["weight_hh"].T
    return out + p.get("bias_ih", 0.0) + p.get("bias_hh", 0.0)


def _external(L):
    gy = sum(L.d_ys.values()) if L.d_ys else np.zeros(L.xs.shape[:2] + (L.leaf_sizes[0],))
    return gy[L.order]                               # processing order


def _to_time(L, a):
    out = np.empty_like(a)
    out[L.order] = a
    return out


def _lstm(L):
    H = L.leaf_sizes[0]
    T = L.T
    i, f, g, o = np.split(_pre(L, H), 4, axis=-1)
    f, o = _sig(f), _sig(o)
    c = L.flat_states()[1:, :, H:]
    dhdc = o * (1.0 - np.tanh(c) ** 2)
    gy = _external(L)
    slot_h = L.adj[1:, :, :H].copy()
    ext_h, ext_c = np.zeros_like(slot_h), np.zeros_like(slot_h)
    ext_h[-1], ext_c[-1] = L.d_final[:, :H], L.d_final[:, H:]
    e = dhdc * (gy + ext_h) + ext_c
    v = dhdc * (slot_h - ext_h)                      # final-state cotangent is external, not W_hh
    cell, hid = np.zeros_like(e), np.zeros_like(e)
    for n in range(T - 1, -1, -1):
        fn = f[n + 1] if n + 1 < T else 0.0
        cell[n] = e[n] + fn * (cell[n + 1] if n + 1 < T else 0.0)
        hid[n] = v[n] + fn * (hid[n + 1] if n + 1 < T else 0.0)
    total = L.adj_total[:, :, H:]
    return RouteSplit(L.name, "lstm", _to_time(L, total),
                      {"cell": _to_time(L, cell), "hidden": _to_time(L, hid)})


def _gru(L):
    H = L.leaf_sizes[0]
    T = L.T
    z = _sig(np.split(_pre(L, H), 3, axis=-1)[1])
    total = L.adj_total
    ext = np.zeros_like(total)
    ext[-1] = L.d_final
    e = _external(L) + ext
    carry, cand = np.zeros_like(e), np.zeros_like(e)
    for n in range(T - 1, -1, -1):
        if n + 1 < T:
            zn = z[n + 1]
            carry[n] = e[n] + zn * carry[n + 1]
            # what step n+1 sent back, minus the plain carry of everything that reached h_{n+1}
            cand[n] = (L.adj[n + 1] - zn * total[n + 1]) + zn * cand[n + 1]
        else:
            carry[n] = e[n]
    return RouteSplit(L.name, "gru", _to_time(L, total),
                      {"carry": _to_time(L, carry), "candidate": _to_time(L, cand)})


def route_split(flow):
    """{layer name: RouteSplit} for the LSTM/GRU layers of a flow (other cells are skipped)."""
    out = {}
    for L in flow.layers:
        if L.step is cells.lstm_step:
            out[L.name] = _lstm(L)
        elif L.step in (cells.gru_step, cells.gru_reset_before_step):
            out[L.name] = _gru(L)
    return out
