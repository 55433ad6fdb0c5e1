"""The `graphgrad` command line. Each subcommand registers a parser and a function here."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

COMMANDS = {}


def command(name, help):
    def wrap(fn):
        COMMANDS[name] = (help, fn)
        return fn
    return wrap


def _add_demo(p):
    p.add_argument("--steps", type=int, default=150, help="training steps (default 150)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=25)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)


@command("demo", "train a small character LSTM on Python's own documentation text and sample it")
def demo(args):
    import graphgrad as gg
    from graphgrad import data, optim
    from tqdm import tqdm

    text = data.pydoc_text(max_chars=200_000)
    vocab = data.CharVocab(text)
    ids = vocab.encode(text)
    model = gg.LanguageModel(vocab.size, args.hidden, cell="lstm", seed=args.seed)
    opt = optim.Adam(model.parameters(), lr=3e-3)
    print(f"char-LSTM: vocab {vocab.size}, hidden {args.hidden}, {model.num_parameters():,} "
          f"parameters, T={args.seq_len}, B={args.batch}, tape autodiff")
    batches = data.stream_batches(ids, args.batch, args.seq_len, drop_last=True)
    state, first, t0 = None, None, time.perf_counter()
    bar = tqdm(range(args.steps), desc="train", unit="step", disable=None)
    for step in bar:
        try:
            x, y = next(batches)
        except StopIteration:
            batches = data.stream_batches(ids, args.batch, args.seq_len, drop_last=True)
            x, y = next(batches)
        opt.zero_grad()
        loss, state = model.loss(x, y, state)
        loss.backward()
        norm = optim.clip_grad_norm(model.parameters(), 5.0)
        opt.step()
        state = tuple(s.detach() for s in state)  # truncate BPTT at the chunk edge
        first = first if first is not None else loss.item()
        bar.set_postfix(loss=f"{loss.item():.3f}", ppl=f"{gg.perplexity(loss):.1f}",
                        gnorm=f"{norm:.2f}")
    bar.close()
    took = time.perf_counter() - t0
    print(f"loss {first:.3f} -> {loss.item():.3f} (perplexity {np.exp(first):.1f} -> "
          f"{gg.perplexity(loss):.1f}) in {args.steps} steps, {took:.1f} s")
    rep = _gradcheck_lstm()
    print(f"gradient check (float64 LSTM vs central differences): worst relative error "
          f"{rep.max_rel_err:.1e} {'ok' if rep.ok else 'FAILED'}")
    for temp in (0.5, 1.0):
        out = model.sample(vocab.encode("The "), 120, temperature=temp, rng=args.seed)
        print(f"\n--- sample, temperature {temp} ---\nThe {vocab.decode(out)}")
    return 0 if rep.ok else 1


def _gradcheck_lstm(cell="lstm", T=4, B=2, I=3, H=4, seed=0):
    import graphgrad as gg
    m = gg.make_rnn(cell, I, H, dtype=np.float64, seed=seed)
    xs = np.random.default_rng(seed).standard_normal((T, B, I))
    return gg.gradcheck_model(m, xs, raise_on_failure=False)


@command("flow", "inspect how gradients flow, vanish and explode through time")
def flow_cmd(args):
    from graphgrad.flow.cli import main as flow_main
    return flow_main(args.rest)


PARSERS = {"demo": _add_demo,
           "flow": lambda p: p.add_argument("rest", nargs=argparse.REMAINDER)}


def _register_subcommands():
    # train, sample and gradcheck live in graphgrad/commands/ (HELP, add_arguments, run)
    from graphgrad.commands import MODULES
    for name, mod in MODULES.items():
        command(name, mod.HELP)(mod.run)
        PARSERS[name] = mod.add_arguments


_register_subcommands()


class _Parser(argparse.ArgumentParser):
    """Bad arguments give one line on stderr (no usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser():
    parser = _Parser(prog="graphgrad", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help, add_help=name != "flow")
        PARSERS.get(name, lambda p: None)(p)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["flow"]:   # its own parser, so `graphgrad flow --help` shows flow's options
        from graphgrad.flow.cli import main as flow_main
        return flow_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args) or 0
    except (ValueError, TypeError, KeyError, OSError, IndexError) as e:
        print(f"graphgrad {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
