"""Fingerprints of source code, for cache keys: what a cached artifact was made by."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path


@functools.cache
def source_hash(*paths: str) -> str:
    """sha256 over the given .py files, a directory standing for its *.py files (sorted), each
    as its name and bytes. Cached: the sources of a running process do not change."""
    h = hashlib.sha256()
    for p in map(Path, paths):
        for f in sorted(p.glob("*.py")) if p.is_dir() else [p]:
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()
