"""Training machinery: TBPTT(k1, k2) against a hand-unrolled reference, clipping, resume, init."""
import math

import numpy as np
import pytest

import graphgrad as gg
from graphgrad import data, optim, train
from graphgrad.core import Tensor


def tiny_lm(cell="rnn", V=5, H=3, seed=0, **kw):
    return gg.LanguageModel(V, H, cell=cell, dtype=np.float64, seed=seed, **kw)


def streams(N=14, B=2, V=5, seed=1):
    return np.random.default_rng(seed).integers(0, V, (N, B))


# ---------------------------------------------------------------- the schedule
def test_schedule_chunks_and_overlap():
    assert train.tbptt_schedule(7, 3) == [(0, 0, 3), (3, 3, 6), (6, 6, 7)]
    assert train.tbptt_schedule(7, 3, drop_last=True) == [(0, 0, 3), (3, 3, 6)]
    assert train.tbptt_schedule(9, 3, 5) == [(0, 0, 3), (1, 3, 6), (4, 6, 9)]
    assert train.tbptt_schedule(8, 3, 5) == [(0, 0, 3), (1, 3, 6), (4, 6, 8)]
    assert train.tbptt_schedule(5, 2, 100) == [(0, 0, 2), (0, 2, 4), (0, 4, 5)]
    for bad in [dict(k1=0), dict(k1=3, k2=2), dict(k1=2.5)]:
        with pytest.raises(ValueError, match="k1|k2"):
            train.tbptt_schedule(5, **bad)


# ---------------------------------------------------------------- hand-unrolled reference
def reference_run(model, S, k1, k2, lr):
    """TBPTT(k1, k2) + SGD written out step by step: an explicit tanh-RNN + linear head on raw
    tensors, the state detached at each window start, only new steps scored."""
    P = {k: v.copy() for k, v in model.state_dict().items()}
    n_steps, B = S.shape[0] - 1, S.shape[1]
    carried = {0: np.zeros((B, P["rnn.weight_hh_l0"].shape[1]))}
    losses, traj = [], []
    for mid in range(0, n_steps, k1):
        end = min(mid + k1, n_steps)
        start = max(0, mid - (k2 - k1))
        p = {k: Tensor(v, requires_grad=True) for k, v in P.items()}
        h = Tensor(carried[start])                        # detached: a constant
        total = 0.0
        for t in range(start, end):
            x = np.eye(P["head.weight"].shape[0])[S[t]]
            h = gg.tanh(x @ p["rnn.weight_ih_l0"].T + p["rnn.bias_ih_l0"]
                        + h @ p["rnn.weight_hh_l0"].T + p["rnn.bias_hh_l0"])
            if t >= mid:
                logits = h @ p["head.weight"].T + p["head.bias"]
                total = total + gg.cross_entropy(logits, S[t + 1], reduction="sum")
                carried[t + 1] = h.data.copy()
        loss = total / float((end - mid) * B)
        loss.backward()
        losses.append(loss.item())
        P = {k: P[k] - lr * p[k].grad for k in P}
        traj.append(P)
    return losses, traj


@pytest.mark.parametrize("k1,k2", [(3, 3), (3, 5), (3, 6), (4, 4), (2, 7), (2, 100)])
def test_tbptt_equals_hand_unrolled(k1, k2):
    S = streams(N=14)
    model = tiny_lm()
    want_losses, want_traj = reference_run(model, S, k1, k2, lr=0.3)
    tr = train.Trainer(model, optim.SGD(model.parameters(), 0.3), k1=k1, k2=k2,
                       backend=train.TapeBackend())
    reports = list(tr.run_epoch(S))
    assert len(reports) == len(want_losses) == math.ceil(13 / k1)
    np.testing.assert_allclose([r.loss for r in reports], want_losses, rtol=1e-12)
    # weights after the last update agree, so every intermediate gradient did too
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(v, want_traj[-1][k], rtol=1e-11, atol=1e-13, err_msg=k)
    assert tr.epoch == 1 and tr.update == 0 and tr.states == {0: None}


class Recording(train.TapeBackend):
    def __init__(self):
        self.windows = []

    def lm_window(self, *a, **k):
        w = super().lm_window(*a, **k)
        self.windows.append(w)
        return w


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_k2_covering_everything_sums_to_full_bptt(cell):
    """With lr = 0 and k2 >= N nothing is truncated: the token-weighted window gradients add up
    to the gradient of the mean loss over the whole sequence."""
    S, model = streams(N=11, B=3), tiny_lm(cell)
    rec = Recording()
    tr = train.Trainer(model, optim.SGD(model.parameters(), 0.0), k1=3, k2=50, backend=rec)
    list(tr.run_epoch(S))
    model.zero_grad()
    loss, _ = model.loss(S[:-1], S[1:])
    loss.backward()
    n = sum(w.tokens for w in rec.windows)
    assert n == 10 * 3
    for k, p in model.parameters().items():
        got = sum(w.tokens * w.grads[k] for w in rec.windows) / n
        np.testing.assert_allclose(got, p.grad, rtol=1e-10, atol=1e-14, err_msg=k)


def test_window_gradient_matches_finite_differences():
    """The window's loss as a function of the weights (state at the window start held fixed),
    at 4 random entries of every parameter."""
    S, model = streams(N=9), tiny_lm("lstm")
    s0 = (np.full((1, 2, 3), 0.3), np.full((1, 2, 3), -0.2))
    w = train.TapeBackend().lm_window(model, S[:-1], S[1:], s0, loss_from=3, save_at=[2, 5])
    assert set(w.saved) == {2, 5} and w.tokens == 5 * 2

    def f(**params):
        for k, v in params.items():
            model.parameters()[k].data = v.data
        logits, _ = model(S[:-1], s0)
        return gg.cross_entropy(logits[3:], S[1:][3:])
    base = model.state_dict()
    rng = np.random.default_rng(0)
    for k, v in base.items():
        for idx in [tuple(rng.integers(0, n) for n in v.shape) for _ in range(4)]:
            num = 0.0
            for sign in (1, -1):
                d = dict(base)
                d[k] = v.copy()
                d[k][idx] += sign * 1e-6
                with gg.no_grad():
                    num += sign * f(**{n: Tensor(a) for n, a in d.items()}).item() / 2e-6
            assert w.grads[k][idx] == pytest.approx(num, rel=1e-5, abs=1e-8), (k, idx)
    model.load_state_dict(base)


def test_saved_states_equal_forward_states():
    S, model = streams(N=9), tiny_lm("lstm")
    w = train.TapeBackend().lm_window(model, S[:-1], S[1:], None, save_at=[3])
    with gg.no_grad():
        _, s3 = model(S[:3])
        _, s8 = model(S[:8])
    for got, want in [(w.saved[3], s3), (w.state, s8)]:
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b.data)


def test_evaluate_is_one_pass_over_the_stream():
    S, model = streams(N=30, B=2), tiny_lm("gru")
    tr = train.Trainer(model, optim.SGD(model.parameters(), 0.1), k1=4, backend=train.TapeBackend())
    with gg.no_grad():
        loss, _ = model.loss(S[:-1], S[1:])
    assert tr.evaluate(S, chunk=7) == pytest.approx(loss.item(), rel=1e-12)


# ---------------------------------------------------------------- clipping
def test_clip_by_norm_reports_norm_before_clipping():
    rng = np.random.default_rng(0)
    g = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    orig = {k: v.copy() for k, v in g.items()}
    want = math.sqrt(sum((v ** 2).sum() for v in orig.values()))
    assert train.clip_gradients(g, clip_norm=0.5) == pytest.approx(want, rel=1e-14)
    for k in g:
        np.testing.assert_allclose(g[k], orig[k] * 0.5 / (want + 1e-6), rtol=1e-14)
    assert train.global_norm(g) == pytest.approx(0.5, rel=1e-5)
    small = {"a": np.full(2, 0.1)}
    train.clip_gradients(small, clip_norm=10.0)
    np.testing.assert_array_equal(small["a"], [0.1, 0.1])


def test_clip_by_value_then_norm():
    g = {"a": np.array([3.0, -4.0, 0.5])}
    norm = train.clip_gradients(g, clip_value=1.0)
    assert norm == pytest.approx(math.sqrt(25.25))
    np.testing.assert_array_equal(g["a"], [1.0, -1.0, 0.5])
    g = {"a": np.array([3.0, -4.0, 0.5])}
    train.clip_gradients(g, clip_norm=1.0, clip_value=1.0)
    np.testing.assert_allclose(g["a"], np.array([1.0, -1.0, 0.5]) / (1.5 + 1e-6))


def test_trainer_clips_and_reports_each_step():
    S, model = streams(N=13), tiny_lm()
    rec = Recording()
    tr = train.Trainer(model, optim.SGD(model.parameters(), 0.0), k1=4, clip_norm=1e-3,
                       backend=rec)
    reps = list(tr.run_epoch(S))
    for r, w in zip(reps, rec.windows):
        assert r.grad_norm > 1e-3      # the reported norm is the one before clipping
        assert train.global_norm(w.grads) == pytest.approx(1e-3, rel=1e-2)
    assert [r.step for r in reps] == [1, 2, 3]


def test_nonfinite_loss_is_an_error():
    S, model = streams(), tiny_lm()
    model.parameters()["head.bias"].data[:] = np.nan
    tr = train.Trainer(model, optim.SGD(model.parameters(), 0.1), k1=4, backend=train.TapeBackend())
    with pytest.raises(FloatingPointError, match="step 1"):
        next(tr.run_epoch(S))


# ---------------------------------------------------------------- checkpoints and resume
def make(cell="lstm", opt="adam"):
    model = tiny_lm(cell, V=6, H=4)
    return train.Trainer(model, train.make_optimizer(opt, model.parameters()), k1=3, k2=5,
                         clip_norm=1.0, backend=train.TapeBackend())


@pytest.mark.parametrize("cell,opt", [("lstm", "adam"), ("gru", "sgd"), ("rnn", "adagrad")])
def test_resume_mid_epoch_is_bit_exact(tmp_path, cell, opt):
    S = streams(N=25, B=3, V=6)
    straight = make(cell, opt)
    for _ in range(2):
        list(straight.run_epoch(S))
    first = make(cell, opt)
    it = first.run_epoch(S)
    for _ in range(5):
        next(it)
    first.save(tmp_path / "ck.npz", meta={"note": "x"})
    resumed = make(cell, opt)
    assert resumed.load(tmp_path / "ck.npz")["note"] == "x"
    assert resumed.step == 5 and resumed.update == 5
    list(resumed.run_epoch(S))
    list(resumed.run_epoch(S))
    assert resumed.step == straight.step and resumed.epoch == 2
    for k, v in straight.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)
    a, b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    for name in a["state"]:
        for key, v in a["state"][name].items():
            np.testing.assert_array_equal(b["state"][name][key], v)


def test_ctrl_c_during_an_update_lands_after_it(tmp_path):
    """graphgrad train saves a checkpoint on Ctrl-C. One that landed inside the optimizer step
    saved half-updated weights with the step counter not advanced, so the resumed run differed
    from the uninterrupted one (by 0.08 in the weights); the interrupt now waits for the update."""
    import os
    import signal
    S = streams(N=25, B=3, V=6)
    straight = make()
    list(straight.run_epoch(S))
    first = make()
    it = first.run_epoch(S)
    for _ in range(3):
        next(it)
    stepped = first.optimizer._grads

    def ctrl_c_after_one_parameter():
        for i, item in enumerate(stepped()):
            if i == 1:
                os.kill(os.getpid(), signal.SIGINT)
            yield item
    first.optimizer._grads = ctrl_c_after_one_parameter
    with pytest.raises(KeyboardInterrupt):
        next(it)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert first.step == 4 and first.update == 4    # the whole update, then the interrupt
    first.save(tmp_path / "ck.npz")
    resumed = make()
    resumed.load(tmp_path / "ck.npz")
    list(resumed.run_epoch(S))
    for k, v in straight.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)


def test_load_refuses_other_shapes_and_schedules(tmp_path):
    tr = make()
    tr.save(tmp_path / "ck.npz")
    other = gg.LanguageModel(6, 5, cell="lstm", dtype=np.float64)
    t2 = train.Trainer(other, optim.Adam(other.parameters()), k1=3, k2=5)
    with pytest.raises(ValueError, match="different model.*weight_hh_l0 has shape"):
        t2.load(tmp_path / "ck.npz")
    t3 = make()
    t3.k2 = 7
    with pytest.raises(ValueError, match="k1=3, k2=5"):
        t3.load(tmp_path / "ck.npz")


def test_refused_load_leaves_model_and_optimizer_untouched(tmp_path):
    # regression: a checkpoint of another optimizer was refused only after the model weights
    # had been overwritten, leaving a half-loaded trainer
    tr = make("lstm", "adam")
    list(tr.run_epoch(streams(N=10, B=2, V=6)))
    tr.save(tmp_path / "ck.npz")
    t2 = make("lstm", "sgd")
    t2.model.parameters()["rnn.weight_hh_l0"].data += 1.0       # differ from the checkpoint
    before, opt_before = t2.model.state_dict(), t2.optimizer.state_dict()
    with pytest.raises(ValueError, match="SGD: cannot load optimizer state saved by 'Adam'"):
        t2.load(tmp_path / "ck.npz")
    for k, v in t2.model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert t2.optimizer.state_dict()["hyper"] == opt_before["hyper"]
    assert t2.step == 0


# ---------------------------------------------------------------- optimizers, init, backends
def test_make_optimizer():
    m = tiny_lm()
    assert isinstance(train.make_optimizer("SGD", m.parameters()), optim.SGD)
    assert train.make_optimizer("sgd", m.parameters(), lr=0.2).hyper["momentum"] == 0.9
    assert train.make_optimizer("adam", m.parameters()).hyper["lr"] == 2e-3
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        train.make_optimizer("rmsprop", m.parameters())


def test_init_orthogonal_and_forget_bias():
    m = tiny_lm("lstm", H=4)
    train.init_weights(m, "orthogonal", forget_bias=1.0, seed=3)
    w = m.parameters()["rnn.weight_hh_l0"].data
    for g in range(4):
        blk = w[4 * g:4 * g + 4]
        np.testing.assert_allclose(blk @ blk.T, np.eye(4), atol=1e-12)
    b = m.parameters()["rnn.bias_ih_l0"].data + m.parameters()["rnn.bias_hh_l0"].data
    np.testing.assert_array_equal(b[4:8], 1.0)
    with pytest.raises(ValueError, match="LSTM"):
        train.init_weights(tiny_lm("gru"), forget_bias=1.0)
    with pytest.raises(ValueError, match="orthogonal"):
        train.init_weights(m, "xavier")


def test_lm_config_round_trip():
    m = gg.LanguageModel(7, 5, cell="gru", num_layers=2, embed_size=3, seed=4)
    again = train.build_lm(train.lm_config(m), seed=4)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v)


@pytest.mark.parametrize("kw", [{"cell": "rnn", "nonlinearity": "relu"},
                                {"cell": "gru", "reset_after": False},
                                {"cell": "lstm", "bias": False},
                                {"cell": "gru", "bidirectional": True, "num_layers": 2}])
def test_lm_config_keeps_the_core_options(kw):
    """build_lm(lm_config(m)) is the same function as m (what `graphgrad sample` relies on): a
    relu RNN came back tanh and a reset-before GRU reset-after, with the same shapes, so the
    checkpoint loaded and the samples silently came from another model."""
    m = gg.LanguageModel(5, 4, seed=1, **kw)
    again = train.build_lm(train.lm_config(m))
    again.load_state_dict(m.state_dict())
    ids = np.array([[1, 0], [2, 4], [3, 3]])
    np.testing.assert_array_equal(again(ids)[0].data, m(ids)[0].data)


def test_backends():
    assert train.get_backend("tape").name == "tape"
    assert train.get_backend("auto").name == "compiled"   # the compiler is part of the package
    with pytest.raises(ValueError, match="unknown backend"):
        train.get_backend("gpu")


def _states_close(a, b):
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("cell, kw", [("lstm", {}), ("gru", {"num_layers": 2}),
                                      ("rnn", {"embed_size": 4}), ("gru_v1", {})])
def test_compiled_window_matches_tape(cell, kw):
    S = streams(N=13, B=2)
    wins = {}
    for backend in (train.TapeBackend(), train.CompiledBackend()):
        model = tiny_lm(cell, **kw)
        s0 = model.init_state(2)
        s0 = tuple(np.full_like(s, 0.3) for s in s0) if isinstance(s0, tuple) else s0 + 0.3
        wins[backend.name] = backend.lm_window(model, S[:-1], S[1:], s0, loss_from=4,
                                               save_at=[4, 9])
    ref, w = wins["tape"], wins["compiled"]
    assert w.loss == pytest.approx(ref.loss, rel=1e-10) and w.tokens == ref.tokens
    assert set(w.grads) == set(ref.grads)
    for k in ref.grads:
        np.testing.assert_allclose(w.grads[k], ref.grads[k], rtol=1e-9, atol=1e-12)
    _states_close(w.state, ref.state)
    assert set(w.saved) == {4, 9}
    for b in (4, 9):
        _states_close(w.saved[b], ref.saved[b])


def test_compiled_trainer_matches_tape_over_overlapping_windows():
    """TBPTT(k1=3, k2=5) with clipping and Adam: same weights after an epoch on both backends."""
    S = streams(N=16, B=2)
    final = {}
    for backend in (train.TapeBackend(), train.CompiledBackend()):
        model = tiny_lm("lstm", H=4)
        opt = train.make_optimizer("adam", model.parameters(), lr=0.05)
        tr = train.Trainer(model, opt, k1=3, k2=5, clip_norm=1.0, backend=backend)
        reports = list(tr.run_epoch(S))
        final[backend.name] = (model.state_dict(), [r.loss for r in reports],
                               [r.grad_norm for r in reports])
    (w_t, l_t, g_t), (w_c, l_c, g_c) = final["tape"], final["compiled"]
    np.testing.assert_allclose(l_c, l_t, rtol=1e-9)
    np.testing.assert_allclose(g_c, g_t, rtol=1e-9)
    for k in w_t:
        np.testing.assert_allclose(w_c[k], w_t[k], rtol=1e-8, atol=1e-12)


def test_compiled_loss_and_grads_on_a_classifier():
    rng = np.random.default_rng(3)
    xs, labels = rng.standard_normal((6, 3, 2)), np.array([0, 2, 1])
    got = {}
    for backend in (train.TapeBackend(), train.CompiledBackend()):
        m = gg.SequenceClassifier(2, 4, 3, cell="gru", dtype=np.float64)
        got[backend.name] = backend.loss_and_grads(m, xs, labels)
    assert got["compiled"][0] == pytest.approx(got["tape"][0], rel=1e-12)
    for k, v in got["tape"][1].items():
        np.testing.assert_allclose(got["compiled"][1][k], v, rtol=1e-10, atol=1e-13)


def test_fit_batch_on_a_regressor():
    rng = np.random.default_rng(0)
    m = gg.SequenceRegressor(2, 4, cell="gru", dtype=np.float64)
    tr = train.Trainer(m, optim.Adam(m.parameters(), 1e-2), backend=train.TapeBackend())
    xs, ys = rng.standard_normal((5, 8, 2)), rng.standard_normal(8)
    first = tr.fit_batch(xs, ys).loss
    for _ in range(30):
        last = tr.fit_batch(xs, ys).loss
    assert last < first and tr.step == 31


def test_char_lm_loss_falls_on_a_tiny_budget():
    """~6 s of tape training (3 passes over 20k characters of pydoc text, 96 updates): the mean
    loss of the last 10 updates is at least 1.0 nat below the first 10 (measured: 3.69 -> 2.53,
    a fall of 1.16; a uniform guess is ln V ~ 4.4 nats, the letter-frequency model ~3.0)."""
    text = data.pydoc_text(20_000)
    vocab = data.CharVocab(text)
    model = gg.LanguageModel(vocab.size, 32, cell="lstm", seed=0)
    tr = train.Trainer(model, train.make_optimizer("adam", model.parameters(), lr=2e-2),
                       k1=20, clip_norm=5.0, backend=train.TapeBackend())
    losses = [r.loss for _ in range(3) for r in tr.run_epoch(data.batchify(vocab.encode(text), 32))]
    assert np.mean(losses[:10]) - np.mean(losses[-10:]) > 1.0, (losses[:10], losses[-10:])


def test_bidirectional_window_is_one_call_on_both_backends():
    """A bidirectional core reads the whole window from its end, so the tape reference must not
    cut the window where scoring begins (k2 > k1); the state after every step does not exist,
    but the one after the window does (k1 = k2 carries it)."""
    S = streams(N=12, B=2)
    model = tiny_lm("gru", bidirectional=True)
    logits, _ = model(S[:-1])
    want = gg.cross_entropy(logits[4:], S[5:], reduction="sum").item() / (7 * 2)
    for backend in (train.TapeBackend(), train.CompiledBackend()):
        w = backend.lm_window(model, S[:-1], S[1:], None, loss_from=4, save_at=[11])
        assert w.loss == pytest.approx(want, rel=1e-12), backend.name
        _states_close(w.saved[11], w.state)
        with pytest.raises(ValueError, match="bidirectional"):
            backend.lm_window(model, S[:-1], S[1:], None, loss_from=4, save_at=[6])
    final = {}
    for backend in (train.TapeBackend(), train.CompiledBackend()):
        m = tiny_lm("lstm", bidirectional=True)
        tr = train.Trainer(m, optim.SGD(m.parameters(), 0.3), k1=4, backend=backend)
        final[backend.name] = [r.loss for r in tr.run_epoch(S)]
    np.testing.assert_allclose(final["compiled"], final["tape"], rtol=1e-10)


def test_sample_draws_from_softmax_of_logits_over_temperature():
    """Draws follow softmax(logits / T) given the state after the prefix; a tiny temperature is
    greedy decoding (it overflowed to inf - inf = NaN: 'Probabilities contain NaN'); a prefix
    of non-integer ids is refused, not truncated."""
    model = gg.LanguageModel(4, 5, cell="gru", seed=3)
    model.head.weight.data *= 6
    prefix = np.array([1, 2, 3])
    logits, _ = model(prefix.reshape(-1, 1))
    z = logits.data[-1, 0].astype(np.float64)
    for temp in (0.5, 2.0):
        p = np.exp(z / temp - np.max(z / temp))
        p /= p.sum()
        n = 600
        draws = [model.sample(prefix, 1, temperature=temp, rng=s)[0] for s in range(n)]
        freq = np.bincount(draws, minlength=4) / n
        assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12), (temp, freq, p)
    for temp in (1e-6, 1e-300, 1e-310, 5e-324):
        assert model.sample(prefix, 1, temperature=temp, rng=0)[0] == np.argmax(z), temp
    with pytest.raises(ValueError, match="temperature"):
        model.sample(prefix, 1, temperature=float("nan"))
    with pytest.raises(TypeError, match="integers"):
        model.sample([1.5], 1)


def test_sample_from_a_batch_first_model_equals_time_major():
    # regression: the prefix went in as (T, 1), which a batch_first core reads as T sequences
    tm = gg.LanguageModel(5, 4, cell="lstm", seed=2)
    bf = gg.LanguageModel(5, 4, cell="lstm", seed=2, batch_first=True)
    bf.load_state_dict(tm.state_dict())
    prefix = [1, 4, 0, 3]
    np.testing.assert_array_equal(bf.sample(prefix, 8, rng=7), tm.sample(prefix, 8, rng=7))


@pytest.mark.parametrize("backend", [train.TapeBackend, train.CompiledBackend])
@pytest.mark.parametrize("B", [2, 3])
def test_batch_first_model_trains_like_time_major(backend, B):
    """Streams and windows are time-major whatever the core's layout. Regression: a batch_first
    model read each (k, B) window as k sequences of B steps, so with B == k1 (here 3) it trained
    its recurrence across the batch without any error, and with B != k1 it raised."""
    S = streams(N=14, B=B)
    tm = tiny_lm("lstm", H=4, embed_size=3)
    bf = tiny_lm("lstm", H=4, embed_size=3, batch_first=True)
    bf.load_state_dict(tm.state_dict())
    start = tm.state_dict()
    runs = []
    for model in (tm, bf):
        opt = train.make_optimizer("adam", model.parameters(), lr=0.05)
        tr = train.Trainer(model, opt, k1=3, k2=5, backend=backend())
        runs.append(([r.loss for r in tr.run_epoch(S)], tr.evaluate(S, chunk=4)))
    (l_tm, e_tm), (l_bf, e_bf) = runs
    assert len(l_bf) == len(l_tm) == 5
    np.testing.assert_allclose(l_bf, l_tm, rtol=1e-12)
    assert e_bf == pytest.approx(e_tm, rel=1e-12)
    trained = tm.state_dict()
    assert all(not np.array_equal(trained[k], start[k]) for k in trained)
    for k, v in trained.items():
        np.testing.assert_allclose(bf.state_dict()[k], v, rtol=1e-10, atol=1e-14)
