"""`graphgrad sample`: generate text from a checkpoint written by `graphgrad train`."""
from .common import positive_float

HELP = "generate text from a `graphgrad train` checkpoint"


def add_arguments(p):
    p.add_argument("checkpoint", help="checkpoint file written by graphgrad train")
    p.add_argument("--prefix", default="The ", help="text to start from (default 'The ')")
    p.add_argument("-n", "--chars", type=int, default=300, help="characters to generate")
    p.add_argument("--temperature", type=positive_float, nargs="+", default=[0.8],
                   help="one or more sampling temperatures (default 0.8); lower is more "
                        "conservative")
    p.add_argument("--seed", type=int, default=0)


def run(args):
    from graphgrad import checkpoint, data, train
    if args.chars < 0:
        raise ValueError(f"--chars must be >= 0, got {args.chars}")
    state, _, meta = checkpoint.load(args.checkpoint)
    if not isinstance(meta, dict) or "vocab" not in meta or "config" not in meta:
        raise ValueError(f"{args.checkpoint} has no vocabulary/model config in its metadata "
                         "(was it written by graphgrad train?)")
    vocab = data.CharVocab.from_dict(meta["vocab"])
    model = train.build_lm(meta["config"])
    checkpoint.check_compatible(state, model.state_dict())
    model.load_state_dict(state)
    if not args.prefix:
        raise ValueError("--prefix must not be empty (sampling starts from it)")
    unknown = sorted({c for c in args.prefix if c not in vocab.index})
    if unknown and vocab.unk is None:
        raise ValueError(f"--prefix has characters the model never saw in training: "
                         f"{''.join(unknown)[:40]!r}")
    prefix = vocab.encode(args.prefix)
    for i, temp in enumerate(args.temperature):
        ids = model.sample(prefix, args.chars, temperature=temp, rng=args.seed)
        if len(args.temperature) > 1:
            print(f"{'' if i == 0 else chr(10)}--- temperature {temp:g} ---")
        print(args.prefix + vocab.decode(ids))
    return 0
