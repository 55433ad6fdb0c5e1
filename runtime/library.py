"""Load the shared kernel library (compiler/llvmlib/library.py) once per process and dtype.

The object goes through the on-disk cache like any program, so LLVM compiles it once per machine;
in a process it is linked once and its addresses are reused by every program that names it.
"""
from __future__ import annotations

import functools
import threading
from pathlib import Path

from compiler.llvmlib import library as lib
from runtime import cache, jit
from runtime.sources import source_hash

_lock = threading.Lock()


@functools.cache
def _load(dtype: str) -> jit.Loaded:
    triple = jit.target_info().triple
    # the library's IR is a function of the code that emits it: keyed by that code, a warm
    # start never renders the (large) module text
    emitter = source_hash(str(Path(lib.__file__).resolve().parent))
    obj, _ = cache.compile_cached(lambda: str(lib.build(dtype, triple)), 3,
                                  {"library": lib.LIBRARY_VERSION, "dtype": dtype},
                                  key_text=f"library source {emitter}")
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
