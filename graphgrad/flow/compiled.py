"""Flows whose adjoints come from a compiled program (DESIGN.md: `prog.forward`, `prog.vjp`).

The compiled program supplies the model-level quantities: its forward output, and from `vjp` the
parameter gradients, d_xs and d_state0. Those are the reference the decomposition must add up
to. `prog.step_adjoints(xs, state0, d_out, d_state_T) -> {layer name: (T, B, S) array}` gives the
per-step state adjoints the native reverse loop computed (dL/ds_t on the state tensors,
processing order, "l0", "l0_reverse", ...; compiled on first use as a variant of the training
program, so the normal path stores nothing extra); `from_compiled` keeps them as
`flow.reference["state_grads"]` and `check` compares them with the per-step adjoints flow
rebuilds from the step VJPs.
"""
from __future__ import annotations

import numpy as np

from .trace import model_layout, from_adjoints


def from_compiled(prog, model, xs, state0, d_out, d_final=None):
    """A flow for `model` with the loss cotangents (d_out, d_final) checked against `prog`."""
    _same_model(prog, model)
    out, _ = prog.forward(xs, state0)
    param_grads, d_xs, d_state0 = prog.vjp(xs, state0, d_out, d_final)
    flow = from_adjoints(model, xs, state0, d_out, d_final)
    flow.source = "compiled"
    # d_xs and out come in the model's layout ((B, T, ...) if batch_first); flow is time-major
    flow.reference = {"grads": {k: np.asarray(v, np.float64) for k, v in param_grads.items()},
                      "d_xs": model_layout(model, np.asarray(d_xs, np.float64)),
                      "out": model_layout(model, np.asarray(out))}
    emit = getattr(prog, "step_adjoints", None)
    if emit is not None:      # programs built by compiler.compile have it; duck-typed ones may not
        flow.reference["state_grads"] = {k: np.asarray(v, np.float64) for k, v in
                                         emit(xs, state0, d_out, d_final).items()}
    return flow


def _same_model(prog, model):
    """`model` must be the one `prog` runs (a program reads its model's weights at each call)."""
    core = getattr(prog, "model", None)
    if core is None or core is model:
        return
    mine, theirs = model.parameters(), core.parameters()
    differ = sorted(set(mine) ^ set(theirs)) or [
        k for k in mine if np.shape(mine[k].data) != np.shape(theirs[k].data)
        or not np.array_equal(mine[k].data, theirs[k].data)]
    if differ:
        raise ValueError(f"from_compiled: `model` is not the model `prog` was compiled from "
                         f"({type(model).__name__} vs {type(core).__name__}; parameters that "
                         f"differ: {', '.join(differ[:4])}{', ...' if len(differ) > 4 else ''})")


def check(flow):
    """Largest relative difference between what flow rebuilt and what its source reported.

    Keys: "grads" (sum over lags vs the source's parameter gradients), "state_grads" (per-step
    state adjoints), "d_xs" (input cotangents of the bottom layer) where the source gave them.
    """
    ref, res = flow.reference, {}

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
    if "grads" in ref:
        mine = flow.grads()
        res["grads"] = max(rel(mine.get(k, np.zeros_like(v)), v) for k, v in ref["grads"].items())
    if isinstance(ref.get("state_grads"), dict):
        res["state_grads"] = max(rel(flow.layer(k).adj_total, v)
                                 for k, v in ref["state_grads"].items())
    if "d_xs" in ref:
        bottom = [L for L in flow.layers if L.layer == 0]
        dx = sum(sum(L.x_lags.values()) for L in bottom)
        res["d_xs"] = rel(dx, ref["d_xs"])
    return res
