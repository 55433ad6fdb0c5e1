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
        m = self.model
        with no_grad():
            enc = m.inputs(xs)
        enc = enc.data if isinstance(enc, Tensor) else np.asarray(enc)
        if state0 is None:
            state0 = m.rnn.init_state(self.B)
        out, state_T = self.core.forward(enc, state0)
        out_t = Tensor(out, requires_grad=True)
        head = m.head.parameters()
        saved = {k: p.grad for k, p in head.items()}
        for p in head.values():
            p.grad = None
        loss = m.head_loss(out_t, targets)
        loss.backward()
        grads = {f"head.{k}": p.grad for k, p in head.items()}
        for k, p in head.items():
            p.grad = saved[k]
        core_grads, d_enc, _ = self.core.vjp(enc, state0, out_t.grad, _zeros_like_state(state0))
        grads.update({f"rnn.{k}": v for k, v in core_grads.items()})
        emb = getattr(m, "embedding", None)
        if emb is not None:
            with no_grad():
                grads["embedding.weight"] = take_grad(Tensor(d_enc), np.asarray(xs),
                                                      emb.shape[0]).data
        return float(loss.item()), {k: grads[k] for k in m.parameters()}, state_T


def compile_training(model, seq_len, batch, **options) -> TrainingProgram:
    return TrainingProgram(model, seq_len, batch, **options)
