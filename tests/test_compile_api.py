"""compiler.compile beyond forward/vjp: task models, any T per call, states, parameter maps,
inspection and the `graphgrad compile` command."""
import subprocess
import sys

import numpy as np
import pytest

import compiler
import graphgrad as gg


def _tape_grads(m, loss):
    m.zero_grad()
    loss.backward()
    return {k: (p.grad if p.grad is not None else np.zeros_like(p.data))
            for k, p in m.parameters().items()}


@pytest.mark.parametrize("kw", [{"cell": "lstm"}, {"cell": "gru", "embed_size": 6, "num_layers": 2}])
def test_value_and_grad_of_a_language_model(kw):
    m = gg.LanguageModel(7, 5, dtype=np.float64, **kw)
    rng = np.random.default_rng(0)
    ids, tg = rng.integers(0, 7, (6, 3)), rng.integers(0, 7, (6, 3))
    prog = compiler.compile(m, 6, 3)
    loss, grads, state = prog.value_and_grad(ids, tg)
    ref, ref_state = m.loss(ids, tg)
    want = _tape_grads(m, ref)
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    assert set(grads) == set(want)
    for k, v in want.items():
        np.testing.assert_allclose(grads[k], v, rtol=1e-10, atol=1e-13)
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    ref_state if isinstance(ref_state, tuple) else (ref_state,)):
        np.testing.assert_allclose(a, b.data, rtol=1e-12)


def test_value_and_grad_of_a_regressor():
    m = gg.SequenceRegressor(2, 4, cell="rnn", dtype=np.float64)
    rng = np.random.default_rng(1)
    xs, y = rng.standard_normal((5, 3, 2)), rng.standard_normal(3)
    loss, grads, _ = compiler.compile(m, 5, 3, backend="numpy").value_and_grad(xs, y)
    ref = m.loss(xs, y)
    want = _tape_grads(m, ref)
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    for k, v in want.items():
        np.testing.assert_allclose(grads[k], v, rtol=1e-10, atol=1e-13)


def test_one_program_serves_every_sequence_length_and_returns_states():
    m = gg.LSTM(3, 4, num_layers=2, dtype=np.float64)
    prog = compiler.compile(m, 5, 2)
    rng = np.random.default_rng(2)
    for T in (5, 1, 9):
        xs = rng.standard_normal((T, 2, 3))
        out, (h, c), states = prog.forward(xs, None, return_states=True)
        ref, (rh, rc) = m(xs)
        np.testing.assert_allclose(out, ref.data, rtol=1e-12, atol=1e-14)
        assert len(states) == T + 1
        np.testing.assert_allclose(states[-1][0], rh.data, rtol=1e-12)
        np.testing.assert_allclose(states[0][1], np.zeros_like(rc.data))
        mid, _ = m(xs[:T // 2 + 1])
        np.testing.assert_allclose(states[T // 2 + 1][0][-1], mid.data[-1], rtol=1e-12)


@pytest.mark.parametrize("bias", [lambda b, s: b / 2.0, lambda b, s: b * s, lambda b, s: b * b,
                                  lambda b, s: b / s, lambda b, s: gg.tanh(b) * s])
def test_parameter_maps_after_the_loop(bias):
    """Gradients of parameters used through parameter-only maps are sums over t followed by the
    map's VJP: computed after the native call, not in the loop."""
    rng = np.random.default_rng(0)

    def step(p, x, h):
        h = gg.tanh(x @ p["Wx"] + h @ p["Wh"] + bias(p["b"], p["s"]))
        return h, h
    m = gg.Recurrent(step, {"Wx": rng.normal(size=(3, 4)), "Wh": rng.normal(size=(4, 4)) * .5,
                            "b": rng.normal(size=(4,)), "s": rng.normal(size=(4,)) + 3})
    h0, xs, d = rng.normal(size=(2, 4)), rng.normal(size=(5, 2, 3)), rng.normal(size=(5, 2, 4))
    g, _, _ = compiler.compile(m, 5, 2, input_size=3, state=h0).vjp(xs, h0, d,
                                                                     np.zeros_like(h0))
    o, _ = m(xs, gg.Tensor(h0))
    want = _tape_grads(m, (o * d).sum())
    for k, v in want.items():
        np.testing.assert_allclose(g[k], v, rtol=1e-10, atol=1e-13)


def test_fusion_report_and_dumps():
    prog = compiler.compile(gg.LSTM(4, 8), 10, 2, keep_dumps=True)
    rep = prog.fusion_report()
    assert "forward loop runs 1 product(s) per step and the reverse loop 1" in rep
    assert "sigmoid x3" in rep and "tanh x2" in rep
    for name in ("trace", "simplify", "merge_matmuls", "autodiff", "sink_slices", "schedule",
                 "stages"):
        assert prog.dump(name)
    assert "define" in prog.llvm_ir()
    asm = prog.asm
    assert "zmm" in asm and "vfmadd" in asm
    with pytest.raises(KeyError, match="unknown pass"):
        prog.dump("nope")


def test_compile_command_knows_every_pass():
    from compiler.api import PIPELINE
    from graphgrad.commands.compile import DUMPS
    assert set(PIPELINE) <= set(DUMPS)


def test_compile_command_dumps():
    r = subprocess.run([sys.executable, "-m", "graphgrad.cli", "compile", "--cell", "gru",
                        "--hidden", "8", "--input", "4", "--T", "5", "--batch", "2",
                        "--dump", "schedule"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "-- fwd_loop" in r.stdout and "-- post" in r.stdout
    r = subprocess.run([sys.executable, "-m", "graphgrad.cli", "compile", "--dump", "nope"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_compile_command_refuses_built_in_options_with_a_model_file(tmp_path):
    (tmp_path / "m.py").write_text("import graphgrad as gg, numpy as np\n"
                                   "def f64():\n    return gg.GRU(4, 8, dtype=np.float64)\n"
                                   "def three():\n    return 1, 2, 3\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "graphgrad.cli", "compile",  # noqa
                                     "--model", *a], capture_output=True, text=True,
                                    timeout=120, cwd=tmp_path)
    r = run("m.py:f64", "--dtype", "float32", "--layers", "2")
    assert r.returncode == 2 and "--layers, --dtype describe the built-in --cell" in r.stderr
    r = run("m.py:three")
    assert r.returncode == 2 and "(model, example_state), got a tuple of 3" in r.stderr
    r = run("m.py:f64", "--T", "3", "--batch", "2", "--input", "4")
    assert r.returncode == 0 and "fwd_loop" in r.stdout, r.stderr
    # the sizes of the built-in model were ignored beside --model; now they are refused
    r = run("m.py:f64", "--cell", "rnn", "--hidden", "3")
    assert r.returncode == 2 and "--cell, --hidden describe the built-in model" in r.stderr
    r = run("m.py:f64", "--input", "5")
    assert r.returncode == 2 and "--input 5 contradicts the input width 4 of the GRU" in r.stderr


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_begin_finish_is_vjp_without_a_second_forward(backend):
    m = gg.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64)
    rng = np.random.default_rng(5)
    xs, d_out = rng.standard_normal((6, 2, 3)), rng.standard_normal((6, 2, 8))
    prog = compiler.compile(m, 6, 2, backend=backend)
    out, state = prog.begin(xs)
    ref_out, _ = prog.forward(xs)
    np.testing.assert_allclose(out, ref_out, rtol=1e-13, atol=1e-15)
    g, dx, ds0 = prog.finish(d_out)
    g2, dx2, ds02 = prog.vjp(xs, None, d_out)
    np.testing.assert_allclose(dx, dx2, rtol=1e-13, atol=1e-15)
    for k in g2:
        np.testing.assert_allclose(g[k], g2[k], rtol=1e-13, atol=1e-15)
    for a, b in zip(ds0, ds02):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("threads", [1, 2])
def test_inputs_changed_between_begin_and_finish_do_not_change_the_gradients(threads):
    """vjp reads contiguous inputs in place; begin() must copy them, because finish() reads
    them again after the caller may have reused the array (a training loop's input buffer)."""
    m = gg.RNN(3, 64, dtype=np.float64)
    rng = np.random.default_rng(6)
    xs, d_out = rng.standard_normal((5, 4, 3)), rng.standard_normal((5, 4, 64))
    prog = compiler.compile(m, 5, 4, threads=threads)
    kept = xs.copy()
    g_ref, dx_ref, _ = prog.vjp(xs, None, d_out)
    assert np.array_equal(xs, kept)         # read in place, never written
    prog.begin(xs)
    xs[:] = rng.standard_normal(xs.shape)   # the caller refills its buffer
    g, dx, _ = prog.finish(d_out)
    np.testing.assert_array_equal(dx, dx_ref)
    for k in g_ref:
        np.testing.assert_array_equal(g[k], g_ref[k])


@pytest.mark.parametrize("threads", [1, 2])
def test_results_belong_to_the_caller_after_later_calls(threads):
    """vjp feeds each layer the live output buffer of the layer below (no copy); what forward,
    begin and vjp return must still be the caller's own arrays after the next calls."""
    m = gg.GRU(3, 64, num_layers=2, dtype=np.float64)
    rng = np.random.default_rng(7)
    xs, d_out = rng.standard_normal((5, 4, 3)), rng.standard_normal((5, 4, 64))
    prog = compiler.compile(m, 5, 4, threads=threads)
    out, state = prog.forward(xs)
    b_out, _ = prog.begin(xs)
    g, dx, ds0 = prog.vjp(xs, None, d_out)
    kept = [a.copy() for a in (out, state, b_out, dx, ds0, *g.values())]
    prog.vjp(2 * xs, None, -d_out)
    prog.forward(-xs)
    for a, b in zip((out, state, b_out, dx, ds0, *g.values()), kept):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(prog.vjp(2 * xs, None, -d_out)[1], dx)   # the calls differ


def test_backward_phase_needs_the_forward_phase():
    from runtime.program import NativeProgram
    prog = compiler.compile(gg.RNN(2, 3, dtype=np.float64), 4, 2).programs()[0].program
    with pytest.raises(RuntimeError, match="run phase='fwd' first"):
        NativeProgram(prog).run(4, {}, phase="bwd")


def _lstm_prog(T=6, B=3):
    return compiler.compile(gg.LSTM(4, 5), seq_len=T, batch=B)


@pytest.mark.parametrize("call,exc,words", [
    (lambda: compiler.compile(object(), 6, 3), TypeError, "model must be a graphgrad model"),
    (lambda: compiler.compile(gg.LSTMCell(4, 5), 6, 3), TypeError,
     "got LSTMCell; a cell is one step: compile its sequence model, cell.model"),
    (lambda: compiler.compile(gg.Linear(4, 5), 6, 3), TypeError,
     "model must be a graphgrad model .* got Linear"),
    (lambda: compiler.compile(gg.LSTM(4, 5), 6, 2.5), ValueError, "batch must be a positive int"),
    (lambda: compiler.compile(gg.LSTM(4, 5), "6", 3), ValueError, "seq_len must be a positive"),
    (lambda: compiler.compile(gg.LSTM(4, 5), 6, 3, opt=7), ValueError, "opt must be 0, 1, 2"),
    (lambda: compiler.compile(gg.LSTM(4, 5), 6, 3, opt=3.0), ValueError,
     r"opt must be 0, 1, 2 or 3, got 3\.0"),
    (lambda: compiler.compile(gg.LSTM(4, 5), 6, 3, threads=2.0), ValueError,
     r"compile: threads must be 1 or 2, got 2\.0"),
    (lambda: compiler.compile(gg.LSTM(4, 5), 6, 3, threads=True), ValueError,
     "compile: threads must be 1 or 2, got True"),
    (lambda: compiler.compile(gg.LSTM(4, 5), 6, 3, unroll="yes"), ValueError, "unroll must be"),
    (lambda: compiler.compile(gg.LSTM(4, 5), 6, 3, threads=2, backend="numpy"), ValueError,
     "threads=2 runs native code; backend='numpy'"),
    (lambda: compiler.compile(gg.LSTM(4, 5), 6, 3, threads=2, backend="llvm"), ValueError,
     "backend must be 'native' or 'numpy', got 'llvm'"),
    (lambda: compiler.compile(gg.LSTM(4, 5), 6, 3, input_size=7), ValueError,
     "input_size=7, but the model's input_size is 4"),
    (lambda: compiler.compile(gg.Recurrent(lambda p, x, h: (h, h), {}), 6, 2, input_size=2.5,
                              state=np.zeros((2, 5))), ValueError,
     r"input_size must be a positive int, got 2\.5"),
    (lambda: compiler.compile(gg.LSTM(4, 5), 6, 3, thread=2), TypeError, "unknown option"),
    (lambda: compiler.compile(gg.Recurrent(lambda p, x, h: (h, h), {}), 6, 2, input_size=4,
                              state=np.zeros((3, 5))), ValueError, r"state= leaf 0 has shape"),
    (lambda: _lstm_prog().finish(np.ones((6, 3, 5), np.float32)), RuntimeError,
     "call begin"),
    (lambda: compiler.compile(gg.Recurrent(lambda p, x, h: (h, h), {}, reverse=True), 6, 2,
                              input_size=4, state=np.zeros((2, 5))).forward(
        np.ones((6, 2, 4)), np.zeros((2, 5)), return_states=True), ValueError,
     r"backwards in time \(bidirectional, or a Recurrent with reverse=True\)"),
    (lambda: _lstm_prog().forward(np.ones((6, 3, 4), np.float32), np.zeros((1, 3, 5),
                                                                          np.float32)),
     TypeError, r"expected a tuple of 2 arrays \(h, c\), got one array"),
    (lambda: _lstm_prog().forward(np.ones((0, 3, 4), np.float32)), ValueError,
     r"expected \[T, 3, 4\] with T >= 1"),
])
def test_compile_and_program_argument_errors(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


def test_finish_needs_its_own_begin():
    """One finish per begin: a vjp in between reuses the buffers begin() filled."""
    prog = _lstm_prog()
    xs, d_out = np.ones((6, 3, 4), np.float32), np.ones((6, 3, 5), np.float32)
    prog.begin(xs)
    prog.finish(d_out)
    with pytest.raises(RuntimeError, match="call begin"):
        prog.finish(d_out)
    # a vjp refused by its argument checks runs nothing, so the pending begin() stands
    out, _ = prog.begin(xs)
    with pytest.raises(ValueError, match="d_out"):
        prog.vjp(xs, None, np.ones((6, 3, 4), np.float32))
    np.testing.assert_array_equal(prog.finish(d_out)[1], prog.vjp(xs, None, d_out)[1])
    prog.begin(xs)
    prog.vjp(xs, None, d_out)
    with pytest.raises(RuntimeError, match="call begin"):
        prog.finish(d_out)


def test_task_model_targets_are_checked():
    reg = compiler.compile(gg.SequenceRegressor(4, 5), seq_len=6, batch=3)
    xs = np.zeros((6, 3, 4), np.float32)
    with pytest.raises(TypeError, match="targets are float64, the model is float32"):
        reg.value_and_grad(xs, np.zeros(3), None)
    with pytest.raises(ValueError, match=r"targets \[2\] must hold one value per batch row"):
        reg.value_and_grad(xs, np.zeros(2, np.float32), None)
    loss, _ = reg.value_and_grad(xs, np.array([1, 2, 3]), None)[:2]    # integers: exact
    assert np.isfinite(loss)
    lm = compiler.compile(gg.LanguageModel(10, 8), seq_len=6, batch=3)
    ids = np.zeros((6, 3), np.int64)
    with pytest.raises(IndexError, match=r"input ids must lie in \[0, 10\)"):
        lm.value_and_grad(ids + 12, ids, None)
    with pytest.raises(IndexError, match=r"targets must lie in \[0, 10\)"):
        lm.value_and_grad(ids, ids - 1, None)


def test_finish_after_a_forward_of_another_length():
    """forward() runs the inference programs, so it leaves begin()'s buffers alone; finish
    checks d_out against begin's sequence length, not the last call's."""
    m = gg.LSTM(3, 4, dtype=np.float64)
    rng = np.random.default_rng(8)
    xs, d_out = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))
    prog = compiler.compile(m, 5, 2)
    g_ref, dx_ref, _ = prog.vjp(xs, None, d_out)
    prog.begin(xs)
    prog.forward(rng.standard_normal((9, 2, 3)))      # e.g. a validation batch in between
    g, dx, _ = prog.finish(d_out)
    np.testing.assert_array_equal(dx, dx_ref)
    for k in g_ref:
        np.testing.assert_array_equal(g[k], g_ref[k])
    prog.begin(xs)
    prog.forward(rng.standard_normal((9, 2, 3)))
    with pytest.raises(ValueError, match=r"d_out: shape \[9, 2, 4\], expected \[5, 2, 4\]"):
        prog.finish(rng.standard_normal((9, 2, 4)))


@pytest.mark.parametrize("make,targets", [
    (lambda: gg.LanguageModel(7, 5, cell="gru", batch_first=True, dtype=np.float64),
     lambda rng, B, T: rng.integers(0, 7, (B, T))),
    (lambda: gg.SequenceClassifier(3, 5, 4, cell="lstm", batch_first=True, dtype=np.float64),
     lambda rng, B, T: rng.integers(0, 4, B)),
    (lambda: gg.SequenceRegressor(3, 5, cell="rnn", batch_first=True, dtype=np.float64),
     lambda rng, B, T: rng.standard_normal(B)),
], ids=["language_model", "classifier", "regressor"])
def test_value_and_grad_of_batch_first_task_models(make, targets):
    """Inputs (B, T, ...): the initial state has B rows and a many-to-one head reads each
    row's last step (out[:, -1]), as in the time-major model."""
    B, T = 3, 5
    m = make()
    rng = np.random.default_rng(9)
    xs = rng.integers(0, 7, (B, T)) if isinstance(m, gg.LanguageModel) else \
        rng.standard_normal((B, T, 3))
    tg = targets(rng, B, T)
    loss, grads, _ = compiler.compile(m, T, B).value_and_grad(xs, tg)
    ref = m.loss(xs, tg)
    ref = ref[0] if isinstance(ref, tuple) else ref
    want = _tape_grads(m, ref)
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    for k, v in want.items():
        np.testing.assert_allclose(grads[k], v, rtol=1e-10, atol=1e-13)
    if not isinstance(m, gg.LanguageModel):     # the time-major model on the same data
        m.rnn.batch_first = False
        assert m.loss(np.swapaxes(xs, 0, 1), tg).item() == pytest.approx(loss, rel=1e-12)


def test_parameters_set_directly_are_checked():
    """Parameters are read on every call; data set on one directly (p.data = ...) must have
    the compiled shape and dtype (the tape refuses mixed dtypes too: no silent casts)."""
    m = gg.RNN(3, 4)
    prog = compiler.compile(m, 5, 2)
    xs = np.ones((5, 2, 3), np.float32)
    p = m.parameters()["weight_hh_l0"]
    w = p.data
    p.data = w.astype(np.float64)
    with pytest.raises(TypeError, match="parameter weight_hh_l0: dtype float64, the program "
                                        "was compiled for float32"):
        prog.forward(xs)
    p.data = w[:2]
    with pytest.raises(ValueError, match=r"parameter weight_hh_l0: shape \[2, 4\]"):
        prog.vjp(xs, None, np.ones((5, 2, 4), np.float32))
    p.data = 2 * w                                      # the right kind: used as it is
    np.testing.assert_allclose(prog.forward(xs)[0], m(xs)[0].data, rtol=1e-5, atol=1e-6)
    # a 0-d parameter updated out of place becomes a numpy scalar: the right kind too
    step = lambda q, x, h: (gg.tanh(x @ q["W"]) * q["a"], h)            # noqa: E731
    rec = gg.Recurrent(step, {"W": np.ones((3, 4)), "a": np.array(0.5)})
    h0 = np.zeros((2, 4))
    prog = compiler.compile(rec, 5, 2, input_size=3, state=h0)
    rec.params["a"].data = rec.params["a"].data * 2                      # np.float64
    np.testing.assert_allclose(prog.forward(xs.astype(np.float64), h0)[0],
                               rec(xs.astype(np.float64), h0)[0].data, rtol=1e-12)
    # a bad parameter of an upper layer is refused before the lower layer runs
    m2 = gg.GRU(3, 4, num_layers=2)
    prog = compiler.compile(m2, 5, 2)
    prog.begin(xs)
    m2.parameters()["weight_hh_l1"].data = m2.parameters()["weight_hh_l1"].data[:2]
    with pytest.raises(ValueError, match="parameter weight_hh_l1"):
        prog.begin(2 * xs)
    with pytest.raises(RuntimeError, match="call begin"):    # the refused begin left none
        prog.finish(np.ones((5, 2, 4), np.float32))


@pytest.mark.parametrize("options,words", [
    (dict(split="bogus", backend="numpy"),
     r"compile: split must be one of 'auto', 'cols', 'batch', 'pipeline', got 'bogus'"),
    (dict(split="rows", threads=2), r"compile: split must be .* got 'rows'"),
    (dict(unroll=True, backend="numpy"),
     r"compile: unroll=True emits native straight-line code; backend='numpy'"),
    (dict(unroll=True, threads=2, split="pipeline"),
     r"compile: split='pipeline' runs the time loops as loops; unroll=True"),
    (dict(split="batch"), r"compile: split='batch' shares the work between two threads; "
                          r"threads=1 runs one"),
], ids=["split_unknown_numpy", "split_unknown_native", "unroll_numpy", "unroll_pipeline",
        "split_one_thread"])
def test_options_that_would_be_ignored_are_refused(monkeypatch, options, words):
    """An option the program would not honour is refused by compile() before any tracing:
    an unknown split passed silently on backend='numpy' (and only failed after tracing on
    native), unroll=True on backend='numpy' ran the loops for any T, split='pipeline' with
    unroll=True silently ran the column split, and an explicit split with threads=1 did nothing."""
    import compiler.api

    def boom(*a, **k):
        raise AssertionError("compile traced the model although its options are invalid")
    monkeypatch.setattr(compiler.api, "CompiledProgram", boom)
    with pytest.raises(ValueError, match=words):
        compiler.compile(gg.LSTM(4, 5), 6, 3, **options)


def test_valid_split_options_still_compile():
    from runtime.program import SPLITS      # compile() checks against the same names
    assert set(SPLITS) == {"auto", "cols", "batch", "pipeline"}
    m = gg.GRU(3, 4, dtype=np.float64)
    xs = np.random.default_rng(0).standard_normal((5, 2, 3))
    ref = compiler.compile(m, 5, 2, backend="numpy").forward(xs)[0]
    for options in (dict(split="auto", backend="numpy"), dict(unroll=True, threads=2),
                    dict(unroll=True, threads=2, split="cols"), dict(threads=2, split="batch")):
        out = compiler.compile(m, 5, 2, **options).forward(xs)[0]
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)
