"""Weight initialisation helpers on plain numpy arrays.

Random numbers are drawn in float64 and then cast, so a float32 and a float64 model built from the
same seed start from the same (rounded) values. ``rng`` may be a numpy Generator or an int seed.
"""
import math

import numpy as np


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def rnn_bound(hidden_size):
    """PyTorch's default RNN/LSTM/GRU init bound, 1/sqrt(hidden_size)."""
    if hidden_size < 1:
        raise ValueError(f"rnn_bound: hidden_size must be >= 1, got {hidden_size}")
    return 1.0 / math.sqrt(hidden_size)


def uniform_(arr, bound, rng):
    """Fill ``arr`` in place with U(-bound, bound) and return it.

    PyTorch initialises every RNN weight and bias this way with ``bound = rnn_bound(H)``.
    """
    if not (bound >= 0 and math.isfinite(bound)):
        raise ValueError(f"uniform_: bound must be a finite number >= 0, got {bound!r}")
    arr[...] = _rng(rng).uniform(-bound, bound, size=arr.shape)
    return arr


def _semi_orthogonal(rows, cols, rng):
    # QR of the tall orientation; q has orthonormal columns
    flip = rows < cols
    a = rng.standard_normal((cols, rows) if flip else (rows, cols))
    q, r = np.linalg.qr(a)
    # QR is unique only up to column signs; fixing sign(diag r) makes q Haar-distributed
    d = np.sign(np.diag(r))
    d[d == 0] = 1.0
    q = q * d
    return q.T if flip else q


def orthogonal(shape, gain=1.0, rng=None, blocks=None, dtype=np.float64):
    """A (semi-)orthogonal matrix of ``shape`` scaled by ``gain``.

    Stacked gate weights like ``weight_hh`` of shape (G*H, H) are split into G row blocks and each
    (H, H) block is made orthogonal on its own, which is what recurrent nets want (a single
    (G*H, H) QR would only give orthonormal columns across all gates). ``blocks=None`` splits
    automatically when rows is a multiple of cols; pass ``blocks=1`` to orthogonalise the whole
    matrix, or an explicit G. Non-square blocks get orthonormal rows or columns, whichever fits.
    """
    if len(shape) != 2:
        raise ValueError(f"orthogonal: shape must be 2-D (rows, cols), got {tuple(shape)}")
    rows, cols = (int(s) for s in shape)
    if rows < 1 or cols < 1:
        raise ValueError(f"orthogonal: shape must be positive, got {(rows, cols)}")
    if blocks is None:
        blocks = rows // cols if rows > cols and rows % cols == 0 else 1
    if blocks < 1 or rows % blocks:
        raise ValueError(f"orthogonal: cannot split {rows} rows into {blocks} equal blocks")
    rng = _rng(rng)
    h = rows // blocks
    out = np.concatenate([_semi_orthogonal(h, cols, rng) for _ in range(blocks)], axis=0)
    return (gain * out).astype(dtype)


def forget_bias(bias, hidden, value=1.0):
    """Set the LSTM forget-gate slice ``bias[H:2H]`` (gate order i, f, g, o) in place.

    PyTorch has two biases (bias_ih and bias_hh) that add up; set the value on one of them
    and zero the other's slice if the effective forget bias should equal ``value``.
    """
    if bias.ndim != 1 or bias.shape[0] != 4 * hidden:
        raise ValueError(f"forget_bias: expected an LSTM bias of shape ({4 * hidden},) for "
                         f"hidden={hidden}, got {bias.shape}")
    bias[hidden:2 * hidden] = value
    return bias
