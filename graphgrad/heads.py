"""Heads and whole task models: many-to-many language models, many-to-one classifiers, sampling."""
from __future__ import annotations

import math

import numpy as np

from .core import Tensor, no_grad
from .functional import cross_entropy, embedding, softmax
from .module import Module
from .nn import GRU, LSTM, RNN
from .ops import check_ids as _check_ids, getitem, one_hot

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def make_rnn(cell, input_size, hidden_size, **kw):
    """A sequence model by name: rnn (tanh), rnn_relu, lstm, gru, gru_v1 (reset before matmul)."""
    if cell == "rnn_relu":
        return RNN(input_size, hidden_size, nonlinearity="relu", **kw)
    if cell == "gru_v1":
        return GRU(input_size, hidden_size, reset_after=False, **kw)
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; choose one of rnn, rnn_relu, lstm, gru, gru_v1")
    return CELLS[cell](input_size, hidden_size, **kw)


class Linear(Module):
    """y = x @ weight.T + bias, PyTorch's layout and default init."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, seed=0):
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(in_features)
        self.weight = Tensor(rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype),
                             requires_grad=True)
        self.bias = Tensor(rng.uniform(-bound, bound, out_features).astype(dtype),
                           requires_grad=True) if bias else None

    def parameters(self):
        return {"weight": self.weight, **({"bias": self.bias} if self.bias is not None else {})}

    def __call__(self, x):
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


def _prefixed(prefix, params):
    return {f"{prefix}.{k}": v for k, v in params.items()}


class LanguageModel(Module):
    """Many-to-many: token ids (T, B) -> logits (T, B, V), trained with per-step cross-entropy.

    Inputs are one-hot vectors (the textbook character model) unless `embed_size` is given.
    Parameter names: `rnn.*` as in torch.nn.LSTM etc., `embedding.weight`, `head.weight/bias`.
    """

    def __init__(self, vocab_size, hidden_size, cell="lstm", num_layers=1, embed_size=None,
                 dtype=np.float32, seed=0, **rnn_kw):
        self.vocab_size, self.hidden_size, self.cell = vocab_size, hidden_size, cell
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.embedding = None
        if embed_size:
            self.embedding = Tensor(rng.standard_normal((vocab_size, embed_size)).astype(dtype),
                                    requires_grad=True)
        in_size = embed_size or vocab_size
        self.rnn = make_rnn(cell, in_size, hidden_size, num_layers=num_layers, dtype=dtype,
                            seed=seed + 1, **rnn_kw)
        self.head = Linear(hidden_size * self.rnn.num_directions, vocab_size, dtype=dtype,
                           seed=seed + 2)

    def parameters(self):
        p = {"embedding.weight": self.embedding} if self.embedding is not None else {}
        return {**p, **_prefixed("rnn", self.rnn.parameters()),
                **_prefixed("head", self.head.parameters())}

    def inputs(self, ids):
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"LanguageModel: token ids must be integers, got {ids.dtype}")
        _check_ids("LanguageModel: input ids", ids, self.vocab_size)
        if self.embedding is not None:
            return embedding(self.embedding, ids)
        return one_hot(ids, self.vocab_size, self.dtype)

    def __call__(self, ids, state=None):
        out, state = self.rnn(self.inputs(ids), state)
        return self.head(out), state

    def loss(self, ids, targets, state=None):
        """Mean cross-entropy over all T*B predictions, and the final state."""
        out, state = self.rnn(self.inputs(ids), state)
        return self.head_loss(out, targets), state

    def head_loss(self, out, targets):
        """The loss from the recurrent outputs (T, B, H): what follows the recurrence."""
        targets = np.asarray(targets)
        _check_ids("LanguageModel: targets", targets, self.vocab_size)
        return cross_entropy(self.head(out), targets)

    def init_state(self, batch):
        return self.rnn.init_state(batch)

    def sample(self, prefix, n, temperature=1.0, rng=None):
        """One-to-many: feed `prefix` ids, then draw `n` ids, each fed back as the next input.

        temperature -> 0 approaches greedy decoding; larger values flatten the distribution.
        """
        if not temperature > 0:     # also refuses NaN
            raise ValueError(f"sample: temperature must be > 0, got {temperature}")
        rng = np.random.default_rng(rng)
        prefix = np.asarray(prefix)
        if prefix.size == 0:
            raise ValueError("sample: needs at least one prefix id to start from")
        if prefix.dtype.kind not in "iu":
            raise TypeError(f"sample: prefix ids must be integers, got {prefix.dtype}")
        # one sequence: (T, 1) ids, or (1, T) for a batch_first core; logits alike
        bf = self.rnn.batch_first
        prefix = prefix.astype(np.int64).reshape((1, -1) if bf else (-1, 1))
        out = []
        with no_grad():
            logits, state = self(prefix)
            last = logits.data[0, -1] if bf else logits.data[-1, 0]
            for _ in range(n):
                # shift before dividing: a tiny temperature then sends every logit but the
                # largest to -inf (greedy) instead of overflowing to inf - inf = NaN
                z = last.astype(np.float64)
                with np.errstate(over="ignore"):
                    z = (z - z.max()) / temperature
                p = softmax(Tensor(z)).data
                nxt = int(rng.choice(self.vocab_size, p=p / p.sum()))
                out.append(nxt)
                logits, state = self(np.array([[nxt]]), state)
                last = logits.data[0, 0]
        return np.array(out, dtype=np.int64)


class SequenceClassifier(Module):
    """Many-to-one: the last time step's output -> class logits."""

    def __init__(self, input_size, hidden_size, num_classes, cell="lstm", dtype=np.float32,
                 seed=0, **rnn_kw):
        self.rnn = make_rnn(cell, input_size, hidden_size, dtype=dtype, seed=seed, **rnn_kw)
        self.head = Linear(hidden_size * self.rnn.num_directions, num_classes, dtype=dtype,
                           seed=seed + 1)

    def parameters(self):
        return {**_prefixed("rnn", self.rnn.parameters()),
                **_prefixed("head", self.head.parameters())}

    def __call__(self, xs, state=None):
        out, state = self.rnn(xs, state)
        return self.head(self._last(out)), state

    def _last(self, out):
        """The last time step's output (B, D*H): out is (B, T, D*H) for a batch_first core."""
        return getitem(out, (slice(None), -1) if self.rnn.batch_first else -1)

    def inputs(self, xs):
        return xs

    def loss(self, xs, labels, state=None):
        """The loss alone: a many-to-one task has no state to carry on."""
        out, _ = self.rnn(xs, state)
        return self.head_loss(out, labels)

    def head_loss(self, out, labels):
        return cross_entropy(self.head(self._last(out)), np.asarray(labels))


class SequenceRegressor(SequenceClassifier):
    """Many-to-one regression (e.g. the adding problem): last output -> a number, MSE loss."""

    def __init__(self, input_size, hidden_size, cell="lstm", out_features=1, **kw):
        super().__init__(input_size, hidden_size, out_features, cell=cell, **kw)

    def head_loss(self, out, targets):
        from .functional import mse
        pred = self.head(self._last(out))
        t = np.asarray(targets)
        if t.dtype.kind == "f" and t.dtype != pred.dtype:
            raise TypeError(f"SequenceRegressor: targets are {t.dtype}, the model is "
                            f"{pred.dtype}; pass targets.astype(np.{pred.dtype}) (no silent "
                            f"casts)")
        if t.size != pred.size:
            raise ValueError(f"SequenceRegressor: targets {list(t.shape)} must hold one value per "
                             f"batch row and output, i.e. {list(pred.shape)}")
        return mse(pred, t.astype(pred.dtype).reshape(pred.shape))


def perplexity(mean_cross_entropy):
    """exp of the mean per-token cross-entropy (in nats); inf once that overflows (a diverging
    run), without numpy's overflow warning."""
    v = mean_cross_entropy.item() if isinstance(mean_cross_entropy, Tensor) else mean_cross_entropy
    return math.exp(v) if v < 709.0 else math.inf
