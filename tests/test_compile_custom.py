"""compiler.compile on custom step functions (graphgrad.Recurrent).

Hypothesis composes random step functions from the primitive set (add sub mul div tanh sigmoid
relu exp, products with parameters, column split/concat, scalar constants) over one or two (B, H)
state tensors; the compiled program (numpy backend for the sweep, native for a small table)
must equal the tape. Ops without a lowering raise CompileError naming the op and the user's line.
"""
import inspect

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphgrad as gg
import compiler
from compiler.errors import CompileError
from compiler.schedule import Copy, Gemm
from compile_checks import DT_NAME, ErrorTable, check, compare, isolated_cache
# the custom LSTM cell the benchmark times (one weight matrix per gate)
from benchmarks.peers import lstm_four_matrices

TABLE = ErrorTable()
I = 3


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    with isolated_cache(tmp_path_factory, TABLE,
                        "worst relative error of compiled custom steps") as d:
        yield d


# ---------------------------------------------------------------- random step functions
# Each recipe entry is (op, i, j, k, c): op picks a row below, i and j pick operands from the
# pool of values computed so far, k a column cut, c a scalar constant.
def _cut(a, k):
    H = a.shape[1]
    return 1 + k % (H - 1) if H > 1 else None


def _split_swap(a, b, k, c, p):
    cut = _cut(a, k)
    if cut is None:
        return a * c
    left, right = gg.split(a, [cut, a.shape[1] - cut], axis=1)
    return gg.concat([right, left * c], axis=1)


def _concat_slices(a, b, k, c, p):
    cut = _cut(a, k)
    return a * c if cut is None else gg.concat([b[:, :cut], a[:, cut:]], axis=1)


OPS = [   # name, fn(a, b, k, c, p)
    ("add", lambda a, b, k, c, p: a + b),
    ("sub", lambda a, b, k, c, p: a - b),
    ("mul", lambda a, b, k, c, p: a * b),
    ("div", lambda a, b, k, c, p: a / (1.5 + gg.sigmoid(b))),       # |denominator| >= 1.5
    ("div_sq", lambda a, b, k, c, p: b / (0.5 + a * a)),             # >= 0.5
    ("tanh", lambda a, b, k, c, p: gg.tanh(a)),
    ("sigmoid", lambda a, b, k, c, p: gg.sigmoid(a)),
    ("relu", lambda a, b, k, c, p: gg.relu(a)),
    ("exp", lambda a, b, k, c, p: gg.exp(gg.tanh(a) * c)),           # exponent in [-2, 2]
    ("neg", lambda a, b, k, c, p: -a),
    ("scale", lambda a, b, k, c, p: a * c),
    ("shift", lambda a, b, k, c, p: c - a),
    ("matmul", lambda a, b, k, c, p: a @ p["M"]),
    ("matmul_concat", lambda a, b, k, c, p: gg.concat([a, b], axis=1) @ p["M2"]),
    ("split_swap", _split_swap),
    ("concat_slices", _concat_slices),
    ("pow", lambda a, b, k, c, p: gg.tanh(a) ** (1 + k % 3) * c),   # negative bases, odd and even
    # an elementwise op over a concat whose operand is read again later (its buffer was
    # overwritten in place while the operand, stored in its window, was still needed)
    ("concat_act", lambda a, b, k, c, p: _concat_act(a, b * c, p)),
    # a (1, H) parameter broadcast over the batch: at B = 1 its gradient has no batch sum
    ("gain", lambda a, b, k, c, p: a * p["g"] + c),
    # per-step reductions over the features and (batch, 1) values broadcast across them
    ("layer_norm", lambda a, b, k, c, p: _layer_norm(a) * p["g"] + c),
    ("softmax", lambda a, b, k, c, p: gg.softmax(a * c, axis=1)),
    ("row_max", lambda a, b, k, c, p: a - gg.max(b, axis=1, keepdims=True)),   # mask VJP
    ("row_gate", lambda a, b, k, c, p: a * gg.sigmoid(b[:, k % b.shape[1]:][:, :1] + c)),
    # (a mean of positive terms: sums that cancel, or grow with H and saturate the tanh after
    # them, would test float32's conditioning instead of the compiler)
    ("row_mean", lambda a, b, k, c, p: a * gg.mean(gg.sigmoid(b), axis=1)[:, None] * c),
    # comparisons: a select between two branches, and 0/1 masks multiplied in
    ("where", lambda a, b, k, c, p: gg.where(a > b, a * c, gg.tanh(b))),
    ("masks", lambda a, b, k, c, p: a * (b <= c) + b * (a >= c)),
]


def _layer_norm(a, eps=0.5):
    d = a - gg.mean(a, axis=1, keepdims=True)
    return d * (gg.mean(d * d, axis=1, keepdims=True) + eps) ** -0.5


def _concat_act(a, t, p):
    return gg.tanh(gg.concat([a, t], axis=1)) @ p["M2"] + t


@st.composite
def recipes(draw):
    n = draw(st.integers(1, 8))
    return [(draw(st.integers(0, len(OPS) - 1)), draw(st.integers(0, 40)),
             draw(st.integers(0, 40)), draw(st.integers(0, 10)),
             draw(st.floats(-2, 2, allow_nan=False).map(lambda v: round(v, 3))))
            for _ in range(n)]


def make_step(recipe, two, wide_y=False):
    def step(p, x, state):
        h, c = state if two else (state, None)
        pool = [x @ p["Wx"], h @ p["Wh"] + p["b"], h] + ([c] if two else [])
        for op, i, j, k, const in recipe:
            a, b = pool[i % len(pool)], pool[j % len(pool)]
            pool.append(OPS[op][1](a, b, k, const, p))
        h2 = gg.tanh(pool[-1] + pool[1] + 0.5 * pool[0])   # x always reaches the state
        if not two:
            return pool[-1], h2
        c2 = gg.sigmoid(pool[-2]) * c + gg.tanh(pool[-1])
        y = gg.concat([h2, c2], axis=1) if wide_y else pool[-1] * h2
        return y, (h2, c2)
    return step


def make_model(recipe, two, H, dt, seed=0, reverse=False, wide_y=False):
    rng = np.random.default_rng(seed)
    params = {"Wx": rng.normal(size=(I, H)) * 0.5, "Wh": rng.normal(size=(H, H)) * 0.5,
              "b": rng.normal(size=(H,)) * 0.1, "M": rng.normal(size=(H, H)) * 0.5,
              "M2": rng.normal(size=(2 * H, H)) * 0.5, "g": rng.normal(size=(1, H))}
    return gg.Recurrent(make_step(recipe, two, wide_y),
                        {k: v.astype(dt) for k, v in params.items()}, reverse=reverse)


def state0(two, B, H, dt, rng):
    s = tuple((rng.normal(size=(B, H)) * 0.5).astype(dt) for _ in range(2 if two else 1))
    return s if two else s[0]


def run_case(recipe, two, reverse, T, B, H, dt, backend, seed=0, wide_y=False):
    model = make_model(recipe, two, H, dt, seed, reverse, wide_y)
    rng = np.random.default_rng(seed + 1)
    s0 = state0(two, B, H, dt, rng)
    prog = compiler.compile(model, seq_len=T, batch=B, input_size=I, state=s0, backend=backend)
    xs = rng.normal(size=(T, B, I)).astype(dt)
    return check(compare(prog, model, xs, s0), dt, f"recipe {recipe}")


@settings(max_examples=60, deadline=None)
@given(recipes(), st.booleans(), st.booleans(), st.sampled_from([1, 3, 6]), st.integers(1, 3),
       st.integers(2, 4), st.sampled_from([np.float64, np.float32]))
def test_random_steps_numpy_backend_match_tape(recipe, two, reverse, T, B, H, dt):
    worst = run_case(recipe, two, reverse, T, B, H, dt, "numpy", seed=len(recipe))
    TABLE.add(f"random steps, numpy backend ({DT_NAME[np.dtype(dt)]})", "tape", worst)


ADD, SUB, MUL, DIV, DIV_SQ, TANH, SIG, RELU, EXP, NEG, SCALE, SHIFT, MM, MMC, SPLIT, CSL, POW, \
    CACT, GAIN, LNORM, SMAX, RMAX, RGATE, RSUM, WHERE, MASKS = range(len(OPS))
NATIVE = {   # name -> (recipe, two states, reverse, T, B, H, dtype, y = concat(h, c))
    "one state, every elementwise op": (
        [(TANH, 0, 0, 0, 1.0), (MUL, 4, 2, 0, 1.0), (DIV, 5, 1, 0, 1.0), (EXP, 6, 0, 0, 0.7),
         (SUB, 7, 3, 0, 1.0), (RELU, 8, 0, 0, 1.0), (SIG, 9, 0, 0, 1.0), (SHIFT, 10, 0, 0, 0.5),
         (NEG, 11, 0, 0, 1.0), (ADD, 12, 1, 0, 1.0), (SCALE, 13, 0, 0, -1.25),
         (DIV_SQ, 14, 4, 0, 1.0)],
        False, False, 7, 3, 4, np.float64, False),
    "two states, products and column moves, reverse": (
        [(MM, 2, 0, 0, 1.0), (SPLIT, 5, 0, 1, 0.5), (MMC, 6, 3, 0, 1.0), (CSL, 7, 4, 2, 1.0),
         (TANH, 8, 0, 0, 1.0), (MUL, 9, 1, 0, 1.0)],
        True, True, 6, 2, 4, np.float64, True),
    "two states, float32": (
        [(SIG, 1, 0, 0, 1.0), (MUL, 4, 0, 0, 1.0), (MM, 5, 0, 0, 1.0), (EXP, 6, 0, 0, 1.5),
         (SPLIT, 7, 0, 0, 2.0), (ADD, 8, 3, 0, 1.0)],
        True, False, 5, 3, 3, np.float32, False),
    # regression (found by hypothesis): a concat operand computed in the forward loop and read
    # by relu's backward was written into the concat's one-step buffer, so the reverse loop read
    # the last step's value
    "relu of a split-and-swapped projection, two states": (
        [(SPLIT, 0, 0, 0, 2.0), (RELU, 14, 0, 0, 0.0)],
        True, False, 3, 1, 2, np.float64, False),
    # regressions (found by a differential hunt): x**n gave NaN for negative x in native code;
    # tanh over a concat overwrote an operand stored in the concat's window
    "powers of negative values": (
        [(POW, 1, 0, 0, 0.7), (POW, 4, 0, 1, -0.5), (POW, 2, 0, 2, 1.0), (ADD, 5, 6, 0, 1.0)],
        False, False, 4, 3, 4, np.float64, False),
    "powers, float32": (
        [(POW, 1, 0, 1, 0.9), (MUL, 4, 2, 0, 1.0)], True, False, 4, 2, 3, np.float32, False),
    "activation over a concat whose operand is read again": (
        [(CACT, 0, 2, 0, 0.5)], False, False, 4, 2, 4, np.float64, False),
    "activations over concats, two states": (
        [(CACT, 0, 2, 0, 0.5), (CACT, 4, 1, 0, -1.0)], True, False, 4, 2, 4, np.float64, False),
    "a (1, H) gain at batch 1, two states": (
        [(GAIN, 2, 0, 0, 0.5), (TANH, 4, 0, 0, 1.0), (GAIN, 3, 0, 0, -1.0)],
        True, False, 4, 1, 4, np.float64, False),
    # 37 features: two full 16-lane vectors and a masked tail in every row reduction
    "layer norm, softmax, row max, row gates and sums": (
        [(LNORM, 1, 0, 0, 0.3), (SMAX, 3, 0, 0, 1.5), (RMAX, 4, 2, 0, 1.0),
         (RGATE, 5, 0, 7, 0.5), (RSUM, 6, 1, 0, 0.25), (ADD, 7, 4, 0, 1.0)],
        False, False, 5, 3, 37, np.float64, False),
    "row reductions, two states, reverse, float32": (
        [(SMAX, 1, 0, 0, -1.0), (LNORM, 5, 0, 0, 1.0), (RGATE, 3, 5, 1, -0.5),
         (RMAX, 6, 6, 0, 1.0), (RSUM, 7, 0, 0, 1.0)],
        True, True, 4, 2, 19, np.float32, False),
    "where and comparison masks, two states": (
        [(WHERE, 1, 2, 0, 0.5), (MASKS, 4, 0, 0, 0.2), (WHERE, 5, 3, 0, -1.0),
         (TANH, 6, 0, 0, 1.0)],
        True, False, 5, 3, 20, np.float64, False),
    "where and comparison masks, reverse, float32": (
        [(MASKS, 0, 1, 0, 0.0), (WHERE, 2, 3, 0, 1.5), (SIG, 4, 0, 0, 1.0)],
        False, True, 4, 2, 17, np.float32, False),
    "row reductions at batch 1": (
        [(LNORM, 0, 0, 0, 0.0), (SMAX, 4, 0, 0, 2.0), (RGATE, 2, 4, 3, 0.0), (RMAX, 5, 1, 0, 1.0),
         (RSUM, 6, 7, 0, -1.0)],
        False, False, 4, 1, 6, np.float64, False),
}


@pytest.mark.parametrize("name", list(NATIVE))
def test_native_custom_steps_match_tape(name):
    recipe, two, reverse, T, B, H, dt, wide = NATIVE[name]
    worst = run_case(recipe, two, reverse, T, B, H, dt, "native", seed=3, wide_y=wide)
    TABLE.add(f"custom native: {name} ({DT_NAME[np.dtype(dt)]})", "tape", worst)


def test_native_table_uses_every_op():
    used = {op for recipe, *_ in NATIVE.values() for op, *_ in recipe}
    assert used == set(range(len(OPS)))


# ---------------------------------------------------------------- merged gate matmuls
H4 = 4


def four_matrix_lstm(dt=np.float64):
    rng = np.random.default_rng(0)
    p = {}
    for gate in "ifgo":
        p[f"W_{gate}"] = rng.normal(size=(I, H4)) * 0.5
        p[f"U_{gate}"] = rng.normal(size=(H4, H4)) * 0.5
        p[f"b_{gate}"] = rng.normal(size=(H4,)) * 0.1
    return gg.Recurrent(lstm_four_matrices, {k: v.astype(dt) for k, v in p.items()})


def _gemms(ks):
    return [k for k in ks if isinstance(k, Gemm)]


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_four_gate_matrices_are_merged(backend):
    """x@W_i ... x@W_o become one product (hoisted before the loop), h@U_i ... h@U_o one product
    per step; the reverse loop also needs one product per step (dh = dG @ [U_i..U_o]^T)."""
    model = four_matrix_lstm()
    B, T = 3, 6
    s0 = (np.zeros((B, H4)), np.zeros((B, H4)))
    prog = compiler.compile(model, seq_len=T, batch=B, input_size=I, state=s0, backend=backend)
    p = prog.programs("train")[0].program
    assert len(_gemms(p.fwd_loop)) == 1
    assert len(_gemms(p.bwd_loop)) == 1
    (pre,) = _gemms(p.pre)
    assert pre.a.buf == "x" and pre.a.t == "all"
    assert p.buffers[pre.out.buf].shape == (B, 4 * H4)        # [x@W_i | x@W_f | x@W_g | x@W_o]
    (fwd,) = _gemms(p.fwd_loop)
    assert p.buffers[fwd.out.buf].shape == (B, 4 * H4)
    post = _gemms(p.post)
    assert len(post) == 3 and all(k.a.t == "all" for k in post)   # dW, dU (merged), d_xs
    rng = np.random.default_rng(1)
    s0 = (rng.normal(size=(B, H4)) * 0.5, rng.normal(size=(B, H4)) * 0.5)
    worst = check(compare(prog, model, rng.normal(size=(T, B, I)), s0), np.float64, "4-matrix")
    TABLE.add(f"four-matrix LSTM ({backend}, f64)", "tape", worst)


def test_four_gate_reverse_loop_copies():
    """The four gate cotangents are written straight into the packed (B, 4H) operand of the
    reverse loop's one product (their bias-gradient sums read them from there): no copies."""
    model = four_matrix_lstm()
    s0 = (np.zeros((2, H4)), np.zeros((2, H4)))
    prog = compiler.compile(model, seq_len=3, batch=2, input_size=I, state=s0, backend="numpy")
    copies = [k for k in prog.programs("train")[0].program.bwd_loop if isinstance(k, Copy)]
    assert copies == []


# ---------------------------------------------------------------- CompileError
def step_batch_mean(p, x, h):
    h = gg.tanh(x @ p["W"] + h)
    return h - gg.mean(h, axis=0, keepdims=True), h  # <- mean


def step_batch_max(p, x, h):
    h = gg.tanh(x @ p["W"] + h)
    return h * gg.max(h, axis=0, keepdims=True), h  # <- max


def step_batch_norm_in_the_state(p, x, h):
    h = gg.tanh(x @ p["W"] + h - gg.mean(h, axis=0, keepdims=True))  # <- mean
    return h, h


def step_flatten_state(p, x, h):
    flat = gg.reshape(h, (h.shape[0] * h.shape[1],))  # <- reshape
    h = gg.tanh(x @ p["W"] + gg.reshape(flat * 0.5, h.shape))
    return h, h


def step_transpose_reshape(p, x, h):
    r = gg.reshape(h, (h.shape[1], h.shape[0])).T  # <- reshape
    return h, gg.tanh(x @ p["W"] + r)


def step_state_product(p, x, h):
    h = gg.tanh(x @ p["W"] + (h @ h.T) @ h * 0.1)  # <- transpose
    return h, h


ERRORS = {   # step -> op the message must name
    step_batch_mean: "sum", step_batch_max: "max", step_batch_norm_in_the_state: "sum",
    step_flatten_state: "reshape",
    step_transpose_reshape: "reshape", step_state_product: "transpose",
}


def _marked_line(fn):
    lines, first = inspect.getsourcelines(fn)
    (k,) = [i for i, line in enumerate(lines) if "# <- " in line]
    return first + k


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("step", list(ERRORS), ids=lambda f: f.__name__)
def test_unlowerable_op_names_op_and_user_line(step, backend):
    B, H = 2, 4
    model = gg.Recurrent(step, {"W": np.ones((I, H))})
    with pytest.raises(CompileError) as e:
        compiler.compile(model, seq_len=3, batch=B, input_size=I, state=np.zeros((B, H)),
                         backend=backend)
    msg = str(e.value)
    assert e.value.op == ERRORS[step] and msg.startswith(ERRORS[step]), msg
    assert f"test_compile_custom.py:{_marked_line(step)}" in msg, msg
    assert step.__name__ in msg, msg


# ---------------------------------------------------------------- the schedule cache
def _with_array_constant(value):
    bias = np.full((4,), value)

    def step(p, x, h):
        h = gg.tanh(x @ p["W"] + 0.5 * h + bias)
        return h, h
    return gg.Recurrent(step, {"W": np.full((I, 4), 0.1)})


def test_array_constants_are_part_of_the_schedule_cache_key(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHGRAD_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    xs, h0 = rng.normal(size=(5, 2, I)), np.zeros((2, 4))
    for value in (0.25, 0.75):
        model = _with_array_constant(value)
        prog = compiler.compile(model, seq_len=5, batch=2, input_size=I, state=h0,
                                backend="numpy")
        check(compare(prog, model, xs, h0), np.float64, f"array constant {value}")


# a pickle opcode stream that makes pickle.loads raise UnicodeDecodeError, and a valid pickle
# of something else (what another program or an old format could leave under the name)
_DAMAGED_SCHEDULES = {"bad utf-8": b"\x80\x05X\x02\x00\x00\x00\xff\xfe.",
                      "foreign pickle": __import__("pickle").dumps({"train": 1, "forward": 2})}


@pytest.mark.parametrize("how", sorted(_DAMAGED_SCHEDULES))
def test_damaged_schedule_cache_entry_is_rebuilt(tmp_path, monkeypatch, how):
    """A damaged pickle in the schedule cache raised from compile() (UnicodeDecodeError,
    ValueError, ... are not among the errors get() caught) or, unpickled, was used as the
    layer's schedules (AttributeError: 'int' object has no attribute 'program')."""
    monkeypatch.setenv("GRAPHGRAD_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    xs, h0 = rng.normal(size=(5, 2, I)), np.zeros((2, 4))
    model = _with_array_constant(0.25)
    compiler.compile(model, seq_len=5, batch=2, input_size=I, state=h0, backend="numpy")
    (entry,) = (tmp_path / "graphs").glob("*.pkl")
    entry.write_bytes(_DAMAGED_SCHEDULES[how])
    with pytest.warns(RuntimeWarning, match="corrupt"):
        prog = compiler.compile(model, seq_len=5, batch=2, input_size=I, state=h0,
                                backend="numpy")
    check(compare(prog, model, xs, h0), np.float64, f"schedule cache entry: {how}")
    assert len(entry.read_bytes()) > 100        # rebuilt and stored again


# ---------------------------------------------------------------- once-bugs, kept as regressions
def test_step_whose_first_op_is_elementwise():
    """The first traced op an elementwise one (no producer group yet): grouping raised
    IndexError."""
    def step(p, x, h):
        a = h * 0.5
        h2 = gg.tanh(a + x @ p["Wx"])
        return h2, h2
    rng = np.random.default_rng(4)
    model = gg.Recurrent(step, {"Wx": rng.normal(size=(I, 3))})
    s0 = rng.normal(size=(2, 3))
    for backend in ("numpy", "native"):
        prog = compiler.compile(model, seq_len=3, batch=2, input_size=I, state=s0,
                                backend=backend)
        check(compare(prog, model, rng.normal(size=(3, 2, I)), s0), np.float64, backend)


@pytest.mark.parametrize("shape", [(), (1,)])
@pytest.mark.parametrize("B,threads", [(1, 1), (3, 1), (5, 2)])
def test_scalar_parameter(shape, B, threads):
    """A learnable scalar gain: its gradient sums a step value over batch and features, which
    simplify splits into the batch contraction and a sum of its small result (it was a
    CompileError about a per-step sum the user never wrote)."""
    def step(p, x, h):
        h2 = gg.tanh(x @ p["Wx"] + h * p["a"])
        return h2, h2
    rng = np.random.default_rng(B)
    model = gg.Recurrent(step, {"Wx": rng.normal(size=(I, 4)), "a": np.full(shape, 0.7)})
    s0 = rng.normal(size=(B, 4))
    prog = compiler.compile(model, seq_len=4, batch=B, input_size=I, state=s0, threads=threads)
    check(compare(prog, model, rng.normal(size=(4, B, I)), s0), np.float64, f"scalar {shape}")


def _gain(p, x, h):           # d/dg = ct_h * tanh(.): a product, no sum at all at B = 1
    h2 = gg.tanh(x @ p["Wx"] + h @ p["Wh"]) * p["g"]
    return h2, h2


def _gain_and_shift(p, x, h):  # d/dg = ct * h + ct: two per-step terms, one shared with d_state
    h2 = gg.tanh(x @ p["Wx"] + h * p["g"] + p["g"])
    return h2, h2


def _row_bias(p, x, h):       # d/db = ct itself, the same value the reverse loop carries
    h2 = gg.tanh(x @ p["Wx"] + h @ p["Wh"]) + p["g"]
    return h2, h2


def _two_biases(p, x, h):     # d/dg and d/da are one node: each output needs its own sum
    h2 = gg.tanh(x @ p["Wx"] + h @ p["Wh"]) + p["g"] + p["a"]
    return h2, h2


def _shared_linear(p, x, h):  # both gradients pass through one neg node of the products' cone
    h2 = gg.tanh(x @ p["Wx"] + h @ p["Wh"]) * -(p["g"] * 2.0 + p["a"] * 3.0)
    return h2, h2


@pytest.mark.parametrize("step", [_gain, _gain_and_shift, _row_bias, _two_biases, _shared_linear],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", [(1, 1), (1, 4)])
@pytest.mark.parametrize("B,threads,backend,dt", [(1, 1, "native", np.float64),
                                                  (1, 2, "native", np.float32),
                                                  (1, 1, "numpy", np.float64),
                                                  (2, 1, "native", np.float64)])
def test_parameter_with_one_batch_row(step, shape, B, threads, backend, dt):
    """A (1, H) or (1, 1) parameter broadcast over a batch of one: the tape's gradient has no
    batch sum for the compiler to contract, so it was summed over nothing (KeyError at the
    first vjp) or not lowered (a CompileError about a per-step sum). Two parameters sharing
    one gradient node, or one linear node, each get their sum (a review found both failing)."""
    rng = np.random.default_rng(len(shape) + B)
    params = {"Wx": rng.normal(size=(I, 4)), "Wh": rng.normal(size=(4, 4)) * 0.4,
              "g": rng.normal(size=shape), "a": rng.normal(size=shape)}
    model = gg.Recurrent(step, {k: v.astype(dt) for k, v in params.items()})
    s0 = rng.normal(size=(B, 4)).astype(dt)
    prog = compiler.compile(model, seq_len=5, batch=B, input_size=I, state=s0, threads=threads,
                            backend=backend)
    check(compare(prog, model, rng.normal(size=(5, B, I)).astype(dt), s0), np.dtype(dt),
          f"{step.__name__} {shape}")


def test_step_that_ignores_x():
    rng = np.random.default_rng(0)
    model = gg.Recurrent(lambda p, x, h: (h, gg.tanh(h @ p["Wh"] + p["b"])),
                         {"Wh": rng.normal(size=(4, 4)), "b": rng.normal(size=(4,))})
    h0 = rng.normal(size=(2, 4))
    prog = compiler.compile(model, seq_len=3, batch=2, input_size=I, state=h0, backend="numpy")
    check(compare(prog, model, rng.normal(size=(3, 2, I)), h0), np.float64, "x unused")


def step_scaled_bias(p, x, h):
    h = gg.tanh(x @ p["Wx"] + h @ p["Wh"] + p["b"] * 2.0)
    return h, h


def test_step_with_scaled_bias():
    rng = np.random.default_rng(0)
    model = gg.Recurrent(step_scaled_bias, {"Wx": rng.normal(size=(I, 4)),
                                            "Wh": rng.normal(size=(4, 4)) * 0.5,
                                            "b": rng.normal(size=(4,))})
    h0 = rng.normal(size=(2, 4))
    prog = compiler.compile(model, seq_len=3, batch=2, input_size=I, state=h0, backend="numpy")
    check(compare(prog, model, rng.normal(size=(3, 2, I)), h0), np.float64, "scaled bias")


# ---------------------------------------------------------------- found by a differential hunt
def _low_rank(p, x, h):      # recurrent weight as a product of two parameters (rank 2)
    h2 = gg.tanh(x @ p["Wx"] + h @ (p["A"] @ p["Z"]) + p["b"])
    return h2 @ p["A"], h2


def _low_rank_everywhere(p, x, h):   # products of parameters on both sides, transposed, tanh'd
    W = gg.tanh(p["A"] @ p["Z"])
    h2 = gg.tanh(x @ (p["Wx"] @ (p["A"] @ p["Z"])) + h @ W + h @ (p["Z"].T @ p["A"].T) * 0.5)
    return h2, h2


@pytest.mark.parametrize("step", [_low_rank, _low_rank_everywhere], ids=lambda f: f.__name__)
@pytest.mark.parametrize("B,threads,backend,dt", [(3, 1, "native", np.float64),
                                                  (1, 1, "native", np.float64),
                                                  (8, 2, "native", np.float32),
                                                  (3, 1, "numpy", np.float64)])
def test_product_of_parameters(step, B, threads, backend, dt):
    """h @ (A @ Z): the gradient of A is (sum_t h_t^T ct_t) @ Z^T, a parameter-sized product
    after the batch contraction. It was refused ("matmul: only (per-step value) @
    (parameter-derived matrix) products ...") because matmul was not counted as linear in
    the summed gradient, so it could not run after the loop with the transposes and slices."""
    rng = np.random.default_rng(B)
    params = {"Wx": rng.normal(size=(I, 4)) * 0.5, "A": rng.normal(size=(4, 2)) * 0.5,
              "Z": rng.normal(size=(2, 4)) * 0.5, "b": rng.normal(size=(4,)) * 0.1}
    model = gg.Recurrent(step, {k: v.astype(dt) for k, v in params.items()})
    s0 = rng.normal(size=(B, 4)).astype(dt) * 0.5
    prog = compiler.compile(model, seq_len=5, batch=B, input_size=I, state=s0, threads=threads,
                            backend=backend)
    worst = check(compare(prog, model, rng.normal(size=(5, B, I)).astype(dt), s0), np.dtype(dt),
                  step.__name__)
    TABLE.add(f"custom: {step.__name__} B={B} ({backend}, {DT_NAME[np.dtype(dt)]})", "tape", worst)


def _ellipsis_lstm(p, x, state):
    h, c = state
    z = x @ p["W"] + h @ p["U"]
    H = h.shape[-1]
    i, f, g, o = (z[..., k * H:(k + 1) * H] for k in range(4))
    c2 = gg.sigmoid(f) * c + gg.sigmoid(i) * gg.tanh(g)
    h2 = gg.sigmoid(o) * gg.tanh(c2)
    return gg.concat([h2[..., 1:], h2[..., :1]], axis=-1), (h2, c2)


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_column_slices_written_with_ellipsis(backend):
    """z[..., a:b] is the column window z[:, a:b]; it was refused ("getitem: no native lowering
    for a per-step getitem here") because only the explicit (:, a:b) form was recognized."""
    rng = np.random.default_rng(0)
    model = gg.Recurrent(_ellipsis_lstm, {"W": rng.normal(size=(I, 16)) * 0.5,
                                          "U": rng.normal(size=(4, 16)) * 0.5})
    s0 = (rng.normal(size=(3, 4)) * 0.5, rng.normal(size=(3, 4)) * 0.5)
    prog = compiler.compile(model, seq_len=4, batch=3, input_size=I, state=s0, backend=backend)
    check(compare(prog, model, rng.normal(size=(4, 3, I)), s0), np.float64, "x[..., a:b]")


def test_ellipsis_index_matches_numpy():
    a = np.arange(24.0).reshape(2, 3, 4)
    t = gg.Tensor(a)
    for idx in [(Ellipsis, slice(1, None)), (Ellipsis,), (0, Ellipsis), (None, Ellipsis, 1),
                (slice(None), Ellipsis, None, slice(0, 2)), (Ellipsis, 1, 2, 3)]:
        assert np.array_equal(t[idx].data, a[idx]), idx


def step_np_maximum(p, x, h):
    h = np.maximum(x @ p["W"] + h, 0.0)  # <- maximum
    return h, h


def test_numpy_ufunc_without_graphgrad_twin_is_named_plainly():
    """The message said "use the graphgrad op of the same name" for np.maximum, np.abs, ...,
    which graphgrad does not have; it now says what the tape says (graphgrad ops)."""
    model = gg.Recurrent(step_np_maximum, {"W": np.ones((I, 4))})
    with pytest.raises(CompileError) as e:
        compiler.compile(model, seq_len=3, batch=2, input_size=I, state=np.zeros((2, 4)),
                         backend="numpy")
    msg = str(e.value)
    assert "np.maximum" in msg and "same name" not in msg and "use graphgrad ops" in msg, msg
    assert f"test_compile_custom.py:{_marked_line(step_np_maximum)}" in msg, msg
