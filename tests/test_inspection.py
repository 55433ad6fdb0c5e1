"""The compiler's inspection and reporting surface: prog.dump, prog.llvm_ir, the fusion report's
memory figures, the graph after every pass against the tape, and the errors a user's step
function gets (op, file:line) from the API and from `graphgrad compile`."""
import inspect
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphgrad as gg
import compiler
from compiler import api, interp, ir
from compiler.errors import CompileError
from compiler.program import reference_program
from compiler.trace import flatten
from test_compile_custom import I, make_model, recipes
from benchmarks.peers import custom_lstm


# ---------------------------------------------------------------- prog.dump
def test_unknown_dump_name_is_named_even_without_keep_dumps():
    # it used to say "compile with keep_dumps=True", which would not have helped
    prog = compiler.compile(gg.RNN(3, 4), 3, 2, backend="numpy")
    with pytest.raises(KeyError, match="unknown pass 'bogus'.*'sink_slices'"):
        prog.dump("bogus")
    with pytest.raises(ValueError, match="'autodiff' is kept only when compiled with keep_dumps"):
        prog.dump("autodiff")


def test_every_view_of_a_stacked_bidirectional_model_names_its_layer():
    prog = compiler.compile(gg.GRU(3, 4, num_layers=2, bidirectional=True), 3, 2,
                            backend="numpy", keep_dumps=True)
    heads = [f"# layer {l} direction {d}" for l in (0, 1) for d in (0, 1)]
    for name in api.PIPELINE:
        text = prog.dump(name)
        assert [line for line in text.splitlines() if line.startswith("# layer")] == heads, name


# ---------------------------------------------------------------- prog.llvm_ir
def test_llvm_ir_modes():
    prog = compiler.compile(gg.RNN(3, 4), 3, 2)
    with pytest.raises(ValueError, match="unknown mode 'bogus'.*'forward'"):
        prog.llvm_ir("bogus")
    # the adjoints variant is built on demand (it was a bare KeyError before step_adjoints ran)
    assert "define" in prog.llvm_ir("adjoints")
    assert "define" in prog.llvm_ir("forward")


# ---------------------------------------------------------------- the fusion report's memory
# Per step, B = 4, H = 16, float32: one (B, H) value is 256 bytes. (saved for the reverse loop,
# hoisted input projection, kept for the weight-gradient products after the reverse loop):
#   rnn: nothing saved (tanh' is read off h, a state); x@W_ih (1); dz (1)
#   lstm / the 4-matrix custom lstm: i, f, g, o, tanh(c) (5); 4H gates (4); dgates (4)
#   gru: r, z, n and h W_hn + b_hn saved (4; 1 - z is recomputed from z by recompute_cheap, it
#   was a fifth); 3H (3); the input-side gate gradient (3) + the hidden-side n part (1)
#   gru_v1: r, z, n saved (3; 1 - z recomputed, it was a fourth); 3H (3); dgates (3) +
#   r * h_prev, read only by dW_hn's product (1). It was counted as saved for the reverse loop
#   (1280 / 768), by which loop writes it, not who reads it.
MEMORY = {"rnn": (0, 256, 256), "lstm": (1280, 1024, 1024), "gru": (1024, 768, 1024),
          "gru_v1": (768, 768, 1024), "custom_lstm": (1280, 1024, 1024)}


@pytest.mark.parametrize("cell", list(MEMORY))
def test_fusion_report_memory_by_use(cell):
    B, H = 4, 16
    if cell == "custom_lstm":
        z = np.zeros((B, H), np.float32)
        prog = compiler.compile(custom_lstm(gg.LSTM(8, H)), 5, B, input_size=8, state=(z, z),
                                backend="numpy")
    else:
        prog = compiler.compile(gg.make_rnn(cell, 8, H), 5, B, backend="numpy")
    (built,) = prog.programs("train")
    keys = ("saved_for_reverse_bytes", "hoisted_bytes", "kept_for_post_bytes")
    assert tuple(built.report[k] for k in keys) == MEMORY[cell]
    saved, hoisted, kept = MEMORY[cell]
    assert (f"per step: {saved} bytes of activations saved for the reverse loop, {hoisted} of "
            f"hoisted input projection, {kept} kept for the weight-gradient products") \
        in prog.fusion_report()


# ---------------------------------------------------------------- every pass vs the tape
def _tape(model, params, x, s, cts):
    P = {k: gg.Tensor(v, requires_grad=True) for k, v in params.items()}
    X = gg.Tensor(x, requires_grad=True)
    S = [gg.Tensor(v, requires_grad=True) for v in s]
    y, ns = model.step(P, X, S[0] if len(S) == 1 else tuple(S))
    outs = [y] + flatten(ns)[0]
    loss = gg.Tensor(np.zeros(()))
    for o, c in zip(outs, cts):
        loss = loss + (o * c).sum()
    loss.backward()

    def grad(t):
        return np.zeros(t.data.shape) if t.grad is None else t.grad
    return [o.data for o in outs], [grad(P[k]) for k in params] + [grad(X)] + [grad(t) for t in S]


@settings(max_examples=40, deadline=None)
@given(recipes(), st.booleans(), st.integers(1, 3), st.integers(2, 4))
def test_graph_after_every_pass_equals_the_tape_on_random_steps(recipe, two, B, H):
    """The interpreter on the graph after each pass of compile's pipeline (the very function
    compile runs, joint_graph) gives the tape's step outputs and gradients."""
    model = make_model(recipe, two, H, np.float64)
    rng = np.random.default_rng(0)
    s0 = tuple(rng.normal(size=(B, H)) for _ in range(2 if two else 1))
    ld = reference_program(model, 3, B, input_size=I, state=s0 if two else s0[0]).layers[0][0]
    graphs = {"trace": ld.step.G}
    api.joint_graph(ld, B, graphs=graphs)
    assert list(graphs) == list(api.PIPELINE[:api.PIPELINE.index("stages")])
    params = {k: model.params[k].data for k in ld.step.params}
    x = rng.normal(size=(B, I))
    cts = [rng.normal(size=ir.node(ld.step.G, o).shape) for o in ld.step.G.graph["outputs"]]
    fwd, grads = _tape(model, params, x, s0, cts)
    args = list(params.values()) + [x] + list(s0)
    for name, G in graphs.items():
        n_in = len(G.graph["inputs"])
        out = interp.run(G, *(args + cts)[:n_in])
        want = grads if name == "autodiff" else fwd if n_in == len(args) else fwd + grads
        assert len(out) == len(want), name
        for i, (o, w) in enumerate(zip(out, want)):
            np.testing.assert_allclose(o, w, rtol=1e-10, atol=1e-12,
                                       err_msg=f"after {name}, output {i}, recipe {recipe}")


# ---------------------------------------------------------------- errors in the user's step
def step_branches(p, x, h):
    h = gg.tanh(x @ p["W"] + h)
    if h.sum() > 0:  # <- branch
        h = h * 2
    return h, h


def step_narrows_state(p, x, h):
    h = gg.tanh(x @ p["W"] + h)
    return h, h[:, :2]  # <- narrow


def _line(fn, mark):
    lines, first = inspect.getsourcelines(fn)
    return first + [i for i, s in enumerate(lines) if f"# <- {mark}" in s][0]


def _compile(step, B=2, H=4):
    model = gg.Recurrent(step, {"W": np.ones((I, H))})
    return compiler.compile(model, seq_len=3, batch=B, input_size=I, state=np.zeros((B, H)),
                            backend="numpy")


def test_branching_on_a_traced_value_names_the_user_line():
    # was Python's "'>' not supported between instances of 'IRTracer' and 'int'", no line; the
    # comparison itself is an op now (a mask), and the `if` on it is what cannot compile
    with pytest.raises(CompileError) as e:
        _compile(step_branches)
    msg = str(e.value)
    assert e.value.op == "bool()" and "cannot branch on or export data" in msg, msg
    assert "gg.where(cond, a, b)" in msg, msg
    assert f"test_inspection.py:{_line(step_branches, 'branch')} (step_branches)" in msg, msg


def test_wrongly_shaped_new_state_names_the_user_line():
    with pytest.raises(ValueError) as e:
        _compile(step_narrows_state)
    msg = str(e.value)
    assert "new state leaf 0 is float64[2, 2], the state is float64[2, 4]" in msg, msg
    assert f"test_inspection.py:{_line(step_narrows_state, 'narrow')}" in msg, msg


def test_wrong_return_names_the_step_definition_for_lambdas_and_methods():
    class Cell:
        def step(self, p, x, h):
            return h
    lam = lambda p, x, h: h  # noqa: E731
    for fn in (Cell().step, lam):
        with pytest.raises(TypeError, match="must return") as e:
            _compile(fn)
        code = fn.__code__
        assert f"test_inspection.py:{code.co_firstlineno})" in str(e.value), str(e.value)


def test_compile_command_reports_a_step_compile_error_on_one_line(tmp_path, capsys):
    from graphgrad.cli import main
    (tmp_path / "cell.py").write_text(textwrap.dedent("""\
        import numpy as np, graphgrad as gg

        def helper(h):
            return gg.sum(h, axis=0, keepdims=True)    # mixes the batch rows: refused

        def step(p, x, h):
            h = gg.tanh(x @ p["W"] + h)
            return h * helper(h), h

        def make():
            return gg.Recurrent(step, {"W": np.ones((3, 4), np.float32)}), \\
                np.zeros((2, 4), np.float32)
        """))
    spec = f"{tmp_path / 'cell.py'}:make"
    # it was an uncaught CompileError: a traceback and exit code 1
    assert main(["compile", "--model", spec, "--T", "3", "--batch", "2", "--input", "3"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("graphgrad compile: error: cannot compile") and "sum" in err, err
    assert "cell.py:4 (helper)" in err, err
