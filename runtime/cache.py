"""On-disk cache of compiled object bytes.

The key covers everything that changes the machine code: IR text, target triple,
CPU name and feature string (AVX-512 objects are not portable), opt level and any
extra options, and the code generator itself (LLVM version, the pass pipeline in runtime/jit.py).
Writes go to a temp file then os.replace, so concurrent processes never see a partial object.
Each file ends in a checksum of the object: a truncated, corrupt or foreign file is a miss
(recompiled and replaced, with a warning), never loaded; an unreadable cache directory only
costs the compile. The directory is kept under a size limit ($GRAPHGRAD_CACHE_MAX_MB, default
512): a write that takes it over removes the least recently used entries (a hit counts as a use).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

from runtime import jit


def cache_dir() -> Path:
    d = os.environ.get("GRAPHGRAD_CACHE_DIR")
    return Path(d) if d else Path.home() / ".cache" / "graphgrad"


def _dir(directory: str | os.PathLike | None) -> Path:
    """The given cache directory, or the default one."""
    return Path(directory) if directory is not None else cache_dir()


DEFAULT_MAX_MB = 512


def max_bytes() -> int:
    """The cache's size limit: $GRAPHGRAD_CACHE_MAX_MB (0 = no limit), default 512 MB."""
    v = os.environ.get("GRAPHGRAD_CACHE_MAX_MB", "")
    try:
        mb = float(v) if v.strip() else DEFAULT_MAX_MB
    except ValueError:
        raise ValueError(f"GRAPHGRAD_CACHE_MAX_MB must be a number of megabytes, got {v!r}") \
            from None
    if not 0 <= mb < float("inf"):
        raise ValueError(f"GRAPHGRAD_CACHE_MAX_MB must be a finite number >= 0, got {v!r}")
    return int(mb * 2**20)


def entries(directory: str | os.PathLike | None = None) -> list[Path]:
    """Every cache file: objects (*.o) and schedules (graphs/*.pkl)."""
    d = _dir(directory)
    return [*d.glob("*.o"), *d.glob("graphs/*.pkl")]


def usage(directory: str | os.PathLike | None = None) -> tuple[int, int]:
    """(number of entries, bytes) of the cache directory."""
    n = size = 0
    for p in entries(directory):
        try:
            size += p.stat().st_size
            n += 1
        except OSError:     # removed by another process meanwhile
            pass
    return n, size


def prune(limit: int, directory: str | os.PathLike | None = None) -> int:
    """Remove least recently used entries until the cache holds at most `limit` bytes;
    returns how many were removed."""
    stats = []
    for p in entries(directory):
        try:
            st = p.stat()
        except OSError:
            continue
        stats.append((st.st_mtime, st.st_size, p))
    total = sum(s for _, s, _ in stats)
    removed = 0
    for _, size, p in sorted(stats, key=lambda t: t[0]):
        if total <= limit:
            break
        try:
            p.unlink()
        except OSError:
            continue
        total -= size
        removed += 1
    return removed


_sizes: dict[str, int] = {}     # directory -> bytes: scanned at its first write in a process


def keep_under_limit(directory: str | os.PathLike | None = None, added: int = 0) -> None:
    """After a write of `added` bytes: over the limit, prune to 3/4 of it (so the next writes
    do not prune). The directory is scanned once per process, then its size is tracked by what
    this process adds (a scan of a few thousand entries costs tens of ms, every miss would pay
    it); other processes' writes are counted at their own scans."""
    limit = max_bytes()
    if not limit:
        return
    d = str(_dir(directory))
    _sizes[d] = _sizes[d] + added if d in _sizes else usage(d)[1]
    if _sizes[d] > limit:
        prune(limit * 3 // 4, d)
        _sizes[d] = usage(d)[1]


def cache_key(ir_text: str, opt: int = 3, options: dict | None = None,
              target: jit.TargetInfo | None = None) -> str:
    t = target or jit.target_info()
    meta = json.dumps({"triple": t.triple, "cpu": t.cpu, "features": t.features,
                       "codegen": jit.codegen_id(), "opt": opt, "options": options or {}},
                      sort_keys=True)
    h = hashlib.sha256()
    h.update(meta.encode())
    h.update(b"\0")
    h.update(str(ir_text).encode())
    return h.hexdigest()


def compile_cached(ir_text, opt: int = 3, options: dict | None = None,
                   directory: str | os.PathLike | None = None,
                   key_text: str | None = None) -> tuple[bytes, bool]:
    """Object bytes for ir_text and whether they came from the cache.

    options only enter the key (callers record e.g. codegen settings there);
    on a hit LLVM is not invoked at all. With key_text (text that determines the IR, such as
    the source of the generator that renders it) ir_text may be a zero-argument callable, only
    called on a miss: rendering a large module is itself a cost worth skipping.
    """
    d = _dir(directory)
    key = cache_key(key_text if key_text is not None else str(ir_text), opt, options)
    path = d / (key + ".o")
    obj = read_sealed(path, "object")
    if obj is not None:
        return obj, True
    obj = jit.compile_ir(str(ir_text() if callable(ir_text) else ir_text), opt)
    write_sealed(path, obj)
    keep_under_limit(d, len(obj))
    return obj, False


_SEAL = b"\0graphgrad-cache-v1\0"     # trailer: _SEAL + sha256 of the payload


def write_sealed(path: Path, data: bytes) -> None:
    """Write data + checksum to path atomically (temp file, os.replace). An unwritable or full
    cache must not break compilation: errors are swallowed and the temp file removed."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.write(_SEAL + hashlib.sha256(data).digest())
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def read_sealed(path: Path, what: str = "entry") -> bytes | None:
    """The payload write_sealed stored at path; None when absent or unreadable, and (with a
    warning) when truncated, corrupt or not written by write_sealed."""
    try:
        data = path.read_bytes()
    except OSError:
        return None     # missing, or a cache directory we cannot use: compile uncached
    n = len(_SEAL) + 32
    body, seal, digest = data[:-n], data[-n:-32], data[-32:]
    if len(data) >= n and seal == _SEAL and hashlib.sha256(body).digest() == digest:
        try:
            os.utime(path)      # a use: pruning removes the least recently used entries first
        except OSError:
            pass
        return body
    warnings.warn(f"graphgrad: ignoring a corrupt or foreign cached {what} {path} "
                  f"(rebuilding it)", RuntimeWarning, stacklevel=3)
    return None


def clear(directory: str | os.PathLike | None = None) -> int:
    """Delete cached objects and schedules (graphs/*.pkl); returns how many were removed."""
    n = 0
    for p in entries(directory):
        p.unlink(missing_ok=True)
        n += 1
    _sizes.pop(str(_dir(directory)), None)
    return n
