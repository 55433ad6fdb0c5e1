"""Character-level language model on the English text of Python's help topics (pydoc_data).

Trains an LSTM with truncated BPTT (k1 new steps per update, backpropagating k2 steps), Adam and
global-norm clipping; reports training and validation perplexity per epoch, then samples text at
a few temperatures. The text ships with Python, so nothing is downloaded.

    python examples/char_lm.py                 # the defaults documented in docs/training.md
    python examples/char_lm.py --cell gru --hidden 256 --epochs 3 --k1 25 --k2 50
    python examples/char_lm.py --quick         # a few seconds, for tests
"""
import argparse
import math
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small products: BLAS threads only contend
import numpy as np  # noqa: E402

import graphgrad as gg  # noqa: E402
from graphgrad import data, train  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", default="lstm", choices=["rnn", "lstm", "gru", "gru_v1"])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--k1", type=int, default=25, help="new steps per update (chunk length)")
    p.add_argument("--k2", type=int, help="steps to backpropagate (default k1)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=5.0, help="global gradient-norm clip")
    p.add_argument("--max-chars", type=int, help="use the first N characters (default: all)")
    p.add_argument("--backend", default="auto", choices=["auto", "tape", "compiled"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.batch, args.epochs, args.max_chars = 32, 16, 2, 12_000
        args.lr = 1e-2

    try:
        backend = train.get_backend(args.backend)
    except RuntimeError as e:
        p.error(str(e))
    t_start = time.perf_counter()
    text = data.pydoc_text(args.max_chars)
    vocab = data.CharVocab(text)
    train_ids, val_ids = data.train_val_split(vocab.encode(text), 0.9)
    S, V = data.batchify(train_ids, args.batch), data.batchify(val_ids, args.batch)
    model = gg.LanguageModel(vocab.size, args.hidden, cell=args.cell, seed=args.seed)
    trainer = train.Trainer(model, train.make_optimizer("adam", model.parameters(), args.lr),
                            k1=args.k1, k2=args.k2, clip_norm=args.clip,
                            backend=backend)
    print(f"{len(text):,} characters of pydoc text ({len(train_ids):,} train / {len(val_ids):,} "
          f"validation), vocabulary {vocab.size}; {args.cell} hidden {args.hidden}, "
          f"{model.num_parameters():,} parameters; k1={trainer.k1} k2={trainer.k2} batch "
          f"{args.batch}; backend {trainer.backend.name}")
    print(f"a uniform guess has perplexity {vocab.size}; the unigram (letter frequency) model "
          f"{math.exp(unigram_entropy(train_ids, val_ids, vocab.size)):.1f} on validation")
    for epoch in range(args.epochs):
        t0, tot, n, norms = time.perf_counter(), 0.0, 0, []
        for rep in trainer.run_epoch(S):
            tot, n = tot + rep.loss * rep.tokens, n + rep.tokens
            norms.append(rep.grad_norm)
        val = trainer.evaluate(V)
        print(f"epoch {epoch + 1}: train perplexity {math.exp(tot / n):.2f}, validation "
              f"perplexity {math.exp(val):.2f}  ({trainer.step} updates, median gradient norm "
              f"{np.median(norms):.2f}, {time.perf_counter() - t0:.0f} s)")
    took = time.perf_counter() - t_start
    print(f"final validation perplexity {math.exp(val):.2f} after {took:.0f} s in total")
    for temp in (0.5, 0.8, 1.0):
        ids = model.sample(vocab.encode("The "), 60 if args.quick else 240, temperature=temp,
                           rng=args.seed)
        print(f"\n--- temperature {temp} ---\nThe {vocab.decode(ids)}")
    return 0


def unigram_entropy(train_ids, val_ids, V):
    """Cross-entropy (nats) of the validation text under training letter frequencies."""
    counts = np.bincount(train_ids, minlength=V) + 1.0       # add-one: unseen letters stay finite
    logp = np.log(counts / counts.sum())
    return float(-logp[val_ids].mean())


if __name__ == "__main__":
    sys.exit(main())
