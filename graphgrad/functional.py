"""Composite functions built from primitives: their gradients come from the primitives' rules."""
from __future__ import annotations

import numpy as np

from . import ops
from .ops import concat, exp, getitem, log, max, reshape, stop_gradient, sum, take


def mean(x, axis=None, keepdims=False):
    axes = ops._norm_axes("mean", axis, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    return sum(x, axes, keepdims) / float(count)


def log_softmax(x, axis=-1):
    # Shifting by the (constant) max keeps exp from overflowing; the shift cancels in the value
    # and so carries no gradient.
    shifted = x - stop_gradient(max(x, axis, keepdims=True))
    return shifted - log(sum(exp(shifted), axis, keepdims=True))


def softmax(x, axis=-1):
    return exp(log_softmax(x, axis))


def cross_entropy(logits, targets, reduction="mean"):
    """Negative log-likelihood of integer `targets` (shape logits.shape[:-1]) under `logits`."""
    t = targets.data if isinstance(targets, ops.Tensor) else targets
    if not isinstance(t, ops.Tracer):
        t = np.asarray(t)   # a list or a bare int is checked (and kept integer) like an array
    if isinstance(t, np.ndarray) and tuple(t.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"cross_entropy: targets {list(t.shape)} must have the shape of logits "
                         f"{list(logits.shape)} without its last (class) axis")
    picked = sum(log_softmax(logits) * ops.one_hot(t, logits.shape[-1], logits.dtype), -1)
    if reduction == "mean":
        return -mean(picked)
    if reduction == "sum":
        return -sum(picked)
    if reduction == "none":
        return -picked
    raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def mse(pred, target, reduction="mean"):
    if tuple(pred.shape) != tuple(np.shape(target)):
        raise ValueError(f"mse: prediction {list(pred.shape)} and target "
                         f"{list(np.shape(target))} differ in shape")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"mse: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    sq = (pred - target) * (pred - target)
    return mean(sq) if reduction == "mean" else sum(sq) if reduction == "sum" else sq


def split(x, sizes_or_sections, axis=-1):
    """Split along `axis` into equal sections (an int) or pieces of the given sizes (a list)."""
    axis = ops._norm_axes("split", axis, x.ndim)[0]
    n = x.shape[axis]
    if isinstance(sizes_or_sections, (int, np.integer)):
        if sizes_or_sections < 1:
            raise ValueError(f"split: the number of sections must be >= 1, got "
                             f"{sizes_or_sections}")
        sizes_or_sections = int(sizes_or_sections)
        if n % sizes_or_sections:
            raise ValueError(f"split: axis {axis} of {list(x.shape)} does not divide into "
                             f"{sizes_or_sections} equal sections")
        sizes = [n // sizes_or_sections] * sizes_or_sections
    else:
        sizes = list(sizes_or_sections)
        if np.sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} do not add up to {n} (axis {axis} of "
                             f"{list(x.shape)})")
    out, start = [], 0
    for s in sizes:
        out.append(getitem(x, (slice(None),) * axis + (slice(start, start + s),)))
        start += s
    return out


def stack(xs, axis=0):
    xs = list(xs)
    if not xs:
        raise ValueError("stack: needs at least one tensor")
    nd = xs[0].ndim + 1
    axis = ops._norm_axes("stack", axis, nd)[0]
    return concat([reshape(x, x.shape[:axis] + (1,) + x.shape[axis:]) for x in xs], axis)


def embedding(weight, ids):
    """Rows of `weight` (num_embeddings, dim) picked by integer `ids` of any shape."""
    return take(weight, ids.data if isinstance(ids, ops.Tensor) else np.asarray(ids))
