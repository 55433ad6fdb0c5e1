"""On-disk cache of compiled object bytes.

The key covers everything that changes the machine code: IR text, target triple,
CPU name and feature string (AVX-512 objects are not portable), opt level and any
extra options. Writes go to a temp file then os.replace, so concurrent processes
never see a partial object.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from runtime import jit


def cache_dir() -> Path:
    d = os.environ.get("GRAPHGRAD_CACHE_DIR")
    return Path(d) if d else Path.home() / ".cache" / "graphgrad"


def cache_key(ir_text: str, opt: int = 3, options: dict | None = None,
              target: jit.TargetInfo | None = None) -> str:
    t = target or jit.target_info()
    meta = json.dumps({"triple": t.triple, "cpu": t.cpu, "features": t.features,
                       "opt": opt, "options": options or {}}, sort_keys=True)
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
    d = Path(directory) if directory is not None else cache_dir()
    key = cache_key(key_text if key_text is not None else str(ir_text), opt, options)
    path = d / (key + ".o")
    try:
        return path.read_bytes(), True
    except FileNotFoundError:
        pass
    obj = jit.compile_ir(str(ir_text() if callable(ir_text) else ir_text), opt)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(obj)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache must not break compilation
    return obj, False


def clear(directory: str | os.PathLike | None = None) -> int:
    """Delete cached objects; returns how many were removed."""
    d = Path(directory) if directory is not None else cache_dir()
    n = 0
    for p in d.glob("*.o"):
        p.unlink(missing_ok=True)
        n += 1
    return n
