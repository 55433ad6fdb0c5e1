"""Run a scheduled `Program` on numpy: the oracle the native code is tested against.

Buffers are numpy arrays of shape (slots, rows, cols); every Ref becomes a view, so in-place
updates and column windows behave exactly as the schedule's semantics say (schedule.py).
Elementwise bodies call each primitive's own numpy forward from graphgrad's table, so no op's
math is restated here.
"""
from __future__ import annotations

import numpy as np

from graphgrad.core import PRIMITIVES

from .schedule import (Copy, Fill, Fused, Gemm, Program, mat_shape, nslots, ref_window, slot_of,
                       validate)


def allocate(prog: Program, T: int) -> dict:
    """Zeroed storage for every buffer: name -> array (slots, rows, cols)."""
    return {n: np.zeros((nslots(b, T),) + mat_shape(b), dtype=b.dtype)
            for n, b in prog.buffers.items()}


def user_view(prog: Program, store: dict, name: str) -> np.ndarray:
    """A buffer as the user sees it: (cols,), (rows, cols) or (slots, rows, cols)."""
    b, a = prog.buffers[name], store[name]
    a = a if b.steps else a[0]
    return a.reshape(a.shape[:-2] + (b.shape[0],)) if len(b.shape) == 1 else a


def view(prog: Program, store: dict, ref, t, T) -> np.ndarray:
    """The 2-d window a Ref names (a view: writes go to the buffer)."""
    buf = prog.buffers[ref.buf]
    rows, per_t, col, cols, _ = ref_window(prog, ref)
    s = slot_of(buf, ref.t, t, T)
    a = store[ref.buf]
    block = a[s:s + T].reshape(T * rows, -1) if per_t else a[s]
    return block[:, col:col + cols]


def run_kernel(prog, store, k, t, T):
    V = lambda r: view(prog, store, r, t, T)  # noqa: E731
    if isinstance(k, Gemm):
        a, b = V(k.a), V(k.b)
        prod = (a.T if k.trans_a else a) @ (b.T if k.trans_b else b)
        out = V(k.out)
        if k.accumulate:
            out += prod
        else:
            out[...] = prod
    elif isinstance(k, Copy):
        V(k.out)[...] = V(k.src)
    elif isinstance(k, Fill):
        V(k.out)[...] = k.value
    elif isinstance(k, Fused):
        run_fused(prog, k, V)
    else:
        raise TypeError(f"unknown kernel {type(k).__name__}")


def run_fused(prog, k: Fused, V):
    env = {}
    for i, (r, bc) in enumerate(k.inputs):
        x = V(r)
        env[f"in{i}"] = x[0, 0] if bc == "scalar" else (x[0] if bc == "row" else x)
    # Inputs are copied before outputs are written: the native loop nest reads every element
    # of a row before storing it, so in-place updates behave the same way.
    env = {n: np.array(v) for n, v in env.items()}
    dtype = next(iter(env.values())).dtype if env else None
    for dst, op, args, attrs in k.body:
        vals = [env[a] if isinstance(a, str) else np.asarray(a, dtype=dtype) for a in args]
        with np.errstate(all="ignore"):
            env[dst] = np.asarray(PRIMITIVES[op].fwd(*vals, **dict(attrs)))
    for name, r in k.outputs:
        out = V(r)
        out[...] = np.broadcast_to(env[name], out.shape)
    dom = V(k.outputs[0][1] if k.outputs else next(r for r, bc in k.inputs if bc == "full"))
    for name, r, acc in k.colsums:
        out = V(r)
        s = np.broadcast_to(env[name], dom.shape).sum(axis=0)
        if acc:
            out[0] += s
        else:
            out[0] = s
    for name, r, op in k.rowreds:
        with np.errstate(all="ignore"):
            V(r)[...] = getattr(np, op)(np.broadcast_to(env[name], dom.shape), axis=1,
                                        keepdims=True)


def execute(prog: Program, T: int, inputs: dict, check: bool = True, phase=None,
            store=None) -> dict:
    """Run pre, the forward loop, the reverse loop and post; returns the storage dict.

    inputs: buffer name -> array in user shape ((slots,) + shape for time-indexed buffers);
    missing buffers start at zero. Read results with `user_view`. phase="fwd" runs pre and the
    forward loop only; phase="bwd" the reverse loop and post on the `store` a "fwd" call returned.
    """
    if T < 1:
        raise ValueError(f"execute: T must be >= 1, got {T}")
    if check and phase != "bwd":
        validate(prog)
    if phase == "bwd":
        if store is None:
            raise ValueError("execute: phase='bwd' needs the store of the forward phase")
    else:
        store = allocate(prog, T)
    for name, value in inputs.items():
        if name not in store:
            raise KeyError(f"execute: no buffer named {name!r}")
        dst = user_view(prog, store, name)
        value = np.asarray(value)
        if value.shape != dst.shape:
            raise ValueError(f"execute: {name} has shape {value.shape}, buffer is {dst.shape}")
        dst[...] = value
    if phase != "bwd":
        for k in prog.pre:
            run_kernel(prog, store, k, None, T)
        for t in range(T):
            for k in prog.fwd_loop:
                run_kernel(prog, store, k, t, T)
    if phase != "fwd":
        for t in reversed(range(T)):
            for k in prog.bwd_loop:
                run_kernel(prog, store, k, t, T)
        for k in prog.post:
            run_kernel(prog, store, k, None, T)
    return store
