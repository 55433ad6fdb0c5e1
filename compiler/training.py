"""Compiled training steps for task models: the recurrence native, the head and loss after it.

A task model (graphgrad.LanguageModel, SequenceClassifier, SequenceRegressor) is a recurrent
core plus work that does not depend on the previous step: the input encoding before it and the
head and loss after it. Those run once over all T*B rows (one product each) on the tape; only
the recurrence is compiled, so there is still no Python per time step.
"""
from __future__ import annotations

import numpy as np

from graphgrad.core import Tensor, no_grad
from graphgrad.ops import take_grad

from .api import CompiledProgram


def _zeros_like_state(state):
    return tuple(np.zeros_like(s) for s in state) if isinstance(state, tuple) \
        else np.zeros_like(state)


def _encode(model, xs):
    with no_grad():
        enc = model.inputs(xs)
    return enc.data if isinstance(enc, Tensor) else np.asarray(enc)


def head_and_core(model, core, xs, loss_fn, state0=None, return_states=False):
    """loss_fn(out Tensor) -> scalar loss on the tape. Returns (loss, grads keyed like
    model.parameters(), final state, [states after each step] or None).

    The recurrence runs natively in two phases of one program (the forward loop, then the
    reverse loop on the same buffers); in between, the encoding, head and loss run once over
    all T*B rows on the tape, whose gradient w.r.t. the outputs feeds the reverse phase.
    """
    enc = _encode(model, xs)
    if state0 is None:     # the program's batch (enc is (B, T, ...) for a batch_first core)
        state0 = model.rnn.init_state(core.B)
    res = core.begin(enc, state0, _zeros_like_state(state0), return_states=return_states)
    out, state_T = res[0], res[1]
    out_t = Tensor(out, requires_grad=True)
    head = model.head.parameters()
    saved = {k: p.grad for k, p in head.items()}
    for p in head.values():
        p.grad = None
    try:
        loss = loss_fn(out_t)
        loss.backward()
        grads = {f"head.{k}": (p.grad if p.grad is not None else np.zeros_like(p.data))
                 for k, p in head.items()}
    finally:
        for k, p in head.items():
            p.grad = saved[k]
    core_grads, d_enc, _ = core.finish(out_t.grad)
    grads.update({f"rnn.{k}": v for k, v in core_grads.items()})
    emb = getattr(model, "embedding", None)
    if emb is not None:
        with no_grad():
            grads["embedding.weight"] = take_grad(Tensor(d_enc), np.asarray(xs),
                                                  emb.shape[0]).data
    grads = {k: grads[k] for k in model.parameters()}
    return float(loss.item()), grads, state_T, (res[2] if return_states else None)


class TrainingProgram:
    """value_and_grad(xs, targets, state0) -> (loss, grads keyed like model.parameters(),
    final state). `xs` are token ids (T, B) for a LanguageModel, features (T, B, I) otherwise."""

    def __init__(self, model, seq_len, batch, **options):
        for need in ("rnn", "head", "head_loss", "inputs"):
            if not hasattr(model, need):
                raise TypeError(f"value_and_grad needs a task model with a recurrent core and a "
                                f"head (LanguageModel, SequenceClassifier, ...); "
                                f"{type(model).__name__} has no {need!r}")
        self.model, self.T, self.B = model, seq_len, batch
        self.core = CompiledProgram(model.rnn, seq_len, batch, **options)

    def __getattr__(self, name):   # forward, vjp, dump, fusion_report, ... of the core
        if name == "core":
            raise AttributeError(name)
        return getattr(self.core, name)

    def value_and_grad(self, xs, targets, state0=None):
        loss, grads, state_T, _ = head_and_core(
            self.model, self.core, xs, lambda out: self.model.head_loss(out, targets), state0)
        return loss, grads, state_T

