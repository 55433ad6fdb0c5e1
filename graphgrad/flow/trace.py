"""Build a `Flow`: the forward states of every layer plus the adjoints that enter the model.

A flow only needs, per layer, the step function, its parameters, the states s_0..s_T and the
cotangents arriving from outside the layer (dL/dy_t for its outputs, dL/ds_T for its final
state). Where those model-level cotangents come from is open: `from_tape` gets them from a loss
on the eager tape, `from_adjoints` takes them from the caller (any loss, any framework),
`from_compiled` from a compiled program. Everything inside the model (lower layers' cotangents,
per-step adjoints, lags) is then rebuilt exactly with step VJPs, always in float64.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import nn
from ..core import Tensor, backward, no_grad
from ..functional import stack
from ..ops import concat, getitem
from .stepgraph import StepGraph, flatten, leaves, sizes


@dataclass(eq=False)
class LayerFlow:
    """One layer-direction. Arrays indexed by n are in processing order (n-th step consumed),
    which for a reverse layer runs backwards in time; `order[n-1]` is the time index of step n."""
    name: str
    layer: int
    direction: int
    step: object
    params: dict            # local name -> float64 array
    names: dict             # local name -> model parameter name
    reverse: bool
    xs: np.ndarray          # (T, B, I) time order
    states: list            # state pytrees s_0..s_T (processing order), float64
    d_ys: dict = field(default_factory=dict)   # lag -> (T, B, Y) external dL/dy_t, time order
    d_final: np.ndarray = None                 # (B, S) external dL/ds_T
    # filled by propagate()
    param_lags: dict = field(default_factory=dict)   # lag -> {model name: array}
    x_lags: dict = field(default_factory=dict)       # lag -> (T, B, I) time order
    adj: np.ndarray = None        # (T+1, B, S): dL/ds_n through later steps (the state "slot")
    adj_total: np.ndarray = None  # (T, B, S): gradient on the state tensors s_1..s_T themselves
    graph: StepGraph = None

    @property
    def T(self):
        return self.xs.shape[0]

    @property
    def order(self):
        return np.arange(self.T)[::-1] if self.reverse else np.arange(self.T)

    @property
    def leaf_sizes(self):
        return sizes(self.states[0])

    def leaf_names(self):
        n = len(self.leaf_sizes)
        return ["h", "c"][:n] if n <= 2 and self._is_builtin() else \
            (["h"] if n == 1 else [f"s{i}" for i in range(n)])

    def _is_builtin(self):
        return self.step in (nn.cells.lstm_step, nn.cells.rnn_tanh_step, nn.cells.rnn_relu_step,
                             nn.cells.gru_step, nn.cells.gru_reset_before_step)

    def flat_states(self):
        return np.stack([flatten(s) for s in self.states])        # (T+1, B, S)


def propagate(L: LayerFlow):
    """Backpropagate through the layer one lag at a time (see lags.py for the meaning)."""
    T, B = L.xs.shape[:2]
    flat = L.flat_states()
    S = flat.shape[-1]
    x_rows = L.xs[L.order].reshape(T * B, -1)
    L.graph = StepGraph(L.step, L.params, x_rows, flat[:-1].reshape(T * B, S), L.states[0],
                        expect=flat[1:].reshape(T * B, S))
    Y = L.graph.y_size
    cot = np.zeros((T, B, S))
    cot[-1] = L.d_final
    L.adj, L.adj_total = np.zeros((T + 1, B, S)), np.zeros((T * B, S))
    last_y = max(L.d_ys, default=-1)
    k = 0
    while cot.any() or k <= last_y:
        gy = L.d_ys.get(k)
        gy = np.zeros((T * B, Y)) if gy is None else gy[L.order].reshape(T * B, Y)
        if cot.any() or gy.any():
            gp, gx, gprev, tot = L.graph.vjp(gy, cot.reshape(T * B, S))
            L.param_lags[k] = {L.names[n]: v for n, v in gp.items()}
            xl = np.empty_like(L.xs)
            xl[L.order] = gx.reshape(L.xs.shape)
            L.x_lags[k] = xl
            L.adj[1:] += cot
            L.adj_total += tot
            gprev = gprev.reshape(T, B, S)
            L.adj[0] += gprev[0]        # reaches the initial state: no parameter use left
            cot = np.concatenate([gprev[1:], np.zeros((1, B, S))])
        else:
            cot = np.zeros((T, B, S))
        k += 1
    L.adj_total = L.adj_total.reshape(T, B, S)


@dataclass(eq=False)
class Flow:
    layers: list                     # LayerFlow, bottom layer first, forward before reverse
    source: str
    loss: float | None = None
    reference: dict = field(default_factory=dict)   # gradients reported by the source itself
    kind: str = "custom"

    def layer(self, name=None):
        if name is None:
            return self.layers[0]
        for L in self.layers:
            if L.name == name:
                return L
        raise KeyError(f"Flow.layer: no layer {name!r}; the flow has "
                       f"{', '.join(L.name for L in self.layers)}")

    def grads(self):
        """dL/dparam rebuilt as the sum over lags (must equal the source's own gradient)."""
        out = {}
        for L in self.layers:
            for part in L.param_lags.values():
                for k, v in part.items():
                    out[k] = out.get(k, 0) + v
        return out

    # thin accessors so users need one import; the work lives in the sibling modules
    def norms(self):
        from .norms import grad_norms
        return grad_norms(self)

    def lags(self, weights=None):
        from .lags import lag_table
        return lag_table(self, weights)

    def chains(self, n_sv=3):
        from .jacobians import jacobian_chains
        return jacobian_chains(self, n_sv)

    def routes(self):
        from .routes import route_split
        return route_split(self)

    def diagnose(self):
        from .diagnose import diagnose
        return diagnose(self)


# ---------------------------------------------------------------- models -> layer specs
def _specs(model):
    """Per layer, per direction: (step, {local: Tensor}, reverse, {local: model name})."""
    if isinstance(model, nn.Recurrent):
        return [[(model.step, model.params, model.reverse, {k: k for k in model.params})]], "custom"
    if isinstance(model, nn._SequenceModel):
        ps, rows = model.parameters(), []
        for layer in range(model.num_layers):
            row = []
            for d, suffix in enumerate(model._suffixes(layer)):
                loc = {k: k + suffix for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                       if k + suffix in ps}
                row.append((model.step_fn(), {k: ps[v] for k, v in loc.items()}, d == 1, loc))
            rows.append(row)
        return rows, model.mode
    raise TypeError(f"graphgrad.flow: expected gg.RNN/LSTM/GRU or gg.Recurrent, got "
                    f"{type(model).__name__}")


def _as64(state):
    if isinstance(state, tuple):
        return tuple(_as64(s) for s in state)
    return np.asarray(state.data if isinstance(state, Tensor) else state, np.float64)


def _default_state0(model, batch):
    if isinstance(model, nn._SequenceModel):
        return _as64(model.init_state(batch))
    raise ValueError("graphgrad.flow: a custom Recurrent model needs an explicit state0")


def _run(specs, kind, xs, state0, requires_grad):
    """Forward in float64 on the tape; returns out, final, and per layer-direction records."""
    recs, layer_in, finals = [], Tensor(xs), []
    for li, row in enumerate(specs):
        outs = []
        for d, (step, params, reverse, names) in enumerate(row):
            P = {k: Tensor(np.array(v.data, np.float64), requires_grad=requires_grad)
                 for k, v in params.items()}
            k_idx = li * len(row) + d
            s = state0 if kind == "custom" else nn._map_state(
                state0, lambda st: getitem(Tensor(st, requires_grad=requires_grad), k_idx))
            s = nn._map_state(s, lambda st: st if isinstance(st, Tensor) else
                              Tensor(st, requires_grad=requires_grad))
            T = xs.shape[0]
            ys, states = [None] * T, [s]
            for t in (range(T - 1, -1, -1) if reverse else range(T)):
                ys[t], s = step(P, layer_in[t], s)
                for leaf in leaves(s):
                    if requires_grad:
                        leaf.retain_grad()
                states.append(s)
            y = stack(ys, 0)
            name = f"l{li}" + ("_reverse" if reverse else "")
            recs.append(dict(name=name, layer=li, direction=d, step=step, P=P, names=names,
                             reverse=reverse, xs=layer_in.data, states=states, y=y))
            outs.append(y)
            finals.append(s)
        layer_in = concat(outs, axis=-1)
    if kind == "custom":
        final = nn._map_state(finals[0], lambda t: t * 1.0)   # a node of its own: clean grad
    elif kind == "lstm":
        final = (stack([f[0] for f in finals]), stack([f[1] for f in finals]))
    else:
        final = stack(finals)
    return layer_in, final, recs


def _build(recs, kind, d_out, d_final, source, loss=None, reference=None):
    layers = []
    for r in recs:
        states = [_as64(nn._map_state(s, lambda t: t.data)) for s in r["states"]]
        layers.append(LayerFlow(r["name"], r["layer"], r["direction"], r["step"],
                                {k: v.data for k, v in r["P"].items()}, r["names"], r["reverse"],
                                np.asarray(r["xs"], np.float64), states))
    k_of = {id(L): i for i, L in enumerate(layers)}
    for L in layers:   # the final-state cotangent of every layer-direction
        part = d_final if kind == "custom" else nn._map_state(d_final, lambda a: a[k_of[id(L)]])
        L.d_final = flatten(part)
    top = max(L.layer for L in layers)
    for li in range(top, -1, -1):
        row = [L for L in layers if L.layer == li]
        if li == top:
            cots = {0: d_out}
        else:   # what the layer above sent into its inputs, lag by lag, summed over directions
            cots = {}
            for A in (A for A in layers if A.layer == li + 1):
                for k, v in A.x_lags.items():
                    cots[k] = cots.get(k, 0) + v
        start = 0
        for L in row:
            width = _y_width(L)
            L.d_ys = {k: v[..., start:start + width] for k, v in cots.items()}
            start += width
            propagate(L)
    return Flow(layers, source, loss, reference or {}, kind)


def _y_width(L):
    with no_grad():
        P = {k: Tensor(v) for k, v in L.params.items()}
        y, _ = L.step(P, Tensor(L.xs[0]), nn._map_state(L.states[0], Tensor))
    return int(np.prod(y.shape[1:]))


def _batch_first(model):
    """True for a built-in model that takes and returns (B, T, ...) arrays."""
    return isinstance(model, nn._SequenceModel) and bool(model.batch_first)


def model_layout(model, a):
    """A time-major (T, B, ...) array or Tensor in the model's own layout, and back again."""
    if not _batch_first(model):
        return a
    return a.transpose((1, 0, 2)) if isinstance(a, Tensor) else np.swapaxes(a, 0, 1)


def _prepare(model, xs, state0):
    """Specs, kind, time-major float64 xs (T, B, F) and the float64 initial state."""
    specs, kind = _specs(model)
    xs = np.asarray(xs.data if isinstance(xs, Tensor) else xs, np.float64)
    t_axis = 1 if _batch_first(model) else 0
    if xs.ndim != 3 or xs.shape[t_axis] < 1:
        want = "(B, T >= 1, features) (batch_first)" if t_axis else "(T >= 1, B, features)"
        raise ValueError(f"graphgrad.flow: xs must be {want}, got {list(xs.shape)}")
    xs = np.ascontiguousarray(model_layout(model, xs))    # flow works time-major inside
    if isinstance(model, nn._SequenceModel) and state0 is not None:
        model._check_structure(state0)
        model._check_state(nn._map_state(state0, np.asarray), xs.shape[1])
    state0 = _default_state0(model, xs.shape[1]) if state0 is None else _as64(state0)
    for what, a in [("xs", xs)] + [("state0", v) for v in leaves(state0)]:
        if not np.all(np.isfinite(a)):
            raise ValueError(f"graphgrad.flow: {what} holds NaN or inf; gradient flow needs "
                             f"finite values")
    return specs, kind, xs, state0


def readout(dim, seed=0):
    """The fixed random readout vector of the default loss (unit variance per output)."""
    return np.random.default_rng(seed + 7919).standard_normal(dim)


def from_tape(model, xs, state0=None, loss="last", seed=0) -> Flow:
    """Run `model` on the tape, take `loss(out, final_state) -> scalar Tensor` and its backward.

    loss="last" (default) is the many-to-one loss L = sum_b <out[T-1, b], r> with a fixed random
    readout r; loss="all" sums that readout over every step. The tape's own gradients are kept in
    `flow.reference` (params, and per-step state gradients) for cross-checking.
    """
    if isinstance(loss, str) and loss not in ("last", "all"):
        raise ValueError(f"from_tape: loss must be 'last', 'all' or a function (out, final) -> "
                         f"scalar Tensor, got {loss!r}")
    if not isinstance(loss, str) and not callable(loss):
        raise TypeError(f"from_tape: loss must be 'last', 'all' or a function, got "
                        f"{type(loss).__name__}")
    specs, kind, xs, state0 = _prepare(model, xs, state0)
    out, final, recs = _run(specs, kind, xs, state0, True)
    out.retain_grad()
    for f in leaves(final):
        f.retain_grad()
    if loss in ("last", "all"):
        r = readout(out.shape[-1], seed)
        L = (out[xs.shape[0] - 1] * r).sum() if loss == "last" else (out * r).sum()
    else:
        L = loss(model_layout(model, out), final)   # the output as the model returns it
    backward(L)
    d_out = np.zeros(out.shape) if out.grad is None else out.grad
    d_final = nn._map_state(final, lambda t: np.zeros(t.shape) if t.grad is None else t.grad)
    ref = {"grads": {r["names"][k]: (np.zeros(p.shape) if p.grad is None else p.grad)
                     for r in recs for k, p in r["P"].items()},
           "state_grads": {r["name"]: np.stack([flatten(nn._map_state(
               s, lambda t: np.zeros(t.shape) if t.grad is None else t.grad))
               for s in r["states"][1:]]) for r in recs}}
    return _build(recs, kind, d_out, d_final, "tape", float(L.data), ref)


def from_adjoints(model, xs, state0, d_out, d_final=None) -> Flow:
    """A flow from model-level cotangents supplied by any source: d_out = dL/dout (T, B, D*H),
    or (B, T, D*H) for a batch_first model, and d_final = dL/d(final state), shaped like the
    model's final state (None: zeros)."""
    specs, kind, xs, state0 = _prepare(model, xs, state0)
    with no_grad():
        out, final, recs = _run(specs, kind, xs, state0, False)
    d_out = np.asarray(d_out, np.float64)
    want = model_layout(model, np.empty(out.shape, bool)).shape
    if d_out.shape != want:
        raise ValueError(f"from_adjoints: d_out has shape {d_out.shape}, the output is {want}")
    d_out = np.ascontiguousarray(model_layout(model, d_out))
    if d_final is None:
        d_final = nn._map_state(final, lambda t: np.zeros(t.shape))
    d_final = _as64(d_final)
    want, got = leaves(final), leaves(d_final)
    if len(want) != len(got) or any(a.shape != b.shape for a, b in zip(want, got)):
        raise ValueError(f"from_adjoints: d_final has shapes {[list(b.shape) for b in got]}, the "
                         f"final state has {[list(a.shape) for a in want]}")
    return _build(recs, kind, d_out, d_final, "adjoints")
