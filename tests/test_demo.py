"""The README's main command, at tiny sizes, end to end in a subprocess."""
import os
import subprocess
import sys


def test_demo_trains_checks_and_samples():
    r = subprocess.run([sys.executable, "-m", "graphgrad.cli", "demo", "--steps", "6",
                        "--hidden", "16", "--seq-len", "12", "--batch", "4"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "backend: compiled" in out
    assert "in 6 updates" in out
    assert "gradient check (float64 LSTM vs central differences)" in out and "ok" in out
    assert "compiled vs tape on one window" in out and "FAILED" not in out
    assert "faster compiled" in out
    assert out.count("--- sample, temperature") == 2


def test_demo_rejects_bad_arguments_in_one_line():
    r = subprocess.run([sys.executable, "-m", "graphgrad.cli", "demo", "--steps", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_demo_without_the_compiler(tmp_path):
    """When `import compiler` fails, the default backend is a one-line error (was a RuntimeError
    traceback) and `--backend tape`, which that error suggests, runs (its compiled-vs-tape check
    built a CompiledBackend regardless and failed the same way)."""
    (tmp_path / "compiler").mkdir()
    (tmp_path / "compiler" / "__init__.py").write_text("raise ImportError('no llvmlite')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    tiny = ["--steps", "2", "--hidden", "8", "--seq-len", "5", "--batch", "2"]
    r = subprocess.run([sys.executable, "-m", "graphgrad.cli", "demo", *tiny],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "graphgrad demo: error: the compiled backend needs the compiler package; use "
        "--backend tape"], r.stderr
    r = subprocess.run([sys.executable, "-m", "graphgrad.cli", "demo", *tiny, "--backend", "tape"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "backend: tape" in r.stdout and "compiled vs tape: skipped" in r.stdout
    assert r.stdout.count("--- sample, temperature") == 2
