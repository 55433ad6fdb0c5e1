"""Optimizers and gradient clipping on duck-typed parameters.

A parameter is any object with ``.data`` (a float numpy array, updated in place) and ``.grad``
(an array of the same shape, or None). Optimizers take a dict name -> parameter, so their state is
keyed by the same names as ``model.parameters()`` and can be checkpointed next to the weights.

The update rules follow torch.optim (SGD, Adagrad, Adam, single param group). Differences:
  * a gradient whose dtype differs from its parameter is an error, as in torch (graphgrad
    never casts silently);
  * ``Adam(weight_decay=...)`` is torch's coupled L2 penalty, not AdamW;
  * state is keyed by parameter name, not by position, and ``state_dict()`` holds only plain
    Python numbers, strings and numpy arrays (see ``graphgrad.checkpoint``).
"""
import math
import numbers

import numpy as np


def _check_hyper(opt, **values):
    for name, v in values.items():
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{opt}: invalid {name} {v!r} (must be a finite number >= 0)")


class Optimizer:
    """Shared bookkeeping: parameter validation, zero_grad, state_dict round trip."""

    hyper_names = ()

    def __init__(self, params, **hyper):
        if not isinstance(params, dict) or not params:
            raise ValueError(f"{type(self).__name__}: params must be a non-empty dict "
                             f"name -> parameter, got {type(params).__name__}")
        for name, p in params.items():
            data = getattr(p, "data", None)
            if not isinstance(data, np.ndarray) or not np.issubdtype(data.dtype, np.floating):
                raise ValueError(f"{type(self).__name__}: parameter {name!r} needs a floating "
                                 f"numpy array in .data, got {type(data).__name__}"
                                 f"{'' if data is None else ' ' + str(getattr(data, 'dtype', ''))}")
        self.params = dict(params)
        # plain floats keep state_dict() JSON-friendly even if numpy scalars were passed
        self.hyper = {k: (v if isinstance(v, (bool, list)) else float(v)) for k, v in hyper.items()}
        self.state = {name: {} for name in self.params}

    def _grads(self):
        """Yield (name, param, grad); params without a grad are skipped, as in torch."""
        for name, p in self.params.items():
            g = p.grad
            if g is None:
                continue
            g = np.asarray(g)
            if g.shape != p.data.shape:
                raise ValueError(f"{type(self).__name__}: gradient of {name!r} has shape "
                                 f"{g.shape} but the parameter has shape {p.data.shape}")
            if g.dtype != p.data.dtype:
                raise TypeError(f"{type(self).__name__}: gradient of {name!r} is {g.dtype} but "
                                f"the parameter is {p.data.dtype}")
            yield name, p, g

    def zero_grad(self, set_to_none=True):
        """Clear gradients; like torch, the default drops them (``grad = None``)."""
        for p in self.params.values():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def state_dict(self):
        """{'type', 'hyper', 'state': {name: {key: int | ndarray}}}; arrays are copies."""
        return {"type": type(self).__name__, "hyper": dict(self.hyper),
                "state": {n: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                              for k, v in s.items()} for n, s in self.state.items()}}

    def load_state_dict(self, sd):
        """Restore hyperparameters and per-parameter state saved by ``state_dict()``."""
        me = type(self).__name__
        if sd.get("type") != me:
            raise ValueError(f"{me}: cannot load optimizer state saved by {sd.get('type')!r}")
        names, saved = set(self.params), set(sd["state"])
        if names != saved:
            raise ValueError(f"{me}: optimizer state does not match the parameters: "
                             f"missing {sorted(names - saved)}, unexpected {sorted(saved - names)}")
        for name, s in sd["state"].items():
            for k, v in s.items():
                if isinstance(v, np.ndarray) and v.shape != self.params[name].data.shape:
                    raise ValueError(f"{me}: state {k!r} of {name!r} has shape {v.shape} but the "
                                     f"parameter has shape {self.params[name].data.shape}")
        self.hyper = dict(sd["hyper"])
        self.state = {n: {k: (np.array(v, dtype=self.params[n].data.dtype)
                              if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                      for n, s in sd["state"].items()}


class SGD(Optimizer):
    """torch.optim.SGD without dampening: buf = m*buf + g (buf = g on the first step)."""

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        _check_hyper("SGD", lr=lr, momentum=momentum, weight_decay=weight_decay)
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov momentum requires momentum > 0")
        super().__init__(params, lr=lr, momentum=momentum, nesterov=bool(nesterov),
                         weight_decay=weight_decay)

    def step(self):
        """Apply one update to every parameter that has a gradient."""
        h = self.hyper
        for name, p, g in self._grads():
            if h["weight_decay"]:
                g = g + h["weight_decay"] * p.data
            if h["momentum"]:
                st = self.state[name]
                if "momentum_buffer" not in st:
                    # np.array: an array even when g is a numpy scalar (0-d parameter plus weight
                    # decay), so the in-place updates below reach the stored buffer
                    st["momentum_buffer"] = np.array(g)
                else:
                    buf = st["momentum_buffer"]
                    buf *= h["momentum"]
                    buf += g
                buf = st["momentum_buffer"]
                g = g + h["momentum"] * buf if h["nesterov"] else buf
            p.data -= h["lr"] * g


class Adagrad(Optimizer):
    """torch.optim.Adagrad: sum += g^2; p -= lr_t * g / (sqrt(sum) + eps)."""

    def __init__(self, params, lr=1e-2, eps=1e-10, weight_decay=0.0, lr_decay=0.0,
                 initial_accumulator_value=0.0):
        _check_hyper("Adagrad", lr=lr, eps=eps, weight_decay=weight_decay, lr_decay=lr_decay,
                     initial_accumulator_value=initial_accumulator_value)
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, lr_decay=lr_decay,
                         initial_accumulator_value=initial_accumulator_value)
        # torch creates the accumulator eagerly, so a state_dict taken before step() has it too
        for name, p in self.params.items():
            self.state[name] = {"step": 0,
                                "sum": np.full_like(p.data, initial_accumulator_value)}

    def step(self):
        """Apply one update to every parameter that has a gradient."""
        h = self.hyper
        for name, p, g in self._grads():
            st = self.state[name]
            st["step"] += 1
            if h["weight_decay"]:
                g = g + h["weight_decay"] * p.data
            lr = h["lr"] / (1 + (st["step"] - 1) * h["lr_decay"])
            st["sum"] += g * g
            p.data -= lr * g / (np.sqrt(st["sum"]) + h["eps"])


class Adam(Optimizer):
    """torch.optim.Adam (amsgrad=False), bias-corrected; weight_decay is an L2 term on g."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        _check_hyper("Adam", lr=lr, eps=eps, weight_decay=weight_decay)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam: invalid betas {betas!r} (each must be in [0, 1))")
        # betas kept as a list so the state survives a JSON round trip unchanged
        super().__init__(params, lr=lr, betas=[float(b1), float(b2)], eps=eps,
                         weight_decay=weight_decay)

    def step(self):
        """Apply one update to every parameter that has a gradient."""
        h = self.hyper
        b1, b2 = h["betas"]
        for name, p, g in self._grads():
            st = self.state[name]
            if not st:
                st.update(step=0, exp_avg=np.zeros_like(p.data), exp_avg_sq=np.zeros_like(p.data))
            st["step"] += 1
            if h["weight_decay"]:
                g = g + h["weight_decay"] * p.data
            m, v, t = st["exp_avg"], st["exp_avg_sq"], st["step"]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + h["eps"]
            p.data -= (h["lr"] / (1 - b1 ** t)) * m / denom


def _grad_arrays(grads_or_params):
    """Normalise a dict / iterable of params or arrays to the list of gradient arrays."""
    items = grads_or_params.values() if isinstance(grads_or_params, dict) else grads_or_params
    out = []
    for x in items:
        g = x if isinstance(x, np.ndarray) else getattr(x, "grad", None)
        if g is not None:
            out.append(g)
    return out


def clip_grad_norm(grads_or_params, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale all gradients in place so their global norm is at most ``max_norm``.

    Accepts a dict or iterable of parameters (their ``.grad`` is used) or of gradient arrays.
    Returns the total norm before clipping, like torch.nn.utils.clip_grad_norm_. The norm is
    accumulated in float64 (torch uses the gradient dtype).
    """
    _check_hyper("clip_grad_norm", max_norm=max_norm)
    grads = _grad_arrays(grads_or_params)
    if not grads:
        return 0.0
    norm_type = float(norm_type)
    if not norm_type > 0:    # torch's 0 and -inf "norms" (count, min) clip nothing useful
        raise ValueError(f"clip_grad_norm: norm_type must be > 0 or inf, got {norm_type:g}")
    if norm_type == math.inf:
        total = max(float(np.max(np.abs(g), initial=0.0)) for g in grads)
    else:
        total = sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type)) for g in grads)
        total = total ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise ValueError(f"clip_grad_norm: the total gradient norm is {total}")
    # torch's epsilon keeps the clipped norm just under max_norm and avoids dividing by zero
    # min() keeps a NaN coefficient, so a NaN/inf norm poisons the grads exactly as in torch
    coef = min(max_norm / (total + 1e-6), 1.0)
    if coef != 1.0:
        for g in grads:
            g *= coef
    return total


def clip_grad_value(grads_or_params, clip):
    """Clamp every gradient element into [-clip, clip] in place."""
    _check_hyper("clip_grad_value", clip=clip)
    for g in _grad_arrays(grads_or_params):
        np.clip(g, -clip, clip, out=g)
