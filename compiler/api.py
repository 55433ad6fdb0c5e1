"""compiler.compile: any recurrent model -> a native program for forward and BPTT.

Per layer and direction the step function is traced, differentiated with the tape's own VJP
rules into one joint forward+backward graph, simplified, its products merged, placed into stages
(hoisted, looped, contracted) and scheduled into fused kernels, then lowered to LLVM and
JIT-compiled. Stacked and bidirectional models chain their layers in numpy (a copy per layer,
never per time step).
"""
from __future__ import annotations

import numbers
import time

import numpy as np

from . import graph_cache, ir
from .build import build, evaluator
from .passes.simplify import DIFFERENTIATED_RULES, simplify
from .autodiff import vjp_graph
from .passes.layout import group_invariant_adds, pads_to_concat, sink_slices
from .passes.loops import merge_matmuls
from .passes.remat import recompute_cheap
from .program import ReferenceProgram, _check
from .stages import assign, one_row_sums

PIPELINE = ("trace", "simplify", "merge_matmuls", "autodiff", "simplify_joint", "pads_to_concat",
            "sink_slices", "group_invariant_adds", "one_row_sums", "recompute_cheap", "stages",
            "schedule")


def joint_graph(ld, batch, dumps=None, tag="", adjoints=False, graphs=None):
    """Optimized forward step, differentiated, with the forward outputs put in front of the
    cotangent outputs: one graph for the whole training step of a layer-direction. `dumps`
    collects the text of the graph after each pass, `graphs` the graphs themselves (by pass)."""
    def keep(name, G):
        if dumps is not None:
            dumps.setdefault(name, []).append(f"# {tag}\n{ir.dump(G)}")
        if graphs is not None:
            graphs[name] = G
        return G
    F = keep("simplify", simplify(ld.step.G))
    F = keep("merge_matmuls", simplify(merge_matmuls(F)))
    B = keep("autodiff", vjp_graph(F, ld.bwd.graph["wrt"]))
    J = ir.copy_graph(B)
    J.graph["outputs"] = list(F.graph["outputs"]) + list(B.graph["outputs"])
    if adjoints:   # also the total dL/ds_t of every new state leaf, per step
        J.graph["outputs"] += [B.graph["ct_of"][o] for o in F.graph["outputs"][1:]]
    J = keep("simplify_joint", simplify(J, rules=DIFFERENTIATED_RULES))
    J = keep("pads_to_concat", pads_to_concat(J))
    J = keep("sink_slices", simplify(sink_slices(J)))
    J = keep("group_invariant_adds", simplify(group_invariant_adds(J)))
    J = keep("one_row_sums", one_row_sums(J, batch, len(F.graph["outputs"])))
    return keep("recompute_cheap", recompute_cheap(J, len(F.graph["outputs"])))


class _Layer:
    """One layer-direction: the forward-only and the train (forward + BPTT) programs."""

    def __init__(self, ld, B, T, options, dumps):
        self.ld = ld
        self.n_fwd = len(ld.step.G.graph["outputs"])
        tag = f"layer {ld.layer} direction {ld.direction}"
        self.params = list(ld.step.params)
        # what each parameter was traced as: every call's data is checked against it
        self.param_avals = {k: ir.aval_of(ir.node(ld.step.G, ld.step.params[k]))
                            for k in self.params}
        self.B, self.T, self.options = B, T, options
        k = graph_cache.key(graph_cache.graph_text(ld.step.G), ld.bwd.graph["wrt"], B)
        cached = graph_cache.get(k) if dumps is None else None
        if cached is not None:
            self.builds = cached
        else:
            J = joint_graph(ld, B, dumps, tag)
            Jf = ir.copy_graph(J)
            Jf.graph["outputs"] = J.graph["outputs"][:self.n_fwd]
            Jf = simplify(Jf)
            self.builds = {}
            for mode, G in (("forward", Jf), ("train", J)):
                stage, dep = assign(G, B, self.n_fwd, train=mode == "train")
                self.builds[mode] = build(G, stage, dep, B, self.n_fwd, train=mode == "train")
            graph_cache.put(k, self.builds)
        self.runners, self.natives, self.plans = {}, {}, {}
        self.ensure("train")    # the forward-only program is compiled on first use

    def ensure(self, mode):
        if mode not in self.runners:
            self.runners[mode], self.natives[mode] = self.options["make_runner"](
                self.builds[mode].program, self.T)

    def ensure_adjoints(self):
        """The train program variant that also stores every step's state adjoints (built on
        first use, so the normal training path carries no extra stores)."""
        if "adjoints" not in self.builds:
            J = joint_graph(self.ld, self.B, adjoints=True)
            stage, dep = assign(J, self.B, self.n_fwd, train=True)
            self.builds["adjoints"] = build(J, stage, dep, self.B, self.n_fwd, train=True)
        self.ensure("adjoints")

    def _inputs(self, mode, params, xs, s0):
        built = self.builds[mode]
        names = built.J.graph["names"]
        env = {nid: params[names[nid]] for nid, r in built.J.graph["roles"].items()
               if r == "param"}
        vals = self._plan(mode, "inv", list(built.inv.values()), env)(env)
        inputs = {name: v.reshape(built.program.buffers[name].shape)
                  for name, v in zip(built.inv, vals)}
        inputs["x"] = xs
        for j, s in enumerate(s0):
            inputs[f"s0_{j}"] = s
        return inputs, env

    def _plan(self, mode, what, targets, env):
        """The evaluator of `targets` from env's nodes in mode's graph, resolved on first use."""
        if (mode, what) not in self.plans:
            self.plans[mode, what] = evaluator(self.builds[mode].J, targets, env)
        return self.plans[mode, what]

    def run(self, mode, params, xs, s0, d_sT=None, phase=None, keep_states=False,
            borrow=False, copy=True):
        """The forward pass (mode "forward"), or the forward phase of a training program
        (mode "train"/"adjoints", phase "fwd"): returns (y, final state) and keeps what the
        backward phase needs (and, with keep_states, a copy of every step's state).
        copy=False returns views of the live buffers, valid until this layer runs again (vjp,
        which only feeds y to the layer above: 6.5 MB per training step at (64, 512, 512, 50))."""
        built = self.builds[mode]
        rev = self.ld.reverse
        inputs, env = self._inputs(mode, params, xs[::-1] if rev else xs, s0)
        if mode != "forward":    # a training forward phase: remember it for backward()
            for j, d in enumerate(d_sT):
                inputs[f"d_sT_{j}"] = d
            self.env, self.T_run, self.mode_run = env, xs.shape[0], mode
        self.ensure(mode)
        res = self.runners[mode](inputs, xs.shape[0], phase, borrow)
        o = built.outputs
        buf, view = o["y"]
        y = res[buf][1:] if view == "all+1" else res[buf]
        y = y[::-1] if rev else y
        state = [res[name][-1] for name in o["state"]]
        # every state the loop produced (T+1 slots each), for truncated BPTT; copied only on
        # request (it is (T+1) x B x S per state leaf, as much as the output itself)
        self.last_states = [np.array(res[n]) for n in o["state"]] \
            if keep_states and not rev else None
        if not copy:
            return y, state
        return np.array(y), [np.array(s) for s in state]

    def backward(self, d_out):
        """The backward phase after run(..., phase="fwd"): (param grads, d_xs, d_state0)."""
        built, rev = self.builds[self.mode_run], self.ld.reverse
        res = self.runners[self.mode_run]({"d_out": d_out[::-1] if rev else d_out},
                                          self.T_run, "bwd")
        o = built.outputs
        dx = None
        if "d_x" in o:
            dx = res[o["d_x"]][::-1] if rev else res[o["d_x"]]
        d_s0 = [np.array(res[name][0]) for name in o["d_state"]]
        # dL/ds_t for every state the loop produced (slots 1..T), in processing order: the
        # per-step adjoints gradient-flow inspection reads, free from the reverse loop's buffers
        if o.get("adjoints"):
            self.last_adjoints = np.concatenate([res[n] for n in o["adjoints"]], axis=-1)
        env = dict(self.env)
        for cnid, gname in built.grads.items():
            env[cnid] = res[gname].reshape(ir.node(built.J, cnid).shape)
        keys = list(o["d_params"])
        vals = self._plan(self.mode_run, "d_params", [o["d_params"][k] for k in keys],
                          env)(env)
        grads = {self.ld.names[k]: np.array(v) for k, v in zip(keys, vals)}
        return grads, None if dx is None else np.array(dx), d_s0


class CompiledProgram(ReferenceProgram):
    """forward(xs, state0) -> (out, state_T); vjp(xs, state0, d_out, d_state_T) ->
    (param_grads keyed like model.parameters(), d_xs, d_state0). numpy in, numpy out; wrong
    shapes or dtypes raise before any native code runs."""

    def __init__(self, model, seq_len, batch, dtype=None, *, input_size=None, state=None,
                 threads=1, split="auto", unroll=False, backend="native", opt=3,
                 keep_dumps=False):
        t0 = time.perf_counter()
        super().__init__(model, seq_len, batch, dtype, input_size=input_size, state=state)
        self.dumps = {} if keep_dumps else None
        self.options = {"threads": threads, "split": split, "unroll": unroll,
                        "backend": backend, "opt": opt}
        self.options["make_runner"] = self._runner_factory()
        self.compiled = [[_Layer(ld, self.B, self.T, self.options, self.dumps) for ld in row]
                         for row in self.layers]
        self.compile_seconds = time.perf_counter() - t0

    def _runner_factory(self):
        backend, opts = self.options["backend"], self.options
        if backend == "numpy":
            from .sched_numpy import execute, user_view

            def make(prog, T):
                last = {}

                def run(inputs, T, phase=None, borrow=False):
                    last["store"] = execute(prog, T, inputs, phase=phase,
                                            store=last.get("store"))
                    return {n: user_view(prog, last["store"], n) for n in last["store"]}
                return run, None
            return make
        if backend != "native":
            raise ValueError(f"compile: backend must be 'native' or 'numpy', got {backend!r}")
        from runtime.program import NativeProgram

        def make(prog, T):
            native = NativeProgram(prog, unroll=opts["unroll"], T=T if opts["unroll"] else None,
                                   opt=opts["opt"], threads=opts["threads"],
                                   split=opts["split"])
            # every buffer a schedule reads is an input or written first: no zeroing needed
            return (lambda inputs, T, phase=None, borrow=False: native.run(
                T, inputs, zero=False, phase=phase, borrow=borrow)), native
        return make

    # -- running
    def _params(self, cl):
        """The parameters' current data (read on every call, so in-place updates and
        load_state_dict count), each checked against the shape and dtype it was compiled for:
        data set directly on a parameter (p.data = ...) is neither cast nor reshaped silently."""
        params = self.model.parameters() if self.builtin else cl.ld.rec.params
        out = {}
        for k, aval in cl.param_avals.items():
            v = params[cl.ld.names[k] if self.builtin else k].data
            if not isinstance(v, np.ndarray):    # e.g. a numpy scalar after a 0-d update
                v = np.asarray(v)
            if v.shape != aval.shape or v.dtype != aval.dtype:
                _check(f"parameter {cl.ld.names[k]}", v, aval, "the program was compiled for")
            out[k] = v
        return out

    def _run_layers(self, mode, xs, s0, d_sT=None, keep_states=False, borrow=False,
                    copy=True):
        """Layers bottom-up, each fed the one below. mode "forward": the inference programs;
        otherwise the forward phase of the training programs, which keep their buffers for
        their backward phase (so nothing is recomputed). copy=False: the results are views of
        live buffers (see _Layer.run)."""
        # every layer's parameters checked before the first layer overwrites its buffers
        params = [[self._params(cl) for cl in row] for row in self.compiled]
        layer_in, finals = xs, []
        for row, row_params in zip(self.compiled, params):
            outs = []
            for cl, p in zip(row, row_params):
                k = cl.ld.layer * len(row) + cl.ld.direction
                ds = None if d_sT is None else self._per_layerdir(d_sT, k)
                y, s = cl.run(mode, p, layer_in, self._per_layerdir(s0, k), ds,
                              phase=None if mode == "forward" else "fwd",
                              keep_states=keep_states, borrow=borrow, copy=copy)
                outs.append(y)
                finals.append(s)
            layer_in = np.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
        return layer_in, finals

    def forward(self, xs, state0=None, return_states=False):
        """(out, state_T); with return_states also the model's state after every step,
        [state_0, ..., state_T] (unidirectional models: what truncated BPTT carries)."""
        xs, s0 = self._xs(xs), self._state_leaves("state0", state0)
        return self._result(*self._run_layers("forward", xs, s0, keep_states=return_states),
                            xs.shape[0], return_states)

    def _result(self, out, finals, T, return_states):
        if self.builtin and self.model.batch_first:
            out = np.swapaxes(out, 0, 1)
        if not return_states:
            return out, self._pack_state(finals)
        return out, self._pack_state(finals), self._states_per_step(T)

    def _states_per_step(self, T):
        cls = [cl for row in self.compiled for cl in row]
        if any(cl.ld.reverse for cl in cls):
            raise ValueError("return_states: a model that runs backwards in time (bidirectional, "
                             "or a Recurrent with reverse=True) has no state 'after step t'")
        return [self._pack_state([[leaf[t] for leaf in cl.last_states] for cl in cls])
                for t in range(T + 1)]

    def _xs(self, xs):
        """Any sequence length: the native loops take T at run time (buffers follow it)."""
        from graphgrad.core import AVal
        from .program import _arr
        xs = _arr(xs)
        t_axis = 1 if self.builtin and self.model.batch_first else 0
        rest = list(self.x_aval.shape[1:])
        if xs.ndim != 3 or xs.shape[t_axis] < 1:
            want = rest[:1] + ["T"] + rest[1:] if t_axis else ["T"] + rest
            raise ValueError(f"xs: shape {list(xs.shape)}, expected {want} with T >= 1 "
                             f"(any sequence length)".replace("'", ""))
        self.x_aval = AVal((xs.shape[t_axis],) + tuple(rest), self.x_aval.dtype)
        return super()._xs(xs)

    def vjp(self, xs, state0, d_out, d_state_T=None, _mode="train"):
        self._mode = _mode
        return super().vjp(xs, state0, d_out, d_state_T)

    def _record(self, xs, s0, d_sT):
        # (after vjp's argument checks) the buffers a pending begin() filled are overwritten now
        self._begun = False
        # vjp runs both phases before it returns: the native side may read xs in place, and
        # the outputs it drops need no copies (a layer's y is read by the layer above only
        # before this layer's buffers are written again, in its own backward phase)
        return self._run_layers(self._mode, xs, s0, d_sT, borrow=True, copy=False)

    def _layer_vjp(self, k, ld, ctx, d_ys, ds):
        return self.compiled[ld.layer][ld.direction].backward(d_ys)

    def begin(self, xs, state0=None, d_state_T=None, return_states=False):
        """Forward phase of training: (out, state_T[, states after every step]); then
        finish(d_out) gives the gradients without running the forward again."""
        xs, s0 = self._xs(xs), self._state_leaves("state0", state0)
        d_sT = self._state_leaves("d_state_T", d_state_T)
        self._mode, self._begun = "train", False    # a failure below leaves no begin to finish
        out, finals = self._run_layers("train", xs, s0, d_sT, keep_states=return_states)
        self._begun, self._begun_T = True, xs.shape[0]
        return self._result(out, finals, xs.shape[0], return_states)

    def finish(self, d_out):
        """(param_grads, d_xs, d_state0) for the forward phase begin() ran."""
        if not getattr(self, "_begun", False):
            raise RuntimeError("finish: no forward phase to finish; call begin(xs, state0) "
                               "first (one finish per begin; vjp in between replaces it)")
        # checked against begin's xs: a forward() in between may have had another length
        res = self._reverse(self._d_out(d_out, self._begun_T), None)
        self._begun = False
        return res

    def step_adjoints(self, xs, state0, d_out, d_state_T=None):
        """{"l0", "l0_reverse", ...: (T, B, S)} gradients on the states s_1..s_T each layer's
        loop produced (state leaves side by side, processing order), from one vjp run."""
        for row in self.compiled:
            for cl in row:
                cl.ensure_adjoints()
        self.vjp(xs, state0, d_out, d_state_T, _mode="adjoints")
        return {f"l{cl.ld.layer}{'_reverse' if cl.ld.reverse else ''}": cl.last_adjoints
                for row in self.compiled for cl in row}

    # -- inspection
    def programs(self, mode="train"):
        return [cl.builds[mode] for row in self.compiled for cl in row]

    @property
    def graph(self):
        """The joint forward+backward networkx IR of the first layer (see `graphs` for all)."""
        return self.graphs[0]

    @property
    def graphs(self):
        return [b.J for b in self.programs("train")]

    def _natives(self, mode):
        for row in self.compiled:
            for cl in row:
                cl.ensure(mode)
        ns = [cl.natives[mode] for row in self.compiled for cl in row]
        if any(n is None for n in ns):
            raise RuntimeError("LLVM IR and assembly exist only for backend='native'")
        return ns

    def llvm_ir(self, mode="train"):
        """The LLVM IR of every layer-direction's program: mode "train" (forward + BPTT),
        "forward" (inference) or "adjoints" (the training variant step_adjoints runs)."""
        modes = ("train", "forward", "adjoints")
        if mode not in modes:
            raise ValueError(f"llvm_ir: unknown mode {mode!r}; choose from {modes}")
        if mode == "adjoints":
            for row in self.compiled:
                for cl in row:
                    cl.ensure_adjoints()
        return "\n\n".join(n.lowered.ir_text for n in self._natives(mode))

    @property
    def asm(self):
        from runtime.jit import emit_asm
        return "\n\n".join(emit_asm(n.lowered.ir_text, self.options["opt"])
                            for n in self._natives("train"))

    def fusion_report(self):
        from .report import fusion_report
        return fusion_report(self)

    def dump(self, pass_name="schedule"):
        """Text of the IR after a pass (see PIPELINE), or of the scheduled kernels; each
        layer-direction's part is headed '# layer L direction D'."""
        if pass_name not in PIPELINE:
            raise KeyError(f"dump: unknown pass {pass_name!r}; choose from {PIPELINE}")
        cls = [cl for row in self.compiled for cl in row]
        tags = [f"# layer {cl.ld.layer} direction {cl.ld.direction}" for cl in cls]
        if pass_name == "trace":
            return "\n\n".join(f"{tag}\n{ir.dump(cl.ld.step.G)}" for tag, cl in zip(tags, cls))
        if pass_name in ("stages", "schedule"):
            from .report import schedule_text
            return "\n\n".join(f"{tag}\n{schedule_text(b, with_stages=pass_name == 'stages')}"
                               for tag, b in zip(tags, self.programs()))
        if self.dumps is None:
            raise ValueError(f"dump: the IR after {pass_name!r} is kept only when compiled with "
                             f"keep_dumps=True ('trace', 'stages' and 'schedule' always are)")
        return "\n\n".join(self.dumps[pass_name])


def compile(model, seq_len, batch, **options):
    """Compile `model` for sequences of `seq_len` steps and `batch` rows.

    A graphgrad RNN/LSTM/GRU or Recurrent gives a CompiledProgram (forward, vjp); a task model
    with a head and loss (LanguageModel, SequenceClassifier, SequenceRegressor) gives a
    TrainingProgram with value_and_grad(xs, targets, state0) as well. Options: dtype,
    input_size= and state= (custom Recurrent), threads=1|2, split="auto"|"cols"|"batch"|
    "pipeline" (how threads=2 shares the work; see runtime/program.py), unroll=False
    (native code, not with split="pipeline"), backend="native"|"numpy", opt=3,
    keep_dumps=False (keep the IR after every pass for prog.dump).

    Parameters are read on every call, so optimizer steps, in-place updates and
    load_state_dict take effect without recompiling; numpy arrays a custom step closes over
    are constants of the program, fixed at compile time."""
    _check_options(model, seq_len, batch, options)
    if hasattr(model, "head_loss") and hasattr(model, "rnn"):
        from .training import TrainingProgram
        return TrainingProgram(model, seq_len, batch, **options)
    return CompiledProgram(model, seq_len, batch, **options)


OPTIONS = ("dtype", "input_size", "state", "threads", "split", "unroll", "backend", "opt",
           "keep_dumps")


def _int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _positive_int(v):
    return _int(v) and v >= 1


def _check_options(model, seq_len, batch, options):
    """compile()'s arguments, checked before any tracing, each error naming the argument."""
    from graphgrad.nn import Recurrent, _SequenceModel
    task = hasattr(model, "head_loss") and hasattr(model, "rnn")
    if not (isinstance(model, (Recurrent, _SequenceModel)) or task) or \
            not callable(getattr(model, "parameters", None)):
        # a one-step cell (gg.LSTMCell, ...) keeps its sequence model in .model
        cell = isinstance(getattr(model, "model", None), _SequenceModel)
        raise TypeError(f"compile: model must be a graphgrad model (gg.RNN/LSTM/GRU, "
                        f"gg.Recurrent or a task model such as gg.LanguageModel), got "
                        f"{type(model).__name__}"
                        + ("; a cell is one step: compile its sequence model, cell.model"
                           if cell else ""))
    for name, v in (("seq_len", seq_len), ("batch", batch)):
        if not _positive_int(v):
            raise ValueError(f"compile: {name} must be a positive int, got {v!r}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"compile: unknown option(s) {', '.join(unknown)}; the options are "
                        f"{', '.join(OPTIONS)}")
    for name, allowed, default in (("opt", (0, 1, 2, 3), 3), ("threads", (1, 2), 1)):
        v = options.get(name, default)     # ints only: 3.0 or True would reach ctypes / LLVM
        if not _int(v) or v not in allowed:
            words = ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}"
            raise ValueError(f"compile: {name} must be {words}, got {v!r}")
    unroll, backend = options.get("unroll", False), options.get("backend", "native")
    if not isinstance(unroll, bool):
        raise ValueError(f"compile: unroll must be True or False, got {unroll!r}")
    if backend not in ("native", "numpy"):
        raise ValueError(f"compile: backend must be 'native' or 'numpy', got {backend!r}")
    if options.get("threads", 1) == 2 and backend != "native":
        raise ValueError(f"compile: threads=2 runs native code; backend={backend!r} runs in "
                         f"numpy on one thread")
    # options no program would honour are refused here, not dropped: on backend="numpy" an
    # unknown split or unroll=True were never read, and the native runtime turned an explicit
    # split="pipeline" with unroll=True into the column split
    split = options.get("split", "auto")
    from runtime.program import SPLITS
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(f"compile: split must be one of {', '.join(map(repr, SPLITS))}, got "
                         f"{split!r}")
    if split != "auto" and options.get("threads", 1) == 1:
        raise ValueError(f"compile: split={split!r} shares the work between two threads; "
                         f"threads=1 runs one (pass threads=2 with it, or leave split='auto')")
    if unroll and backend != "native":
        raise ValueError(f"compile: unroll=True emits native straight-line code; "
                         f"backend={backend!r} runs the schedule's loops in numpy")
    if unroll and split == "pipeline":
        raise ValueError("compile: split='pipeline' runs the time loops as loops; unroll=True "
                         "emits straight-line code (use split='cols' or 'batch' with it)")
    isz = options.get("input_size")
    if isz is not None:
        if not _positive_int(isz):
            raise ValueError(f"compile: input_size must be a positive int, got {isz!r}")
        own = getattr(getattr(model, "rnn", model), "input_size", None)
        if own is not None and isz != own:
            raise ValueError(f"compile: input_size={isz}, but the model's input_size is {own} "
                             f"(input_size= is for a custom Recurrent)")
