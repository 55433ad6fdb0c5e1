"""runtime.jit / runtime.cache: compile-load separation, caching, errors, codegen."""
import ctypes
import os

import numpy as np
import pytest
from llvmlite import ir

from compiler.llvmlib import vecmath
from runtime import cache, jit

ADD1 = "define double @add1(double %x) {\n  %y = fadd double %x, 1.0\n  ret double %y\n}\n"
DPROTO = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_double)


def test_target_info():
    t = jit.target_info()
    assert t.triple and t.cpu and "+" in t.features


def test_compile_is_pure_and_load_separate():
    obj = jit.compile_ir(ADD1)
    assert isinstance(obj, bytes) and obj[:4] == b"\x7fELF"
    assert jit.compile_ir(ADD1) == obj
    a, b = jit.load(obj, {"add1": DPROTO}), jit.load(obj, ["add1"])
    assert a["add1"](2.0) == 3.0
    assert b.function("add1", ctypes.c_double, ctypes.c_double)(-1.0) == 0.0
    assert jit.elf_symbols(obj)[0] == {"add1"}


def test_missing_symbol_is_keyerror():
    obj = jit.compile_ir(ADD1)
    with pytest.raises(KeyError, match="nope"):
        jit.load(obj, ["nope"])
    with pytest.raises(KeyError, match="other"):
        jit.load(obj, ["add1"]).address("other")


def test_unresolved_external_is_keyerror_and_externals_resolve():
    text = ("declare double @gg_test_ext(double)\n"
            "define double @f(double %x) {\n  %y = call double @gg_test_ext(double %x)\n"
            "  ret double %y\n}\n")
    obj = jit.compile_ir(text)
    with pytest.raises(KeyError, match="gg_test_ext"):
        jit.load(obj, ["f"])
    cb = DPROTO(lambda x: 10 * x)
    addr = ctypes.cast(cb, ctypes.c_void_p).value
    assert jit.load(obj, {"f": DPROTO}, externals={"gg_test_ext": addr})["f"](2.0) == 20.0
    jit.add_symbol("gg_test_ext", addr)   # process-wide registration also works
    assert jit.load(obj, {"f": DPROTO})["f"](3.0) == 30.0


def test_cache_hit_skips_llvm(tmp_path, monkeypatch):
    obj, hit = cache.compile_cached(ADD1, directory=tmp_path)
    assert not hit
    monkeypatch.setattr(jit, "compile_ir", lambda *a, **k: pytest.fail("LLVM was invoked"))
    obj2, hit2 = cache.compile_cached(ADD1, directory=tmp_path)
    assert hit2 and obj2 == obj
    assert jit.load(obj2, {"add1": DPROTO})["add1"](1.5) == 2.5
    assert not list(tmp_path.glob("*.tmp"))          # atomic write left no temp file


def test_cache_key_covers_target_opt_options():
    t = jit.target_info()
    base = cache.cache_key(ADD1, 3, None, t)
    other_cpu = jit.TargetInfo(t.triple, "x86-64", t.features)
    other_feat = jit.TargetInfo(t.triple, t.cpu, t.features.replace("+avx512f", "-avx512f"))
    keys = {base, cache.cache_key(ADD1, 3, None, other_cpu),
            cache.cache_key(ADD1, 3, None, other_feat), cache.cache_key(ADD1, 2, None, t),
            cache.cache_key(ADD1, 3, {"unroll": 1}, t), cache.cache_key(ADD1 + " ", 3, None, t)}
    assert len(keys) == 6


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHGRAD_CACHE_DIR", str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c"
    _, hit = cache.compile_cached(ADD1 + "; env\n")
    assert not hit and len(list((tmp_path / "c").glob("*.o"))) == 1
    from compiler import graph_cache
    graph_cache.put("k", {"a": 1})                 # schedules go too (they were left behind)
    assert cache.clear() == 2 and not list((tmp_path / "c").rglob("*.*"))


def test_vecmath_asm_is_zmm_fma():
    mod = ir.Module("asm")
    mod.triple = jit.target_info().triple
    for op in ("exp", "tanh", "sigmoid", "log"):
        vecmath.emit_unary_kernel(mod, op, op, "float32")
    asm = jit.emit_asm(str(mod))
    assert "zmm" in asm and "vfmadd" in asm
    assert "expf" not in asm and "tanhf" not in asm   # no libm calls


def test_loaded_code_runs_on_numpy():
    mod = ir.Module("np")
    mod.triple = jit.target_info().triple
    vecmath.emit_unary_kernel(mod, "k", "exp", "float64")
    lib = jit.load(jit.compile_ir(str(mod)), ["k"])
    f = lib.function("k", None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    x = np.linspace(-5, 5, 101)
    y = np.empty_like(x)
    f(y.ctypes.data, x.ctypes.data, x.size)
    np.testing.assert_allclose(y, np.exp(x), rtol=1e-15)
    assert os.path.exists(jit.__file__)


# ---------------------------------------------------------------- a damaged or unusable cache
def _damage(data, how):
    return {"empty": b"", "truncated": data[:len(data) // 2], "foreign": b"not an object" * 9,
            "flipped": data[:64] + bytes(b ^ 0xFF for b in data[64:128]) + data[128:]}[how]


@pytest.mark.parametrize("how", ["empty", "truncated", "foreign", "flipped"])
def test_damaged_cache_entry_is_rebuilt_never_loaded(tmp_path, how):
    """A truncated (crash, full disk), emptied or bit-flipped object file was returned as a hit
    and handed to the loader: ValueError / struct.error, or flipped code that segfaulted."""
    good, _ = cache.compile_cached(ADD1, directory=tmp_path)
    (path,) = tmp_path.glob("*.o")
    path.write_bytes(_damage(path.read_bytes(), how))
    with pytest.warns(RuntimeWarning, match="corrupt"):
        obj, hit = cache.compile_cached(ADD1, directory=tmp_path)
    assert not hit and obj == good
    obj, hit = cache.compile_cached(ADD1, directory=tmp_path)     # the entry was replaced
    assert hit and obj == good
    assert jit.load(obj, {"add1": DPROTO})["add1"](1.5) == 2.5


def test_unusable_cache_directory_compiles_uncached(tmp_path):
    """A cache 'directory' that is a file, or an entry that is a directory, raised
    NotADirectoryError / IsADirectoryError from compile()."""
    afile = tmp_path / "file"
    afile.write_text("x")
    obj, hit = cache.compile_cached(ADD1, directory=afile)
    assert not hit and jit.load(obj, {"add1": DPROTO})["add1"](1.0) == 2.0
    (tmp_path / "d" / (cache.cache_key(ADD1) + ".o")).mkdir(parents=True)
    obj, hit = cache.compile_cached(ADD1, directory=tmp_path / "d")
    assert not hit and jit.load(obj, {"add1": DPROTO})["add1"](1.0) == 2.0


def test_failed_cache_write_leaves_no_temp_file(tmp_path, monkeypatch):
    """A write that fails (full disk) left its partial temp file behind, on every compile."""
    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    _, hit = cache.compile_cached(ADD1, directory=tmp_path)
    assert not hit and not list(tmp_path.iterdir())


def test_cache_key_covers_the_code_generator(monkeypatch):
    """Objects made by another LLVM (an llvmlite upgrade) were served for the same IR text."""
    import llvmlite.binding as llvm
    base = cache.cache_key(ADD1)
    monkeypatch.setattr(llvm, "llvm_version_info", (1, 2, 3))
    assert cache.cache_key(ADD1) != base


# ---------------------------------------------------------------- the cache's size limit
def _variant(i):
    return ADD1.replace("@add1", f"@add1_{i}")


def test_cache_stays_under_its_size_limit_dropping_least_recently_used(tmp_path, monkeypatch):
    """The cache grew without bound (one object per distinct program, forever)."""
    obj, _ = cache.compile_cached(_variant(0), directory=tmp_path)
    one = next(tmp_path.glob("*.o")).stat().st_size
    monkeypatch.setenv("GRAPHGRAD_CACHE_MAX_MB", str(4.5 * one / 2**20))
    for i in range(1, 4):
        cache.compile_cached(_variant(i), directory=tmp_path)
    assert cache.usage(tmp_path) == (4, 4 * one)                  # at the limit: nothing gone
    old = tmp_path / (cache.cache_key(_variant(1)) + ".o")
    for i, p in enumerate(sorted(tmp_path.glob("*.o"))):          # ages: all older than now
        os.utime(p, (1e9 + i, 1e9 + i))
    os.utime(old, (1e9 - 10, 1e9 - 10))                           # variant 1: the oldest ...
    assert cache.compile_cached(_variant(1), directory=tmp_path)[1]   # ... until it is used
    cache.compile_cached(_variant(4), directory=tmp_path)         # 5 > 4.5: prune to 3/4
    n, size = cache.usage(tmp_path)
    assert size <= 4.5 * one * 3 / 4 and n == 3
    assert old.exists() and (tmp_path / (cache.cache_key(_variant(4)) + ".o")).exists()
    monkeypatch.setenv("GRAPHGRAD_CACHE_MAX_MB", "0")             # 0: no limit
    for i in range(5, 9):
        cache.compile_cached(_variant(i), directory=tmp_path)
    assert cache.usage(tmp_path)[0] == 7


def test_cache_limit_must_be_a_number(monkeypatch):
    for bad in ("lots", "-1", "nan", "inf"):
        monkeypatch.setenv("GRAPHGRAD_CACHE_MAX_MB", bad)
        with pytest.raises(ValueError, match="GRAPHGRAD_CACHE_MAX_MB"):
            cache.max_bytes()


def test_cache_command_shows_and_clears(tmp_path):
    import subprocess
    import sys
    cache.compile_cached(ADD1, directory=tmp_path)
    env = dict(os.environ, GRAPHGRAD_CACHE_DIR=str(tmp_path), GRAPHGRAD_CACHE_MAX_MB="100")
    run = lambda *a: subprocess.run([sys.executable, "-m", "graphgrad.cli", "cache", *a],  # noqa
                                    env=env, capture_output=True, text=True, timeout=120)
    r = run()
    assert r.returncode == 0 and str(tmp_path) in r.stdout, r.stderr
    assert "entries: 1," in r.stdout and "limit: 100 MB" in r.stdout
    r = run("--clear")
    assert r.returncode == 0 and "removed 1 entries" in r.stdout
    assert not list(tmp_path.glob("*.o"))
