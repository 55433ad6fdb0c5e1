"""Recurrent layers and sequence models mirroring torch.nn.RNN / LSTM / GRU."""
from __future__ import annotations

import numpy as np

from . import cells
from .core import Tensor
from .functional import stack
from .module import Module
from .ops import concat, getitem


def _tensor(v, dtype=None, what=""):
    """v as a Tensor of `dtype` (arrays and Tensors alike: never cast); `what` names it."""
    a = v.data if isinstance(v, Tensor) else np.asarray(v)
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{what}expected {np.dtype(dtype).name} data, got {a.dtype} (graphgrad "
                        f"never casts silently; convert with .astype)")
    return v if isinstance(v, Tensor) else Tensor(a)


def _map_state(state, f):
    return tuple(_map_state(s, f) for s in state) if isinstance(state, tuple) else f(state)


def _state_leaves(state):
    """The arrays (or Tensors) of a state pytree of nested tuples, in order."""
    return [x for s in state for x in _state_leaves(s)] if isinstance(state, tuple) else [state]


class Recurrent(Module):
    """One recurrent layer from a step function: `step(p, x_t, state) -> (y_t, new_state)`.

    Runs over xs of shape (T, B, I) and returns (ys (T, B, Y), final state). With reverse=True
    the sequence is consumed from the end and ys is returned in the original time order.
    Arrays in `params` are copied, as torch modules own their weights (two models built from one
    dict would otherwise train each other's weights); Tensors are kept, so models can share them.
    """

    def __init__(self, step, params, reverse=False):
        self.step = step
        self.params = {k: v if isinstance(v, Tensor) else Tensor(np.array(v), requires_grad=True)
                       for k, v in params.items()}
        self.reverse = reverse

    def parameters(self):
        return dict(self.params)

    def __call__(self, xs, state0):
        xs = _tensor(xs)
        if xs.ndim < 2 or xs.shape[0] < 1:
            raise ValueError(f"Recurrent: inputs must be (T >= 1, B, features), got "
                             f"{list(xs.shape)}")
        state = _map_state(state0, _tensor)
        ys = [None] * xs.shape[0]
        order = range(xs.shape[0] - 1, -1, -1) if self.reverse else range(xs.shape[0])
        for t in order:
            ys[t], state = self.step(self.params, xs[t], state)
        return stack(ys, 0), state


class _SequenceModel(Module):
    mode = ""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 bidirectional=False, dtype=np.float32, seed=0):
        for name, v in [("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)]:
            if int(v) != v or v < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, "
                                 f"got {v!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"{type(self).__name__}: dtype must be float32 or float64")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bias, batch_first
        self.num_directions = 2 if bidirectional else 1
        self.bidirectional = bidirectional
        G, H = cells.GATES[self.mode], hidden_size
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(H)  # PyTorch's default: U(-1/sqrt(H), 1/sqrt(H)) for every tensor
        self._params: dict[str, Tensor] = {}
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else H * self.num_directions
            for suffix in self._suffixes(layer):
                shapes = {"weight_ih": (G * H, in_size), "weight_hh": (G * H, H)}
                if bias:
                    shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
                for k, shape in shapes.items():
                    self._params[k + suffix] = Tensor(
                        rng.uniform(-bound, bound, shape).astype(self.dtype), requires_grad=True)

    def _suffixes(self, layer):
        return [f"_l{layer}"] + ([f"_l{layer}_reverse"] if self.bidirectional else [])

    def step_fn(self):
        return {"rnn_tanh": cells.rnn_tanh_step, "rnn_relu": cells.rnn_relu_step,
                "lstm": cells.lstm_step, "gru": cells.gru_step}[self.mode]

    def layers(self):
        """Per layer, one `Recurrent` per direction, sharing this model's parameter tensors."""
        out = []
        for layer in range(self.num_layers):
            row = []
            for d, suffix in enumerate(self._suffixes(layer)):
                p = {k: self._params[k + suffix] for k in
                     ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if k + suffix in self._params}
                row.append(Recurrent(self.step_fn(), p, reverse=d == 1))
            out.append(row)
        return out

    def parameters(self):
        return dict(self._params)

    # -- running
    def _state_shape(self, batch):
        return (self.num_layers * self.num_directions, batch, self.hidden_size)

    def init_state(self, batch):
        z = np.zeros(self._state_shape(batch), self.dtype)
        return (z, z.copy()) if self.mode == "lstm" else z

    def _check_structure(self, state):
        """An LSTM's state is a tuple (h0, c0), the other models' one array h0."""
        lstm = self.mode == "lstm"
        if lstm != isinstance(state, tuple) or (lstm and len(state) != 2):
            got = f"a {type(state).__name__} of {len(state)}" \
                if isinstance(state, (tuple, list)) else "one array"
            raise TypeError(f"{type(self).__name__}: initial state must be "
                            f"{'a tuple (h0, c0)' if lstm else 'one array h0'}, got {got}")

    def _check_state(self, state, batch):
        parts = state if isinstance(state, tuple) else (state,)
        for s in parts:
            if tuple(s.shape) != self._state_shape(batch):
                raise ValueError(f"{type(self).__name__}: initial state has shape "
                                 f"{list(s.shape)}, expected {list(self._state_shape(batch))} "
                                 f"(num_layers*num_directions, batch, hidden_size)")

    def __call__(self, xs, state0=None):
        xs = _tensor(xs, self.dtype, f"{type(self).__name__} input: ")
        t_axis = 1 if self.batch_first else 0
        if xs.ndim != 3 or xs.shape[-1] != self.input_size or xs.shape[t_axis] < 1:
            want = f"(B, T, {self.input_size}) (batch_first)" if self.batch_first else \
                f"(T, B, {self.input_size})"
            raise ValueError(f"{type(self).__name__}: input must be {want} with T >= 1, got "
                             f"{list(xs.shape)}")
        if self.batch_first:
            xs = xs.transpose((1, 0, 2))
        batch = xs.shape[1]
        if state0 is None:
            state0 = self.init_state(batch)
        self._check_structure(state0)
        state0 = _map_state(state0, lambda s: _tensor(s, self.dtype,
                                                      f"{type(self).__name__} initial state: "))
        self._check_state(state0, batch)
        finals, layer_in = [], xs
        for layer, row in enumerate(self.layers()):
            outs = []
            for d, rec in enumerate(row):
                k = layer * self.num_directions + d
                y, s = rec(layer_in, _map_state(state0, lambda st: getitem(st, k)))
                outs.append(y)
                finals.append(s)
            layer_in = concat(outs, axis=-1)
        out = layer_in.transpose((1, 0, 2)) if self.batch_first else layer_in
        if self.mode == "lstm":
            return out, (stack([s[0] for s in finals]), stack([s[1] for s in finals]))
        return out, stack(finals)


class RNN(_SequenceModel):
    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", **kw):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.mode = f"rnn_{nonlinearity}"
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, **kw)


class LSTM(_SequenceModel):
    mode = "lstm"


class GRU(_SequenceModel):
    mode = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, reset_after=True, **kw):
        self.reset_after = reset_after
        super().__init__(input_size, hidden_size, num_layers, **kw)

    def step_fn(self):
        return cells.gru_step if self.reset_after else cells.gru_reset_before_step


def _cell(mode_cls):
    class Cell(Module):
        """One step of the matching sequence model: `cell(x (B, I), state) -> new state`.
        Parameters, state_dict and load_state_dict use torch.nn.*Cell's names."""

        def __init__(self, input_size, hidden_size, **kw):
            self.model = mode_cls(input_size, hidden_size, **kw)
            self.params = {k[:-3]: v for k, v in self.model.parameters().items()}

        def parameters(self):
            return dict(self.params)

        def __call__(self, x, state):
            name = type(self).__name__
            return self.model.step_fn()(
                self.params, _tensor(x, self.model.dtype, f"{name} input: "),
                _map_state(state, lambda s: _tensor(s, self.model.dtype, f"{name} state: ")))[1]
    Cell.__name__ = mode_cls.__name__ + "Cell"
    return Cell


RNNCell, LSTMCell, GRUCell = _cell(RNN), _cell(LSTM), _cell(GRU)
