"""`graphgrad compile`: compile a model and show what the compiler made of it."""
import numpy as np

from .common import add_model_arguments, builtin_model_arguments, positive_int

HELP = "compile a built-in or custom model and dump its IR, schedule, LLVM IR or assembly"
# the compiler's named passes, then the views of the result ("ir": the graph after them all)
DUMPS = ("trace", "simplify", "merge_matmuls", "autodiff", "simplify_joint", "pads_to_concat",
         "sink_slices", "group_invariant_adds", "one_row_sums", "recompute_cheap", "stages",
         "schedule", "report", "llvm", "asm", "ir")


def add_arguments(p):
    add_model_arguments(p, "a function returning (model, example_state) for a custom "
                           "Recurrent, or a built-in model", T=100, batch=8, input=32, hidden=64)
    # None = not given: these describe the built-in --cell; a --model file sets its own
    p.add_argument("--layers", type=positive_int, help="stacked layers (default 1)")
    p.add_argument("--bidirectional", action="store_true", default=None)
    p.add_argument("--dtype", choices=["float32", "float64"], help="default float32")
    p.add_argument("--threads", type=int, default=1, choices=[1, 2])
    p.add_argument("--dump", default="report", choices=DUMPS,
                   help="ir = the joint graph after all graph passes; report = fusion report "
                        "(default)")


def run(args):
    import compiler
    import graphgrad as gg
    from .common import call_model, load_function
    kw = {}
    input_given = args.input is not None
    builtin_model_arguments(args, used=("input",))    # --input: a custom Recurrent's input width
    if args.model:
        given = [f"--{k}" for k in ("layers", "bidirectional", "dtype")
                 if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} describe the built-in --cell; the model "
                             f"{args.model} returns is compiled as it is")
        made = call_model(args.model, load_function(args.model))
        if isinstance(made, tuple) and len(made) != 2:
            raise ValueError(f"{args.model} must return a model or (model, example_state), got "
                             f"a tuple of {len(made)}")
        model, state = made if isinstance(made, tuple) else (made, None)
        if isinstance(model, gg.Recurrent):
            if state is None:
                raise ValueError(f"{args.model}: return (model, example_state) for a custom "
                                 f"Recurrent")
            first = state[0] if isinstance(state, tuple) else state
            batch = np.shape(first)[0]
            if batch != args.batch:
                raise ValueError(f"{args.model}: the example state has {batch} rows, --batch is "
                                 f"{args.batch}")
            kw = {"input_size": args.input, "state": state}
        elif input_given and args.input != getattr(model, "input_size", args.input):
            raise ValueError(f"--input {args.input} contradicts the input width "
                             f"{model.input_size} of the {type(model).__name__} {args.model} "
                             "returns")
    else:
        model = gg.make_rnn(args.cell, args.input, args.hidden, num_layers=args.layers or 1,
                            bidirectional=bool(args.bidirectional),
                            dtype=np.dtype(args.dtype or "float32"))
    try:
        prog = compiler.compile(model, args.T, args.batch, threads=args.threads,
                                keep_dumps=True, **kw)
    except compiler.CompileError as e:   # the step in the user's file: op and line, one line
        raise ValueError(f"cannot compile {args.model or args.cell}: {e}") from e
    if args.dump == "report":
        print(prog.fusion_report())
        print(f"compiled in {prog.compile_seconds:.2f} s")
    elif args.dump == "llvm":
        print(prog.llvm_ir())
    elif args.dump == "asm":
        print(prog.asm)
    else:
        last_pass = compiler.api.PIPELINE[compiler.api.PIPELINE.index("stages") - 1]
        print(prog.dump(last_pass if args.dump == "ir" else args.dump))
    return 0
