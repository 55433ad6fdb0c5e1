"""Argument types shared by the subcommands: argparse reports their errors on one line."""
import argparse


def _number(convert, ok, what):
    """An argparse type: convert(s), accepted when ok(value), else "expected <what>"."""
    def parse(s):
        try:
            v = convert(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
fraction = _number(float, lambda v: 0 < v < 1, "a number in (0, 1)")


def add_model_arguments(p, model_help, T, batch, input, hidden):
    """--model / --cell and the sizes, with each command's own defaults."""
    p.add_argument("--model", metavar="FILE.py:FUNCTION",
                   help=f"{model_help}; default: the built-in --cell")
    p.add_argument("--cell", default="lstm", choices=["rnn", "rnn_relu", "lstm", "gru", "gru_v1"])
    p.add_argument("--T", type=positive_int, default=T, help=f"sequence length (default {T})")
    p.add_argument("--batch", type=positive_int, default=batch)
    p.add_argument("--input", type=positive_int, default=input)
    p.add_argument("--hidden", type=positive_int, default=hidden)
