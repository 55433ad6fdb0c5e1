"""The benchmark's peers compute the workload they are timed on: every gradient of one BPTT step
equals the tape's (float64), so a row of BENCHMARKS.md compares the same work.

A peer that is not installed skips only its own case, as the benchmark skips it (.ci/run installs
PyTorch and JAX, so in CI every case runs)."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import peers  # noqa: E402

# the custom-cell peers (the step function, the PyTorch Python loop) are LSTMs only
CASES = [(cell, peer) for cell in ("rnn", "lstm", "gru")
         for peer in ("compiled", "compiled-custom", "torch", "torch-loop", "jax")
         if cell == "lstm" or peer not in ("compiled-custom", "torch-loop")]


@pytest.mark.parametrize("cell,peer", CASES)
def test_peer_gradients_equal_the_tape(cell, peer):
    model, xs, d_out = peers.problem(cell, 3, 4, 5, 7, dtype=np.float64)
    try:
        step = peers.PEERS[peer](model, xs, d_out)
    except ImportError as e:
        pytest.skip(str(e))
    want = peers.gradients("tape", peers.make_tape(model, xs, d_out)(), model)
    got = peers.gradients(peer, step(), model)
    assert sorted(got) == sorted(want)
    err, name = peers.disagreement(got, want)
    assert err < 1e-10, f"{peer} {cell}: {name} differs by {err:.1e}"


def test_disagreement_notices_a_different_workload():
    model, xs, d_out = peers.problem("lstm", 3, 4, 5, 7, dtype=np.float64)
    want = peers.gradients("tape", peers.make_tape(model, xs, d_out)(), model)
    half = peers.gradients("compiled", peers.make_compiled(model, xs, 0.5 * d_out)(), model)
    assert peers.disagreement(half, want)[0] == pytest.approx(0.5)
