"""graphgrad.flow: path counts against networkx enumeration, the scalar sweep against the
lecture recurrence, the diagnosis on known regimes, and the CLI end to end."""
import io
import os

import networkx as nx
import numpy as np
import pytest

import graphgrad as gg
from graphgrad import flow
from graphgrad.flow import cli, paths
from graphgrad.flow.plots import scalar_sweep


@pytest.mark.parametrize("M", [gg.RNN, gg.LSTM, gg.GRU])
@pytest.mark.parametrize("loss", ["last", "all"])
def test_path_counts_match_enumeration(M, loss):
    m = M(2, 3, dtype=np.float64)
    xs = np.random.default_rng(0).standard_normal((3, 1, 2))
    G, ws, L = paths.unrolled_graph(m, xs, loss=loss)
    for w in ("weight_hh_l0", "bias_ih_l0"):
        enum = list(nx.all_simple_edge_paths(G, ws[w], L))
        pc = paths.path_counts(m, xs, w, loss=loss)
        assert pc.total == len(enum) == sum(pc.by_length.values()) == sum(pc.by_step.values())
        lengths = {}
        for p in enum:
            lengths[len(p)] = lengths.get(len(p), 0) + 1
        assert lengths == pc.by_length
        assert set(pc.by_step) == {0, 1, 2}


def test_path_count_rnn_closed_form_and_growth():
    m = gg.RNN(2, 3, dtype=np.float64)
    xs = np.random.default_rng(0).standard_normal((16, 1, 2))
    # each use of W_hh at step q reaches out[T-1] through h_q..h_j then the stacked output, j>=q
    g = paths.path_growth(m, xs, "weight_hh_l0", Ts=(1, 2, 4, 8, 16))
    assert g == {T: T * (T + 1) // 2 for T in (1, 2, 4, 8, 16)}
    lg = paths.path_growth(gg.LSTM(2, 3, dtype=np.float64), xs, "weight_hh_l0", Ts=(2, 4, 8))
    assert lg[8] / lg[4] > (lg[4] / lg[2])  # faster than geometric: many routes per step
    # a batch_first model takes (B, T, I): the growth is over its T, not its batch
    bf = gg.RNN(2, 3, dtype=np.float64, batch_first=True)
    assert paths.path_growth(bf, xs.transpose(1, 0, 2), "weight_hh_l0", Ts=(1, 2, 4, 8, 16)) == g


def test_scalar_sweep_matches_lecture_recurrence():
    ws = np.linspace(-4, 4, 41)
    hT, g = scalar_sweep(ws, 10)
    for w, a, b in zip(ws, hT, g):
        hs = [0.5]
        for _ in range(10):
            hs.append(np.tanh(w * hs[-1]))
        dh = 1.0
        for t in range(10):
            dh = (1 - hs[-1 - t] ** 2) * w * dh
        assert abs(a - hs[-1]) < 1e-15 and abs(b - dh) < 1e-14


def test_decay_rate_of_a_known_geometric_chain():
    d = np.arange(51)
    assert np.allclose(flow.decay_rate((np.log10(0.8) * d)[:, None]), np.log10(0.8))


def test_a_chain_that_hits_exact_zero_is_vanishing():
    """W_hh = 0: ds_t/ds_{t-1} = 0, nothing reaches back even one step; the -300 floor of the
    fit must not make that a flat, 'healthy' chain."""
    xs = np.random.default_rng(0).standard_normal((20, 2, 4))
    for cell in ("rnn", "rnn_relu"):
        m = cli.build_model(cell, 4, 8)
        m.parameters()["weight_hh_l0"].data[:] = 0.0
        fl = flow.from_tape(m, xs)
        assert np.isneginf(fl.chains()["l0"].log10_norm[1:]).all()
        d = flow.diagnose(fl)
        assert d.verdict == "vanishing" and d.layers[0].verdicts == ["vanishing"] * 2
    d = np.arange(11.0)
    y = np.log10(0.9) * d
    y[6:] = -np.inf                              # healthy for 5 steps, then exactly zero
    assert flow.decay_rate(y[:, None])[0] <= -300 / 6


def test_diagnosis_regimes():
    xs = np.random.default_rng(0).standard_normal((60, 2, 4))
    rnn = cli.build_model("rnn", 4, 16, init_scale=1.0)
    assert flow.diagnose(flow.from_tape(rnn, xs)).verdict == "vanishing"
    relu = cli.build_model("rnn_relu", 4, 16, init_scale=5.0)
    d = flow.diagnose(flow.from_tape(relu, xs))
    assert d.verdict == "exploding" and "clip the gradient norm at" in d.suggestion
    lstm = cli.build_model("lstm", 4, 16, forget_bias=8.0)
    assert flow.diagnose(flow.from_tape(lstm, xs)).verdict == "healthy"


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "plots"
    cli.main(["--cell", "rnn,lstm", "--T", "30", "--hidden", "8", "--out", str(out)])
    text = capsys.readouterr().out
    assert "rnn" in text and "lstm" in text and "verdict" in text and "suggestion" in text
    for name in ("flow_norms.png", "flow_lags.png", "flow_chains.png", "flow_sweep.png"):
        f = out / name
        assert f.exists() and os.path.getsize(f) > 5000
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _cell_file(path, init_state):
    """A model file whose build returns (gg.Recurrent, 3, <init_state expression>)."""
    path.write_text(
        "import numpy as np, graphgrad as gg\n"
        "def step(p, x, h):\n"
        "    h = gg.tanh(x @ p['Wx'] + h @ p['Wh'])\n"
        "    return h, h\n"
        "def build(hidden, seed, init_scale):\n"
        "    r = np.random.default_rng(seed)\n"
        "    p = {'Wx': r.standard_normal((3, hidden)) * 0.5,\n"
        "         'Wh': init_scale * np.eye(hidden)}\n"
        f"    return gg.Recurrent(step, p), 3, {init_state}\n")
    return path


def test_cli_custom_model_file(tmp_path, capsys):
    src = _cell_file(tmp_path / "mycell.py", "lambda b: np.zeros((b, hidden))")
    cli.main(["--cell", "", "--model", f"{src}:build", "--T", "20", "--hidden", "4",
              "--no-plots"])
    text = capsys.readouterr().out
    assert "mycell.py" in text and "sum err" in text
    assert "[mycell.py] lag columns: shares of ||dL/dWh||" in text   # which weight, no W_hh


def test_cli_custom_model_with_a_fixed_initial_state(tmp_path, capsys):
    """docs/flow.md's tuple form with an array as init_state: used when its batch matches
    --batch, a one-line error naming --batch when it does not."""
    src = _cell_file(tmp_path / "fixed.py", "np.full((1, hidden), 0.1)")
    assert cli.main(["--cell", "", "--model", str(src), "--T", "12", "--hidden", "4",
                     "--no-plots"]) == 0
    assert "fixed.py" in capsys.readouterr().out
    assert cli.main(["--cell", "", "--model", f"{src}:build", "--T", "12", "--hidden", "4",
                     "--batch", "2", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "init_state has shape [1, 4]" in err[0] and "--batch 2" in err[0]


def test_cli_batch_first_model_file(tmp_path):
    """A --model file may build a batch_first model: it gets the same sequences, (B, T, I),
    and so the same flow as its time-major twin."""
    for name, bf in (("bf.py", True), ("tm.py", False)):
        (tmp_path / name).write_text(
            "import numpy as np, graphgrad as gg\n"
            "def build(hidden, seed, init_scale):\n"
            f"    return gg.GRU(3, hidden, dtype=np.float64, seed=seed, batch_first={bf})\n")
    common = ["--cell", "", "--T", "9", "--batch", "2", "--hidden", "4", "--no-plots"]
    bf = cli.run(cli.parse(common + ["--model", str(tmp_path / "bf.py")]), out=io.StringIO())
    tm = cli.run(cli.parse(common + ["--model", str(tmp_path / "tm.py")]), out=io.StringIO())
    a, b = bf["bf.py"], tm["tm.py"]
    assert a.layers[0].xs.shape == (9, 2, 3) and np.array_equal(a.layers[0].xs, b.layers[0].xs)
    for k, v in b.grads().items():
        np.testing.assert_array_equal(a.grads()[k], v)


@pytest.mark.parametrize("args,words", [
    (["--T", "0"], ["--T", "positive integer"]),
    (["--hidden", "-1"], ["--hidden", "positive integer"]),
    (["--forget-bias", "abc"], ["--forget-bias", "finite number"]),
    (["--init-scale", "nan"], ["--init-scale"]),
    (["--cell", "rnn", "--forget-bias", "1"], ["applies to the lstm and gru cells only"]),
    (["--cell", "lstm,cnn"], ["unknown cell 'cnn'"]),
    (["--model", "missing.py"], ["model file not found: missing.py"]),
    (["--model", "mycell.py:nope"], ["has no function 'nope'"]),
    (["--model", "mycell.py:wrong"], ["build must return a model"]),
    (["--model", "mycell.py:raises"], ["raised RuntimeError: boom"]),
])
def test_cli_bad_arguments_are_one_line_errors(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mycell.py").write_text(
        "def wrong(hidden, seed, init_scale):\n    return 1, 2\n"
        "def raises(hidden, seed, init_scale):\n    raise RuntimeError('boom')\n")
    try:
        rc = cli.main(["--T", "5", "--no-plots"] + args)
    except SystemExit as e:      # argparse's own refusals
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graphgrad flow: error:"), err
    for w in words:
        assert w in err[0], err[0]


def test_cli_unwritable_out_fails_before_the_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["--cell", "rnn", "--T", "5", "--out", str(blocker / "plots")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "graphgrad flow: error:" in captured.err
