"""Reductions inside a step: over the features (layer norm, softmax, max, per-row gates) they are
lowered as row-reduction epilogues and (rows, 1) column operands of the fused kernels; over the
batch rows they are refused, since compiled programs keep the rows of a batch independent."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import compiler
import graphgrad as gg
import runtime.program
from compiler import sched_numpy
from compiler.errors import CompileError
from compiler.schedule import Buffer, Fused, Program, Ref
from compile_checks import DT_NAME, ErrorTable, check, compare, isolated_cache, run_compiled
from runtime.program import NativeProgram

TABLE = ErrorTable()
I = 3


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    with isolated_cache(tmp_path_factory, TABLE,
                        "worst relative error of compiled steps with reductions over features") as d:
        yield d


# ---------------------------------------------------------------- the kernels
def _reduction_program(B, C, dt):
    """One fused kernel per stage, each a product with a (B, 1) column, its row sum, and the row
    max of its input: in the forward loop on one step's rows, in pre on all T*B rows at once."""
    bufs = {}

    def buf(name, shape, kind):
        bufs[name] = Buffer(name, dt, shape, "T", kind)

    for s in ("", "_all"):
        buf("X" + s, (B, C), "input")
        buf("G" + s, (B, 1), "input")
        buf("Y" + s, (B, C), "output")
        buf("S" + s, (B, 1), "output")
        buf("M" + s, (B, 1), "output")

    def kernel(s, t):
        return Fused("rows" + s, ((Ref("X" + s, t), "full"), (Ref("G" + s, t), "col")),
                     (("v", "mul", ("in0", "in1"), ()),), (("v", Ref("Y" + s, t)),), (), (),
                     (("v", Ref("S" + s, t), "sum"), ("in0", Ref("M" + s, t), "max")))
    return Program(bufs, [kernel("_all", "all")], [kernel("", 0)], [], [], {"batch": B})


def _special_values(rng, shape, dt):
    x = rng.normal(size=shape).astype(dt)
    flat = x.reshape(-1)
    picks = rng.integers(0, flat.size, size=min(3, flat.size))
    for p, v in zip(picks, rng.choice([np.nan, np.inf, -np.inf, 1e30], size=len(picks))):
        flat[p] = v
    return x


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 5), st.sampled_from([1, 7, 16, 37]), st.sampled_from(["float64", "float32"]),
       st.booleans(), st.sampled_from([1, 2]))
def test_row_reduction_kernels_match_numpy(B, C, dt, special, threads):
    """Sum and NaN-propagating max over each row (full vectors, masked tails, a single column),
    a (B, 1) column broadcast across a row, per step and over all T*B rows, one and two
    threads (rows split between them), with NaN and infinities in some rows."""
    T = 3
    prog = _reduction_program(B, C, dt)
    rng = np.random.default_rng(B * 100 + C)
    make = _special_values if special else (lambda r, s, d: r.normal(size=s).astype(d))
    inputs = {n: make(rng, (T,) + prog.buffers[n].shape, dt) for n in ("X", "X_all")}
    inputs.update({n: rng.normal(size=(T, B, 1)).astype(dt) for n in ("G", "G_all")})
    want = sched_numpy.execute(prog, T, inputs)
    native = NativeProgram(prog, threads=threads, split_min_flops=0, split="cols")
    got = native.run(T, inputs)
    tol = 1e-12 if dt == "float64" else 1e-5
    with np.errstate(invalid="ignore"):
        for name in ("Y", "S", "M", "Y_all", "S_all", "M_all"):
            w = sched_numpy.user_view(prog, want, name)
            g = np.asarray(got[name])
            assert np.array_equal(np.isnan(w), np.isnan(g)), name    # NaN where numpy has it
            if name.startswith("M"):
                assert np.array_equal(w, g, equal_nan=True), name    # a max is exact
            else:
                np.testing.assert_allclose(g, w, rtol=tol, atol=0, err_msg=name)


# ---------------------------------------------------------------- steps users write
def step_layer_norm(p, x, h):
    z = x @ p["W"] + h @ p["U"]
    d = z - gg.mean(z, axis=1, keepdims=True)
    z = d / (gg.mean(d * d, axis=1, keepdims=True) + 1e-5) ** 0.5
    h = gg.tanh(z * p["g"] + p["b"])
    return h, h


def step_normalized_input(p, x, h):
    """Layer norm of the input projection alone: in the forward loop (only the loop reads it),
    its gradient after the reverse loop over all T*B rows."""
    z = x @ p["W"]
    d = z - gg.max(z, axis=1, keepdims=True)
    z = d / (gg.mean(d * d, axis=1, keepdims=True) + 0.1) ** 0.5
    h = gg.tanh(z * p["g"] + h @ p["U"])
    return h, h


def step_softmax_state(p, x, h):
    h = gg.softmax(x @ p["W"] + h @ p["U"], axis=1)
    return gg.log(h + 0.1), h


def step_row_max(p, x, h):
    z = gg.tanh(x @ p["W"] + h @ p["U"])
    return z, z - gg.max(z, axis=1, keepdims=True) * p["g"]      # the max's mask VJP


def step_row_gate(p, x, h):
    gate = gg.sigmoid(x[:, :1] + gg.mean(h, axis=1)[:, None])   # (B, 1), no keepdims
    h = gate * h + (1.0 - gate) * gg.tanh(x @ p["W"] + h @ p["U"])
    return h, h


STEPS = [step_layer_norm, step_normalized_input, step_softmax_state, step_row_max, step_row_gate]
H = 21     # a full 16-lane vector and a masked tail in every float32 row reduction


def _model(step, dt, seed=0):
    rng = np.random.default_rng(seed)
    p = {"W": rng.normal(size=(I, H)), "U": rng.normal(size=(H, H)) / np.sqrt(H),
         "g": 1.0 + 0.1 * rng.normal(size=(H,)), "b": 0.1 * rng.normal(size=(H,))}
    return gg.Recurrent(step, {k: v.astype(dt) for k, v in p.items()})


@pytest.mark.parametrize("step", STEPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("backend,B,dt", [("numpy", 3, np.float64), ("native", 1, np.float64),
                                          ("native", 4, np.float64), ("native", 4, np.float32)])
def test_steps_with_reductions_over_features_match_tape(step, backend, B, dt):
    model = _model(step, dt)
    rng = np.random.default_rng(1)
    s0 = (rng.normal(size=(B, H)) * 0.5).astype(dt)
    xs = rng.normal(size=(6, B, I)).astype(dt)
    prog = compiler.compile(model, seq_len=6, batch=B, input_size=I, state=s0, backend=backend)
    worst = check(compare(prog, model, xs, s0), dt, step.__name__)
    TABLE.add(f"{step.__name__} ({backend}, {DT_NAME[np.dtype(dt)]}, B={B})", "tape", worst)


@pytest.mark.parametrize("split", ["cols", "pipeline", "batch"])
def test_two_threads_split_rows_of_reductions(split, monkeypatch):
    """Row reductions and (B, 1) columns under every two-thread split (forced on a small model):
    each thread owns whole rows, so each row's sum is one thread's."""
    monkeypatch.setattr(runtime.program, "SPLIT_MIN_FLOPS", 0)
    B = 5
    for step in (step_layer_norm, step_normalized_input, step_row_gate):
        model = _model(step, np.float64)
        rng = np.random.default_rng(2)
        s0 = rng.normal(size=(B, H)) * 0.5
        prog = compiler.compile(model, seq_len=7, batch=B, input_size=I, state=s0, threads=2,
                                split=split)
        native = prog.compiled[0][0].natives["train"]
        assert native.threads == 2 and native.split_mode == split
        worst = check(compare(prog, model, rng.normal(size=(7, B, I)), s0), np.float64, split)
        TABLE.add(f"{step.__name__} threads=2 split={split} (f64, B={B})", "tape", worst)


def test_layer_norm_gradients_match_finite_differences_of_the_compiled_forward():
    """The compiled gradients against central differences of the compiled forward itself
    (float64, 6 random directions through the weights, the inputs and the initial state)."""
    model, B, T = _model(step_layer_norm, np.float64, seed=3), 2, 5
    rng = np.random.default_rng(4)
    s0, xs = rng.normal(size=(B, H)) * 0.5, rng.normal(size=(T, B, I))
    prog = compiler.compile(model, seq_len=T, batch=B, input_size=I, state=s0)
    d_out, d_sT = rng.normal(size=(T, B, H)), rng.normal(size=(B, H))
    grads, d_xs, d_s0 = prog.vjp(xs, s0, d_out, d_sT)
    params = {k: p.data for k, p in model.parameters().items()}

    def loss():
        out, sT = prog.forward(xs, s0)
        return float(np.sum(out * d_out) + np.sum(sT * d_sT))

    eps, worst = 1e-6, 0.0
    for _ in range(6):
        dirs = {k: rng.normal(size=v.shape) for k, v in params.items()}
        dx, ds = rng.normal(size=xs.shape), rng.normal(size=s0.shape)
        want = (sum(np.sum(grads[k] * dirs[k]) for k in params) + np.sum(d_xs * dx) +
                np.sum(d_s0 * ds))
        vals = []
        for sign in (1, -1):
            for k, v in params.items():
                v += sign * eps * dirs[k]
            xs += sign * eps * dx
            s0 += sign * eps * ds
            vals.append(loss())
            for k, v in params.items():
                v -= sign * eps * dirs[k]
            xs -= sign * eps * dx
            s0 -= sign * eps * ds
        fd = (vals[0] - vals[1]) / (2 * eps)
        worst = max(worst, abs(fd - want) / max(abs(want), 1e-12))
    assert worst < 1e-6, worst
    TABLE.add("step_layer_norm vs finite differences (native, f64)", "tape", worst)


def test_layer_norm_lstm_matches_pytorch():
    """A layer-normalized LSTM (Ba et al. 2016: LN on the two gate projections and on the cell)
    against the same cell in a PyTorch loop with F.layer_norm: outputs and every gradient."""
    torch = pytest.importorskip("torch")
    B, T, Hh = 3, 6, 8
    rng = np.random.default_rng(5)
    p = {"W": rng.normal(size=(I, 4 * Hh)) * 0.5, "U": rng.normal(size=(Hh, 4 * Hh)) * 0.5,
         "b": rng.normal(size=(4 * Hh,)) * 0.1}

    def ln(z):
        d = z - gg.mean(z, axis=1, keepdims=True)
        return d / (gg.mean(d * d, axis=1, keepdims=True) + 1e-5) ** 0.5

    def ln_lstm(p, x, state):
        h, c = state
        z = ln(x @ p["W"]) + ln(h @ p["U"]) + p["b"]
        i, f, g, o = gg.split(z, 4, axis=1)
        c = gg.sigmoid(f) * c + gg.sigmoid(i) * gg.tanh(g)
        h = gg.sigmoid(o) * gg.tanh(ln(c))
        return h, (h, c)

    model = gg.Recurrent(ln_lstm, p)
    s0 = tuple(rng.normal(size=(B, Hh)) * 0.5 for _ in range(2))
    xs = rng.normal(size=(T, B, I))
    prog = compiler.compile(model, seq_len=T, batch=B, input_size=I, state=s0)
    got, d_out, d_sT = run_compiled(prog, xs, s0)

    F = torch.nn.functional
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    tx = torch.tensor(xs, requires_grad=True)
    th, tc = (torch.tensor(s, requires_grad=True) for s in s0)
    h, c, outs = th, tc, []
    for t in range(T):
        z = (F.layer_norm(tx[t] @ tp["W"], (4 * Hh,)) + F.layer_norm(h @ tp["U"], (4 * Hh,)) +
             tp["b"])
        i, f, g, o = z.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (Hh,)))
        outs.append(h)
    out = torch.stack(outs)
    ct = [torch.tensor(d_out)] + [torch.tensor(d) for d in d_sT]
    (torch.sum(out * ct[0]) + torch.sum(h * ct[1]) + torch.sum(c * ct[2])).backward()
    want = {"out": out.detach().numpy(), "d_xs": tx.grad.numpy(),
            "d_state0[0]": th.grad.numpy(), "d_state0[1]": tc.grad.numpy(),
            **{f"d_{k}": v.grad.numpy() for k, v in tp.items()}}
    out_c, _, grads, d_xs, d_s0 = got
    mine = {"out": out_c, "d_xs": d_xs, "d_state0[0]": d_s0[0], "d_state0[1]": d_s0[1],
            **{f"d_{k}": v for k, v in grads.items()}}
    errs = {k: np.linalg.norm(mine[k] - v) / np.linalg.norm(v) for k, v in want.items()}
    worst = check(errs, np.float64, "layer-norm LSTM vs torch")
    TABLE.add("layer-norm LSTM (native, f64, B=3)", "torch", worst)


# ---------------------------------------------------------------- reductions over the batch
def step_batch_centred(p, x, h):
    h = gg.tanh(x @ p["W"] + h - gg.mean(h, axis=0, keepdims=True))
    return h, h


def test_reductions_over_the_batch_are_refused_not_summed_over_time():
    """A batch mean inside the step compiled, and its gradient was lowered like a parameter
    gradient's batch sum: accumulated over the steps (d_state0 off by 42 %). It is refused now,
    by name; with one row it is the identity and compiles."""
    W = np.random.default_rng(6).normal(size=(I, 4))
    model = gg.Recurrent(step_batch_centred, {"W": W})
    with pytest.raises(CompileError, match=r"sum: a per-step sum over the batch axis .* the "
                                           r"tape runs it") as e:
        compiler.compile(model, seq_len=3, batch=3, input_size=I, state=np.zeros((3, 4)))
    assert "step_batch_centred" in str(e.value)
    rng = np.random.default_rng(7)
    s0 = rng.normal(size=(1, 4))
    prog = compiler.compile(model, seq_len=3, batch=1, input_size=I, state=s0)
    check(compare(prog, model, rng.normal(size=(3, 1, I)), s0), np.float64, "batch of one")


def test_fusion_report_names_row_reductions():
    model = _model(step_layer_norm, np.float64)
    prog = compiler.compile(model, seq_len=3, batch=2, input_size=I, state=np.zeros((2, H)),
                            backend="numpy")
    text = prog.fusion_report()
    assert "row reduction(s) over the features (sum)" in text, text
    fwd = prog.programs("train")[0].program.fwd_loop
    # the mean is the epilogue of the kernel that computes z: no kernel of its own
    assert any(k.rowreds and k.body and k.outputs for k in fwd if isinstance(k, Fused))


def test_layer_norm_of_the_input_projection_runs_in_the_loop_and_its_gradient_after_it():
    # only the loop reads it, so it is not hoisted (stages._unhoist_elementwise): a pass of its
    # own over all T*B rows before the loop saves no arithmetic; its gradient is not part of
    # the state's recurrence and runs after the reverse loop over all T*B rows
    model = _model(step_normalized_input, np.float64)
    prog = compiler.compile(model, seq_len=3, batch=2, input_size=I, state=np.zeros((2, H)),
                            backend="numpy")
    p = prog.programs("train")[0].program
    for stage, want in (("pre", set()), ("fwd_loop", {"max", "sum"}), ("bwd_loop", set()),
                        ("post", {"sum"})):
        ops = {op for k in getattr(p, stage) if isinstance(k, Fused) for _, _, op in k.rowreds}
        assert ops == want, (stage, ops)


def test_layer_norm_output_is_recomputed_in_the_reverse_loop_not_saved(monkeypatch):
    """Per step (B = 2, H = 21, float64) the forward loop saves layer norm's centred input d
    (336 bytes) and two (B, 1) columns (32); its output d * scale, which the gain's gradient
    reads, is one multiply away from them and is recomputed (compiler/passes/remat.py) instead
    of being saved too (another 336)."""
    from compiler import api

    def saved():
        prog = compiler.compile(_model(step_layer_norm, np.float64), seq_len=3, batch=2,
                                input_size=I, state=np.zeros((2, H)), backend="numpy",
                                keep_dumps=True)     # dumps bypass the schedule cache
        return prog.programs("train")[0].report["saved_for_reverse_bytes"]
    assert saved() == 2 * H * 8 + 2 * 2 * 8
    monkeypatch.setattr(api, "recompute_cheap", lambda J, n: J)
    assert saved() == 2 * (2 * H * 8) + 2 * 2 * 8


# ---------------------------------------------------------------- found by a differential hunt
def step_own_column_gate(p, x, h):
    z = x @ p["W"] + h @ p["U"]
    return z, gg.tanh(z * z[:, -1:])        # a (B, 1) window of z gates z itself


def step_own_first_column_gate(p, x, h):
    z = gg.tanh(x @ p["W"] + h @ p["U"])
    return z * z[:, :1], z - 0.5 * z[:, :1]


@pytest.mark.parametrize("step", [step_own_column_gate, step_own_first_column_gate],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("backend,B,Hs,dt", [("numpy", 3, 4, np.float64),
                                             ("native", 3, 17, np.float64),
                                             ("native", 1, 4, np.float64),
                                             ("native", 2, 19, np.float32)])
def test_column_window_of_a_value_its_own_kernel_computes(step, backend, B, Hs, dt):
    """z * z[:, -1:]: the (B, 1) window was read as a column operand by the kernel that computes
    z, which writes z over the same buffer: schedule validation raised ValueError ("output ...
    partially overlaps input ..."; before the commit: a CompileError). Its readers now start
    after z's kernel, as a row reduction's do."""
    rng = np.random.default_rng(8)
    model = gg.Recurrent(step, {"W": (rng.normal(size=(I, Hs)) * 0.5).astype(dt),
                                "U": (rng.normal(size=(Hs, Hs)) / np.sqrt(Hs)).astype(dt)})
    s0 = (rng.normal(size=(B, Hs)) * 0.5).astype(dt)
    prog = compiler.compile(model, seq_len=5, batch=B, input_size=I, state=s0, backend=backend)
    worst = check(compare(prog, model, rng.normal(size=(5, B, I)).astype(dt), s0), dt,
                  step.__name__)
    TABLE.add(f"{step.__name__} ({backend}, {DT_NAME[np.dtype(dt)]}, B={B})", "tape", worst)


def step_per_row_gate_parameter(p, x, h):
    h = gg.tanh(x @ p["W"] + h @ p["U"]) * p["c"]  # <- c
    return h, h


@pytest.mark.parametrize("shape", [(4, 1), (4, 5)])
def test_parameter_with_a_row_per_batch_row_is_refused(shape):
    """A (B, 1) parameter gating each batch row (or a (B, H) one) is not broadcast over the
    batch: its gradient is a per-step value with nothing summing it over the steps. It compiled,
    and prog.vjp raised KeyError: 'input %10 (ct:y) was not given' (a (B, 1) one was a
    CompileError before the commit). Refused by name now."""
    rng = np.random.default_rng(9)
    model = gg.Recurrent(step_per_row_gate_parameter,
                         {"W": rng.normal(size=(I, 5)), "U": rng.normal(size=(5, 5)) * 0.3,
                          "c": rng.normal(size=shape)})
    with pytest.raises(CompileError, match=r"parameter 'c' of shape \[4, %d\] has a row per "
                                           r"batch row" % shape[1]) as e:
        compiler.compile(model, seq_len=3, batch=4, input_size=I, state=np.zeros((4, 5)))
    assert e.value.op == "mul" and "step_per_row_gate_parameter" in str(e.value)


COL_MASK = np.random.default_rng(10).random(size=(5, 1))
ROW_MASK = (np.random.default_rng(11).random(size=(5, 6)) > 0.3).astype(np.float64)


def step_constant_column_mask(p, x, h):
    h = gg.tanh(x @ p["W"] + h @ p["U"]) * COL_MASK        # a (B, 1) constant per row
    return h, h


def step_constant_row_mask(p, x, h):
    h = gg.tanh(x @ p["W"] + h @ p["U"]) * ROW_MASK        # a (B, H) constant
    return h, h


def step_unused_gate_window(p, x, h):
    z = x @ p["W4"]         # its gradient has zeros in the window the step never reads
    m = gg.max(z[:, 6:12], axis=1, keepdims=True)
    h = gg.tanh(z[:, :6] - m + h @ p["U"])
    return h, h


@pytest.mark.parametrize("step", [step_constant_column_mask, step_constant_row_mask,
                                  step_unused_gate_window], ids=lambda f: f.__name__)
def test_batch_split_gives_each_half_its_rows_of_invariants(step, monkeypatch):
    """Values computed once before the run (kind "param", never split between batch threads)
    that a kernel reads row by row: a (B, 1) or (B, H) constant the step closes over, the zero
    block of a gate window the gradient never fills. split="batch" raised ValueError ("input
    inv8 (col) has shape (5, False, 1), expected (2, False, 1)"); they are batch-major now."""
    monkeypatch.setattr(runtime.program, "SPLIT_MIN_FLOPS", 0)
    rng = np.random.default_rng(12)
    B = 5
    model = gg.Recurrent(step, {"W": rng.normal(size=(I, 6)) * 0.5,
                                "W4": rng.normal(size=(I, 24)) * 0.5,
                                "U": rng.normal(size=(6, 6)) * 0.3})
    s0 = rng.normal(size=(B, 6)) * 0.5
    prog = compiler.compile(model, seq_len=4, batch=B, input_size=I, state=s0, threads=2,
                            split="batch")
    assert prog.compiled[0][0].natives["train"].split_mode == "batch"
    worst = check(compare(prog, model, rng.normal(size=(4, B, I)), s0), np.float64,
                  step.__name__)
    TABLE.add(f"{step.__name__} threads=2 split=batch (f64, B={B})", "tape", worst)


def step_batch_mean_without_keepdims(p, x, h):
    h = gg.tanh(x @ p["W"] + h - gg.mean(h, axis=0))  # <- mean
    return h, h


def test_batch_mean_without_keepdims_at_batch_one_names_the_way_out():
    """At B = 1 a batch mean without keepdims is a (1, N) -> (N,) reshape the user never wrote
    (it compiled before the commit); the refusal now says that keepdims=True compiles."""
    model = gg.Recurrent(step_batch_mean_without_keepdims, {"W": np.ones((I, 4))})
    with pytest.raises(CompileError, match="keepdims=True it compiles"):
        compiler.compile(model, seq_len=3, batch=1, input_size=I, state=np.zeros((1, 4)))
