"""Load the shared kernel library (compiler/llvmlib/library.py) once per process and dtype.

The object goes through the on-disk cache like any program, so LLVM compiles it once per machine;
in a process it is linked once and its addresses are reused by every program that names it.
"""
from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path

from compiler.llvmlib import library as lib
from runtime import cache, jit

_lock = threading.Lock()


@functools.cache
def _generator_source() -> str:
    """The library's IR is a function of the code that emits it: key the cache by that code,
    so a warm start never renders the (large) module text."""
    root = Path(lib.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


@functools.cache
def _load(dtype: str) -> jit.Loaded:
    triple = jit.target_info().triple
    obj, _ = cache.compile_cached(lambda: str(lib.build(dtype, triple)), 3,
                                  {"library": lib.LIBRARY_VERSION, "dtype": dtype},
                                  key_text=f"library source {_generator_source()}")
    return jit.load(obj, lib.symbols(dtype))


def loaded(dtype: str) -> jit.Loaded:
    with _lock:     # two program threads may ask at once; compile and link only once
        return _load(dtype)


def externals(names) -> dict:
    """name -> address for the library symbols among `names` (others are ignored)."""
    out = {}
    for n in names:
        if n.startswith(("gg_vm_", "gg_gemm_", "gg_pack_", "gg_prepack_")):
            out[n] = loaded(lib.owner(n)).address(n)
    return out
