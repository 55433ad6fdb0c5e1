"""Pictures of gradient flow (matplotlib, imported lazily with the Agg backend).

Every function takes already-computed flows (label -> Flow) and a file path, so the numbers in
a picture are exactly the ones the table printed.
"""
from __future__ import annotations

import numpy as np

from ..nn import Recurrent
from ..ops import tanh


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_norms(flows, path):
    """Gradient norm vs time step (log scale), one panel per model, with the route split."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(flows), figsize=(4.2 * len(flows), 3.4), sharey=True,
                             squeeze=False)
    for ax, (label, fl) in zip(axes[0], flows.items()):
        L = fl.layers[0]
        for leaf, v in fl.norms()[L.name].items():
            ax.semilogy(np.arange(L.T), v.mean(1), label=f"||dL/d{leaf}_t||")
        split = fl.routes().get(L.name)
        for name, v in (split.norms().items() if split else []):
            if name != "total":
                ax.semilogy(np.arange(L.T), v.mean(1), "--", lw=1, label=f"{name} route")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("time step t")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("gradient norm (layer 0, mean over sequences)")
    _save(plt, fig, path)


def plot_lags(flows, path, max_lag=None):
    """Heatmap per model: weights (rows) x temporal distance (columns), log10 of the norm share."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(flows), figsize=(5.0 * len(flows), 3.0), squeeze=False,
                             gridspec_kw={"wspace": 0.55})
    im = None
    for ax, (label, fl) in zip(axes[0], flows.items()):
        lt = fl.lags()
        names = sorted(lt.parts)
        K = len(lt.lags) if max_lag is None else min(max_lag, len(lt.lags))
        with np.errstate(divide="ignore"):
            grid = np.log10(np.array([lt.shares(w)[:K] for w in names]))
        im = ax.imshow(np.clip(grid, -12, 0), aspect="auto", cmap="magma", vmin=-12, vmax=0,
                       interpolation="nearest")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("lag k (steps from weight use to loss)", fontsize=8)
        ax.set_title(label, fontsize=10)
    fig.colorbar(im, ax=axes[0].tolist(), label="log10 share of ||dL/dW||", shrink=0.9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _scalar_step(p, x, h):
    h = tanh(x * h)
    return h, h


def scalar_sweep(ws, T, h0=0.5):
    """h_T and dh_T/dh_0 of h_t = tanh(w h_{t-1}) for every w, each w one row of one batch."""
    from .jacobians import step_jacobians
    from .trace import from_adjoints
    ws = np.asarray(ws, np.float64)
    xs = np.broadcast_to(ws[None, :, None], (T, len(ws), 1))
    model = Recurrent(_scalar_step, {})
    fl = from_adjoints(model, xs, np.full((len(ws), 1), h0), np.zeros((T, len(ws), 1)))
    L = fl.layers[0]
    J = step_jacobians(L)[:, :, 0, 0]                 # (T, W): dh_t/dh_{t-1} = w (1 - h_t^2)
    return L.states[-1][:, 0], np.prod(J, axis=0)


def plot_sweep(path, Ts=(5, 10, 20), wlim=4.0, n=1001):
    plt = _plt()
    ws = np.linspace(-wlim, wlim, n)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for T in Ts:
        hT, g = scalar_sweep(ws, T)
        axes[0].plot(ws, hT, label=f"T={T}")
        axes[1].plot(ws, g, label=f"T={T}")
        with np.errstate(divide="ignore"):
            axes[2].semilogy(ws, np.abs(g), label=f"T={T}")
    axes[0].set_title("state h_T", fontsize=10)
    axes[1].set_title("dh_T/dh_0", fontsize=10)
    axes[2].set_title("|dh_T/dh_0| (log scale)", fontsize=10)
    axes[2].set_ylim(1e-12, 1e6)
    for ax in axes:
        ax.set_xlabel("w   (h_t = tanh(w h_{t-1}), h_0 = 0.5)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(plt, fig, path)


def plot_chains(chains, path):
    """log10 ||ds_T/ds_{T-d}|| against the distance d, one line per model (layer 0)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for label, ch in chains.items():
        ax.plot(ch.distance, np.median(ch.log10_norm, axis=1), label=label)
    ax.set_xlabel("distance d = T - k")
    ax.set_ylabel("log10 ||ds_T / ds_k||")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(plt, fig, path)


__all__ = ["plot_norms", "plot_lags", "plot_sweep", "plot_chains", "scalar_sweep"]
