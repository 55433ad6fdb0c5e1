"""Numerical gradient checking: central finite differences in float64.

Small inputs are checked one element at a time; large ones along random directions, comparing
the directional derivative (f(x + eps v) - f(x - eps v)) / 2 eps with <grad, v>.
Errors are reported per input as the largest absolute difference and that difference relative to
the largest gradient entry (so entries that are ~0 do not blow the relative figure up).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .core import Tensor, no_grad


class GradcheckError(AssertionError):
    def __init__(self, report):
        super().__init__(f"gradient check failed\n{report}")
        self.report = report


@dataclass
class InputReport:
    name: str
    shape: tuple
    mode: str            # "elementwise" or "directions"
    max_abs_err: float
    max_rel_err: float


@dataclass
class GradcheckReport:
    inputs: list
    rtol: float
    atol: float

    @property
    def ok(self):
        return all(r.max_rel_err <= self.rtol or r.max_abs_err <= self.atol for r in self.inputs)

    @property
    def max_rel_err(self):
        return max((r.max_rel_err for r in self.inputs), default=0.0)

    def __str__(self):
        rows = [f"{'input':<22}{'shape':<16}{'mode':<13}{'max abs err':>13}{'max rel err':>13}"]
        for r in self.inputs:
            rows.append(f"{r.name:<22}{str(list(r.shape)):<16}{r.mode:<13}"
                        f"{r.max_abs_err:>13.3e}{r.max_rel_err:>13.3e}")
        rows.append(f"{'ok' if self.ok else 'FAILED'} (rtol {self.rtol:g}, atol {self.atol:g})")
        return "\n".join(rows)


def _as_named(inputs):
    if isinstance(inputs, dict):
        return list(inputs.items())
    return [(f"arg{i}", v) for i, v in enumerate(inputs)]


def _check_eps(who, eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ValueError(f"{who}: eps must be a step in (0, 1), got {eps!r}")


def _scalarize(out, proj):
    """Reduce a non-scalar output to <out, proj> with a fixed random projection."""
    if out.size == 1:
        return out.sum()
    return (out * proj).sum()


def _tensors(out):
    """The Tensors of an output, in order, through nested tuples and lists (an RNN's
    (output, h_n) or an LSTM's (output, (h_n, c_n)))."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def _differentiable(outs):
    """Indices of the outputs the tape differentiates: float64 and on the tape. A detached
    state (truncated BPTT), an int label or a float32 constant is left out: its tape gradient
    is zero by design, so finite differences through it would report a failure that is none."""
    return [i for i, o in enumerate(outs) if o.requires_grad and o.dtype == np.float64]


def _scalarize_all(outs, keep, projs, who):
    """Sum of the kept outputs' projections: a gradient that reaches only one output (c_n of an
    LSTM, which the output sequence never shows) still moves the checked value. With several
    outputs each gets a random weight, scalars too, so errors in two of them cannot cancel."""
    if len(outs) <= max(keep, default=-1):
        raise ValueError(f"{who}: the function returned {len(outs)} Tensors on one call and more "
                         f"on another; finite differences need the same outputs every call")
    if len(keep) == 1:
        return _scalarize(outs[keep[0]], projs[0])
    terms = [(outs[i] * p).sum() for i, p in zip(keep, projs)]
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def gradcheck(fn, inputs, *, eps=1e-6, rtol=1e-6, atol=1e-12, max_elements=64, directions=8,
              seed=0, raise_on_failure=True) -> GradcheckReport:
    """Check the tape's gradient of `fn(*tensors)` (or `fn(**tensors)` for a dict) numerically.

    `inputs`: list or dict of float64 arrays. A non-scalar output is projected onto a fixed
    random tensor first, so every output entry takes part; a tuple of outputs is checked
    through the sum of their projections (outputs off the tape, or not float64, left out).
    """
    _check_eps("gradcheck", eps)
    named = _as_named(inputs)
    arrays = []
    for name, v in named:
        a = v.data if isinstance(v, Tensor) else np.asarray(v)
        if a.dtype != np.float64:
            raise TypeError(f"gradcheck: input {name!r} is {a.dtype}; finite differences need "
                            f"float64 to be meaningful")
        arrays.append(a.copy())
    rng = np.random.default_rng(seed)
    call = (lambda ts: fn(**dict(zip([n for n, _ in named], ts)))) if isinstance(inputs, dict) \
        else (lambda ts: fn(*ts))
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = call(ts)
    outs = _tensors(out)
    keep = _differentiable(outs)
    if not keep:
        raise TypeError(f"gradcheck: fn must return a float64 graphgrad Tensor built from the "
                        f"Tensors it is given (so the tape sees it), got {type(out).__name__}")
    projs = [rng.standard_normal(outs[i].shape) for i in keep]
    _scalarize_all(outs, keep, projs, "gradcheck").backward()
    grads = [t.grad if t.grad is not None else np.zeros_like(t.data) for t in ts]

    def f(vals):
        with no_grad():
            outs = _tensors(call([Tensor(v) for v in vals]))
            return float(_scalarize_all(outs, keep, projs, "gradcheck").data)

    reports = [_compare(name, f, arrays, k, g, eps, max_elements, directions, rng)
               for k, ((name, _), g) in enumerate(zip(named, grads))]
    report = GradcheckReport(reports, rtol, atol)
    if raise_on_failure and not report.ok:
        raise GradcheckError(report)
    return report


def gradcheck_model(model, *args, eps=1e-6, rtol=1e-6, atol=1e-12, max_elements=64,
                    directions=8, seed=0, raise_on_failure=True) -> GradcheckReport:
    """Check every parameter of `model` and every float64 array argument of `model(*args)`,
    including the arrays inside a tuple argument such as an LSTM's initial state (h0, c0).

    Every float64 Tensor the model returns on the tape (the output sequence and the final
    state, through nested tuples) is projected onto its own fixed random tensor and the
    projections are summed, so a gradient that reaches only the final state is checked too;
    detached, integer or float32 outputs are left out. Parameters are perturbed in
    place (and restored, with the gradients they held), so any Module works without re-plumbing
    its parameters.
    """
    _check_eps("gradcheck_model", eps)
    params = model.parameters()
    for k, p in params.items():
        if p.data.dtype != np.float64:
            raise TypeError(f"gradcheck_model: parameter {k!r} is {p.data.dtype}; build the model "
                            f"with dtype=np.float64")
    # float64 arrays among the arguments, and inside tuple arguments (an LSTM's (h0, c0)):
    # (position, index in the tuple or None)
    slots = []
    for i, a in enumerate(args):
        if _is_float64_array(a):
            slots.append((i, None))
        elif isinstance(a, tuple):
            slots += [(i, j) for j, x in enumerate(a) if _is_float64_array(x)]
    names = list(params) + [f"arg{i}" if j is None else f"arg{i}[{j}]" for i, j in slots]
    arrays = [p.data.copy() for p in params.values()] + \
        [(args[i] if j is None else args[i][j]).copy() for i, j in slots]
    rng = np.random.default_rng(seed)
    saved_grads = [None if p.grad is None else p.grad.copy() for p in params.values()]

    def run(vals, grad):
        for p, v in zip(params.values(), vals):
            p.data = v
        call_args = [list(a) if isinstance(a, tuple) else a for a in args]
        tensors = []
        for (i, j), v in zip(slots, vals[len(params):]):
            tensors.append(Tensor(v, requires_grad=grad))
            if j is None:
                call_args[i] = tensors[-1]
            else:
                call_args[i][j] = tensors[-1]
        call_args = [tuple(c) if isinstance(a, tuple) else c for a, c in zip(args, call_args)]
        return _tensors(model(*call_args)), tensors

    try:
        model.zero_grad()
        outs, arg_tensors = run([a.copy() for a in arrays], True)
        keep = _differentiable(outs)
        if not keep:
            raise TypeError("gradcheck_model: the model returned no float64 graphgrad Tensor "
                            "that depends on its parameters or arguments")
        projs = [rng.standard_normal(outs[i].shape) for i in keep]
        _scalarize_all(outs, keep, projs, "gradcheck_model").backward()
        grads = [p.grad if p.grad is not None else np.zeros_like(p.data) for p in params.values()]
        grads += [t.grad if t.grad is not None else np.zeros_like(t.data) for t in arg_tensors]

        def f(vals):
            with no_grad():
                return float(_scalarize_all(run(vals, False)[0], keep, projs,
                                            "gradcheck_model").data)

        reports = [_compare(name, f, arrays, k, g, eps, max_elements, directions, rng)
                   for k, (name, g) in enumerate(zip(names, grads))]
    finally:
        # the model comes back as it was: its weights, and the gradients it held (the check's
        # own, of a random projection, must not leak into the caller's next backward())
        for p, a, g in zip(params.values(), arrays, saved_grads):
            p.data, p.grad = a, g
    report = GradcheckReport(reports, rtol, atol)
    if raise_on_failure and not report.ok:
        raise GradcheckError(report)
    return report


def _is_float64_array(a):
    return isinstance(a, np.ndarray) and a.dtype == np.float64


def _compare(name, f, arrays, k, g, eps, max_elements, directions, rng):
    a = arrays[k]
    if a.size <= max_elements:
        num = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            num[idx] = _central(f, arrays, k, _unit(a, idx), eps)
        ana, mode = g, "elementwise"
    else:
        vs = [rng.standard_normal(a.shape) for _ in range(directions)]
        num = np.array([_central(f, arrays, k, v, eps) for v in vs])
        ana, mode = np.array([np.sum(g * v) for v in vs]), "directions"
    err = float(np.max(np.abs(ana - num))) if num.size else 0.0
    scale = max(float(np.max(np.abs(ana), initial=0)), float(np.max(np.abs(num), initial=0)))
    return InputReport(name, a.shape, mode, err, err / scale if scale > 0 else err)


def _unit(a, idx):
    v = np.zeros_like(a)
    v[idx] = 1.0
    return v


def _central(f, arrays, k, v, eps):
    plus = [a if i != k else a + eps * v for i, a in enumerate(arrays)]
    minus = [a if i != k else a - eps * v for i, a in enumerate(arrays)]
    return (f(plus) - f(minus)) / (2 * eps)
