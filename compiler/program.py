"""The recurrent program at IR level, and its reference executor.

A model (a `graphgrad.Recurrent`, or a built-in RNN/LSTM/GRU through its `layers()`) becomes one
`LayerDir` per layer and direction: the traced step graph and its backward step graph. The
reference executor loops over time calling the interpreter: the forward loop saves each step's
incoming state, the reverse loop feeds it with the cotangents to the backward graph, which
recomputes the forward intermediates it needs. Slow and obvious on purpose: it is the semantic
oracle the optimized and native programs are compared against.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphgrad.core import AVal, FLOAT_DTYPES, Tensor
from graphgrad.nn import Recurrent

from . import ir
from .autodiff import vjp_graph
from .interp import run
from .trace import StepGraph, flatten, to_aval, trace_step, unflatten


@dataclass
class LayerDir:
    layer: int
    direction: int
    reverse: bool
    rec: Recurrent
    step: StepGraph
    bwd: object                  # vjp_graph(step.G): (params, x, state, ct_y, ct_state) ->
                                 #   (d_params..., [d_x if x is float], d_state...)
    names: dict                  # step param key -> model parameter name
    x_grad: bool                 # False for integer inputs (token ids)

    def params(self):
        return [self.rec.params[k].data for k in self.step.params]


def _arr(v):
    return v.data if isinstance(v, Tensor) else np.asarray(v)


def _structure(tree):
    """'one array', 'a tuple of 2 arrays (h, c)', ... for a flatten() tree."""
    if tree is None:
        return "one array"
    if isinstance(tree, tuple) and all(t is None for t in tree):
        return f"a tuple of {len(tree)} arrays"
    return f"the structure {tree} (None is one array)"


def _check(what, v, aval, expected="expected"):
    v = _arr(v)
    if tuple(v.shape) != tuple(aval.shape):
        raise ValueError(f"{what}: shape {list(v.shape)}, {expected} {list(aval.shape)}")
    if v.dtype != aval.dtype:
        raise TypeError(f"{what}: dtype {v.dtype}, {expected} {aval.dtype.name} "
                        "(no silent casts)")
    return v


class ReferenceProgram:
    """forward(xs, state0) -> (out, state_T); vjp(xs, state0, d_out, d_state_T) ->
    (param_grads keyed like model.parameters(), d_xs, d_state0). numpy in, numpy out."""

    def __init__(self, model, seq_len, batch, dtype=None, *, input_size=None, state=None):
        self.model, self.T, self.B = model, int(seq_len), int(batch)
        if self.T < 1 or self.B < 1:
            raise ValueError(f"seq_len and batch must be positive, got {seq_len}, {batch}")
        names = {id(t): k for k, t in model.parameters().items()}
        self.builtin = not isinstance(model, Recurrent)
        if self.builtin:
            self.dtype = np.dtype(dtype or model.dtype)
            if self.dtype != model.dtype:
                raise TypeError(f"compile: dtype={self.dtype.name} asked for a "
                                f"{model.dtype.name} model (no silent casts: build the model "
                                f"with dtype={self.dtype.name}, or leave dtype out)")
            H, D = model.hidden_size, model.num_directions
            self.tree = (None, None) if model.mode == "lstm" else None
            self.leaf = AVal((model.num_layers * D, self.B, H), self.dtype)
            rows = model.layers()
            x_avals = [AVal((self.B, model.input_size if i == 0 else D * H), self.dtype)
                       for i in range(len(rows))]
            one = AVal((self.B, H), self.dtype)
            s_avals = (one, one) if self.tree else one
            self.x_aval = AVal((self.T, self.B, model.input_size), self.dtype)
        else:
            if input_size is None or state is None:
                raise ValueError("compile: a custom Recurrent needs input_size= and "
                                 "state= (an example initial state: array or tuple of arrays)")
            rows = [[model]]
            leaves, self.tree = flatten(state)
            first = next(iter(model.params.values()), None)   # a step may have no parameters
            self.dtype = np.dtype(dtype or (first.dtype if first is not None
                                            else _arr(leaves[0]).dtype))
            for i, leaf in enumerate(leaves):
                if np.ndim(_arr(leaf)) < 1 or np.shape(_arr(leaf))[0] != self.B:
                    raise ValueError(f"compile: state= leaf {i} has shape "
                                     f"{list(np.shape(_arr(leaf)))}, but batch={self.B}: an "
                                     f"example state has the batch as its first axis")
            s_avals = unflatten(self.tree, [to_aval(_arr(s)) for s in leaves])
            x_avals = [AVal((self.B, int(input_size)), self.dtype)]
            self.x_aval = AVal((self.T, self.B, int(input_size)), self.dtype)
        self.state_avals = s_avals
        self.layers = []
        for li, row in enumerate(rows):
            out = []
            for d, rec in enumerate(row):
                sg = trace_step(rec.step, rec.params, x_avals[li], s_avals)
                x_grad = np.dtype(ir.node(sg.G, sg.x).dtype) in FLOAT_DTYPES
                wrt = list(sg.params.values()) + ([sg.x] if x_grad else []) + sg.state
                out.append(LayerDir(li, d, rec.reverse, rec, sg, vjp_graph(sg.G, wrt),
                                    {k: names[id(t)] for k, t in rec.params.items()}, x_grad))
            self.layers.append(out)

    # -- argument checking (all before any work)
    def _xs(self, xs):
        xs = _arr(xs)
        if self.builtin and self.model.batch_first:
            xs = np.swapaxes(xs, 0, 1) if xs.ndim == 3 else xs
        return _check("xs", xs, self.x_aval)

    def _state_leaves(self, what, s):
        if s is None:
            return [np.zeros(a.shape, a.dtype) for a in self._state_leaf_avals()]
        leaves, tree = flatten(s)
        if tree != self.tree:
            shapes = ", ".join(str(list(np.shape(_arr(v)))) for v in leaves)
            lstm = self.builtin and self.model.mode == "lstm"
            raise TypeError(f"{what}: wrong structure: expected {_structure(self.tree)}"
                            f"{' (h, c)' if lstm else ''}, got {_structure(tree)} (shapes "
                            f"{shapes})")
        return [_check(f"{what}[{i}]", v, a)
                for i, (v, a) in enumerate(zip(leaves, self._state_leaf_avals()))]

    def _state_leaf_avals(self):
        if self.builtin:
            return [self.leaf] * len(flatten(self.state_avals)[0])
        return flatten(self.state_avals)[0]

    def _per_layerdir(self, leaves, k):
        return [s[k] for s in leaves] if self.builtin else list(leaves)

    # -- running
    def _forward(self, xs, s0):
        layer_in, finals, tape = xs, [], []
        for row in self.layers:
            outs = []
            for ld in row:
                k = ld.layer * len(row) + ld.direction
                s = self._per_layerdir(s0, k)
                P, ys, saved = ld.params(), [None] * self.T, [None] * self.T
                ts = range(self.T - 1, -1, -1) if ld.reverse else range(self.T)
                for t in ts:
                    saved[t] = s
                    o = run(ld.step.G, *P, layer_in[t], *s)
                    ys[t], s = o[0], o[1:]
                outs.append(np.stack(ys))
                finals.append(s)
                tape.append((ld, layer_in, saved))
            layer_in = np.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
        return layer_in, finals, tape

    def _pack_state(self, finals):
        if self.builtin:
            leaves = [np.stack([f[i] for f in finals]) for i in range(len(finals[0]))]
        else:
            leaves = finals[0]
        return unflatten(self.tree, leaves)

    def forward(self, xs, state0=None):
        xs, s0 = self._xs(xs), self._state_leaves("state0", state0)
        out, finals, _ = self._forward(xs, s0)
        if self.builtin and self.model.batch_first:
            out = np.swapaxes(out, 0, 1)
        return out, self._pack_state(finals)

    def vjp(self, xs, state0, d_out, d_state_T=None):
        xs, s0 = self._xs(xs), self._state_leaves("state0", state0)
        d_out = self._d_out(d_out)
        d_sT = self._state_leaves("d_state_T", d_state_T)
        return self._reverse(d_out, self._record(xs, s0, d_sT), d_sT)

    def _reverse(self, d_out, ctx, d_sT=None):
        """Layers top-down: each layer-direction's reverse pass, chaining d_xs downwards."""
        grads = {}
        d_s0 = [None] * sum(len(row) for row in self.layers)
        d_layer_out = d_out
        for row in reversed(self.layers):
            d_in, off = None, 0
            for ld in row:
                k = ld.layer * len(row) + ld.direction
                width = ir.node(ld.step.G, ld.step.y).shape[-1]
                d_ys = np.ascontiguousarray(d_layer_out[..., off:off + width])
                off += width
                ds = None if d_sT is None else self._per_layerdir(d_sT, k)
                g, d_xs, d_s0[k] = self._layer_vjp(k, ld, ctx, d_ys, ds)
                for name, v in g.items():
                    grads[name] = grads[name] + v if name in grads else v
                if d_xs is not None:
                    d_in = d_xs if d_in is None else d_in + d_xs
            d_layer_out = d_in
        if self.builtin and self.model.batch_first and d_layer_out is not None:
            d_layer_out = np.swapaxes(d_layer_out, 0, 1)
        return grads, d_layer_out, self._pack_state(d_s0)

    def _d_out(self, d_out, T=None):
        """d_out checked against the xs of the forward pass it belongs to (T steps; by default
        the last xs checked)."""
        d_out = _arr(d_out)
        if self.builtin and self.model.batch_first and d_out.ndim == 3:
            d_out = np.swapaxes(d_out, 0, 1)
        width = sum(ir.node(ld.step.G, ld.step.y).shape[-1] for ld in self.layers[-1])
        T = self.x_aval.shape[0] if T is None else T
        return _check("d_out", d_out, AVal((T, self.B, width), self.dtype))

    # -- what the reverse pass of one layer-direction needs, and the pass itself
    def _record(self, xs, s0, d_sT):
        return self._forward(xs, s0)[2]

    def _layer_vjp(self, k, ld, tape, d_ys, ds):
        _, layer_in, saved = tape[k]
        return self._backward(ld, layer_in, saved, d_ys, ds)

    def _backward(self, ld, xs, saved, d_ys, ds):
        P = ld.params()
        acc = [np.zeros_like(p) for p in P]
        d_xs = [None] * self.T
        ts = range(self.T) if ld.reverse else range(self.T - 1, -1, -1)
        for t in ts:
            o = run(ld.bwd, *P, xs[t], *saved[t], d_ys[t], *ds)
            for i in range(len(P)):
                acc[i] += o[i]
            rest = o[len(P):]
            if ld.x_grad:
                d_xs[t], rest = rest[0], rest[1:]
            ds = rest
        grads = {ld.names[k]: a for k, a in zip(ld.step.params, acc)}
        return grads, (np.stack(d_xs) if ld.x_grad else None), ds


def reference_program(model, seq_len, batch, dtype=None, *, input_size=None, state=None):
    """The IR-level program for `model` over `seq_len` steps of `batch` rows, run by the numpy
    interpreter. For a custom `Recurrent`, give input_size= and state= (an example initial
    state: an array or a tuple of arrays, batch rows included)."""
    return ReferenceProgram(model, seq_len, batch, dtype, input_size=input_size, state=state)
