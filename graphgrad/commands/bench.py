"""`graphgrad bench`: the BPTT benchmark (benchmarks/bench_bptt.py) from the command line."""
import os
import sys

HELP = "time one BPTT training step: compiled vs tape, PyTorch and JAX (see BENCHMARKS.md)"


def add_arguments(p):
    import argparse
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="arguments for benchmarks/bench_bptt.py, e.g. --quick or "
                        "-- --cells lstm --threads 1")


def run(args):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = os.path.join(root, "benchmarks", "bench_bptt.py")
    if not os.path.isfile(script):
        raise FileNotFoundError("the benchmarks ship with the source checkout "
                                "(pip install -e .); benchmarks/bench_bptt.py was not found")
    sys.path.insert(0, os.path.dirname(script))
    import bench_bptt
    return bench_bptt.main(args.rest)
