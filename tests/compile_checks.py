"""Shared checks for the compiled-program tests (test_compile*.py, report_compiled_errors.py).

`compare(prog, model, xs, s0)` runs prog.forward and prog.vjp with random cotangents and the same
computation on the eager tape (and, with `torch_model`, in PyTorch) and returns the worst relative
error per quantity. `ErrorTable` keeps the worst error per model label for the closing table.
The native table (CASES) is what test_compile.py and the report script both run; `Programs`
memoizes compiled programs so every check of a case reuses one compile.
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import graphgrad as gg  # noqa: E402
import compiler  # noqa: E402
from compiler.trace import flatten, unflatten  # noqa: E402
from conftest import rel_err  # noqa: E402

TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
DT_NAME = {np.dtype(np.float64): "f64", np.dtype(np.float32): "f32"}
I, H = 3, 4     # input and hidden sizes of the built-in models under test

MODELS = {   # kind -> factory(dtype, **layout)
    "rnn_tanh": lambda dt, **kw: gg.RNN(I, H, dtype=dt, **kw),
    "rnn_relu": lambda dt, **kw: gg.RNN(I, H, nonlinearity="relu", dtype=dt, **kw),
    "lstm": lambda dt, **kw: gg.LSTM(I, H, dtype=dt, **kw),
    "gru": lambda dt, **kw: gg.GRU(I, H, dtype=dt, **kw),
    "gru_reset_before": lambda dt, **kw: gg.GRU(I, H, reset_after=False, dtype=dt, **kw),
}
LAYOUTS = {"1layer": {}, "2layers": dict(num_layers=2), "bidir": dict(bidirectional=True),
           "2layers_bidir": dict(num_layers=2, bidirectional=True),
           "batch_first_nobias": dict(batch_first=True, bias=False)}

# The native table: (label, kind, layout, dtype, B, T). Every model kind, both dtypes, every
# layout, B in {1, 3, 64} and T in {1, 7, 100} appear; the full product runs on the numpy backend.
CASES = [
    ("rnn_tanh", "rnn_tanh", "1layer", np.float64, 3, 7),
    ("rnn_relu", "rnn_relu", "1layer", np.float64, 1, 100),
    ("lstm B64", "lstm", "1layer", np.float64, 64, 7),
    ("lstm T1", "lstm", "1layer", np.float64, 3, 1),
    ("gru", "gru", "1layer", np.float64, 3, 100),
    ("gru B5", "gru", "1layer", np.float64, 5, 7),
    ("gru_reset_before", "gru_reset_before", "1layer", np.float64, 1, 7),
    ("lstm f32", "lstm", "1layer", np.float32, 3, 100),
    ("gru f32 B64", "gru", "1layer", np.float32, 64, 1),
    ("rnn_relu f32 bidir", "rnn_relu", "bidir", np.float32, 3, 7),
    ("lstm 2layers", "lstm", "2layers", np.float64, 3, 7),
    ("gru bidir", "gru", "bidir", np.float64, 3, 7),
    ("rnn_tanh 2layers bidir", "rnn_tanh", "2layers_bidir", np.float64, 3, 7),
    ("lstm batch_first nobias", "lstm", "batch_first_nobias", np.float64, 3, 7),
    ("lstm T1000", "lstm", "1layer", np.float64, 3, 1000),
]
CASE = {c[0]: c for c in CASES}
TORCH_KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")    # reset_before has no torch twin


def make_model(kind, layout, dt, seed=0):
    return MODELS[kind](dt, seed=seed, **LAYOUTS[layout])


def random_state(model, B, rng, scale=0.5):
    s = model.init_state(B)
    return unflatten(flatten(s)[1], [(rng.normal(size=a.shape) * scale).astype(model.dtype)
                                     for a in flatten(s)[0]])


def model_xs(model, T, B, rng):
    shape = (B, T, model.input_size) if getattr(model, "batch_first", False) else \
        (T, B, model.input_size)
    return rng.normal(size=shape).astype(model.dtype)


class Programs:
    """Memo of compiled programs keyed by (case label, options): one compile per key."""

    def __init__(self):
        self.memo = {}

    def model(self, label):
        _, kind, layout, dt, _, _ = CASE[label]
        key = ("model", label)
        if key not in self.memo:
            self.memo[key] = make_model(kind, layout, dt)
        return self.memo[key]

    def get(self, label, T=None, **opts):
        _, _, _, _, B, T0 = CASE[label]
        T = T0 if T is None else T
        key = (label, T, tuple(sorted(opts.items())))
        if key not in self.memo:
            self.memo[key] = compiler.compile(self.model(label), seq_len=T, batch=B, **opts)
        return self.memo[key]


# ---------------------------------------------------------------- references
def tape(model, xs, s0, d_out, d_sT):
    """out, state_T leaves, param grads, d_xs, d_state0 leaves on the eager tape."""
    X = gg.Tensor(xs, requires_grad=True)
    leaves, tree = flatten(s0)
    S = [gg.Tensor(s, requires_grad=True) for s in leaves]
    for p in model.parameters().values():
        p.grad = None
    out, sT = model(X, unflatten(tree, S))
    loss = (out * gg.Tensor(d_out)).sum()
    for a, b in zip(flatten(sT)[0], flatten(d_sT)[0]):
        loss = loss + (a * gg.Tensor(b)).sum()
    loss.backward()
    # The tape leaves .grad None on parameters the loss does not reach; programs give zeros.
    z = lambda t: np.zeros_like(t.data) if t.grad is None else t.grad  # noqa: E731
    grads = {k: z(p) for k, p in model.parameters().items()}
    return out.data, [s.data for s in flatten(sT)[0]], grads, z(X), [z(s) for s in S]


def torch_run(model, xs, s0, d_out, d_sT):
    """The same quantities from torch.nn.RNN/LSTM/GRU after load_state_dict (float64)."""
    import torch
    cls = {"rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN, "lstm": torch.nn.LSTM,
           "gru": torch.nn.GRU}[model.mode]
    kw = dict(nonlinearity=model.nonlinearity) if model.mode.startswith("rnn") else {}
    tm = cls(model.input_size, model.hidden_size, num_layers=model.num_layers, bias=model.bias,
             batch_first=model.batch_first, bidirectional=model.bidirectional,
             dtype=torch.float64, **kw)
    tm.load_state_dict({k: torch.from_numpy(np.array(v, np.float64))
                        for k, v in model.state_dict().items()})
    X = torch.tensor(xs, requires_grad=True)
    S = [torch.tensor(s, requires_grad=True) for s in flatten(s0)[0]]
    out, sT = tm(X, tuple(S) if model.mode == "lstm" else S[0])
    sT = list(sT) if model.mode == "lstm" else [sT]
    params = dict(tm.named_parameters())
    wrt = list(params.values()) + [X] + S
    g = torch.autograd.grad([out] + sT, wrt,
                            [torch.from_numpy(d_out)] + [torch.from_numpy(d)
                                                         for d in flatten(d_sT)[0]])
    n = len(params)
    return (out.detach().numpy(), [s.detach().numpy() for s in sT],
            {k: v.numpy() for k, v in zip(params, g[:n])}, g[n].numpy(),
            [v.numpy() for v in g[n + 1:]])


def cotangents(prog, xs, s0, seed=1):
    rng = np.random.default_rng(seed)
    out, sT = prog.forward(xs, s0)
    dt = out.dtype
    d_out = rng.normal(size=out.shape).astype(dt)
    leaves, tree = flatten(sT)
    d_sT = unflatten(tree, [rng.normal(size=s.shape).astype(dt) for s in leaves])
    return out, sT, d_out, d_sT


def errors(got, want):
    """Worst relative error per quantity between two (out, sT, grads, d_xs, d_s0) tuples."""
    out, sT, grads, dxs, ds0 = got
    r_out, r_sT, r_grads, r_dxs, r_ds0 = want
    assert set(grads) == set(r_grads), f"grad keys {sorted(grads)} != {sorted(r_grads)}"
    e = {"out": rel_err(out, r_out)}
    for i, (a, b) in enumerate(zip(sT, r_sT)):
        e[f"state_T[{i}]"] = rel_err(a, b)
    for k in grads:
        e[f"d_{k}"] = rel_err(grads[k], r_grads[k])
    e["d_xs"] = rel_err(dxs, r_dxs)
    for i, (a, b) in enumerate(zip(ds0, r_ds0)):
        e[f"d_state0[{i}]"] = rel_err(a, b)
    return e


def run_compiled(prog, xs, s0, seed=1):
    out, sT, d_out, d_sT = cotangents(prog, xs, s0, seed)
    grads, dxs, ds0 = prog.vjp(xs, s0, d_out, d_sT)
    got = (out, flatten(sT)[0], grads, dxs, flatten(ds0)[0])
    for leaf in got[1] + got[4] + [out, dxs] + list(grads.values()):
        assert leaf.dtype == xs.dtype, f"result dtype {leaf.dtype} != {xs.dtype}"
    return got, d_out, d_sT


def compare(prog, model, xs, s0, seed=1, against="tape"):
    """{quantity: worst relative error} of prog vs the tape (or torch)."""
    got, d_out, d_sT = run_compiled(prog, xs, s0, seed)
    ref = (tape if against == "tape" else torch_run)(model, xs, s0, d_out, d_sT)
    return errors(got, ref)


def check(errs, dt, what=""):
    tol = TOL[np.dtype(dt)]
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"{what}: relative errors above {tol:g}: {bad}"
    return max(errs.values())


# ---------------------------------------------------------------- the closing table
class ErrorTable:
    COLS = ("tape", "torch")

    def __init__(self):
        self.rows = {}

    def add(self, label, col, err):
        row = self.rows.setdefault(label, {})
        row[col] = max(row.get(col, 0.0), float(err))

    def text(self, title="worst relative error of compiled programs"):
        w = max([len(k) for k in self.rows] + [24])
        lines = [title, f"{'model':<{w}} | {'vs tape':>9} | {'vs torch':>9}"]
        lines.append("-" * len(lines[-1]))
        for label, row in self.rows.items():
            cells = [f"{row[c]:.2e}" if c in row else "-" for c in self.COLS]
            lines.append(f"{label:<{w}} | {cells[0]:>9} | {cells[1]:>9}")
        return "\n".join(lines)


def check_case(progs, label, table, T=None, against="tape", seed=0, **opts):
    """Compile (memoized) and check one native case; records the worst error."""
    _, kind, layout, dt, B, T0 = CASE[label]
    T = T0 if T is None else T
    model = progs.model(label)
    prog = progs.get(label, T, **opts)
    rng = np.random.default_rng(seed)
    xs, s0 = model_xs(model, T, B, rng), random_state(model, B, rng)
    worst = check(compare(prog, model, xs, s0, against=against), dt, f"{label} vs {against}")
    table.add(f"{label} ({DT_NAME[np.dtype(dt)]}, B={B}, T={T})", against, worst)
    return worst


@contextlib.contextmanager
def isolated_cache(tmp_path_factory, table, *title):
    """A fresh GRAPHGRAD_CACHE_DIR for one test module (so no test leans on a warm cache);
    prints the module's error table when it is done."""
    import pytest
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("graphgrad_cache")
        mp.setenv("GRAPHGRAD_CACHE_DIR", str(d))
        yield d
    if table.rows:
        print("\n" + table.text(*title))
