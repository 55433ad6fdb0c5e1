"""compiler.compile: native (and numpy-backend) programs equal the tape and PyTorch.

Native compiles are few and memoized per case (compile_checks.CASES); the broad sweeps over model
kind x layout x dtype x T x B run the same schedule on the numpy backend. The LLVM object cache
points at a fresh directory for this module, so nothing depends on a warm cache except the test
that checks the cache itself. With -s the worst-error table is printed at the end.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import compiler
import graphgrad as gg
from compiler.lower import lower
from compiler.schedule import Copy, Fused, Gemm
from compile_checks import (CASE, CASES, DT_NAME, LAYOUTS, MODELS, TORCH_KINDS, ErrorTable,
                            Programs, isolated_cache, check, check_case, compare, make_model, model_xs,
                            random_state, run_compiled)

TABLE = ErrorTable()


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    with isolated_cache(tmp_path_factory, TABLE) as d:
        yield d


@pytest.fixture(scope="module")
def progs(cache_dir):
    return Programs()


# ---------------------------------------------------------------- native vs tape / torch
@pytest.mark.parametrize("label", [c[0] for c in CASES])
def test_native_matches_tape(progs, label):
    check_case(progs, label, TABLE)


TORCH_CASES = [c[0] for c in CASES if c[1] in TORCH_KINDS and c[3] == np.float64
               and c[5] <= 100]


@pytest.mark.parametrize("label", TORCH_CASES)
def test_native_matches_torch(progs, label):
    pytest.importorskip("torch")
    check_case(progs, label, TABLE, against="torch", seed=5)


def test_acceptance_grid_is_covered():
    """The native table spans the acceptance list; the numpy sweep below spans the product."""
    kinds = {c[1] for c in CASES}
    assert kinds == set(MODELS)
    assert {c[2] for c in CASES} == set(LAYOUTS)
    assert {1, 3, 64} <= {c[4] for c in CASES}
    assert {1, 7, 100, 1000} <= {c[5] for c in CASES}
    assert {np.dtype(c[3]) for c in CASES} == set(DT_NAME)


# ---------------------------------------------------------------- numpy backend: broad sweep
@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(sorted(MODELS)), layout=st.sampled_from(sorted(LAYOUTS)),
       dt=st.sampled_from([np.float64, np.float32]), T=st.sampled_from([1, 7, 100]),
       B=st.sampled_from([1, 3, 64]), seed=st.integers(0, 2 ** 16))
def test_numpy_backend_matches_tape(kind, layout, dt, T, B, seed):
    model = make_model(kind, layout, dt, seed=seed)
    prog = compiler.compile(model, seq_len=T, batch=B, backend="numpy")
    rng = np.random.default_rng(seed)
    xs, s0 = model_xs(model, T, B, rng), random_state(model, B, rng)
    worst = check(compare(prog, model, xs, s0), dt, f"{kind} {layout} T={T} B={B}")
    TABLE.add(f"numpy backend sweep ({DT_NAME[np.dtype(dt)]})", "tape", worst)


def test_default_state_and_cotangents(progs):
    """state0=None and d_state_T=None mean zeros, as on the tape."""
    prog, model = progs.get("gru"), progs.model("gru")
    xs = model_xs(model, 100, 3, np.random.default_rng(3))
    zeros = model.init_state(3)
    out, hT = prog.forward(xs)
    out0, hT0 = prog.forward(xs, zeros)
    assert np.array_equal(out, out0) and np.array_equal(hT, hT0)
    d_out = np.ones_like(out)
    g, dxs, dh0 = prog.vjp(xs, None, d_out)
    g0, dxs0, dh00 = prog.vjp(xs, zeros, d_out, np.zeros_like(hT))
    assert np.array_equal(dxs, dxs0) and np.array_equal(dh0, dh00)
    assert all(np.array_equal(g[k], g0[k]) for k in g)


def test_repeated_calls_and_other_lengths(progs):
    """Buffers are reused between calls (and not zeroed): a call must not see an earlier one,
    also when the sequence length changes between calls (programs take T at call time)."""
    prog, model = progs.get("lstm T1000"), progs.model("lstm T1000")
    rng = np.random.default_rng(11)
    a = (model_xs(model, 1000, 3, rng), random_state(model, 3, rng))
    b = (model_xs(model, 10, 3, rng), random_state(model, 3, rng))
    first, _, _ = run_compiled(prog, *a)
    check(compare(prog, model, *b), np.float64, "T=10 on the T=1000 program")
    again, _, _ = run_compiled(prog, *a)
    _assert_same(first, again, 0.0)


# ---------------------------------------------------------------- argument errors
def _boom(*a, **k):
    raise AssertionError("native code ran although the arguments are invalid")


def _bad_calls(T, B, dt):
    x = np.zeros((T, B, 3), dt)
    h = np.zeros((1, B, 4), dt)
    s = (h, h)
    d = np.zeros((T, B, 4), dt)
    other = np.float32 if dt == np.float64 else np.float64
    return {   # name -> (method, args, exception, message fragment)
        "xs without steps": ("forward", (np.zeros((0, B, 3), dt), s), ValueError, "xs"),
        "xs wrong batch": ("forward", (np.zeros((T, B + 1, 3), dt), s), ValueError, "xs"),
        "xs wrong features": ("forward", (np.zeros((T, B, 5), dt), s), ValueError, "xs"),
        "xs 2-d": ("forward", (np.zeros((T, 3), dt), s), ValueError, "xs"),
        "xs other float": ("forward", (x.astype(other), s), TypeError, "xs"),
        "xs ints": ("forward", (x.astype(np.int64), s), TypeError, "xs"),
        "state not a tuple": ("forward", (x, h), TypeError, "structure"),
        "state leaf shape": ("forward", (x, (h, np.zeros((2, B, 4), dt))), ValueError,
                             r"state0\[1\]"),
        "state leaf dtype": ("forward", (x, (h.astype(other), h)), TypeError, r"state0\[0\]"),
        "vjp xs": ("vjp", (x[:, :, :2], s, d, s), ValueError, "xs"),
        "d_out shape": ("vjp", (x, s, d[:, :, :3], s), ValueError, "d_out"),
        "d_out steps != xs steps": ("vjp", (x, s, np.zeros((T + 1, B, 4), dt), s), ValueError,
                                    "d_out"),
        "d_out dtype": ("vjp", (x, s, d.astype(other), s), TypeError, "d_out"),
        "d_state_T shape": ("vjp", (x, s, d, (h, h[:, :1])), ValueError, r"d_state_T\[1\]"),
        "d_state_T structure": ("vjp", (x, s, d, h), TypeError, "structure"),
    }


@pytest.mark.parametrize("dt_label", ["lstm T1", "lstm f32"])
def test_bad_arguments_raise_before_native_code(progs, monkeypatch, dt_label):
    prog = progs.get(dt_label)
    _, _, _, dt, B, T = CASE[dt_label]
    for row in prog.compiled:
        for cl in row:
            for mode in list(cl.runners):
                monkeypatch.setitem(cl.runners, mode, _boom)
    for name, (method, args, exc, frag) in _bad_calls(T, B, dt).items():
        with pytest.raises(exc, match=frag):
            getattr(prog, method)(*args)


# ---------------------------------------------------------------- time is a loop
def test_module_text_does_not_depend_on_T(progs):
    """T=10 and T=1000 programs are the same LLVM module (a loop over T): the text of the
    NativeProgram each compile holds is identical, and lowering the schedule again gives it."""
    long_ = progs.get("lstm T1000")
    short = progs.get("lstm T1000", T=10)
    for mode in ("forward", "train"):
        na, nb = long_._natives(mode)[0], short._natives(mode)[0]
        assert na.lowered.ir_text == nb.lowered.ir_text
        assert na.lowered.unroll_T is None and nb.cache_hit     # T=10 came from the object cache
        assert long_.llvm_ir(mode) == short.llvm_ir(mode) == na.lowered.ir_text
        b = short.programs(mode)[0].program
        assert lower(b).ir_text == na.lowered.ir_text
        # unrolled code, for contrast, grows with T
        u3, u6 = lower(b, unroll=True, T=3).ir_text, lower(b, unroll=True, T=6).ir_text
        assert len(u6) > len(u3) > len(na.lowered.ir_text) // 2


def test_unroll_gives_the_same_numbers(progs):
    looped = progs.get("lstm 2layers", T=5)
    unrolled = progs.get("lstm 2layers", T=5, unroll=True)
    model = progs.model("lstm 2layers")
    rng = np.random.default_rng(2)
    xs, s0 = model_xs(model, 5, 3, rng), random_state(model, 3, rng)
    a, _, _ = run_compiled(looped, xs, s0)
    b, _, _ = run_compiled(unrolled, xs, s0)
    _assert_same(a, b, 1e-12)
    worst = check(compare(unrolled, model, xs, s0), np.float64, "unrolled vs tape")
    TABLE.add("lstm 2layers unroll=True (f64, B=3, T=5)", "tape", worst)


def _assert_same(a, b, tol):
    from conftest import rel_err
    out, sT, g, dxs, ds0 = a
    out2, sT2, g2, dxs2, ds02 = b
    errs = [rel_err(out, out2), rel_err(dxs, dxs2)] + \
        [rel_err(x, y) for x, y in zip(sT + ds0, sT2 + ds02)] + [rel_err(g[k], g2[k]) for k in g]
    assert set(g) == set(g2) and max(errs) <= tol, errs


# ---------------------------------------------------------------- threads
@pytest.fixture
def always_split(monkeypatch):
    """Tiny test models fall below the runtime's split floor; force the batch split."""
    import runtime.program
    monkeypatch.setattr(runtime.program, "SPLIT_MIN_FLOPS", 0)


# Both threads run every product on their own columns and every elementwise kernel on their own
# rows, with the same code and summation order as one thread: the results are bit-identical.
@pytest.mark.parametrize("label", ["lstm B64", "gru B5", "rnn_relu", "gru_reset_before",
                                   "rnn_relu f32 bidir", "lstm 2layers", "lstm f32"])
def test_two_threads_same_results(progs, label, always_split):
    one, two = progs.get(label), progs.get(label, threads=2)
    natives = [cl.natives["train"] for row in two.compiled for cl in row]
    assert all(n.threads == 2 and n.split_mode == "cols" for n in natives)
    model = progs.model(label)
    _, _, _, dt, B, T = CASE[label]
    rng = np.random.default_rng(4)
    xs, s0 = model_xs(model, T, B, rng), random_state(model, B, rng)
    a, _, _ = run_compiled(one, xs, s0)
    for _ in range(3):      # the barrier state carries over between calls
        b, _, _ = run_compiled(two, xs, s0)
        _assert_same(a, b, 0.0)
    out1, _ = one.forward(xs, s0)
    out2, _ = two.forward(xs, s0)
    assert np.array_equal(out1, out2)


# Regression: invariant weight buffers whose rows equal B (B == input_size, hidden_size or G*H)
# were once taken for batch-major and halved by the 2-thread split.
def test_two_threads_when_batch_equals_hidden_size(cache_dir, always_split):
    model = make_model("lstm", "1layer", np.float64)     # H = 4: W_hh^T is (4, 16)
    prog = compiler.compile(model, seq_len=3, batch=4, threads=2)
    rng = np.random.default_rng(0)
    xs, s0 = model_xs(model, 3, 4, rng), random_state(model, 4, rng)
    worst = check(compare(prog, model, xs, s0), np.float64, "threads=2, B == H")
    TABLE.add("lstm threads=2 B=H (f64, B=4, T=3)", "tape", worst)


# The pipeline split: thread 0 runs the loops, thread 1 streams the input projection ahead of
# the forward loop and the weight and input gradients behind the reverse loop, in chunks of a
# few steps here (CHUNK_ROWS lowered) so that every case crosses several chunk boundaries and
# most end on a partial chunk. Its sums over time are chunked, so it matches to rounding, not
# bit for bit.
@pytest.mark.parametrize("label", ["lstm B64", "gru", "rnn_relu f32 bidir", "lstm 2layers",
                                   "gru_reset_before", "lstm T1", "lstm f32"])
def test_pipeline_split_matches_tape(progs, label, monkeypatch):
    import compiler.pipeline
    monkeypatch.setattr(compiler.pipeline, "CHUNK_ROWS", 8)
    prog = progs.get(label, threads=2, split="pipeline")
    natives = [n for row in prog.compiled for cl in row for n in cl.natives.values()]
    assert natives and all(n.threads == 2 and n.split_mode == "pipeline" for n in natives)
    assert all(n.lowered.split == "pipeline" for n in natives)
    model = progs.model(label)
    _, _, _, dt, B, T = CASE[label]
    rng = np.random.default_rng(6)
    xs, s0 = model_xs(model, T, B, rng), random_state(model, B, rng)
    for _ in range(2):      # the progress counters are back at zero after every call
        worst = check(compare(prog, model, xs, s0), dt, f"{label}, split='pipeline'")
    TABLE.add(f"{label} threads=2 pipeline", "tape", worst)


# ---------------------------------------------------------------- the on-disk cache
def test_second_compile_is_served_by_the_cache(tmp_path, monkeypatch):
    from runtime import jit, library
    library.loaded("float64")   # the shared kernel library lives once per process, not here
    monkeypatch.setenv("GRAPHGRAD_CACHE_DIR", str(tmp_path))
    model = make_model("rnn_tanh", "1layer", np.float64, seed=9)
    first = compiler.compile(model, seq_len=4, batch=2)
    assert len(list(tmp_path.glob("*.o"))) == 1     # the training module; forward is lazy
    first.forward(model_xs(model, 4, 2, np.random.default_rng(1)), None)
    n_objects = len(list(tmp_path.glob("*.o")))
    assert n_objects == 2      # forward and train modules
    monkeypatch.setattr(jit, "compile_ir", lambda *a, **k: pytest.fail("LLVM ran on a hit"))
    second = compiler.compile(model, seq_len=9, batch=2)   # other T: same module text
    assert len(list(tmp_path.glob("*.o"))) == n_objects
    rng = np.random.default_rng(0)
    xs, s0 = model_xs(model, 4, 2, rng), random_state(model, 2, rng)
    check(compare(first, model, xs, s0), np.float64, "first compile")
    xs9 = model_xs(model, 9, 2, rng)
    check(compare(second, model, xs9, s0), np.float64, "cached compile")


# ---------------------------------------------------------------- the schedule (hoisting)
def _gemms(kernels):
    return [k for k in kernels if isinstance(k, Gemm)]


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_schedule_hoists_input_projection_and_weight_grads(kind):
    model = make_model(kind, "1layer", np.float64)
    prog = compiler.compile(model, seq_len=6, batch=3, backend="numpy")
    (train,) = prog.programs("train")
    p = train.program
    # exactly one product per step in each loop: the recurrent one
    (fwd,) = _gemms(p.fwd_loop)
    (bwd,) = _gemms(p.bwd_loop)
    assert fwd.a.buf == "S0" and fwd.a.t == 0        # h_{t} @ W_hh^T
    assert bwd.a.t == 0 and p.buffers[bwd.b.buf].steps is None   # dG_t @ W_hh (invariant)
    if kind == "lstm":
        assert bwd.out.buf == "DS0" and bwd.out.t == 0   # written straight into dh_t
    # the input projection: one product over all T*B rows before the loop
    pre = _gemms(p.pre)
    assert len(pre) == 1 and pre[0].a.buf == "x" and pre[0].a.t == "all"
    # and nothing else over those rows: the bias add joins the gate kernel in the loop (a pre
    # kernel of its own would be one more pass over all T*B rows of the projection)
    assert all(not isinstance(k, Fused) for k in p.pre)
    # weight gradients (and d_xs): products over all rows after the reverse loop
    post = _gemms(p.post)
    grads = [k for k in post if k.trans_a and k.a.t == "all" and k.out.t is None]
    assert {k.a.buf for k in grads} == {"x", "S0"}   # dW_ih = X^T dG, dW_hh = H_prev^T dG
    assert any(k.out.buf == "DX" and k.out.t == "all" for k in post)
    # the forward-only program: the same single product in the loop, nothing after it
    (fwd_only,) = prog.programs("forward")
    assert len(_gemms(fwd_only.program.fwd_loop)) == 1 and not fwd_only.program.bwd_loop
    text = prog.dump("schedule")
    assert "x[all] @" in text and "S0[all].T @" in text


def test_work_a_hoisted_product_reads_is_hoisted_with_it():
    # an input MLP: tanh(x @ W1 + b1) feeds a second hoisted product, so it runs over all T*B
    # rows before the loop; the second product's bias add only the loop reads
    rng = np.random.default_rng(5)
    I, M, H = 3, 4, 5
    params = {"W1": rng.normal(size=(I, M)), "b1": rng.normal(size=(M,)),
              "W2": rng.normal(size=(M, H)), "b2": rng.normal(size=(H,)),
              "U": rng.normal(size=(H, H)) * 0.5}

    def step(p, x, state):
        u = gg.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
        h = gg.tanh(u + state @ p["U"])
        return h, h

    model = gg.Recurrent(step, params)
    s0 = rng.normal(size=(2, H))
    prog = compiler.compile(model, seq_len=4, batch=2, input_size=I, state=s0, backend="numpy")
    p = prog.programs("train")[0].program
    assert [type(k).__name__ for k in p.pre if not isinstance(k, Copy)] == ["Gemm", "Fused",
                                                                             "Gemm"]
    (inner,) = [k for k in p.pre if isinstance(k, Fused)]
    assert [op for _, op, _, _ in inner.body] == ["add", "tanh"]
    (gate,) = [k for k in p.fwd_loop if isinstance(k, Fused)]
    assert [op for _, op, _, _ in gate.body] == ["add", "add", "tanh"]
    xs = rng.normal(size=(4, 2, I))
    check(compare(prog, model, xs, s0), np.float64, "input MLP")


def test_lstm_schedule_dump_sections():
    model = make_model("lstm", "1layer", np.float64)
    prog = compiler.compile(model, seq_len=5, batch=2, backend="numpy", keep_dumps=True)
    text = prog.dump("schedule")
    sections = {}
    for line in text.splitlines():
        if line.startswith("-- ") and not line.startswith("-- report"):
            cur = sections.setdefault(line[3:], [])
        elif line.startswith("  ") and not line.startswith("    ") and "@" in line:
            cur.append(line.strip())
    assert [len(sections[s]) for s in ("pre", "fwd_loop", "bwd_loop")] == [1, 1, 1]
    assert len(sections["post"]) == 3       # dW_ih, dW_hh, d_xs
    assert "gemms_per_step': 2" in text
    with pytest.raises(KeyError, match="unknown pass"):
        prog.dump("no_such_pass")
    for name in compiler.api.PIPELINE:
        assert prog.dump(name)
    plain = compiler.compile(model, seq_len=5, batch=2, backend="numpy")
    assert plain.dump("schedule") == text
    with pytest.raises(ValueError, match="keep_dumps"):
        plain.dump("autodiff")
