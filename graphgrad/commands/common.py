"""Argument types and --model loading shared by the subcommands; every error is one line."""
import argparse
import importlib.util
import math
import os
import sys


class Parser(argparse.ArgumentParser):
    """Bad arguments give one line on stderr (no usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def guarded(name, run, more=()):
    """run() with the errors a user can cause (and the `more` exception types) reported on one
    line: exit code 2; Ctrl-C gives 130."""
    try:
        return run() or 0
    except (ValueError, TypeError, KeyError, OSError, IndexError) + tuple(more) as e:
        print(f"graphgrad {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


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
nonnegative_float = _number(float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")
finite_float = _number(float, math.isfinite, "a finite number")


def load_function(spec, default=None):
    """'path/to/file.py:name' -> the callable, with one-line errors for every way it can fail.

    The file's directory goes on sys.path first, as `python file.py` would put it, so a model
    file can import its neighbours. `default` names the function when spec has no ':name'.
    """
    path, sep, name = spec.rpartition(":")
    if not sep and default:
        path, name = spec, default
    if not path or not name:
        raise ValueError(f"--model must look like file.py:function, got {spec!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    mod_spec = importlib.util.spec_from_file_location(f"_gg_user_{abs(hash(path))}", path)
    if mod_spec is None:
        raise ValueError(f"cannot import {path} (is it a .py file?)")
    here = os.path.dirname(os.path.abspath(path))
    if here not in sys.path:
        sys.path.insert(0, here)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # the user's code: report it on one line, whatever it raised
        raise ValueError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{path} has no function {name!r}")
    return fn


def call_model(what, fn, **kwargs):
    """fn(**kwargs) for a function from a --model file: whatever the user's code raises is
    reported on one line as '<what> raised <type>: <message>'."""
    try:
        return fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything
        raise ValueError(f"{what} raised {type(e).__name__}: {e}") from e


def add_model_arguments(p, model_help, T, batch, input, hidden):
    """--model / --cell and the sizes, with each command's own defaults."""
    p.add_argument("--model", metavar="FILE.py:FUNCTION",
                   help=f"{model_help}; default: the built-in --cell")
    # None = not given: these describe the built-in model, so beside --model they are refused
    # (builtin_model_arguments) rather than silently ignored
    p.add_argument("--cell", choices=["rnn", "rnn_relu", "lstm", "gru", "gru_v1"],
                   help="built-in cell (default lstm)")
    p.add_argument("--T", type=positive_int, default=T, help=f"sequence length (default {T})")
    p.add_argument("--batch", type=positive_int, default=batch)
    p.add_argument("--input", type=positive_int, help=f"input width (default {input})")
    p.add_argument("--hidden", type=positive_int, help=f"hidden width (default {hidden})")
    p.set_defaults(builtin_defaults={"cell": "lstm", "input": input, "hidden": hidden})


def builtin_model_arguments(args, used=()):
    """Fill in --cell/--input/--hidden's defaults. With --model, those not in `used` (the ones
    the command applies to a model file's model) are an error when given."""
    if args.model:
        given = [f"--{k}" for k in args.builtin_defaults
                 if k not in used and getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} describe the built-in model; the model "
                             f"{args.model} returns has its own")
    for k, v in args.builtin_defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
