"""Training machinery: truncated BPTT over long streams, clipping, optimizers, init, resumable runs.

The trainer never computes gradients itself. It asks a *backend* for one TBPTT window at a time:

    backend.lm_window(model, inputs, targets, state0, loss_from, save_at) -> Window
        forward `inputs` (T, B) from `state0` (a constant: no gradient flows into it; windows are
        time-major for a batch_first model too, which gets them transposed), loss = mean
        cross-entropy over steps loss_from..T-1, gradients of that loss for every parameter, the
        final state and the states after the steps listed in `save_at`.
    backend.lm_eval(model, inputs, targets, state0) -> (sum of cross-entropies, count, state)
    backend.loss_and_grads(model, *batch) -> (loss, grads)   for any model with .loss(*batch)

`TapeBackend` is the reference (the eager tape). `CompiledBackend` runs the same contract on
`compiler.compile(...)` programs (the recurrence natively, head and loss on the tape);
`get_backend("auto")` picks it whenever the compiler imports.

Truncated BPTT(k1, k2), after Williams & Peng (1990): the stream is processed in updates of k1 new
steps. Update n (from 0) owns the new steps [mid, end) = [n k1, min((n+1) k1, N)) and its window is
[start, end) with start = max(0, mid - (k2 - k1)), i.e. k2 steps back from the nominal chunk end
mid + k1 (only a short last chunk ends earlier). The window is run forward from the carried state at
`start`, detached there; the loss is the mean cross-entropy of the *new* steps only (earlier steps
of the window were scored by earlier updates), so the newest step backpropagates k2 steps and the
oldest new step k2 - k1 + 1 steps. The carried state at time t is the one computed by the forward
pass of the update whose new steps end at or after t (each state is the value of a real forward
pass, re-run with the current weights when windows overlap). k1 = k2 is plain "chunks": each window
starts where the previous one ended, with the state carried over.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import checkpoint, init, optim
from .core import Tensor, no_grad
from .functional import cross_entropy
from .heads import LanguageModel, perplexity
from .nn import _state_leaves


# ---------------------------------------------------------------- small helpers
def blas_threads(n=1):
    """Set numpy's OpenBLAS thread count; returns True if it could.

    The products in a recurrent step are tiny; with several BLAS threads on a busy 2-core machine
    each one can take 100x longer than single-threaded (threads spin waiting for a core).
    """
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln}
    except OSError:  # not Linux: leave the thread count alone
        return False
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                    "openblas_set_num_threads"):
            if hasattr(lib, sym):
                getattr(lib, sym)(int(n))
                return True
    return False


def _map(state, f):
    if state is None:
        return None
    return tuple(_map(s, f) for s in state) if isinstance(state, (tuple, list)) else f(state)


def _numpy_state(state):
    return _map(state, lambda s: (s.data if isinstance(s, Tensor) else np.asarray(s)).copy())


def _steps(model, ids, lo=0):
    """Steps lo.. of a time-major (T, B) window in the layout the model reads: (B, T) for a
    batch_first core (the trainer's streams and windows are always time-major)."""
    ids = ids[lo:]
    return ids.T if _batch_first(model) else ids


def _batch_first(model):
    return bool(getattr(getattr(model, "rnn", None), "batch_first", False))


def _from(model, out, lo):
    """Rows of the model's output (logits or core output) from step lo on, in its layout."""
    return out[:, lo:] if _batch_first(model) else out[lo:]


def _grads_of(params):
    return {k: (p.grad if p.grad is not None else np.zeros_like(p.data)) for k, p in params.items()}


@dataclass
class Window:
    loss: float                 # mean cross-entropy over the scored steps
    tokens: int                 # number of scored predictions (steps * batch)
    grads: dict                 # parameter name -> ndarray, same dtype as the parameter
    state: object               # state after the last step (numpy, detached)
    saved: dict = field(default_factory=dict)   # offset -> state after that many steps


# ---------------------------------------------------------------- backends
class TapeBackend:
    """Reference backend: the eager tape, one graph per window."""
    name = "tape"

    def lm_window(self, model, inputs, targets, state0, loss_from=0, save_at=()):
        T, B = inputs.shape
        if not 0 <= loss_from < T:
            raise ValueError(f"lm_window: loss_from={loss_from} must lie in [0, {T})")
        save_at = set(save_at)
        params = model.parameters()
        model.zero_grad()
        state, total, saved = _numpy_state(state0), None, {}
        if getattr(getattr(model, "rnn", None), "bidirectional", False):
            # the reverse direction reads the whole window from its end: one call, and there is
            # no state "after step t" to save (as on the compiled backend)
            if save_at - {T}:
                raise ValueError("lm_window: a bidirectional model has no state after step t "
                                 "to carry (use k2 = k1)")
            cuts = [0, T]
        else:
            # calling the model once per segment gives the same graph and the same floats as one
            # call over the window; the cuts are only where we need a state or where scoring
            # begins
            cuts = sorted({0, loss_from, T, *save_at})
        for a, b in zip(cuts, cuts[1:]):
            logits, state = model(_steps(model, inputs[a:b]), state)
            lo = max(loss_from - a, 0)
            if lo < b - a:
                ce = cross_entropy(logits if lo == 0 else _from(model, logits, lo),
                                   _steps(model, targets[a:b], lo), reduction="sum")
                total = ce if total is None else total + ce
            if b in save_at:
                saved[b] = _numpy_state(state)
        n = (T - loss_from) * B
        loss = total / float(n)
        loss.backward()
        return Window(loss.item(), n, _grads_of(params), _numpy_state(state), saved)

    def lm_eval(self, model, inputs, targets, state0):
        with no_grad():
            logits, state = model(_steps(model, inputs), _numpy_state(state0))
            ce = cross_entropy(logits, _steps(model, targets), reduction="sum").item()
        return ce, targets.size, _numpy_state(state)

    def loss_and_grads(self, model, *batch):
        params = model.parameters()
        model.zero_grad()
        loss = model.loss(*batch)
        loss = loss[0] if isinstance(loss, tuple) else loss
        loss.backward()
        return loss.item(), _grads_of(params)


class CompiledBackend:
    """The same contract on compiled programs: the recurrence runs natively (forward and BPTT
    over the whole window in one call each, any window length with one program per batch size),
    the encoding, head and loss once over all rows on the tape (compiler/training.py)."""
    name = "compiled"

    @classmethod
    def available(cls):
        try:
            import compiler
        except ImportError:
            return False
        return callable(getattr(compiler, "compile", None))

    def __init__(self):
        if not self.available():
            raise RuntimeError("the compiled backend needs the compiler package; use "
                               "--backend tape")
        self._programs = {}

    def _core(self, model, batch):
        from compiler import CompiledProgram
        key = (id(model.rnn), batch)
        if key not in self._programs:
            self._programs[key] = CompiledProgram(model.rnn, 1, batch)
        return self._programs[key]

    def lm_window(self, model, inputs, targets, state0, loss_from=0, save_at=()):
        from compiler.training import head_and_core
        T, B = inputs.shape
        if not 0 <= loss_from < T:
            raise ValueError(f"lm_window: loss_from={loss_from} must lie in [0, {T})")
        n = (T - loss_from) * B

        def loss_fn(out):
            logits = model.head(_from(model, out, loss_from))
            return cross_entropy(logits, _steps(model, targets, loss_from),
                                 reduction="sum") / float(n)
        inner = set(save_at) - {T}      # the state after all T steps is the final state
        loss, grads, state, states = head_and_core(
            model, self._core(model, B), _steps(model, inputs), loss_fn, _numpy_state(state0),
            return_states=bool(inner))
        saved = {b: states[b] if b in inner else _numpy_state(state) for b in save_at}
        return Window(loss, n, grads, _numpy_state(state), saved)

    def lm_eval(self, model, inputs, targets, state0):
        from compiler.training import _encode
        out, state = self._core(model, inputs.shape[1]).forward(
            _encode(model, _steps(model, inputs)), _numpy_state(state0))
        with no_grad():
            ce = cross_entropy(model.head(Tensor(out)), _steps(model, targets),
                               reduction="sum").item()
        return ce, targets.size, _numpy_state(state)

    def loss_and_grads(self, model, *batch):
        from compiler.training import head_and_core
        xs, targets = batch[0], batch[1]
        B = np.shape(xs)[1]
        loss, grads, _, _ = head_and_core(model, self._core(model, B), xs,
                                          lambda out: model.head_loss(out, targets))
        return loss, grads


def get_backend(name="auto"):
    """'auto' (compiled when available, else the tape), 'tape' or 'compiled'."""
    if name == "auto":
        return CompiledBackend() if CompiledBackend.available() else TapeBackend()
    if name == "tape":
        return TapeBackend()
    if name == "compiled":
        return CompiledBackend()
    raise ValueError(f"unknown backend {name!r}; choose auto, tape or compiled")


# ---------------------------------------------------------------- TBPTT schedule and clipping
def tbptt_schedule(n_steps, k1, k2=None, drop_last=False):
    """[(start, mid, end)] per update: run [start, end) from the carried state at `start`,
    score [mid, end). See the module docstring for the exact semantics."""
    k2 = k1 if k2 is None else k2
    if int(k1) != k1 or k1 < 1:
        raise ValueError(f"TBPTT: k1 must be a positive integer, got {k1!r}")
    if int(k2) != k2 or k2 < k1:
        raise ValueError(f"TBPTT: k2 must be an integer >= k1 = {k1}, got {k2!r}")
    out = []
    for mid in range(0, n_steps, k1):
        end = min(mid + k1, n_steps)
        if drop_last and end - mid < k1:
            break
        out.append((max(0, mid - (k2 - k1)), mid, end))
    return out


def global_norm(grads):
    """L2 norm over all gradient arrays together, accumulated in float64."""
    return math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))


def clip_gradients(grads, clip_norm=None, clip_value=None):
    """Clip in place: elementwise to [-clip_value, clip_value] first, then to global norm
    clip_norm. Returns the global norm *before* any clipping (what the trainer reports)."""
    norm = global_norm(grads)
    if clip_value is not None:
        optim.clip_grad_value(list(grads.values()), clip_value)
    if clip_norm is not None:
        optim.clip_grad_norm(list(grads.values()), clip_norm)
    return norm


# ---------------------------------------------------------------- optimizers, init, configs
LR_DEFAULTS = {"sgd": 0.5, "adagrad": 0.1, "adam": 2e-3}


def make_optimizer(name, params, lr=None, momentum=0.9, weight_decay=0.0):
    """sgd (with momentum), adagrad or adam with the given (or a per-optimizer default) lr."""
    name = name.lower()
    if name not in LR_DEFAULTS:
        raise ValueError(f"unknown optimizer {name!r}; choose sgd, adagrad or adam")
    lr = LR_DEFAULTS[name] if lr is None else lr
    if name == "sgd":
        return optim.SGD(params, lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adagrad":
        return optim.Adagrad(params, lr, weight_decay=weight_decay)
    return optim.Adam(params, lr, weight_decay=weight_decay)


def init_weights(model, recurrent="uniform", forget_bias=None, seed=0):
    """Re-initialise recurrent weights in place.

    recurrent="uniform" keeps PyTorch's U(-1/sqrt(H), 1/sqrt(H)) (what the models start with);
    "orthogonal" makes every weight_hh gate block orthogonal. forget_bias=v (LSTM only) sets the
    effective forget-gate bias bias_ih + bias_hh to v.
    """
    if recurrent not in ("uniform", "orthogonal"):
        raise ValueError(f"init: recurrent must be 'uniform' or 'orthogonal', got {recurrent!r}")
    rng = np.random.default_rng(seed)
    for name, p in model.parameters().items():
        if recurrent == "orthogonal" and "weight_hh" in name:
            p.data = init.orthogonal(p.data.shape, rng=rng, dtype=p.data.dtype)
    if forget_bias is None:
        return model
    found = False
    for name, p in model.parameters().items():
        if "bias_ih" in name or "bias_hh" in name:
            H = model.parameters()[name.replace("bias_ih", "weight_hh").replace(
                "bias_hh", "weight_hh")].shape[1]
            if p.shape[0] != 4 * H:
                raise ValueError("init: forget_bias needs an LSTM (gates i, f, g, o)")
            init.forget_bias(p.data, H, forget_bias if "bias_ih" in name else 0.0)
            found = True
    if not found:
        raise ValueError("init: forget_bias needs an LSTM with biases")
    return model


def lm_config(model):
    """JSON-able description from which `build_lm` rebuilds the same LanguageModel."""
    rnn = model.rnn
    # the cell's variant by its make_rnn name (LanguageModel(cell="rnn", nonlinearity="relu")
    # must not come back as a tanh RNN of the same shapes)
    cell = model.cell
    if getattr(rnn, "nonlinearity", "tanh") == "relu":
        cell = "rnn_relu"
    if getattr(rnn, "reset_after", True) is False:
        cell = "gru_v1"
    cfg = {"vocab_size": model.vocab_size, "hidden_size": model.hidden_size,
           "cell": cell, "num_layers": rnn.num_layers,
           "embed_size": None if model.embedding is None else model.embedding.shape[1],
           "dtype": model.dtype.name}
    # the other core options only when they differ from the defaults
    for k, default in (("bias", True), ("bidirectional", False), ("batch_first", False)):
        if getattr(rnn, k) != default:
            cfg[k] = getattr(rnn, k)
    return cfg


def build_lm(cfg, seed=0):
    cfg = dict(cfg)
    return LanguageModel(cfg.pop("vocab_size"), cfg.pop("hidden_size"), seed=seed,
                         dtype=np.dtype(cfg.pop("dtype")), **cfg)


# ---------------------------------------------------------------- the trainer
@dataclass
class StepReport:
    step: int           # updates done so far (1-based after the first)
    epoch: int
    loss: float         # mean cross-entropy of the scored predictions
    tokens: int
    grad_norm: float    # global norm before clipping
    seconds: float

    @property
    def perplexity(self):
        return perplexity(self.loss)


@contextlib.contextmanager
def _interrupt_after():
    """Hold Ctrl-C until the block is done, then raise it. Around the few milliseconds in which
    an update changes the parameters, the optimizer state, the counters and the carried states:
    `graphgrad train` saves a checkpoint on Ctrl-C, and one taken mid-update (some parameters
    stepped, the step counter not) resumed into a different run than the uninterrupted one."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield     # not Python's own Ctrl-C handling: leave it alone
        return
    caught = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


class Trainer:
    """Truncated BPTT(k1, k2) on a LanguageModel over (N, B) id streams, or plain minibatch
    training (`fit_batch`) on any model with `.loss(*batch)`."""

    def __init__(self, model, optimizer, k1=25, k2=None, clip_norm=None, clip_value=None,
                 backend=None, drop_last=False):
        tbptt_schedule(0, k1, k2)  # validates k1, k2
        self.model, self.optimizer = model, optimizer
        self.k1, self.k2 = int(k1), int(k1 if k2 is None else k2)
        self.clip_norm, self.clip_value, self.drop_last = clip_norm, clip_value, drop_last
        self.backend = backend if backend is not None else get_backend("auto")
        self.step = self.epoch = 0
        self.update = 0          # index of the next update within the current epoch
        self.states = {0: None}  # stream position -> carried state (None: zeros)

    def apply(self, grads):
        """Clip, hand the gradients to the parameters and step the optimizer; returns the norm."""
        if not all(np.all(np.isfinite(g)) for g in grads.values()):
            raise FloatingPointError(f"non-finite gradient at step {self.step + 1}; lower the "
                                     "learning rate or clip")
        norm = clip_gradients(grads, self.clip_norm, self.clip_value)
        params = self.model.parameters()
        for k, g in grads.items():
            params[k].grad = g
        self.optimizer.step()
        self.step += 1
        return norm

    def run_epoch(self, streams):
        """Yield a StepReport per update, continuing the current epoch where it stopped (so a
        resumed run picks up mid-epoch); at the end the epoch counter advances and the carried
        state resets to zeros."""
        streams = np.asarray(streams)
        if streams.ndim != 2 or streams.shape[0] < 2:
            raise ValueError(f"run_epoch: streams must be (N >= 2, B) ids, got {streams.shape}")
        sched = tbptt_schedule(streams.shape[0] - 1, self.k1, self.k2, self.drop_last)
        starts = [s for s, _, _ in sched]
        carried = self.carried_batch()
        if carried not in (None, streams.shape[1]):
            raise ValueError(f"run_epoch: the carried state has batch {carried} (a checkpoint "
                             f"saved mid-epoch?) but the streams have batch {streams.shape[1]}")
        while self.update < len(sched):
            start, mid, end = sched[self.update]
            t0 = time.perf_counter()
            later = [s for s in starts[self.update + 1:] if mid < s <= end]
            w = self.backend.lm_window(self.model, streams[start:end], streams[start + 1:end + 1],
                                       self.states[start], mid - start, [s - start for s in later])
            if not math.isfinite(w.loss):
                raise FloatingPointError(f"loss became {w.loss} at step {self.step + 1}; lower "
                                         "the learning rate or clip")
            with _interrupt_after():    # a checkpoint never holds half an update
                norm = self.apply(w.grads)
                self.update += 1
                keep = starts[self.update] if self.update < len(sched) else end
                self.states = {t: s for t, s in self.states.items() if t >= keep}
                self.states.update({start + k: s for k, s in w.saved.items()})
                self.states[end] = w.state
            yield StepReport(self.step, self.epoch, w.loss, w.tokens, norm,
                             time.perf_counter() - t0)
        self.epoch += 1
        self.update, self.states = 0, {0: None}

    def carried_batch(self):
        """The batch size of the states carried into the rest of this epoch (None: none yet)."""
        rows = {np.shape(a)[-2] for st in self.states.values() if st is not None
                for a in _state_leaves(st)}
        return max(rows) if rows else None

    def evaluate(self, streams, chunk=None):
        """Mean cross-entropy over all predictions in (N, B) streams, state carried throughout."""
        streams, chunk = np.asarray(streams), chunk or max(self.k1, 50)
        total, count, state = 0.0, 0, None
        for a in range(0, streams.shape[0] - 1, chunk):
            b = min(a + chunk, streams.shape[0] - 1)
            s, n, state = self.backend.lm_eval(self.model, streams[a:b], streams[a + 1:b + 1],
                                               state)
            total, count = total + s, count + n
        return total / max(count, 1)

    def fit_batch(self, *batch):
        """One update on a whole-sequence batch: loss = model.loss(*batch)."""
        t0 = time.perf_counter()
        loss, grads = self.backend.loss_and_grads(self.model, *batch)
        norm = self.apply(grads)
        return StepReport(self.step, self.epoch, loss, 0, norm, time.perf_counter() - t0)

    # -- checkpoints
    def state_dict(self):
        return {"step": self.step, "epoch": self.epoch, "update": self.update,
                "k1": self.k1, "k2": self.k2,
                "states": {str(t): s for t, s in self.states.items()}}

    def _check_schedule(self, sd):
        # carried states are keyed by stream position: only meaningful for the same k1/k2
        if (sd["k1"], sd["k2"]) != (self.k1, self.k2):
            raise ValueError(f"the checkpoint was trained with k1={sd['k1']}, k2={sd['k2']}; "
                             f"resume with the same values (got k1={self.k1}, k2={self.k2})")

    def load_state_dict(self, sd):
        self._check_schedule(sd)
        self.step, self.epoch, self.update = int(sd["step"]), int(sd["epoch"]), int(sd["update"])
        self.states = {int(t): s for t, s in sd["states"].items()}

    def save(self, path, meta=None):
        """Model, optimizer and trainer state (position, carried states) in one atomic file."""
        checkpoint.save(path, self.model.state_dict(), self.optimizer.state_dict(),
                        {**(meta or {}), "trainer": self.state_dict()})

    def load(self, path):
        """Restore everything `save` wrote, bit for bit; returns the checkpoint's meta."""
        model_state, optim_state, meta = checkpoint.load(path)
        checkpoint.check_compatible(model_state, self.model.state_dict())
        if "trainer" not in (meta or {}):
            raise ValueError(f"{path} holds no trainer state (not written by Trainer.save)")
        sd = meta["trainer"]
        self._check_schedule(sd)  # before anything is modified
        old_model, old_optim = self.model.state_dict(), self.optimizer.state_dict()
        try:
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(optim_state)
        except BaseException:
            # e.g. a checkpoint of another optimizer: refused without a half-loaded trainer
            self.model.load_state_dict(old_model)
            self.optimizer.load_state_dict(old_optim)
            raise
        self.load_state_dict(sd)
        return meta
