"""`graphgrad train`: a character-level language model on a text file with truncated BPTT."""
import math
import os
import sys
import time

import numpy as np

from .common import finite_float, fraction, positive_float, positive_int

HELP = "train a character-level language model on a text file (truncated BPTT)"


def add_arguments(p):
    a = p.add_argument
    a("--text", metavar="FILE", help="UTF-8 text to train on (default: Python's pydoc topics)")
    a("--max-chars", type=positive_int, metavar="N", help="use only the first N characters")
    a("--cell", default="lstm", choices=["rnn", "rnn_relu", "lstm", "gru", "gru_v1"])
    a("--hidden", type=positive_int, default=128, help="hidden size (default 128)")
    a("--layers", type=positive_int, default=1, help="stacked recurrent layers (default 1)")
    a("--embed", type=positive_int, help="embedding size (default: one-hot inputs)")
    a("--dtype", default="float32", choices=["float32", "float64"])
    a("--k1", "--T", dest="k1", type=positive_int, default=25,
      help="new time steps per update, the chunk length T (default 25)")
    a("--k2", type=positive_int, help="steps to backpropagate through (default k1; k2 > k1 "
      "overlaps the windows)")
    a("--batch", type=positive_int, default=32, help="parallel streams B (default 32)")
    a("--optim", default="adam", choices=["sgd", "adagrad", "adam"])
    a("--lr", type=positive_float, help="learning rate (default: sgd 0.5, adagrad 0.1, "
      "adam 0.002)")
    a("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    a("--clip-norm", type=positive_float, default=5.0,
      help="clip the global gradient norm to this (default 5; 'inf' is refused, use --no-clip)")
    a("--clip-value", type=positive_float, help="clip every gradient entry to [-v, v]")
    a("--no-clip", action="store_true", help="do not clip by norm")
    a("--init", default="uniform", choices=["uniform", "orthogonal"],
      help="recurrent weights: PyTorch's uniform (default) or orthogonal")
    a("--forget-bias", type=finite_float, help="LSTM forget-gate bias (e.g. 1.0)")
    a("--epochs", type=positive_int, default=1, help="passes over the text (default 1)")
    a("--max-steps", type=positive_int, help="stop after this many updates in total")
    a("--val-frac", type=fraction, default=0.1, help="held-out tail of the text (default 0.1)")
    a("--seed", type=int, default=0)
    a("--checkpoint", metavar="PATH", help="save model + optimizer + position here")
    a("--every", type=positive_int, default=200, help="checkpoint every N updates (default 200)")
    a("--resume", action="store_true", help="continue from --checkpoint")
    a("--backend", default="auto", choices=["auto", "tape", "compiled"],
      help="auto: the compiled program when available, else the tape")


def _corpus(args):
    from graphgrad import data
    if args.text:
        text = data.load_text(args.text)
    else:
        text = data.pydoc_text()
    if args.max_chars:
        text = text[:args.max_chars]
    if len(text) < 4 * (args.k1 + 1):
        raise ValueError(f"the text has {len(text)} characters, too few for k1={args.k1}")
    return text


def _streams(ids, batch, k1, what):
    from graphgrad import data
    b = min(batch, max(1, len(ids) // (k1 + 1)))
    if len(ids) // b < 2:
        raise ValueError(f"{what} text is too short ({len(ids)} characters)")
    if b < batch and what == "training":   # validation only evaluates: fewer rows are fine
        print(f"note: the {what} text ({len(ids):,} characters) fills {b} streams of at least "
              f"k1+1 = {k1 + 1} characters, not --batch {batch}: using batch {b}",
              file=sys.stderr)
    return data.batchify(ids, b)


def _resume(args, trainer, opt, vocab, batch):
    """Load --checkpoint into trainer/opt; say what --lr changes; refuse what cannot change."""
    from graphgrad import data
    saved = trainer.load(args.checkpoint)
    if data.CharVocab.from_dict(saved.get("vocab", {"chars": " "})) != vocab:
        raise ValueError(f"{args.checkpoint} was trained on a text with another vocabulary")
    carried = trainer.carried_batch()
    if carried not in (None, batch):
        raise ValueError(f"{args.checkpoint} stopped mid-epoch with batch {carried}; resume "
                         f"with --batch {carried} (this run's batch is {batch})")
    print(f"resuming from {args.checkpoint}: step {trainer.step}, epoch {trainer.epoch + 1}, "
          f"update {trainer.update} of the epoch")
    if args.lr is not None and args.lr != opt.hyper["lr"]:
        print(f"learning rate {args.lr:g} (the checkpoint's was {opt.hyper['lr']:g})")
        opt.hyper["lr"] = args.lr


def run(args):
    import graphgrad as gg
    from graphgrad import data, train
    from graphgrad.heads import perplexity
    from tqdm import tqdm

    if args.resume and not args.checkpoint:
        raise ValueError("--resume needs --checkpoint PATH")
    if args.checkpoint and not os.path.isdir(os.path.dirname(os.path.abspath(args.checkpoint))):
        raise FileNotFoundError(f"checkpoint directory does not exist: "
                                f"{os.path.dirname(os.path.abspath(args.checkpoint))}")
    # refused now, not at the first save after minutes of training
    if args.checkpoint and (os.path.isdir(args.checkpoint)
                            or args.checkpoint.endswith((os.sep, "/"))):
        raise ValueError(f"--checkpoint {args.checkpoint} names a directory; give a file path "
                         f"such as {os.path.join(args.checkpoint, 'model.npz')}")
    train.blas_threads(1)
    try:
        backend = train.get_backend(args.backend)
    except RuntimeError as e:  # compiled backend not available: a usage error, not a crash
        raise ValueError(str(e)) from None
    text = _corpus(args)
    vocab = data.CharVocab(text)
    tr_ids, va_ids = data.train_val_split(vocab.encode(text), 1 - args.val_frac)
    S, V = _streams(tr_ids, args.batch, args.k1, "training"), _streams(va_ids, args.batch,
                                                                       args.k1, "validation")
    model = gg.LanguageModel(vocab.size, args.hidden, cell=args.cell, num_layers=args.layers,
                             embed_size=args.embed, dtype=np.dtype(args.dtype), seed=args.seed)
    train.init_weights(model, args.init, args.forget_bias, seed=args.seed)
    opt = train.make_optimizer(args.optim, model.parameters(), args.lr, args.momentum)
    trainer = train.Trainer(model, opt, args.k1, args.k2,
                            clip_norm=None if args.no_clip else args.clip_norm,
                            clip_value=args.clip_value, backend=backend)
    meta = {"kind": "char_lm", "config": train.lm_config(model), "vocab": vocab.to_dict(),
            "text": os.path.abspath(args.text) if args.text else "pydoc_data.topics",
            "optim": args.optim}
    if args.resume:
        _resume(args, trainer, opt, vocab, S.shape[1])
        finished = trainer.epoch >= args.epochs or (args.max_steps or math.inf) <= trainer.step
        if finished:
            print(f"nothing to train: {args.checkpoint} is at step {trainer.step} with "
                  f"{trainer.epoch} epoch(s) done; raise --epochs (now {args.epochs}) or "
                  f"--max-steps to continue")
            return 0
    sched = train.tbptt_schedule(S.shape[0] - 1, trainer.k1, trainer.k2)
    print(f"train: {len(tr_ids):,} training / {len(va_ids):,} validation characters, vocab "
          f"{vocab.size}; {args.cell} hidden {args.hidden} x{args.layers}, "
          f"{model.num_parameters():,} parameters; k1={trainer.k1} k2={trainer.k2} batch "
          f"{S.shape[1]}; {args.optim} lr {opt.hyper['lr']:g}; backend {trainer.backend.name}")

    def save(why):
        if args.checkpoint:
            trainer.save(args.checkpoint, meta)
            print(f"saved checkpoint {args.checkpoint} (step {trainer.step}, {why})")

    done = lambda: args.max_steps is not None and trainer.step >= args.max_steps  # noqa: E731
    try:
        while trainer.epoch < args.epochs and not done():
            epoch, t0, tot, n, k = trainer.epoch, time.perf_counter(), 0.0, 0, 0
            bar = tqdm(total=len(sched), initial=trainer.update, desc=f"epoch {epoch + 1}",
                       unit="step", disable=None, file=sys.stderr)
            for rep in trainer.run_epoch(S):
                tot, n, k = tot + rep.loss * rep.tokens, n + rep.tokens, k + 1
                bar.update(1)
                bar.set_postfix(loss=f"{rep.loss:.3f}", ppl=f"{rep.perplexity:.2f}",
                                gnorm=f"{rep.grad_norm:.2f}", refresh=False)
                if trainer.step % args.every == 0:
                    save(f"every {args.every}")
                if done():
                    break
            bar.close()
            took = time.perf_counter() - t0
            val = trainer.evaluate(V)
            tr_loss = tot / max(n, 1)
            print(f"epoch {epoch + 1}: train loss {tr_loss:.4f} (perplexity "
                  f"{perplexity(tr_loss):.2f}), val loss {val:.4f} (perplexity "
                  f"{perplexity(val):.2f}),"
                  f" {k} updates, {n:,} characters in {took:.1f} s ({n / took:,.0f} chars/s)")
    except KeyboardInterrupt:
        save("interrupted")
        raise
    except FloatingPointError as e:
        print(f"graphgrad train: error: {e}", file=sys.stderr)
        return 1
    save("end of training")
    return 0
