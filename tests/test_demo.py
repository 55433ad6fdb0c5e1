"""The README's main command, at tiny sizes, end to end in a subprocess."""
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
