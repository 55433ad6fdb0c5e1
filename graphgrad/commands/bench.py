"""`graphgrad bench`: the BPTT benchmark (benchmarks/bench_bptt.py) from the command line."""
import os
import sys

HELP = "time one BPTT training step: compiled vs tape, PyTorch and JAX (see BENCHMARKS.md)"


def add_arguments(p):
    import argparse
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="arguments for benchmarks/bench_bptt.py (graphgrad bench --help lists "
                        "them), e.g. --quick, or --cells lstm --threads 1 --out my.md; without "
                        "--quick or --out the table replaces the checkout's BENCHMARKS.md")


def run(args):
    return main(args.rest)


def main(argv):
    """Hand argv to benchmarks/bench_bptt.py (its own parser, so --help shows its options)."""
    argv = list(argv)
    if argv[:1] == ["--"]:      # the older documented form, `graphgrad bench -- --quick`
        argv = argv[1:]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = os.path.join(root, "benchmarks", "bench_bptt.py")
    if not os.path.isfile(script):
        raise FileNotFoundError("the benchmarks ship with the source checkout "
                                "(pip install -e .); benchmarks/bench_bptt.py was not found")
    sys.path.insert(0, os.path.dirname(script))
    import bench_bptt
    from .common import Parser
    return bench_bptt.main(argv, prog="graphgrad bench", parser=Parser)
