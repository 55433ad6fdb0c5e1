"""The numpy executor of scheduled programs against graphgrad's eager tape."""
import numpy as np
import pytest

from compiler import sched_numpy
from compiler.schedule import Buffer, Fused, Gemm, Program, Ref, validate, with_batch
from tests.sched_fixtures import PROGRAMS, make_case, results, tape_reference

CELLS = sorted(PROGRAMS)


def run_numpy(cell, T, B, I, H, dtype="float64"):
    model, inputs = make_case(cell, T, B, I, H, dtype)
    prog = PROGRAMS[cell](B, I, H, dtype)
    store = sched_numpy.execute(prog, T, inputs)
    return model, inputs, prog, results(prog, lambda n: sched_numpy.user_view(prog, store, n))


def assert_close(got, want, rtol):
    assert got.keys() == want.keys()
    for k in want:
        scale = max(np.abs(want[k]).max(), 1e-30)
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=rtol * scale, err_msg=k)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B", [(1, 1), (7, 3), (20, 64)])
def test_matches_tape(cell, T, B):
    model, inputs, prog, got = run_numpy(cell, T, B, 5, 7)
    assert_close(got, tape_reference(cell, model, inputs), 1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_fixtures_validate_and_rebatch(cell):
    prog = validate(PROGRAMS[cell](6, 5, 7))
    half = validate(with_batch(prog, 3))
    assert half.buffers["x"].shape == (3, 5) and half.buffers["weight_hh"] == prog.buffers[
        "weight_hh"] and half.meta["batch"] == 3


def test_batch_halves_sum_to_whole():
    T, B, I, H = 5, 6, 4, 3
    model, inputs, prog, whole = run_numpy("lstm", T, B, I, H)
    half = with_batch(prog, B // 2)
    parts = []
    for sl in (slice(0, 3), slice(3, 6)):
        sub = {k: (v[:, sl] if v.ndim == 3 else v[sl]) if k not in model.parameters()
               and not k.startswith(("weight", "bias")) else v for k, v in inputs.items()}
        store = sched_numpy.execute(half, T, sub)
        parts.append(results(half, lambda n: sched_numpy.user_view(half, store, n)))
    np.testing.assert_allclose(parts[0]["weight_hh"] + parts[1]["weight_hh"], whole["weight_hh"],
                               rtol=1e-12)
    np.testing.assert_allclose(np.concatenate([p["out"] for p in parts], 1), whole["out"])


def _tiny(kernels_fwd=(), pre=(), post=()):
    bufs = {"A": Buffer("A", "float64", (2, 3), "T+1"), "W": Buffer("W", "float64", (3, 3)),
            "v": Buffer("v", "float64", (3,)), "u": Buffer("u", "float64", (3,))}
    return Program(bufs, list(pre), list(kernels_fwd), [], list(post), {"batch": 2})


@pytest.mark.parametrize("bad,msg", [
    (Gemm(Ref("A", 1), Ref("A", 0), Ref("v")), "inner dimensions"),
    (Gemm(Ref("A", 1), Ref("A", 0, 0, 2), Ref("W")), "inner dimensions"),
    (Fused("f", ((Ref("A", 0), "row"),), (), (("in0", Ref("A", 1)),)), "row"),
    (Fused("f", ((Ref("nope", 0), "full"),), (), ()), "unknown buffer"),
    (Fused("f", ((Ref("A"), "full"),), (), (("in0", Ref("A", 1)),)), "disagree"),
    (Fused("f", ((Ref("A", 0, 2, 2), "full"),), (), ()), "column window"),
    (Fused("f", ((Ref("A", 0, 0, 2), "full"),), (), (("in0", Ref("A", 0, 1, 2)),)), "overlaps"),
    (Fused("f", ((Ref("A", 0), "full"), (Ref("v"), "row")), (), (),
           colsums=(("in0", Ref("v"), True),)), "also used"),
    (Fused("f", ((Ref("A", 0), "full"), (Ref("v"), "col")), (), ()), "col"),
    (Fused("f", ((Ref("A", 0), "full"),), (), (), rowreds=(("in0", Ref("v"), "sum"),)),
     "rowred target"),
    (Fused("f", ((Ref("A", 0), "full"),), (), (), rowreds=(("in0", Ref("A", 1, 0, 1), "mean"),)),
     "unknown row reduction"),
    (Fused("f", ((Ref("A", 0), "full"), (Ref("A", 1, 0, 1), "col")), (), (),
           rowreds=(("in0", Ref("A", 1, 0, 1), "max"),)), "also used"),
])
def test_validate_names_the_problem(bad, msg):
    with pytest.raises(ValueError, match=msg):
        validate(_tiny([bad]))


def test_loop_offset_outside_loop_rejected():
    with pytest.raises(ValueError, match="outside the loops"):
        validate(_tiny(pre=[Gemm(Ref("A", 1), Ref("A", 0), Ref("W"))]))


def test_inplace_fused_reads_before_writes():
    # y = x + row, written over x in place, plus a colsum of the old values.
    prog = _tiny(pre=[Fused("f", ((Ref("A", "all"), "full"), (Ref("v"), "row")),
                            (("s", "add", ("in0", "in1"), ()),), (("s", Ref("A", "all")),),
                            colsums=(("in0", Ref("u"), True),))])
    a = np.arange(18.0).reshape(3, 2, 3)
    store = sched_numpy.execute(prog, 2, {"A": a, "v": np.ones(3), "u": np.ones(3)})
    np.testing.assert_array_equal(store["A"][:2].reshape(4, 3), a[:2].reshape(4, 3) + 1)
    np.testing.assert_array_equal(store["A"][2], a[2])
    np.testing.assert_array_equal(store["u"][0, 0], 1 + a[:2].reshape(4, 3).sum(0))
