"""The two-thread pipeline split: what it streams (compiler.pipeline.plan) and the native
programs against the numpy executor (the oracle of compiler/schedule.py's semantics)."""
from dataclasses import replace

import pytest

import compiler.pipeline as pipeline
from compiler.lower import lower
from compiler.schedule import Fill, Fused, Ref
from runtime import program as runtime_program
from runtime.program import NativeProgram
from tests.sched_fixtures import (PROGRAMS, assert_close, lstm_program, make_case, oracle,
                                  results)
from tests.sched_fixtures import private_cache  # noqa: F401  (autouse: this module's cache)

I, H = 5, 37
CELLS = sorted(PROGRAMS)


@pytest.fixture
def small_chunks(monkeypatch):
    """A handful of rows per chunk, so short sequences still cross chunk boundaries."""
    monkeypatch.setattr(pipeline, "CHUNK_ROWS", 7)


# ---------------------------------------------------------------- the plan
def test_plan_streams_the_hoisted_products():
    prog = lstm_program(3, I, H)
    p = pipeline.plan(prog)
    # pre: the input projection and its bias add stream; the state copies run first
    assert p.pre_stream == (0, 1) and all(prog.pre[i].__class__.__name__ == "Copy"
                                          for i in p.pre_rest)
    assert (p.kinds["pre", 0], p.kinds["pre", 1]) == ("rows", "rows")
    # post: d_weight_ih and d_weight_hh are sums over time, d_x is per step, and so is the bias
    # gradient's colsum kernel; the copies of the final adjoints and of a finished sum wait
    assert p.post_stream == (0, 1, 2, 3) and p.post_rest == (4, 5, 6)
    assert [p.kinds["post", i] for i in range(4)] == ["reduce", "reduce", "rows", "rows"]
    assert p.lookahead == 0 and p.chunk == -(-pipeline.CHUNK_ROWS // 3) and p.streams


def test_plan_shares_the_input_gradient_only_while_nothing_else_touches_it():
    prog = lstm_program(3, I, H)
    p = pipeline.plan(prog)
    # d_x = DG @ W_ih writes its own rows from the reverse loop's output: either thread may run
    # a chunk; the weight-gradient sums and the bias colsums stay on the stream's thread
    assert p.post_shared == (2,) and prog.post[2].out.buf == "d_x"
    # once d_x reads what another streamed kernel writes (here a copy of DG made in post),
    # neither may leave the stream's order
    prog.buffers["DG2"] = replace(prog.buffers["DG"], name="DG2")
    prog.post.insert(0, Fused("dg2", ((Ref("DG", "all"), "full"),), (),
                              (("in0", Ref("DG2", "all")),)))
    prog.post[3] = replace(prog.post[3], a=Ref("DG2", "all"))
    p = pipeline.plan(prog)
    assert {0, 3} <= set(p.post_stream) and p.post_shared == ()


def test_plan_keeps_a_kernel_behind_an_earlier_one_it_conflicts_with():
    prog = lstm_program(3, I, H)
    # a non-streamable kernel first in post writing the bias gradient, which the (streamable)
    # colsum kernel overwrites later: streaming the colsum would run it before the fill
    prog.post.insert(0, Fill(Ref("d_bias_ih"), 1.0))
    p = pipeline.plan(prog)
    assert 0 in p.post_rest and 4 in p.post_rest     # the fill and the colsum kernel
    assert {1, 2, 3} <= set(p.post_stream)


def test_plan_waits_for_slots_the_reverse_loop_writes_late():
    prog = lstm_program(3, I, H)
    # the reverse loop now writes DG one slot ahead (slot t+1 at step t), which the descending
    # loop fills only after passing it: nothing that reads DG may stream
    cell = prog.bwd_loop[0]
    outs = tuple((v, replace(r, t=1) if r.buf == "DG" else r) for v, r in cell.outputs)
    prog.bwd_loop[0] = replace(cell, outputs=outs)
    p = pipeline.plan(prog)
    assert p.post_stream == () and p.pre_stream == (0, 1)   # every post kernel reads DG


def test_plan_does_not_stream_a_reader_with_a_shifted_window():
    prog = lstm_program(3, I, H)
    # a second pre kernel reading the input projection one slot later ("all+1" of a T+1
    # buffer) than the first writes it: chunk c would read a slot of chunk c+1
    prog.buffers["P"] = replace(prog.buffers["XG"], name="P", steps="T+1")
    prog.buffers["Q"] = replace(prog.buffers["XG"], name="Q")
    write = replace(prog.pre[0], out=Ref("P", "all"))
    read = Fused("shifted", ((Ref("P", "all+1"), "full"),), (), (("in0", Ref("Q", "all")),))
    prog.pre[:0] = [write, read]
    assert pipeline.misaligned(prog.pre, (0, 1)) == {1}
    p = pipeline.plan(prog)
    assert 1 not in p.pre_stream and 0 in p.pre_rest   # the writer must run before it too


def test_plan_lookahead_follows_the_forward_loop_reads():
    prog = lstm_program(3, I, H)
    cell = prog.fwd_loop[1]
    ahead = tuple((replace(r, t=1) if r.buf == "XG" else r, bc) for r, bc in cell.inputs)
    prog.fwd_loop[1] = replace(cell, inputs=ahead)
    assert pipeline.plan(prog).lookahead == 1
    whole = tuple((replace(r, t="last") if r.buf == "XG" else r, bc) for r, bc in cell.inputs)
    prog.fwd_loop[1] = replace(cell, inputs=whole)
    assert pipeline.plan(prog).lookahead >= 1 << 30     # everything first


def test_plan_without_a_reverse_loop_streams_no_post():
    prog = lstm_program(3, I, H)
    prog.bwd_loop.clear()
    assert pipeline.plan(prog).post_stream == ()


def test_lower_rejects_unknown_splits_and_unrolled_pipelines():
    with pytest.raises(ValueError, match="split must be one of"):
        lower(lstm_program(3, I, H), threads=2, split="rows")
    with pytest.raises(ValueError, match="unroll=False"):
        lower(lstm_program(3, I, H), threads=2, split="pipeline", unroll=True, T=4)


# ---------------------------------------------------------------- native runs
@pytest.mark.parametrize("cell,B", [(c, b) for c in CELLS for b in (1, 3, 64)
                                    if c != "rnn_relu" or b == 3])
def test_pipeline_matches_numpy(cell, B, small_chunks):
    prog = PROGRAMS[cell](B, I, H, "float64")
    native = NativeProgram(prog, threads=2, split="pipeline")
    assert native.split_mode == "pipeline" and native.lowered.split == "pipeline"
    for T in (9, 9, 1, 4):      # reruns: the counters restart at zero; T=1: one partial chunk
        _, inputs = make_case(cell, T, B, I, H, "float64", seed=T)
        assert_close(results(prog, native.run(T, inputs).get), oracle(prog, T, inputs), 1e-10)


def test_pipeline_float32_and_in_two_phases(small_chunks):
    prog = PROGRAMS["gru"](3, I, H, "float32")
    native = NativeProgram(prog, threads=2, split="pipeline")
    for T in (11, 5):
        _, inputs = make_case("gru", T, 3, I, H, "float32", seed=T)
        want = oracle(prog, T, inputs)
        native.run(T, {n: v for n, v in inputs.items() if n != "d_out"}, phase="fwd")
        got = native.run(T, {"d_out": inputs["d_out"]}, phase="bwd")
        assert_close(results(prog, got.get), want, 1e-4)


def test_pipeline_shared_chunks_survive_many_reruns(small_chunks):
    # one step per chunk and many calls: the claims of both threads race on every call, and
    # a chunk lost or run twice (d_x keeps the previous call's rows) shows as a wrong d_x
    prog = PROGRAMS["lstm"](8, I, H, "float64")
    native = NativeProgram(prog, threads=2, split="pipeline")
    assert native.lowered.split == "pipeline"
    for seed in range(12):
        T = 17 + seed % 3
        _, inputs = make_case("lstm", T, 8, I, H, "float64", seed=seed)
        assert_close(results(prog, native.run(T, inputs).get), oracle(prog, T, inputs), 1e-10)


def test_auto_split_picks_the_pipeline_when_the_threads_balance(monkeypatch):
    prog = lstm_program(8, H, H)   # 2 products of 8 x 37 x 148 per step: 175 kFLOP
    assert NativeProgram(prog, threads=2).split_mode == "cols"
    monkeypatch.setattr(runtime_program, "PIPELINE_FLOPS", (100_000, 1_000_000))
    # hoisted products twice the loops', a quarter of them shared (d_x): 1.5 : 1.5
    assert runtime_program.pipeline_fits(prog)
    native = NativeProgram(prog, threads=2)
    assert native.split_mode == "pipeline" and native.threads == 2
    _, inputs = make_case("lstm", 6, 8, H, H, seed=2)
    assert_close(results(prog, native.run(6, inputs).get), oracle(prog, 6, inputs), 1e-10)
    # the explicit column split keeps its floor: these halves run on one thread
    assert NativeProgram(prog, threads=2, split="cols").threads == 1
    # a narrow input leaves the stream little to do beside the loops: 175 : 111 kFLOP
    narrow = lstm_program(8, I, H)
    assert not runtime_program.pipeline_fits(narrow)
    assert NativeProgram(narrow, threads=2).split_mode == "cols"
