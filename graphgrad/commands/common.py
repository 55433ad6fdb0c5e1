"""Argument types shared by the subcommands: argparse reports their errors on one line."""
import argparse


def positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    return v


def fraction(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {s!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {s!r}")
    return v


def add_model_arguments(p, model_help, T, batch, input, hidden):
    """--model / --cell and the sizes, with each command's own defaults."""
    p.add_argument("--model", metavar="FILE.py:FUNCTION",
                   help=f"{model_help}; default: the built-in --cell")
    p.add_argument("--cell", default="lstm", choices=["rnn", "rnn_relu", "lstm", "gru", "gru_v1"])
    p.add_argument("--T", type=positive_int, default=T, help=f"sequence length (default {T})")
    p.add_argument("--batch", type=positive_int, default=batch)
    p.add_argument("--input", type=positive_int, default=input)
    p.add_argument("--hidden", type=positive_int, default=hidden)
