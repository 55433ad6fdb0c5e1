"""Hand-written scheduled programs for a tanh/relu RNN, an LSTM and a PyTorch GRU.

They are what the graph side should emit for the built-in cells (forward + BPTT, input projection
hoisted into `pre`, weight gradients as whole-sequence products in `post`), and the fixtures the
numpy executor and the native code are tested on.

Buffer names (also in Program.meta):
  x (T slots of (B, I)), h0 [c0], d_out (T slots of (B, H)), d_hT [d_cT]     kind input
  weight_ih, weight_hh, bias_ih, bias_hh  (PyTorch layouts, gate order)      kind param
  d_weight_ih, ...                                                            kind grad
  H [C] (T+1 slots; slot 0 is the initial state), d_x, d_h0 [d_c0]           kind output
The backward bodies are the cells' VJPs written out in primitives, as the graph side's autodiff
would produce them.
"""
from __future__ import annotations

import numpy as np
import pytest

from compiler import sched_numpy
from compiler.schedule import Buffer, Copy, Fill, Fused, Gemm, Program, Ref

PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class Body:
    """Collects Fused body rows: `b("mul", "in0", "x1")` returns the new local's name."""

    def __init__(self):
        self.rows = []

    def __call__(self, op, *args):
        dst = f"v{len(self.rows)}"
        self.rows.append((dst, op, tuple(args), ()))
        return dst

    def sig_grad(self, g, s):          # g * s * (1 - s), s = sigmoid output
        return self("mul", g, self("mul", s, self("sub", 1.0, s)))

    def tanh_grad(self, g, y):         # g * (1 - y*y), y = tanh output
        return self("mul", g, self("sub", 1.0, self("mul", y, y)))


def _buffers(B, I, H, G, dt, states):
    bufs = [Buffer("x", dt, (B, I), "T", "input"), Buffer("d_out", dt, (B, H), "T", "input"),
            Buffer("weight_ih", dt, (G * H, I), kind="param"),
            Buffer("weight_hh", dt, (G * H, H), kind="param"),
            Buffer("bias_ih", dt, (G * H,), kind="param"),
            Buffer("bias_hh", dt, (G * H,), kind="param"),
            Buffer("d_x", dt, (B, I), "T", "output"),
            Buffer("XG", dt, (B, G * H), "T"), Buffer("Z", dt, (B, G * H))]
    bufs += [Buffer("d_" + p, dt, b.shape, kind="grad") for p in PARAMS for b in bufs
             if b.name == p]
    for s in states:
        bufs += [Buffer(s + "0", dt, (B, H), kind="input"),
                 Buffer("d_" + s + "T", dt, (B, H), kind="input"),
                 Buffer(s.upper(), dt, (B, H), "T+1", "output"),
                 Buffer("d_" + s + "0", dt, (B, H), kind="output"),
                 Buffer("D" + s.upper(), dt, (B, H))]
    return {b.name: b for b in bufs}


def _meta(B, states, kind):
    return {"batch": B, "cell": kind, "out": "H", "states": [s.upper() for s in states],
            "grads": {p: "d_" + p for p in PARAMS}, "d_x": "d_x",
            "d_state0": ["d_" + s + "0" for s in states]}


def _common_pre(states, biases):
    """Input projection for all T*B rows plus the (row-broadcast) biases, state copies in."""
    b = Body()
    acc = "in0"
    for k in range(len(biases)):
        acc = b("add", acc, f"in{k + 1}")
    pre = [Gemm(Ref("XG", "all"), Ref("x", "all"), Ref("weight_ih"), trans_b=True),
           Fused("bias_in", ((Ref("XG", "all"), "full"),) + tuple((Ref(n), "row") for n in biases),
                 tuple(b.rows), ((acc, Ref("XG", "all")),))]
    for s in states:
        pre += [Copy(Ref(s.upper(), "first"), Ref(s + "0")),
                Copy(Ref("D" + s.upper()), Ref("d_" + s + "T"))]
    return pre


def _weight_grads(dxg, dhg):
    return [Gemm(Ref("d_weight_ih"), Ref(dxg, "all"), Ref("x", "all"), trans_a=True),
            Gemm(Ref("d_weight_hh"), Ref(dhg, "all"), Ref("H", "all"), trans_a=True),
            Gemm(Ref("d_x", "all"), Ref(dxg, "all"), Ref("weight_ih"))]


def rnn_program(B, I, H, dtype="float64", nonlinearity="tanh") -> Program:
    bufs = _buffers(B, I, H, 1, dtype, ["h"])
    bufs["DA"] = Buffer("DA", dtype, (B, H), "T")
    f = Body()
    h = f(nonlinearity, f("add", "in0", "in1"))
    fwd = [Gemm(Ref("Z"), Ref("H", 0), Ref("weight_hh"), trans_b=True),
           Fused("rnn_cell", ((Ref("XG", 0), "full"), (Ref("Z"), "full")), tuple(f.rows),
                 ((h, Ref("H", 1)),))]
    b = Body()
    dh = b("add", "in0", "in1")
    da = b.tanh_grad(dh, "in2") if nonlinearity == "tanh" else b("mul", dh, b("positive", "in2"))
    # The bias gradient accumulates per step here (a colsum epilogue inside the loop); the LSTM
    # and GRU fixtures do it once after the loop instead, so both forms are covered.
    bwd = [Fused("rnn_cell_bwd", ((Ref("d_out", 0), "full"), (Ref("DH"), "full"),
                                  (Ref("H", 1), "full")), tuple(b.rows),
                 ((da, Ref("DA", 0)),), colsums=((da, Ref("d_bias_ih"), True),)),
           Gemm(Ref("DH"), Ref("DA", 0), Ref("weight_hh"))]
    pre = _common_pre(["h"], ["bias_ih", "bias_hh"]) + [Fill(Ref("d_bias_ih"), 0.0)]
    post = _weight_grads("DA", "DA") + [Copy(Ref("d_bias_hh"), Ref("d_bias_ih")),
                                        Copy(Ref("d_h0"), Ref("DH"))]
    return Program(bufs, pre, fwd, bwd, post, _meta(B, ["h"], "rnn_" + nonlinearity))


def lstm_program(B, I, H, dtype="float64") -> Program:
    bufs = _buffers(B, I, H, 4, dtype, ["h", "c"])
    bufs.update(ACT=Buffer("ACT", dtype, (B, 4 * H), "T"), TC=Buffer("TC", dtype, (B, H), "T"),
                DG=Buffer("DG", dtype, (B, 4 * H), "T"))
    gate = lambda buf, t, k: (Ref(buf, t, k * H, H), "full")  # noqa: E731
    f = Body()
    pre_act = [f("add", f"in{k}", f"in{k + 4}") for k in range(4)]
    i, fg, o = (f("sigmoid", pre_act[k]) for k in (0, 1, 3))
    g = f("tanh", pre_act[2])
    c = f("add", f("mul", fg, "in8"), f("mul", i, g))
    tc = f("tanh", c)
    h = f("mul", o, tc)
    fwd = [Gemm(Ref("Z"), Ref("H", 0), Ref("weight_hh"), trans_b=True),
           Fused("lstm_cell", tuple(gate("XG", 0, k) for k in range(4)) +
                 tuple(gate("Z", None, k) for k in range(4)) + ((Ref("C", 0), "full"),),
                 tuple(f.rows),
                 tuple((v, Ref("ACT", 0, k * H, H)) for k, v in enumerate((i, fg, g, o))) +
                 ((c, Ref("C", 1)), (tc, Ref("TC", 0)), (h, Ref("H", 1))))]
    b = Body()
    # in0 d_out, in1 DH, in2 DC, in3..6 i f g o, in7 tanh(c), in8 c_prev
    dh = b("add", "in0", "in1")
    do = b("mul", dh, "in7")
    dc = b("add", "in2", b.tanh_grad(b("mul", dh, "in6"), "in7"))
    grads = (b.sig_grad(b("mul", dc, "in5"), "in3"), b.sig_grad(b("mul", dc, "in8"), "in4"),
             b.tanh_grad(b("mul", dc, "in3"), "in5"), b.sig_grad(do, "in6"))
    dc_prev = b("mul", dc, "in4")
    bwd = [Fused("lstm_cell_bwd", ((Ref("d_out", 0), "full"), (Ref("DH"), "full"),
                                   (Ref("DC"), "full")) + tuple(gate("ACT", 0, k) for k in range(4))
                 + ((Ref("TC", 0), "full"), (Ref("C", 0), "full")), tuple(b.rows),
                 tuple((v, Ref("DG", 0, k * H, H)) for k, v in enumerate(grads)) +
                 ((dc_prev, Ref("DC")),)),
           Gemm(Ref("DH"), Ref("DG", 0), Ref("weight_hh"))]
    post = _weight_grads("DG", "DG") + [
        Fused("bias_grad", ((Ref("DG", "all"), "full"),), (), (),
              colsums=(("in0", Ref("d_bias_ih"), False),)),
        Copy(Ref("d_bias_hh"), Ref("d_bias_ih")),
        Copy(Ref("d_h0"), Ref("DH")), Copy(Ref("d_c0"), Ref("DC"))]
    return Program(bufs, _common_pre(["h", "c"], ["bias_ih", "bias_hh"]), fwd, bwd, post,
                   _meta(B, ["h", "c"], "lstm"))


def gru_program(B, I, H, dtype="float64") -> Program:
    """PyTorch's GRU: n = tanh(xn + r * (h W_hn^T + b_hn)), so b_hh stays inside the loop."""
    bufs = _buffers(B, I, H, 3, dtype, ["h"])
    bufs.update(ACT=Buffer("ACT", dtype, (B, 3 * H), "T"), HN=Buffer("HN", dtype, (B, H), "T"),
                DXG=Buffer("DXG", dtype, (B, 3 * H), "T"),
                DHG=Buffer("DHG", dtype, (B, 3 * H), "T"))
    gate = lambda buf, t, k: (Ref(buf, t, k * H, H), "full")  # noqa: E731
    f = Body()
    hr, hz, hn = (f("add", f"in{k + 3}", f"in{k + 6}") for k in range(3))
    r = f("sigmoid", f("add", "in0", hr))
    z = f("sigmoid", f("add", "in1", hz))
    n = f("tanh", f("add", "in2", f("mul", r, hn)))
    h = f("add", f("mul", f("sub", 1.0, z), n), f("mul", z, "in9"))
    fwd = [Gemm(Ref("Z"), Ref("H", 0), Ref("weight_hh"), trans_b=True),
           Fused("gru_cell", tuple(gate("XG", 0, k) for k in range(3)) +
                 tuple(gate("Z", None, k) for k in range(3)) +
                 tuple((Ref("bias_hh", None, k * H, H), "row") for k in range(3)) +
                 ((Ref("H", 0), "full"),), tuple(f.rows),
                 tuple((v, Ref("ACT", 0, k * H, H)) for k, v in enumerate((r, z, n))) +
                 ((hn, Ref("HN", 0)), (h, Ref("H", 1))))]
    b = Body()
    # in0 d_out, in1 DH, in2..4 r z n, in5 hn, in6 h_prev
    dh = b("add", "in0", "in1")
    dan = b.tanh_grad(b("mul", dh, b("sub", 1.0, "in3")), "in4")
    daz = b.sig_grad(b("mul", dh, b("sub", "in6", "in4")), "in3")
    dar = b.sig_grad(b("mul", dan, "in5"), "in2")
    dhn = b("mul", dan, "in2")
    dh_direct = b("mul", dh, "in3")
    bwd = [Fused("gru_cell_bwd", ((Ref("d_out", 0), "full"), (Ref("DH"), "full")) +
                 tuple(gate("ACT", 0, k) for k in range(3)) +
                 ((Ref("HN", 0), "full"), (Ref("H", 0), "full")), tuple(b.rows),
                 tuple((v, Ref("DXG", 0, k * H, H)) for k, v in enumerate((dar, daz, dan))) +
                 tuple((v, Ref("DHG", 0, k * H, H)) for k, v in enumerate((dar, daz, dhn))) +
                 ((dh_direct, Ref("DH")),)),
           Gemm(Ref("DH"), Ref("DHG", 0), Ref("weight_hh"), accumulate=True)]
    post = _weight_grads("DXG", "DHG") + [
        Fused("bias_grads", ((Ref("DXG", "all"), "full"), (Ref("DHG", "all"), "full")), (), (),
              colsums=(("in0", Ref("d_bias_ih"), False), ("in1", Ref("d_bias_hh"), False))),
        Copy(Ref("d_h0"), Ref("DH"))]
    return Program(bufs, _common_pre(["h"], ["bias_ih"]), fwd, bwd, post,
                   _meta(B, ["h"], "gru"))


PROGRAMS = {"rnn_tanh": rnn_program, "rnn_relu": lambda *a, **k: rnn_program(
    *a, nonlinearity="relu", **k), "lstm": lstm_program, "gru": gru_program}


# ---------------------------------------------------------------- data and references
def make_case(cell, T, B, I, H, dtype="float64", seed=0):
    """(model, inputs dict keyed by buffer name) with random data and cotangents."""
    import graphgrad as gg
    rng = np.random.default_rng(seed)
    cls = {"rnn_tanh": gg.RNN, "rnn_relu": gg.RNN, "lstm": gg.LSTM, "gru": gg.GRU}[cell]
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    model = cls(I, H, dtype=dtype, seed=seed, **kw)
    r = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    inputs = {"x": r(T, B, I), "d_out": r(T, B, H), "h0": r(B, H), "d_hT": r(B, H)}
    if cell == "lstm":
        inputs.update(c0=r(B, H), d_cT=r(B, H))
    inputs.update({p: v.data for p, v in model.parameters().items()})
    inputs = {k[:-3] if k.endswith("_l0") else k: v for k, v in inputs.items()}
    return model, inputs


def tape_reference(cell, model, inputs):
    """Forward and gradients by graphgrad's eager tape, keyed like `results`."""
    import graphgrad as gg
    x = gg.Tensor(inputs["x"], requires_grad=True)
    st = [gg.Tensor(inputs[s + "0"][None], requires_grad=True)
          for s in (("h", "c") if cell == "lstm" else ("h",))]
    out, fin = model(x, tuple(st) if cell == "lstm" else st[0])
    fin = fin if cell == "lstm" else (fin,)
    loss = (out * inputs["d_out"]).sum() + (fin[0] * inputs["d_hT"][None]).sum()
    if cell == "lstm":
        loss = loss + (fin[1] * inputs["d_cT"][None]).sum()
    loss.backward()
    res = {"out": out.data, "d_x": x.grad}
    res.update({f"state_T{k}": s.data[0] for k, s in enumerate(fin)})
    res.update({f"d_state0{k}": s.grad[0] for k, s in enumerate(st)})
    res.update({p[:-3]: t.grad for p, t in model.parameters().items()})
    return res


def results(prog, view):
    """The same keys from a program's buffers; view(name) gives a buffer in user shape."""
    m = prog.meta
    res = {"out": view(m["out"])[1:], "d_x": view(m["d_x"])}
    res.update({f"state_T{k}": view(s)[-1] for k, s in enumerate(m["states"])})
    res.update({f"d_state0{k}": view(s) for k, s in enumerate(m["d_state0"])})
    res.update({p: view(g) for p, g in m["grads"].items()})
    return res


# ---------------------------------------------------------------- native vs numpy (test_lower, test_pipeline)
@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """An object cache of the importing test module's own (autouse there), so nothing depends
    on a warm cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHGRAD_CACHE_DIR", str(tmp_path_factory.mktemp("ggcache")))
    yield
    mp.undo()


def oracle(prog, T, inputs):
    """results() of the numpy executor, the reference for the native code."""
    store = sched_numpy.execute(prog, T, inputs)
    return results(prog, lambda n: sched_numpy.user_view(prog, store, n))


def assert_close(got, want, rtol):
    for k in want:
        scale = max(np.abs(want[k]).max(), 1e-30)
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=rtol * scale, err_msg=k)
