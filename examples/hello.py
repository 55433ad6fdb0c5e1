"""The four-letter "hello" model: vocabulary h, e, l, o; input "hell", target "ello".

A many-to-many character model (one-hot input, recurrent hidden layer, softmax over 4 letters)
learns to continue "h" with "ello". Note the middle "l": after one "l" it must answer "l" and
after two it must answer "o", so the hidden state has to count; a feed-forward net could not.

    python examples/hello.py [--cell rnn|lstm|gru] [--hidden 8] [--steps 300] [--quick]
"""
import argparse
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny products: threads only add overhead
import numpy as np  # noqa: E402

import graphgrad as gg  # noqa: E402
from graphgrad import data, train  # noqa: E402


def greedy(model, vocab, first="h", n=4):
    """Feed `first`, then always the most likely next letter back in."""
    ids, state = [int(vocab.encode(first)[0])], None
    with gg.no_grad():
        for _ in range(n):
            logits, state = model(np.array([[ids[-1]]]), state)
            ids.append(int(np.argmax(logits.data[-1, 0])))
    return vocab.decode(ids)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", default="rnn", choices=["rnn", "lstm", "gru"])
    p.add_argument("--hidden", type=int, default=8)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few steps only (for tests)")
    args = p.parse_args(argv)
    steps = 60 if args.quick else args.steps

    vocab, x, y = data.hello()
    print(f"vocabulary {vocab.chars}; input {vocab.decode(x)!r} -> target {vocab.decode(y)!r}")
    model = gg.LanguageModel(vocab.size, args.hidden, cell=args.cell, seed=args.seed)
    # the whole word is one chunk (k1 = k2 = 4): plain BPTT, the state starts at zero each step
    stream = np.concatenate([x, y[-1:]])[:, None]           # "hello" as one stream, batch 1
    trainer = train.Trainer(model, train.make_optimizer("adam", model.parameters(), args.lr),
                            k1=4, clip_norm=5.0, backend=train.TapeBackend())
    solved_at = None
    for _ in range(steps):
        (rep,) = trainer.run_epoch(stream)
        if rep.step % max(1, steps // 6) == 0 or rep.step == 1:
            print(f"step {rep.step:4d}  loss {rep.loss:.4f}  perplexity {rep.perplexity:.3f}  "
                  f"greedy from 'h': {greedy(model, vocab)!r}")
        if solved_at is None and greedy(model, vocab) == "hello":
            solved_at = rep.step
    with gg.no_grad():
        logits, _ = model(x[:, None])
        probs = gg.softmax(logits).data[:, 0]
    print("\nafter   " + "  ".join(f"p({c})" for c in vocab.chars))
    for t, row in enumerate(probs):
        print(f"{vocab.decode(x[:t + 1]):<7} " + "  ".join(f"{v:5.3f}" for v in row))
    out = greedy(model, vocab)
    print(f"\ngreedy decoding from 'h': {out!r}"
          + (f" (first emitted 'hello' after {solved_at} steps)" if solved_at else ""))
    return 0 if out == "hello" else 1


if __name__ == "__main__":
    sys.exit(main())
