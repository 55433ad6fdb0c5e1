"""Character-level language-model data: vocabulary, text loading, batching for truncated BPTT."""
import os

import numpy as np

from .ops import check_ids


class CharVocab:
    """A character <-> id mapping built from text.

    ``sort=True`` (default) numbers the distinct characters in sorted order, so the same text
    always gives the same ids; ``sort=False`` keeps first-occurrence order ("hello" -> h, e, l, o).
    Unknown characters raise ValueError unless ``unk`` names a vocabulary character to map them to.
    """

    def __init__(self, text, sort=True, unk=None):
        chars = sorted(set(text)) if sort else list(dict.fromkeys(text))
        if not chars:
            raise ValueError("CharVocab: cannot build a vocabulary from empty text")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        if unk is not None and unk not in self.index:
            raise ValueError(f"CharVocab: unk character {unk!r} is not in the vocabulary")
        self.unk = unk

    @property
    def size(self):
        """Number of distinct characters."""
        return len(self.chars)

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        """Map a string to an int64 id array."""
        get = self.index.get
        fallback = None if self.unk is None else self.index[self.unk]
        ids = [get(c, fallback) for c in text]
        if fallback is None and None in ids:
            pos = ids.index(None)
            bad = sorted({c for c in text if c not in self.index})
            raise ValueError(f"CharVocab.encode: character {text[pos]!r} at position {pos} is not "
                             f"in the vocabulary (unknown: {''.join(bad)[:40]!r}); build the "
                             "vocabulary from this text too or give CharVocab an unk= character")
        return np.array(ids, dtype=np.int64)

    def decode(self, ids):
        """Map a sequence of ids back to a string."""
        ids = np.asarray(ids).ravel()
        check_ids("CharVocab.decode: ids", ids, self.size, ValueError)
        return "".join(self.chars[i] for i in ids.tolist())

    def to_dict(self):
        """JSON-able form for checkpoint metadata."""
        return {"chars": "".join(self.chars), "unk": self.unk}

    @classmethod
    def from_dict(cls, d):
        """Rebuild exactly the vocabulary that ``to_dict`` described (same ids)."""
        return cls(d["chars"], sort=False, unk=d.get("unk"))

    def __eq__(self, other):
        return isinstance(other, CharVocab) and (self.chars, self.unk) == (other.chars, other.unk)

    def __repr__(self):
        return f"CharVocab(size={self.size}, chars={''.join(self.chars)[:30]!r})"


def one_hot(ids, size, dtype=np.float32):
    """One-hot encode an int array: shape ids.shape + (size,)."""
    ids = np.asarray(ids)
    check_ids("one_hot: ids", ids, size, ValueError)
    return np.eye(size, dtype=dtype)[ids]


def load_text(path, encoding="utf-8"):
    """Read a text file, refusing missing, empty and binary files with a clear message."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"text file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"expected a text file but {path} is a directory")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise ValueError(f"text file {path} is empty")
    # NUL never appears in real text but is everywhere in binaries; test it before decoding
    # because UTF-16 and similar would decode without complaint
    nul = raw.find(b"\0")
    if nul >= 0:
        raise ValueError(f"{path} looks like a binary file (NUL byte at offset {nul}), not text")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid {encoding} text (undecodable byte at offset "
                         f"{e.start}); is it a binary file?") from e


def pydoc_text(max_chars=None):
    """English text from the stdlib help topics (pydoc_data.topics), in sorted topic order.

    A corpus of about 0.5 MB that ships with every Python, so examples need no download.
    """
    from pydoc_data.topics import topics
    text = "\n".join(topics[k] for k in sorted(topics))
    return text if max_chars is None else text[:max_chars]


def train_val_split(ids, frac=0.9):
    """Split a sequence into (train, val): the first ``frac`` of it trains, the rest validates.

    The split is contiguous, not shuffled, since a language model must see text in order.
    """
    ids = np.asarray(ids)
    if not 0 < frac < 1:
        raise ValueError(f"train_val_split: frac must be in (0, 1), got {frac}")
    cut = int(len(ids) * frac)
    if cut < 1 or cut >= len(ids):
        raise ValueError(f"train_val_split: {len(ids)} ids with frac={frac} leaves an empty split")
    return ids[:cut], ids[cut:]


def batchify(ids, batch):
    """Cut one id sequence into ``batch`` contiguous streams, as columns: shape (N, batch).

    Column b holds ids[b*N:(b+1)*N]; the tail that does not fill a row is dropped.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"batchify: ids must be 1-D, got shape {ids.shape}")
    if batch < 1:
        raise ValueError(f"batchify: batch must be >= 1, got {batch}")
    n = len(ids) // batch
    return ids[:n * batch].reshape(batch, n).T


def stream_batches(ids, batch, seq_len, drop_last=False):
    """Yield (inputs, targets), each (T, batch), walking ``batch`` parallel streams in order.

    Chunk k+1 continues every stream exactly where chunk k stopped, so the final hidden state of
    one chunk is the right initial state for the next (truncated BPTT). targets are inputs shifted
    by one step within each stream. T = seq_len except possibly for the last chunk, which is
    shorter unless ``drop_last`` (useful when a compiled program needs a fixed T).
    """
    if seq_len < 1:
        raise ValueError(f"stream_batches: seq_len must be >= 1, got {seq_len}")
    data = batchify(ids, batch)
    n = data.shape[0]
    if n < 2:
        raise ValueError(f"stream_batches: {len(ids)} ids are too few for {batch} streams "
                         f"(each stream needs at least 2 ids)")
    # validation above runs at call time; only the walk itself is lazy
    return _walk(data, seq_len, drop_last)


def _walk(data, seq_len, drop_last):
    n = data.shape[0]
    for start in range(0, n - 1, seq_len):
        t = min(seq_len, n - 1 - start)
        if drop_last and t < seq_len:
            return
        yield data[start:start + t], data[start + 1:start + 1 + t]


def hello():
    """The lecture toy problem: vocab [h, e, l, o]; inputs "hell" -> targets "ello" (1-D ids)."""
    vocab = CharVocab("helo", sort=False)
    return vocab, vocab.encode("hell"), vocab.encode("ello")
