"""`graphgrad demo`: train a character LSTM on the compiled program, check it, sample it."""
import os
import time

import numpy as np

from .common import positive_float, positive_int

HELP = "train a character LSTM on Python's own documentation text (compiled BPTT) and sample it"


def add_arguments(p):
    p.add_argument("--steps", type=positive_int, default=1000, help="updates (default 1000)")
    p.add_argument("--hidden", type=positive_int, default=128, help="LSTM size (default 128)")
    p.add_argument("--seq-len", type=positive_int, default=50,
                   help="time steps per update, k1 = k2 (default 50)")
    p.add_argument("--batch", type=positive_int, default=32,
                   help="parallel text streams (default 32)")
    p.add_argument("--lr", type=positive_float, default=5e-3, help="Adam learning rate "
                   "(default 0.005)")
    p.add_argument("--backend", default="compiled", choices=["compiled", "tape"],
                   help="train on the compiled program (default) or the tape")
    p.add_argument("--seed", type=int, default=0, help="weights and sampling (default 0)")


def run(args):
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import graphgrad as gg
    from graphgrad import data, train
    from graphgrad.heads import perplexity
    from tqdm import tqdm

    text = data.pydoc_text(max_chars=400_000)
    vocab = data.CharVocab(text)
    ids = vocab.encode(text)
    if len(ids) // args.batch < args.seq_len + 1:
        raise ValueError(f"--batch {args.batch} cuts the {len(ids):,} characters into streams of "
                         f"{len(ids) // args.batch}, shorter than --seq-len + 1 = "
                         f"{args.seq_len + 1}; lower --batch or --seq-len")
    S = data.batchify(ids, args.batch)
    model = gg.LanguageModel(vocab.size, args.hidden, cell="lstm", seed=args.seed)
    train.init_weights(model, forget_bias=1.0, seed=args.seed)
    try:
        backend = train.get_backend(args.backend)
    except RuntimeError as e:  # compiled backend not available: one line, as in `train`
        raise ValueError(str(e)) from None
    trainer = train.Trainer(model, train.make_optimizer("adam", model.parameters(), args.lr),
                            k1=args.seq_len, clip_norm=5.0, backend=backend)
    print(f"char-LSTM on {len(text):,} characters of pydoc text: vocabulary {vocab.size}, hidden "
          f"{args.hidden}, {model.num_parameters():,} parameters; T={args.seq_len}, "
          f"B={args.batch}; backend: {backend.name}")
    t0, first, losses = time.perf_counter(), None, []
    bar = tqdm(total=args.steps, desc="train", unit="step", disable=None)
    while trainer.step < args.steps:
        for rep in trainer.run_epoch(S):
            first = rep.loss if first is None else first
            losses.append(rep.loss)
            bar.update(1)
            bar.set_postfix(loss=f"{rep.loss:.3f}", ppl=f"{rep.perplexity:.1f}",
                            gnorm=f"{rep.grad_norm:.2f}")
            if trainer.step >= args.steps:
                break
    bar.close()
    took = time.perf_counter() - t0
    last = float(np.mean(losses[-20:]))
    print(f"loss {first:.3f} -> {last:.3f} (perplexity {perplexity(first):.1f} -> "
          f"{perplexity(last):.1f}, "
          f"mean of the last 20 updates) in {trainer.step} updates, {took:.1f} s")

    ok = _checks(model, S, args, train, gg)
    for temp in (0.5, 1.0):
        out = model.sample(vocab.encode("The "), 160, temperature=temp, rng=args.seed)
        print(f"\n--- sample, temperature {temp} ---\nThe {vocab.decode(out)}")
    return 0 if ok else 1


def _checks(model, S, args, train, gg):
    """Gradient check, compiled == tape, and the speed of one training window on each."""
    from graphgrad.cli import gradcheck_lstm
    rep = gradcheck_lstm()
    print(f"gradient check (float64 LSTM vs central differences): worst relative error "
          f"{rep.max_rel_err:.1e} {'ok' if rep.ok else 'FAILED'}")
    inputs, targets = S[:args.seq_len], S[1:args.seq_len + 1]
    if not train.CompiledBackend.available():   # --backend tape without the compiler
        print("compiled vs tape: skipped (the compiler package is not available)")
        return rep.ok
    tape, comp = train.TapeBackend(), train.CompiledBackend()
    state0 = model.init_state(args.batch)
    w_t = tape.lm_window(model, inputs, targets, state0)
    w_c = comp.lm_window(model, inputs, targets, state0)
    err = max(float(np.max(np.abs(w_c.grads[k] - v)) / max(float(np.max(np.abs(v))), 1e-30))
              for k, v in w_t.grads.items())
    same = err < 1e-3   # float32 model: both sum in float32, in different orders
    print(f"compiled vs tape on one window: worst relative gradient difference {err:.1e} "
          f"{'ok' if same else 'FAILED'}")
    times = {}
    for name, b in (("tape", tape), ("compiled", comp)):
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            b.lm_window(model, inputs, targets, state0)
            ts.append(time.perf_counter() - t0)
        times[name] = float(np.median(ts))
    print(f"one training window (T={args.seq_len}, B={args.batch}): compiled "
          f"{1e3 * times['compiled']:.1f} ms, tape {1e3 * times['tape']:.1f} ms -> "
          f"{times['tape'] / times['compiled']:.1f}x faster compiled")
    return rep.ok and same
