"""A verdict per model and per sequence (vanishing / healthy / exploding) with its evidence.

The evidence is the decay rate of the Jacobian-chain norm ||ds_T/ds_{T-d}||: a least-squares
line through log10 of the norm against the distance d gives a per-step factor gamma (the chain
shrinks or grows by gamma each step back) and a span, log10(gamma) * T, the decades the gradient
loses or gains across the whole sequence. Beyond 3 decades (1000x) either way the long lags can
no longer steer learning (vanishing) or swamp the short ones (exploding).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import cells
from .routes import _pre, _sig

DECADES = 3.0


def decay_rate(log10_norm):
    """Slope of log10 ||chain|| per step back, per sequence: log10_norm (T+1, B) -> (B,).

    A chain can hit exact zero (W_hh = 0, or every ReLU unit off at some step): from there on
    nothing reaches further back at all. The fit alone would read a chain that is zero from
    d = 1 on as flat (all points at the -300 floor); such a sequence gets at most the slope
    of falling 300 decades from the identity (d = 0) to the first zero."""
    d = np.arange(1, log10_norm.shape[0], dtype=float)
    y = np.clip(log10_norm[1:], -300.0, 300.0)
    dc = d - d.mean()
    slope = (dc @ (y - y.mean(0))) / max(dc @ dc, 1e-300)
    zero = np.isneginf(log10_norm[1:])
    first = zero.argmax(0) + 1.0                    # distance of the first zero, if any
    return np.where(zero.any(0), np.minimum(slope, -300.0 / first), slope)


def verdict(span):
    return "vanishing" if span < -DECADES else "exploding" if span > DECADES else "healthy"


@dataclass
class LayerDiagnosis:
    name: str
    slope: np.ndarray           # (B,) log10 change of the chain norm per step back
    span: np.ndarray            # (B,) decades over the sequence
    verdicts: list              # per sequence
    gamma: float                # median per-step factor 10**slope
    verdict: str
    evidence: dict = field(default_factory=dict)


@dataclass
class Diagnosis:
    layers: list
    verdict: str
    suggestion: str
    evidence: dict

    def __str__(self):
        lines = [f"verdict: {self.verdict}"]
        for d in self.layers:
            per = ", ".join(d.verdicts) if len(d.verdicts) <= 4 else \
                f"{d.verdicts.count('vanishing')} vanishing / {d.verdicts.count('healthy')} " \
                f"healthy / {d.verdicts.count('exploding')} exploding sequences"
            lines.append(f"  {d.name}: chain norm x{d.gamma:.3g} per step back, "
                         f"{float(np.median(d.span)):+.1f} decades over T ({per})")
        lines += [f"  evidence: {k} = {v}" for k, v in self.evidence.items()]
        lines.append(f"suggestion: {self.suggestion}")
        return "\n".join(lines)


def _clip_norm(flow, chain):
    """Norm of the gradient from the lags before the chain norm first grows past 10x: the part
    an exploding tail has not yet corrupted, a natural clipping threshold."""
    big = np.nonzero(np.median(chain.log10_norm, axis=1) > 1.0)[0]
    horizon = int(big[0]) if len(big) else chain.log10_norm.shape[0]
    lt = flow.lags()
    g2 = sum(float((p[:horizon] .sum(0) ** 2).sum()) for p in lt.parts.values())
    return float(f"{np.sqrt(g2):.2g}"), horizon


def diagnose(flow, chains=None) -> Diagnosis:
    chains = flow.chains() if chains is None else chains
    T = flow.layers[0].T
    out = []
    for L in flow.layers:
        slope = decay_rate(chains[L.name].log10_norm)
        span = slope * T
        vs = [verdict(s) for s in span]
        med = float(np.median(span))
        out.append(LayerDiagnosis(L.name, slope, span, vs, float(10 ** np.median(slope)),
                                  verdict(med)))
    worst = max(out, key=lambda d: abs(float(np.median(d.span))))
    ev = {"per-step factor": f"{worst.gamma:.4g} ({worst.name})",
          "span": f"{float(np.median(worst.span)):+.2f} decades over T={T}"}
    lt = flow.lags()
    far = [w for w in lt.parts if "weight_hh" in w] or list(lt.parts)
    share = float(np.mean([lt.shares(w)[10:].sum() for w in far]))
    ev["share of recurrent-weight gradient from lags >= 10"] = f"{share:.3g}"
    L = flow.layer(worst.name)
    if worst.verdict == "exploding":
        x, h = _clip_norm(flow, chains[worst.name])
        ev["gradient norm from lags < %d" % h] = x
        sug = (f"clip the gradient norm at {x:g} (the gradient carried by the first {h} lags), "
               f"and lower the recurrent initialization scale")
    elif worst.verdict == "vanishing":
        sug = _vanishing_advice(L, ev)
    else:
        sug = "no change needed: the gradient survives the whole sequence at a steady scale"
    return Diagnosis(out, worst.verdict, sug, ev)


def _vanishing_advice(L, ev):
    p = L.params
    if L.step is cells.lstm_step:
        f = _sig(np.split(_pre(L, L.leaf_sizes[0]), 4, axis=-1)[1])
        ev["mean forget gate"] = f"{f.mean():.3f} (cell path keeps about f^d after d steps)"
        return ("raise the forget-gate bias (1 to 3, or chrono initialization b_f = log U(1, T)) "
                "so the cell-state path carries the gradient further")
    if L.step in (cells.gru_step, cells.gru_reset_before_step):
        z = _sig(np.split(_pre(L, L.leaf_sizes[0]), 3, axis=-1)[1])
        ev["mean carry gate z"] = f"{z.mean():.3f}"
        return "raise the update-gate (z) bias so the carry route z*h keeps more of the state"
    if "weight_hh" in p:
        rho = float(np.abs(np.linalg.eigvals(p["weight_hh"])).max())
        ev["spectral radius of W_hh"] = f"{rho:.3g}"
        return (f"use an LSTM or GRU (a gated carry path), or initialize W_hh orthogonal with "
                f"spectral radius near 1 (now {rho:.2g})")
    return "use a gated cell (LSTM/GRU) or scale up the recurrent weights' initialization"
