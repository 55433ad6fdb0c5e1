"""One step function, evaluated on many (time step, sequence) rows at once, and its exact VJP.

Every analysis in graphgrad.flow reduces to "apply the vector-Jacobian product of one step to a
cotangent". Because a step function knows nothing of t, the steps of a whole sequence can be
stacked as rows of one batch: row block n holds (x_n, s_{n-1}) and yields (y_n, s_n). One tape
forward builds the graph; every backward over it is then the step's VJP at all time steps at once.
This relies on the step treating batch rows independently, which `StepGraph` checks by comparing
its stacked forward with the sequential forward.
"""
from __future__ import annotations

import numpy as np

from ..core import Tensor, backward
from ..nn import _state_leaves
from ..ops import concat, getitem, reshape


# ---------------------------------------------------------------- state pytrees <-> flat rows
leaves = _state_leaves


def sizes(state):
    """Feature size of every leaf of one state (leaves are (B, ...) arrays)."""
    return [int(np.prod(np.shape(x)[1:])) for x in leaves(state)]


def flatten(state):
    """A state pytree of (B, ...) arrays -> one (B, S) float64 array."""
    ls = leaves(state)
    return np.concatenate([np.asarray(x, np.float64).reshape(len(x), -1) for x in ls], -1)


def unflatten(flat, template):
    """Inverse of `flatten` for arrays or Tensors; `template` gives structure and leaf shapes."""
    pos = [0]

    def build(t):
        if isinstance(t, tuple):
            return tuple(build(s) for s in t)
        n = int(np.prod(np.shape(t)[1:]))
        start = pos[0]
        pos[0] += n
        shape = (flat.shape[0],) + tuple(np.shape(t)[1:])
        if isinstance(flat, Tensor):
            return reshape(getitem(flat, (slice(None), slice(start, start + n))), shape)
        return flat[:, start:start + n].reshape(shape)
    return build(template)


# ---------------------------------------------------------------- the stacked step
class StepGraph:
    """The step applied to rows (x rows (N, I), flat state rows (N, S)) with float64 leaves.

    `vjp(gy, gs)` returns (param cotangents summed over rows, x cotangents (N, I),
    previous-state cotangents (N, S), total state adjoints (N, S)). The last is the gradient the
    tape would put on the new state tensors themselves: for cells whose output *is* the state
    (y_t = h_t) it includes gy, as torch's retain_grad on h_t would.
    """

    def __init__(self, step, params, x_rows, s_rows, template, expect=None):
        self.P = {k: Tensor(np.array(v, np.float64), requires_grad=True)
                  for k, v in params.items()}
        self.X = Tensor(np.array(x_rows, np.float64), requires_grad=True)
        self.S = Tensor(np.array(s_rows, np.float64), requires_grad=True)
        y, s_new = step(self.P, self.X, unflatten(self.S, template))
        n = s_rows.shape[0]
        self.new_leaves = leaves(s_new)
        for t in self.new_leaves:
            t.retain_grad()
        self.y_size = int(np.prod(y.shape[1:]))
        self.root = concat([reshape(y, (n, -1))] + [reshape(t, (n, -1)) for t in self.new_leaves],
                           axis=-1)
        self.y = y.data.reshape(n, -1)
        self.s_new = self.root.data[:, self.y_size:]
        if expect is not None and not np.allclose(self.s_new, expect, rtol=1e-9, atol=1e-12):
            raise ValueError("graphgrad.flow: the step function gives different results when the "
                             "time steps are stacked as batch rows; flow needs a step that treats "
                             "batch rows independently (no statistics over the batch)")

    def vjp(self, gy, gs):
        for t in [*self.P.values(), self.X, self.S, *self.new_leaves]:
            t.grad = None
        g = np.concatenate([gy.reshape(len(gy), -1), gs], axis=-1)
        backward(self.root, g)

        def grad(t, shape):
            return np.zeros(shape) if t.grad is None else t.grad
        gp = {k: grad(t, t.shape) for k, t in self.P.items()}
        total = np.concatenate([grad(t, t.shape).reshape(len(gs), -1) for t in self.new_leaves], -1)
        return gp, grad(self.X, self.X.shape), grad(self.S, self.S.shape), total
