"""Implementations of the `graphgrad train`, `sample`, `gradcheck`, `compile`, `bench` and
`cache` subcommands.

Each module has HELP (one line), add_arguments(parser) and run(args) -> exit code; graphgrad/cli.py
registers them. User-facing problems are raised as ValueError / OSError, which the CLI turns into
one line on stderr.
"""
from . import bench, cache, compile, demo, gradcheck, sample, train

MODULES = {"demo": demo, "train": train, "sample": sample, "gradcheck": gradcheck, "compile": compile,
           "bench": bench, "cache": cache}
