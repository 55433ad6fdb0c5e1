"""Every graph pass of the compile pipeline keeps the joint forward+backward graph's meaning:
the reference interpreter gives the same outputs before and after, on random inputs."""
import numpy as np
import pytest

import graphgrad as gg
from compiler import interp, ir
from compiler.autodiff import vjp_graph
from compiler.passes import simplify
from compiler.passes.layout import group_invariant_adds, pads_to_concat, sink_slices
from compiler.passes.loops import merge_matmuls
from compiler.passes.remat import recompute_cheap
from compiler.program import reference_program

MODELS = {
    "lstm": lambda: gg.LSTM(3, 4, dtype=np.float64),
    "gru": lambda: gg.GRU(3, 4, dtype=np.float64),
    "gru_v1": lambda: gg.GRU(3, 4, reset_after=False, dtype=np.float64),
    "rnn_relu": lambda: gg.RNN(3, 4, nonlinearity="relu", dtype=np.float64),
}


def _random_inputs(G, rng):
    return [rng.standard_normal(ir.node(G, i).shape) for i in G.graph["inputs"]]


def _same(G, H, rng):
    args = _random_inputs(G, rng)
    for a, b in zip(interp.run(G, *args), interp.run(H, *args)):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", MODELS)
def test_each_pass_preserves_the_joint_graph(name):
    rng = np.random.default_rng(0)
    ld = reference_program(MODELS[name](), 3, 2).layers[0][0]
    F = ld.step.G
    for p in (simplify, merge_matmuls, simplify):
        F2 = p(F)
        _same(F, F2, rng)
        F = F2
    B = vjp_graph(F, ld.bwd.graph["wrt"])
    J = ir.copy_graph(B)
    J.graph["outputs"] = list(F.graph["outputs"]) + list(B.graph["outputs"])
    # the differentiated optimized step equals the differentiated traced step
    ref = ir.copy_graph(ld.bwd)
    ref.graph["outputs"] = list(ld.step.G.graph["outputs"]) + list(ld.bwd.graph["outputs"])
    _same(ref, J, rng)
    remat = lambda J: recompute_cheap(J, len(F.graph["outputs"]))   # noqa: E731
    for p in (simplify, pads_to_concat, sink_slices, simplify, group_invariant_adds, simplify,
              remat):
        J2 = p(J)
        assert J2.graph["inputs"] == J.graph["inputs"]
        _same(J, J2, rng)
        J = J2
    # per-step (batch-row) gate-gradient pieces became one packed concat; parameter-sized
    # pads (the Cho GRU slices W_hh by rows) are left to the numpy tail
    per_step = {ir.node(J, n).op for n in J.nodes if ir.node(J, n).shape[:1] == (2,)}
    assert "pad_into" not in per_step
