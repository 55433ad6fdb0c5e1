"""Long-range memory: the adding problem at increasing sequence lengths, RNN vs LSTM vs GRU.

Each input step carries a random number in [0, 1] and a marker bit; exactly two steps are marked,
one in each half of the sequence, and the target at the end is the sum of the two marked numbers.
Predicting the mean (1.0) scores MSE 1/6 ~ 0.167; a model "solves" a length when its test MSE
drops below --solved (default 0.01), i.e. it explains ~94% of the variance. The first marker can
be T/2 or more steps before the answer, so the gradient that teaches the model to store it has to
survive that many steps: the vanilla RNN's vanishes, the gated cells' does not.

    python examples/long_memory.py [--lengths 5 10 20 40] [--cells rnn lstm gru] [--quick]
"""
import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny products: threads only add overhead
import numpy as np  # noqa: E402

import graphgrad as gg  # noqa: E402
from graphgrad import train  # noqa: E402


def adding_batch(T, B, rng, dtype=np.float32):
    """xs (T, B, 2) = (value, marker), targets (B,) = sum of the two marked values."""
    xs = np.zeros((T, B, 2), dtype)
    xs[:, :, 0] = rng.uniform(0, 1, (T, B))
    first = rng.integers(0, T // 2, B)
    second = rng.integers(T // 2, T, B)
    cols = np.arange(B)
    xs[first, cols, 1] = 1
    xs[second, cols, 1] = 1
    return xs, (xs[first, cols, 0] + xs[second, cols, 0]).astype(dtype)


def fit(cell, T, args, backend):
    """Train until the test MSE is below args.solved or the budget runs out."""
    rng = np.random.default_rng(args.seed)
    model = gg.SequenceRegressor(2, args.hidden, cell=cell, seed=args.seed)
    if cell == "lstm":
        train.init_weights(model, forget_bias=1.0)   # start by remembering (Gers et al. 2000)
    trainer = train.Trainer(model, train.make_optimizer("adam", model.parameters(), args.lr),
                            clip_norm=1.0, backend=backend)
    test_x, test_y = adding_batch(T, 256, np.random.default_rng(10_000 + T))
    mse = None
    for step in range(1, args.steps + 1):
        trainer.fit_batch(*adding_batch(T, args.batch, rng))
        if step % args.eval_every == 0 or step == args.steps:
            with gg.no_grad():
                mse = model.loss(test_x, test_y).item()
            if mse < args.solved:
                return True, mse, step
    return False, mse, args.steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"],
                   choices=["rnn", "lstm", "gru"])
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=400, help="update budget per cell and length")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--solved", type=float, default=0.01, help="test MSE counted as solved")
    p.add_argument("--backend", default="auto", choices=["auto", "tape", "compiled"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny budget, for tests")
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.hidden, args.steps, args.eval_every = [5, 8], 8, 30, 10
    try:
        backend = train.get_backend(args.backend)
    except RuntimeError as e:
        p.error(str(e))
    print(f"adding problem: hidden {args.hidden}, batch {args.batch}, Adam lr {args.lr}, at most "
          f"{args.steps} updates per run, solved = test MSE < {args.solved} (baseline 0.167); "
          f"backend {backend.name}")
    longest = {}
    for cell in args.cells:
        for T in args.lengths:
            t0 = time.perf_counter()
            ok, mse, steps = fit(cell, T, args, backend)
            print(f"{cell:>4}  T={T:<4} {'solved' if ok else 'FAILED':<7} test MSE {mse:.4f} "
                  f"after {steps:4d} updates ({time.perf_counter() - t0:.0f} s)", flush=True)
            if not ok:
                break          # longer sequences only get harder; save the time
            longest[cell] = T
    print()
    for cell in args.cells:
        L = longest.get(cell)
        if L is None:
            print(f"{cell}: solves none of the lengths (fails at T={args.lengths[0]})")
        else:
            nxt = [T for T in args.lengths if T > L]
            print(f"{cell}: solves up to T={L}" + (f", fails at T={nxt[0]}" if nxt else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
