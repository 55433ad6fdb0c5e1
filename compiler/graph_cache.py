"""On-disk cache of a layer's scheduled programs, keyed by its traced step graph.

Tracing a step takes milliseconds; differentiating, simplifying and scheduling it takes most of a
second. So the traced graph's text (shapes, dtypes, attributes, every op), the batch size and a
fingerprint of the compiler's own source key a pickle of the built schedules. The pickle is our
own cache file, never user data, and carries a checksum (runtime.cache.write_sealed): a corrupt,
truncated or foreign entry is rebuilt (with a warning), never unpickled; one that no longer
unpickles (a numpy or Python upgrade) is rebuilt too.
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

from runtime.cache import cache_dir, keep_under_limit, read_sealed, write_sealed
from runtime.sources import source_hash

_SOURCES = ("compiler", "compiler/passes", "graphgrad/core.py", "graphgrad/ops.py")


def _fingerprint() -> str:
    """Hash of the source files that decide what a build produces."""
    root = Path(__file__).resolve().parent.parent
    return source_hash(*(str(root / rel) for rel in _SOURCES))


def graph_text(G) -> str:
    """The graph's dump plus the bytes of every constant (the dump shows only their shapes)."""
    from . import ir
    h = hashlib.sha256()
    for nid in sorted(G.nodes):
        n = ir.node(G, nid)
        if n.op == "const":
            h.update(f"{nid}:".encode())
            h.update(ir.const_value(n).tobytes())
    return ir.dump(G) + "\n#consts " + h.hexdigest()


def key(*parts) -> str:
    h = hashlib.sha256(_fingerprint().encode())
    for part in parts:
        h.update(b"\0")
        h.update(str(part).encode())
    return h.hexdigest()


def _path(k):
    return cache_dir() / "graphs" / f"{k}.pkl"


def get(k):
    data = read_sealed(_path(k), "schedule")
    if data is None:
        return None
    try:
        builds = pickle.loads(data)
    except Exception:   # noqa: BLE001 - ours, but written by other code (classes moved, numpy)
        return None
    # a layer's builds by mode; anything else under this key is not ours to use
    return builds if isinstance(builds, dict) and {"forward", "train"} <= set(builds) else None


def put(k, value):
    """Store value under k; a cache that cannot be written only costs time."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    write_sealed(_path(k), data)
    keep_under_limit(added=len(data))
