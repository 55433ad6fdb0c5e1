"""Per-step Jacobians ds_n/ds_{n-1} and the chains ds_T/ds_k built from them.

A per-step Jacobian is read off exactly from the step's VJP applied to unit vectors: replicate
each (step, sequence) row S times and feed the identity as the new-state cotangent; row i of the
previous-state cotangent is then e_i^T J = J[i, :]. For a vanilla tanh RNN this is
diag(1 - h_n^2) W_hh. For an LSTM the state is (h, c) stacked, so J is 2H x 2H.

Chains multiply many Jacobians; to survive both vanishing (1e-300) and exploding products they
are kept as a matrix of unit max-entry times a separately tracked log scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stepgraph import StepGraph


def step_jacobians(L, max_rows=40000):
    """(T, B, S, S) array; entry [n-1, b] = ds_n/ds_{n-1} for sequence b (processing order)."""
    flat = L.flat_states()
    T, B, S = flat.shape[0] - 1, flat.shape[1], flat.shape[2]
    xs = L.xs[L.order]                                   # (T, B, I) in processing order
    J = np.empty((T, B, S, S))
    per = max(1, max_rows // (B * S))
    eye = np.tile(np.eye(S), (per * B, 1))
    for lo in range(0, T, per):
        hi = min(T, lo + per)
        rows = (hi - lo) * B * S
        x_rows = np.repeat(xs[lo:hi].reshape((hi - lo) * B, -1), S, axis=0)
        s_rows = np.repeat(flat[lo:hi].reshape((hi - lo) * B, S), S, axis=0)
        g = StepGraph(L.step, L.params, x_rows, s_rows, L.states[0])
        _, _, gprev, _ = g.vjp(np.zeros((rows, g.y_size)), eye[:rows])
        J[lo:hi] = gprev.reshape(hi - lo, B, S, S)
    return J


@dataclass
class Chain:
    """Jacobian chains of one layer-direction; index d = distance T - k (d = 0: identity)."""
    name: str
    log10_norm: np.ndarray     # (T+1, B): log10 of the spectral norm of ds_T/ds_{T-d}
    log10_sv: np.ndarray       # (T+1, B, n_sv): leading singular values, log10
    jacobians: np.ndarray      # (T, B, S, S) per-step Jacobians, processing order

    @property
    def distance(self):
        return np.arange(self.log10_norm.shape[0])

    def norm(self):
        with np.errstate(over="ignore"):
            return 10.0 ** self.log10_norm


def chain(L, n_sv=3, J=None) -> Chain:
    J = step_jacobians(L) if J is None else J
    T, B, S, _ = J.shape
    n_sv = min(n_sv, S)
    M = np.broadcast_to(np.eye(S), (B, S, S)).copy()
    logscale = np.zeros(B)
    lsv = np.empty((T + 1, B, n_sv))
    for d in range(T + 1):
        if d:
            M = M @ J[T - d]                      # ds_T/ds_{k-1} = ds_T/ds_k . ds_k/ds_{k-1}
            m = np.abs(M).max(axis=(1, 2))
            m = np.where(m > 0, m, 1.0)
            M /= m[:, None, None]
            logscale += np.log10(m)
        sv = np.linalg.svd(M, compute_uv=False)[:, :n_sv]
        with np.errstate(divide="ignore"):
            lsv[d] = np.log10(sv) + logscale[:, None]
    return Chain(L.name, lsv[..., 0].copy(), lsv, J)


def jacobian_chains(flow, n_sv=3):
    """{layer name: Chain} for every layer-direction of the flow."""
    return {L.name: chain(L, n_sv) for L in flow.layers}
