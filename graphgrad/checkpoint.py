"""Atomic, pickle-free checkpoints: model weights, optimizer state and metadata in one .npz file.

Layout of the .npz archive:
  ``model/<name>``   one entry per model array, under its state_dict name (readable with np.load;
                     names other than [A-Za-z0-9_.-]+ get ``model/#<i>``, since zip member
                     names are not arbitrary strings);
  ``blob/<i>``       arrays found anywhere inside the optimizer state or the metadata;
  ``__header__``     a 0-d unicode array holding JSON: format tag, version, model names, and the
                     optimizer state and metadata with each array replaced by {"__ndarray__": key}.
Arrays keep their dtype, shape and bytes exactly. Tuples and numpy scalars inside the optimizer
state or metadata are tagged so they come back as tuples and numpy scalars; dict keys must be str.
"""
import json
import os
import re
import tempfile
import zipfile

import numpy as np

FORMAT, VERSION = "graphgrad-checkpoint", 1
_TAGS = ("__ndarray__", "__tuple__")


def _encode(obj, blobs, where):
    """Turn nested state into JSON-able data, moving arrays into ``blobs``."""
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.asarray(obj)
        if arr.dtype.hasobject:
            raise ValueError(f"checkpoint: {where} is an object array, which needs pickle")
        key = f"blob/{len(blobs)}"
        blobs[key] = arr
        return {"__ndarray__": key, "scalar": isinstance(obj, np.generic)}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str) or k in _TAGS:
                raise ValueError(f"checkpoint: {where} has key {k!r}; keys must be strings "
                                 f"other than {_TAGS}")
            out[k] = _encode(v, blobs, f"{where}[{k!r}]")
        return out
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, blobs, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, blobs, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ValueError(f"checkpoint: {where} has type {type(obj).__name__}, which is not "
                     "JSON-serialisable (use str, int, float, bool, None, list, tuple, dict, "
                     "or numpy arrays)")


def _decode(obj, arrays):
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            arr = arrays[obj["__ndarray__"]]
            return arr[()] if obj.get("scalar") else arr
        if "__tuple__" in obj:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        return {k: _decode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    return obj


def save(path, model_state, optim_state=None, meta=None):
    """Write a checkpoint to ``path`` atomically (a crash never leaves a partial file there)."""
    path = os.fspath(path)
    entries, model_keys = {}, []
    for i, (name, arr) in enumerate(model_state.items()):
        if not isinstance(name, str):
            raise ValueError(f"checkpoint: model_state key {name!r} is not a string")
        arr = np.asarray(arr)
        if arr.dtype.hasobject:
            raise ValueError(f"checkpoint: model_state[{name!r}] is an object array")
        key = f"model/{name}" if re.fullmatch(r"[\w.\-]+", name, re.ASCII) else f"model/#{i}"
        entries[key] = arr
        model_keys.append([name, key])
    blobs = {}
    header = {"format": FORMAT, "version": VERSION, "model": model_keys,
              "optim": _encode(optim_state, blobs, "optim_state"),
              "meta": _encode({} if meta is None else meta, blobs, "meta")}
    entries.update(blobs)
    entries["__header__"] = np.array(json.dumps(header))

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save checkpoint {path}: directory {directory} "
                                "does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **entries)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; give the checkpoint ordinary permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # make the rename itself durable; not every platform lets us open a directory
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def load(path):
    """Read a checkpoint written by ``save``: returns (model_state, optim_state, meta)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:       # a directory, no permission
        raise ValueError(f"cannot read checkpoint {path} ({type(e).__name__}: {e})") from e
    # a text file or anything else that is no numpy file at all is not a damaged checkpoint
    # (an empty file is: a save cut short)
    if magic and not (magic.startswith(b"PK") or magic == b"\x93NUMPY"):
        raise ValueError(f"{path} is not a graphgrad checkpoint (not an .npz archive)")
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {}                            # a .npy file (one bare array) has no header
        if isinstance(z, np.lib.npyio.NpzFile):
            with z:
                # read everything now: CRC errors in a damaged archive surface here
                arrays = {k: z[k] for k in z.files}
        raw = arrays.pop("__header__", None)   # None: a sound .npz some other program wrote
        header = None if raw is None else json.loads(str(raw))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint {path} is corrupt or truncated "
                         f"({type(e).__name__}: {e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a graphgrad checkpoint")
    if header.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has format version {header.get('version')}, "
                         f"this graphgrad reads version {VERSION}")
    try:
        model_state = {name: arrays[key] for name, key in header["model"]}
        return model_state, _decode(header["optim"], arrays), _decode(header["meta"], arrays)
    except KeyError as e:
        raise ValueError(f"checkpoint {path} is corrupt: missing entry {e}") from e


def check_compatible(model_state, expected_shapes):
    """Raise ValueError unless ``model_state`` has exactly the expected names and shapes.

    ``expected_shapes`` maps name -> shape tuple (or anything with ``.shape``, e.g. a model's
    own state_dict). The message lists every missing name, unexpected name and shape mismatch.
    """
    want = {k: tuple(getattr(v, "shape", v)) for k, v in expected_shapes.items()}
    have = {k: tuple(np.shape(v)) for k, v in model_state.items()}
    problems = [f"{k} has shape {have[k]}, the model expects {want[k]}"
                for k in want if k in have and have[k] != want[k]]
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    if missing:
        problems.append(f"missing from the checkpoint: {', '.join(missing)}")
    if unexpected:
        problems.append(f"not in the model: {', '.join(unexpected)}")
    if problems:
        raise ValueError("checkpoint was saved from a different model: " + "; ".join(problems))
