"""graphgrad: exact gradients through time, native BPTT programs and gradient-flow views for RNNs.

The `graphgrad` command line: each subcommand registers its parser and function here.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from graphgrad.commands.common import Parser, guarded

COMMANDS = {}


def command(name, help):
    def wrap(fn):
        COMMANDS[name] = (help, fn)
        return fn
    return wrap


def gradcheck_lstm(cell="lstm", T=4, B=2, I=3, H=4, seed=0):
    """A small float64 model vs central finite differences (the demo's sanity line)."""
    import graphgrad as gg
    m = gg.make_rnn(cell, I, H, dtype=np.float64, seed=seed)
    xs = np.random.default_rng(seed).standard_normal((T, B, I))
    return gg.gradcheck_model(m, xs, raise_on_failure=False)


@command("flow", "inspect how gradients flow, vanish and explode through time")
def flow_cmd(args):
    from graphgrad.flow.cli import main as flow_main
    return flow_main(args.rest)


PARSERS = {"flow": lambda p: p.add_argument("rest", nargs=argparse.REMAINDER)}


def _register_subcommands():
    # train, sample and gradcheck live in graphgrad/commands/ (HELP, add_arguments, run)
    from graphgrad.commands import MODULES
    for name, mod in MODULES.items():
        command(name, mod.HELP)(mod.run)
        PARSERS[name] = mod.add_arguments


_register_subcommands()


def build_parser():
    parser = Parser(prog="graphgrad", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help, _) in COMMANDS.items():
        own = name in ("flow", "bench")     # their own parsers show their --help
        p = sub.add_parser(name, help=help, description=help, add_help=not own)
        PARSERS.get(name, lambda p: None)(p)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["flow"]:   # its own parser, so `graphgrad flow --help` shows flow's options
        from graphgrad.flow.cli import main as flow_main
        return flow_main(argv[1:])
    if argv[:1] == ["bench"]:  # the same for the benchmark script's options
        from graphgrad.commands.bench import main as bench_main
        return guarded("bench", lambda: bench_main(argv[1:]))
    args = build_parser().parse_args(argv)
    return guarded(args.command, lambda: COMMANDS[args.command][1](args))


if __name__ == "__main__":
    sys.exit(main())
