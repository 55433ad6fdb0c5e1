"""The examples run end to end at tiny sizes (--quick) from a subprocess, as a user would."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1")


def run(name, *args):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    return r.stdout


def test_hello_learns_hello():
    out = run("hello.py", "--quick")
    assert out.splitlines()[0] == "vocabulary ['h', 'e', 'l', 'o']; input 'hell' -> target 'ello'"
    assert "greedy decoding from 'h': 'hello'" in out


def test_char_lm_quick():
    out = run("char_lm.py", "--quick")
    lines = out.splitlines()
    assert lines[0].startswith("12,000 characters of pydoc text")
    epochs = [ln for ln in lines if ln.startswith("epoch ")]
    assert len(epochs) == 2 and all("validation perplexity" in ln for ln in epochs)
    val = [float(ln.split("validation perplexity ")[1].split()[0]) for ln in epochs]
    assert val[1] < val[0] < 76              # below the uniform guess over 76 characters
    assert out.count("--- temperature") == 3 and "final validation perplexity" in out


def test_long_memory_quick():
    out = run("long_memory.py", "--quick")
    assert out.startswith("adding problem:")
    for cell in ("rnn", "lstm", "gru"):
        assert f"{cell:>4}  T=5" in out
    assert "lstm: " in out.splitlines()[-2] or "lstm: " in out


@pytest.mark.parametrize("name", ["hello.py", "char_lm.py", "long_memory.py"])
def test_examples_have_help(name):
    assert "usage:" in run(name, "--help")


def test_gradient_flow_example_small(tmp_path):
    """docs/flow.md's pictures come from this script; its table header names the forget bias
    '0 / chrono' (two settings), which the flow CLI's number formatting must accept."""
    out = run("gradient_flow.py", "--T", "12", "--hidden", "4", "--out", str(tmp_path))
    assert "forget-bias=0 / chrono" in out and "LSTM chrono" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "flow_chains.png", "flow_lags.png", "flow_norms.png", "flow_sweep.png"]
