"""`graphgrad gradcheck`: a built-in or user-written model vs central finite differences."""

import numpy as np

from .common import add_model_arguments, builtin_model_arguments, call_model, load_function

HELP = "check a model's gradients (built-in, or --model file.py:function) against finite " \
       "differences"


def add_arguments(p):
    add_model_arguments(p, "a function returning a float64 model, or (model, arg1, ...) to "
                           "call it with", T=5, batch=2, input=3, hidden=4)
    p.add_argument("--seed", type=int, default=0)


def build(args):
    import graphgrad as gg
    rng = np.random.default_rng(args.seed)
    builtin_model_arguments(args)
    if not args.model:
        model = gg.make_rnn(args.cell, args.input, args.hidden, dtype=np.float64, seed=args.seed)
        return f"{args.cell} (T={args.T}, batch={args.batch})", model, \
            (rng.standard_normal((args.T, args.batch, args.input)),)
    made = call_model(args.model, load_function(args.model))
    model, call_args = (made[0], tuple(made[1:])) if isinstance(made, tuple) else (made, ())
    if not hasattr(model, "parameters"):
        raise ValueError(f"{args.model} returned {type(model).__name__}, not a model with "
                         "parameters()")
    if not call_args:
        size = getattr(model, "input_size", None)
        if size is None:
            raise ValueError(f"{args.model}: return (model, inputs...) for a model without "
                             "input_size")
        call_args = (rng.standard_normal((args.T, args.batch, size)),)
    return args.model, model, call_args


def run(args):
    import graphgrad as gg
    what, model, call_args = build(args)
    try:
        rep = gg.gradcheck_model(model, *call_args, seed=args.seed, raise_on_failure=False)
    except Exception as e:  # the user's model may raise anything; the CLI wants one line
        if isinstance(e, (TypeError, ValueError)):
            raise
        raise ValueError(f"running {what} failed: {type(e).__name__}: {e}") from e
    n = sum(int(np.size(p.data)) for p in model.parameters().values())
    print(f"gradcheck {what}: {n} parameters vs central finite differences (float64)")
    print(rep)
    return 0 if rep.ok else 1
