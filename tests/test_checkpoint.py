"""Checkpoints: exact round trips, atomic writes under simulated crashes, clear errors."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from graphgrad import checkpoint, optim


class P:
    def __init__(self, data):
        self.data, self.grad = data, None


def model_state():
    rng = np.random.default_rng(0)
    return {"weight_ih_l0": rng.standard_normal((8, 3)).astype(np.float32),
            "weight_hh_l0": rng.standard_normal((8, 2)).astype(np.float32),
            "bias_ih_l0": rng.standard_normal(8).astype(np.float32),
            "bias_hh_l0": np.zeros(8, np.float32)}


def trained_adam(state):
    params = {k: P(v.copy()) for k, v in state.items()}
    opt = optim.Adam(params, lr=1e-3, weight_decay=0.01)
    rng = np.random.default_rng(1)
    for _ in range(3):
        for p in params.values():
            p.grad = rng.standard_normal(p.data.shape).astype(np.float32)
        opt.step()
    return opt


def assert_same(a, b):
    """Deep equality that also demands equal types, dtypes and bytes."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b)
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b


def test_round_trip_with_optimizer_state(tmp_path):
    ms = model_state()
    opt = trained_adam(ms)
    meta = {"step": 300, "loss": 1.2345678901234567, "vocab": {"chars": "helo", "unk": None},
            "betas": (0.9, 0.999), "lr": np.float32(0.1), "nan": float("nan"), "hist": [1, 2.5]}
    path = tmp_path / "ck.npz"
    checkpoint.save(path, ms, opt.state_dict(), meta)
    ms2, os2, meta2 = checkpoint.load(path)
    assert_same(ms2, ms)
    assert_same(os2, opt.state_dict())
    assert_same(meta2, meta)
    # the loaded optimizer state resumes training
    fresh = optim.Adam({k: P(v.copy()) for k, v in ms2.items()})
    fresh.load_state_dict(os2)
    assert_same(fresh.state_dict(), opt.state_dict())


def test_no_optimizer_and_readable_by_plain_numpy(tmp_path):
    ms = model_state()
    checkpoint.save(tmp_path / "m.npz", ms, None, {"epoch": 1})
    ms2, os2, meta = checkpoint.load(tmp_path / "m.npz")
    assert os2 is None and meta == {"epoch": 1}
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["model/weight_hh_l0"], ms["weight_hh_l0"])


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(min_size=1, max_size=12),
                       hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.float16]),
                                  hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)),
                       max_size=5))
def test_round_trip_any_arrays(tmp_path, state):
    path = tmp_path / "h.npz"
    checkpoint.save(path, state, {"arrs": list(state.values())}, {"names": list(state)})
    ms, opt, meta = checkpoint.load(path)
    assert_same(ms, state)
    assert_same(opt, {"arrs": list(state.values())})
    assert meta == {"names": list(state)}


def test_overwrite_keeps_a_single_file(tmp_path):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, {"w": np.zeros(2)}, None, {"v": 1})
    checkpoint.save(path, {"w": np.ones(2)}, None, {"v": 2})
    assert os.listdir(tmp_path) == ["ck.npz"]
    assert checkpoint.load(path)[2] == {"v": 2}


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["replace", "savez", "fsync"])
def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, where):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, {"w": np.arange(3.0)}, None, {"step": 1})
    before = path.read_bytes()

    def boom(*a, **k):
        raise Boom(where)

    if where == "replace":
        monkeypatch.setattr(checkpoint.os, "replace", boom)
    elif where == "fsync":
        monkeypatch.setattr(checkpoint.os, "fsync", boom)
    else:
        real = np.savez

        def half_then_boom(f, **entries):  # write part of a real archive, then die
            real(f, **{k: entries[k] for k in list(entries)[:1]})
            raise Boom(where)
        monkeypatch.setattr(checkpoint.np, "savez", half_then_boom)
    with pytest.raises(Boom):
        checkpoint.save(path, {"w": np.arange(1e5)}, None, {"step": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ck.npz"]  # no temp files left behind
    assert path.read_bytes() == before
    assert checkpoint.load(path)[2] == {"step": 1}


def test_crash_on_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint.os, "replace", lambda *a: (_ for _ in ()).throw(Boom()))
    with pytest.raises(Boom):
        checkpoint.save(tmp_path / "ck.npz", {"w": np.zeros(2)})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("cut", [0, 10, 200, -30])
def test_truncated_file_gives_clear_error(tmp_path, cut):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, model_state(), trained_adam(model_state()).state_dict(), {"a": 1})
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        checkpoint.load(path)


def test_flipped_byte_in_array_data_is_detected(tmp_path):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, {"w": np.zeros(1000)})
    data = bytearray(path.read_bytes())
    data[400] ^= 0xFF  # inside the first member's array bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        checkpoint.load(path)


def test_not_a_checkpoint_and_missing(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="corrupt|not a graphgrad checkpoint"):
        checkpoint.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="cannot read checkpoint .*IsADirectoryError"):
        checkpoint.load(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")    # was "corrupt or truncated"
    with pytest.raises(ValueError, match=r"notes.txt is not a graphgrad checkpoint \(not an"):
        checkpoint.load(tmp_path / "notes.txt")
    # regression: a .npy file (np.load gives a bare array) raised "does not support the context
    # manager protocol"
    np.save(tmp_path / "arr.npy", np.zeros(2))
    with pytest.raises(ValueError, match="not a graphgrad checkpoint"):
        checkpoint.load(tmp_path / "arr.npy")
    with pytest.raises(FileNotFoundError, match="directory .*nodir does not exist"):
        checkpoint.save(tmp_path / "nodir" / "ck.npz", {"w": np.zeros(1)})


def test_unserialisable_meta_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"meta\['fn'\].*function"):
        checkpoint.save(tmp_path / "ck.npz", {"w": np.zeros(1)}, None, {"fn": print})
    with pytest.raises(ValueError, match="object array"):
        checkpoint.save(tmp_path / "ck.npz", {"w": np.array([None])})
    with pytest.raises(ValueError, match="keys must be strings"):
        checkpoint.save(tmp_path / "ck.npz", {"w": np.zeros(1)}, {0: 1})
    assert os.listdir(tmp_path) == []


def test_check_compatible_messages():
    ms = {"weight_hh_l0": np.zeros((512, 128)), "bias_hh_l0": np.zeros(512),
          "extra": np.zeros(1)}
    expected = {"weight_hh_l0": (256, 64), "bias_hh_l0": (512,), "weight_ih_l0": (256, 10)}
    with pytest.raises(ValueError) as e:
        checkpoint.check_compatible(ms, expected)
    msg = str(e.value)
    assert ("checkpoint was saved from a different model: weight_hh_l0 has shape (512, 128), "
            "the model expects (256, 64)") in msg
    assert "missing from the checkpoint: weight_ih_l0" in msg
    assert "not in the model: extra" in msg
    assert "bias_hh_l0" not in msg
    # a model's own state_dict works as the expectation too
    checkpoint.check_compatible(ms, {k: v.copy() for k, v in ms.items()})
