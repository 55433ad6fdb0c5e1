"""Character data: vocabulary, text loading errors, stream batching for truncated BPTT."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from graphgrad import data


# ---- vocabulary ---------------------------------------------------------------------------------

def test_vocab_round_trip_and_order():
    v = data.CharVocab("hello world")
    assert v.size == len(v) == 8 and v.chars == sorted(set("hello world"))
    ids = v.encode("low")
    assert ids.dtype == np.int64 and ids.shape == (3,)
    assert v.decode(ids) == "low"
    assert data.CharVocab("hello", sort=False).chars == ["h", "e", "l", "o"]


@given(st.text(min_size=1, max_size=200))
def test_vocab_encode_decode_any_text(text):
    v = data.CharVocab(text)
    assert v.decode(v.encode(text)) == text
    again = data.CharVocab.from_dict(json.loads(json.dumps(v.to_dict())))
    assert again == v
    np.testing.assert_array_equal(again.encode(text), v.encode(text))


def test_vocab_unknown_characters():
    v = data.CharVocab("abc")
    with pytest.raises(ValueError, match=r"'z' at position 2 .*unknown: 'xz'"):
        v.encode("abzx")
    w = data.CharVocab("abc?", unk="?")
    assert w.decode(w.encode("abzx")) == "ab??"
    assert data.CharVocab.from_dict(w.to_dict()).unk == "?"
    with pytest.raises(ValueError, match="unk"):
        data.CharVocab("abc", unk="?")
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        v.decode([0, 3])
    with pytest.raises(ValueError, match="empty"):
        data.CharVocab("")


def test_one_hot():
    x = data.one_hot(np.array([[0, 2], [1, 1]]), 3)
    assert x.shape == (2, 2, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, 1], [0, 0, 1])
    with pytest.raises(ValueError):
        data.one_hot([3], 3)


def test_hello():
    vocab, x, y = data.hello()
    assert vocab.chars == ["h", "e", "l", "o"]
    np.testing.assert_array_equal(x, [0, 1, 2, 2])
    np.testing.assert_array_equal(y, [1, 2, 2, 3])
    assert vocab.decode(x) == "hell" and vocab.decode(y) == "ello"


# ---- files ---------------------------------------------------------------------------------------

def test_load_text_ok(tmp_path):
    (tmp_path / "t.txt").write_text("héllo\n", encoding="utf-8")
    assert data.load_text(tmp_path / "t.txt") == "héllo\n"


def test_load_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="text file not found"):
        data.load_text(tmp_path / "missing.txt")
    with pytest.raises(IsADirectoryError, match="directory"):
        data.load_text(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        data.load_text(tmp_path / "empty.txt")
    (tmp_path / "a.bin").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00")
    with pytest.raises(ValueError, match="binary.*NUL byte at offset 7"):
        data.load_text(tmp_path / "a.bin")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid utf-8.*offset 3"):
        data.load_text(tmp_path / "latin.txt")
    assert data.load_text(tmp_path / "latin.txt", encoding="latin-1") == "caf\xe9"


def test_pydoc_text():
    text = data.pydoc_text()
    assert len(text) > 100_000 and "for" in text and text == data.pydoc_text()
    assert data.pydoc_text(1000) == text[:1000]
    data.CharVocab(text).encode(text[:5000])


# ---- splitting and batching ----------------------------------------------------------------

def test_train_val_split():
    train, val = data.train_val_split(np.arange(10), 0.8)
    np.testing.assert_array_equal(train, np.arange(8))
    np.testing.assert_array_equal(val, [8, 9])
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="frac"):
            data.train_val_split(np.arange(10), bad)
    with pytest.raises(ValueError, match="empty split"):
        data.train_val_split(np.arange(3), 0.1)


def test_stream_batches_small_example():
    # 2 streams of 7 ids: 0..6 and 7..13 (the 15th id is dropped); 6 targets per stream
    chunks = list(data.stream_batches(np.arange(15), batch=2, seq_len=4))
    assert [x.shape for x, _ in chunks] == [(4, 2), (2, 2)]
    np.testing.assert_array_equal(chunks[0][0], [[0, 7], [1, 8], [2, 9], [3, 10]])
    np.testing.assert_array_equal(chunks[0][1], [[1, 8], [2, 9], [3, 10], [4, 11]])
    np.testing.assert_array_equal(chunks[1][0], [[4, 11], [5, 12]])
    np.testing.assert_array_equal(chunks[1][1], [[5, 12], [6, 13]])
    assert len(list(data.stream_batches(np.arange(15), 2, 4, drop_last=True))) == 1


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 300), st.integers(1, 6), st.integers(1, 20), st.booleans())
def test_stream_batches_carry_over(length, batch, seq_len, drop_last):
    """Concatenating the chunks of each column gives back that stream, in order, with targets
    shifted by one: the state at the end of a chunk belongs right before the next chunk."""
    ids = np.arange(length) * 3 + 1
    if length // batch < 2:
        with pytest.raises(ValueError, match="too few"):
            data.stream_batches(ids, batch, seq_len)
        return
    n = length // batch
    chunks = list(data.stream_batches(ids, batch, seq_len, drop_last=drop_last))
    for x, y in chunks:
        assert x.shape == y.shape and x.shape[1] == batch and 1 <= x.shape[0] <= seq_len
        assert x.dtype == ids.dtype
        if drop_last:
            assert x.shape[0] == seq_len
    xs = np.concatenate([x for x, _ in chunks]) if chunks else np.zeros((0, batch), int)
    ys = np.concatenate([y for _, y in chunks]) if chunks else np.zeros((0, batch), int)
    covered = (n - 1) // seq_len * seq_len if drop_last else n - 1
    assert xs.shape == (covered, batch)
    for b in range(batch):
        stream = ids[b * n:(b + 1) * n]
        np.testing.assert_array_equal(xs[:, b], stream[:covered])
        np.testing.assert_array_equal(ys[:, b], stream[1:covered + 1])


def test_stream_batches_bad_arguments():
    with pytest.raises(ValueError, match="seq_len"):
        data.stream_batches(np.arange(10), 2, 0)
    with pytest.raises(ValueError, match="batch"):
        data.stream_batches(np.arange(10), 0, 3)
    with pytest.raises(ValueError, match="1-D"):
        data.stream_batches(np.zeros((2, 5), int), 1, 3)
