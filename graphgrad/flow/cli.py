"""`graphgrad flow`: compare gradient flow across models; print a table, write PNG plots.

    graphgrad flow --cell rnn,lstm --T 100 --hidden 32 --init-scale 1 --seed 0 --out out/flow
    graphgrad flow --model my_cell.py:build --T 200

A custom model file defines `build(hidden, seed, init_scale)` returning a gg.RNN/LSTM/GRU, or
a tuple (gg.Recurrent, input_size, init_state): init_state is the initial state for --batch rows
(an array or a tuple of arrays) or a function init_state(batch) returning it.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from .. import nn
from ..commands.common import (Parser, call_model, finite_float, guarded, load_function,
                               nonnegative_float, positive_int)
from .compiled import check
from .lags import bucket_labels
from .stepgraph import leaves
from .trace import model_layout, from_tape

CELLS = {"rnn": nn.RNN, "rnn_relu": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
EDGES = (0, 1, 2, 5, 10, 25, 50)


def build_model(cell, input_size, hidden, init_scale=1.0, forget_bias=0.0, seed=0, T=100):
    """A float64 built-in model; weights scaled by init_scale, the carry gate's bias shifted.

    forget_bias adds to the LSTM forget gate (and the GRU update gate z, its carry); "chrono"
    draws it per unit as log U(1, T-1) (Tallec & Ollivier 2018), input gate bias = -that.
    """
    kw = {"nonlinearity": "relu"} if cell == "rnn_relu" else {}
    m = CELLS[cell](input_size, hidden, dtype=np.float64, seed=seed, **kw)
    H, rng = hidden, np.random.default_rng(seed + 1)
    for k, p in m.parameters().items():
        if k.startswith("weight"):
            p.data = p.data * init_scale
    if cell in ("lstm", "gru") and forget_bias not in (0, 0.0, "0"):
        b = np.log(rng.uniform(1, max(T - 1, 2), H)) if forget_bias == "chrono" \
            else float(forget_bias)
        for k, p in m.parameters().items():
            if k.startswith("bias_ih"):
                d = p.data.copy()
                d[H:2 * H] += b                     # rows H:2H are f (LSTM i,f,g,o) / z (GRU r,z,n)
                if cell == "lstm" and forget_bias == "chrono":
                    d[:H] -= b
                p.data = d
    return m


def load_custom(spec, hidden, seed, init_scale):
    """(model, input_size, init_state or None) from a --model FILE.py[:build] spec."""
    made = call_model(f"--model {spec}: build(hidden={hidden}, seed={seed}, "
                      f"init_scale={init_scale:g})", load_function(spec, default="build"),
                      hidden=hidden, seed=seed, init_scale=init_scale)
    if not isinstance(made, tuple):
        made = (made, getattr(made, "input_size", None), None)
    if len(made) != 3 or not hasattr(made[0], "parameters"):
        raise ValueError(f"--model {spec}: build must return a model or (gg.Recurrent, "
                         f"input_size, init_state), got {type(made[0]).__name__}"
                         + ("" if len(made) == 3 else f" and {len(made) - 1} more values"))
    model, isz, init_state = made
    if not isinstance(isz, (int, np.integer)) or isz < 1:
        raise ValueError(f"--model {spec}: input_size must be a positive int, got {isz!r}")
    return model, int(isz), init_state


def initial_state(label, init_state, batch):
    """The state for `batch` rows: init_state(batch), the given arrays, or None (zeros)."""
    if init_state is None or callable(init_state):
        return init_state(batch) if init_state else None
    for a in leaves(init_state):
        rows = np.shape(a)[0] if np.ndim(a) >= 2 else None
        if rows != batch:
            raise ValueError(f"{label}: init_state has shape {list(np.shape(a))}, expected "
                             f"[{batch}, ...] for --batch {batch}; return a function "
                             f"init_state(batch) to follow --batch")
    return init_state


def _forget_bias(s):
    return s if s == "chrono" else finite_float(s)


def _fb(v):
    """--forget-bias for the header: a number as %g, a word ('chrono', or a caller's own label
    such as examples/gradient_flow.py's '0 / chrono') as it is."""
    return v if isinstance(v, str) else f"{v:g}"


def parse(argv):
    p = Parser(prog="graphgrad flow", description=__doc__.split("\n")[0])
    p.add_argument("--cell", default="rnn,lstm,gru",
                   help="comma list of rnn, rnn_relu, lstm, gru (default rnn,lstm,gru)")
    p.add_argument("--model", action="append", default=[],
                   help="FILE.py[:build] custom model (repeatable; added after --cell models)")
    p.add_argument("--T", type=positive_int, default=100, help="sequence length (default 100)")
    p.add_argument("--hidden", type=positive_int, default=32)
    p.add_argument("--input", type=positive_int, default=8,
                   help="input features (built-in cells)")
    p.add_argument("--batch", type=positive_int, default=1,
                   help="sequences, each diagnosed on its own")
    p.add_argument("--init-scale", type=nonnegative_float, default=1.0,
                   help="multiply every weight of the default (PyTorch) initialization")
    p.add_argument("--forget-bias", type=_forget_bias, default=0.0,
                   help="added to the LSTM forget / GRU update gate bias; a number or 'chrono'")
    p.add_argument("--loss", default="last", choices=["last", "all"],
                   help="readout loss on the last output (many-to-one) or on every output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/flow", help="directory for the PNG plots")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def run(args, out=None):
    out = sys.stdout if out is None else out
    rng = np.random.default_rng(args.seed)
    if not args.no_plots:       # fail on an unusable --out before the work, not after it
        os.makedirs(args.out, exist_ok=True)
    models = {}
    cells = [c for c in args.cell.split(",") if c]
    for cell in cells:
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r} (choose from {', '.join(CELLS)})")
    if args.forget_bias != 0 and not {"lstm", "gru"} & set(cells):
        raise ValueError(f"--forget-bias {args.forget_bias} applies to the lstm and gru cells "
                         f"only, and --cell is {args.cell!r}")
    for cell in cells:
        models[cell] = (build_model(cell, args.input, args.hidden, args.init_scale,
                                    args.forget_bias, args.seed, args.T), args.input, None)
    for spec in args.model:
        models[os.path.basename(spec.partition(":")[0])] = load_custom(
            spec, args.hidden, args.seed, args.init_scale)
    flows, chains = {}, {}
    for label, (m, isz, init_state) in models.items():
        # time-major draws; a batch_first model (a --model file may build one) takes (B, T, I)
        xs = model_layout(m, rng.standard_normal((args.T, args.batch, isz)))
        s0 = initial_state(label, init_state, args.batch)
        flows[label] = from_tape(m, xs, s0, loss=args.loss, seed=args.seed)
        chains[label] = flows[label].chains()
    print(table(flows, chains, args), file=out)
    if not args.no_plots:
        from . import plots
        files = {"flow_norms.png": lambda p: plots.plot_norms(flows, p),
                 "flow_lags.png": lambda p: plots.plot_lags(flows, p),
                 "flow_chains.png": lambda p: plots.plot_chains(
                     {k: c[flows[k].layers[0].name] for k, c in chains.items()}, p),
                 "flow_sweep.png": plots.plot_sweep}
        for name, fn in files.items():
            fn(os.path.join(args.out, name))
        print(f"plots: {', '.join(os.path.join(args.out, n) for n in files)}", file=out)
    return flows


def table(flows, chains, args):
    from .diagnose import diagnose
    labels = bucket_labels(EDGES)
    head = (f"{'model':<13}{'verdict':<11}{'x/step':>8}{'decades':>9}{'|g_1|/|g_T|':>12}"
            + "".join(f"{'lag ' + b:>10}" for b in labels) + f"{'sum err':>10}")
    lines = [f"gradient flow, T={args.T}, hidden={args.hidden}, batch={args.batch}, "
             f"init-scale={args.init_scale:g}, forget-bias={_fb(args.forget_bias)}, "
             f"loss={args.loss}, "
             f"seed={args.seed}", "lag columns: share of ||dL/dW_hh|| from weight uses that many "
             "steps before the loss (layer 0; a custom model's weight is named in its note)",
             head, "-" * len(head)]
    notes = []
    for label, fl in flows.items():
        d = diagnose(fl, chains[label])
        L = fl.layers[0]
        lt = fl.lags()
        w = next((w for w in lt.parts if w.startswith("weight_hh")), sorted(lt.parts)[0])
        g = fl.norms()[L.name][L.leaf_names()[0]]
        with np.errstate(divide="ignore"):
            ratio = float(np.median(np.log10(g[0]) - np.log10(g[-1])))
        ld = d.layers[0]
        lines.append(f"{label:<13}{ld.verdict:<11}{ld.gamma:>8.3f}{float(np.median(ld.span)):>+9.1f}"
                     f"{'1e%+.1f' % ratio:>12}" + "".join(f"{s:>10.3f}" for s in lt.bucket(w, EDGES))
                     + f"{check(fl)['grads']:>10.1e}")
        note = "" if w.startswith("weight_hh") else f"lag columns: shares of ||dL/d{w}||\n  "
        notes.append(f"[{label}] " + note + str(d).replace("\n", "\n  "))
    return "\n".join(lines + [""] + notes)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)

    def go():
        run(args)       # returns the flows: not an exit code
    return guarded("flow", go, (FloatingPointError,))
