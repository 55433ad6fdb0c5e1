"""From a layer's joint graph and its stages (stages.py) to a scheduled `Program`.

Per stage, in topological order, matmuls become Gemms, column slices become Ref windows, and
elementwise nodes gather into Fused kernels: a node joins the latest kernel of its stage with
the same iteration space that comes after everything it reads. A sum or max over the features
joins its operand's kernel as a row-reduction epilogue; what reads its (rows, 1) result (or a
one-column window of a value a kernel computes) comes after that kernel, reading it as a "col"
operand. Values then get homes:
  * step inputs: x -> "x" (T slots), state leaf j -> "S<j>" (T+1 slots: read slot t, the new
    state is written to slot t+1), ct:y -> "d_out", ct:new_state[j] -> "DS<j>" slot t+1 and its
    cotangent -> DS<j> slot t (so the reverse loop needs no copies);
  * invariant values -> buffers filled by numpy before the call ("inv<n>");
  * values read by another stage (saved for the reverse loop, hoisted products) -> T slots;
  * values read only inside their own step and stage -> one scratch buffer, reused every step;
  * values read only inside their own fused kernel -> registers (no buffer at all).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from graphgrad.core import PRIMITIVES

from . import ir
from .errors import CompileError
from .schedule import Buffer, Copy, Fill, Fused, Gemm, Program, Ref, is_batched, kernel_refs
from .stages import batch_mixing, is_col_view, is_contraction, is_row_reduction

LOOP = {"fwd": "fwd_loop", "bwd": "bwd_loop"}
STAGE_LIST = {"pre": "pre", "fwd": "fwd_loop", "bwd": "bwd_loop", "post": "post",
              "contract": "post"}


@dataclass
class Home:
    buf: str
    off: int | None = None      # slot offset from the loop index; None: not time-indexed
    col: int = 0
    cols: int | None = None

    def ref(self, stage):
        if self.off is None:
            return Ref(self.buf, None, self.col, self.cols)
        if stage in ("pre", "post", "contract"):
            return Ref(self.buf, "all" if self.off == 0 else "all+1", self.col, self.cols)
        return Ref(self.buf, self.off, self.col, self.cols)


@dataclass
class Built:
    program: Program
    J: object
    stage: dict
    inv: dict                      # buffer name -> node id computed in numpy before the run
    grads: dict                    # contraction node id -> grad buffer name
    outputs: dict                  # "y", "state", "d_x", "d_state", "d_params" -> where to read
    report: dict = field(default_factory=dict)


class _Builder:
    def __init__(self, J, stage, dep, batch, n_fwd, train):
        self.J, self.stage, self.dep, self.B = J, stage, dep, batch
        self.n_fwd, self.train = n_fwd, train
        self.dt = None
        self.homes, self.bufs, self.inv, self.grads = {}, {}, {}, {}
        self.kernels = {s: [] for s in ("pre", "fwd_loop", "bwd_loop", "post")}
        self.groups = []          # [stage, kind, nodes]  (kind: fused | gemm | colsum | copy)
        self.group_of = {}
        self.inits = []

    # ---------------------------------------------------------------- helpers
    def node(self, nid):
        return ir.node(self.J, nid)

    def args(self, nid):
        return ir.args_of(self.J, nid)

    def fail(self, nid, why):
        n = self.node(nid)
        raise CompileError(f"{n.op}: {why} (shape {list(n.shape)})", n.op, n.src)

    def buffer(self, name, shape, steps=None, kind="temp"):
        shape = tuple(int(s) for s in shape)
        if name not in self.bufs:
            self.bufs[name] = Buffer(name, self.dt, shape, steps, kind)
        return name

    def src_of(self, nid):
        """Follow column views to the value that owns the storage."""
        while self.stage.get(nid) not in (None, "inv") and is_col_view(self.node(nid)):
            nid = self.args(nid)[0]
        return nid

    # ---------------------------------------------------------------- grouping
    def group_nodes(self, order):
        produced = {}     # nid -> group index that materializes it
        for nid in order:
            st = self.stage.get(nid)
            if st in (None, "inv", "tail"):
                continue
            n = self.node(nid)
            args = self.args(nid)
            # kernels of other stages run in other lists: only same-stage producers order us
            # a row reduction's value is complete only after its kernel, and so is a (rows, 1)
            # column of a value computed in a fused kernel (read splatted across each row, it
            # would be read before later columns are written): readers come later
            ready = max([produced[a] + (self.is_rowred(a) or self.is_col_of_kernel(a, produced))
                         for a in args if a in produced and produced[a] >= 0 and
                         self.groups[produced[a]][0] == STAGE_LIST[st]], default=-1)
            if is_col_view(n):
                produced[nid] = produced.get(args[0], -1)
                continue
            if self.read_transposed(nid):
                produced[nid] = produced.get(args[0], -1)   # read transposed by the Gemm
                continue
            if is_contraction(self.J, nid, self.dep, self.B):
                kind = "gemm" if n.op == "matmul" else "colsum"
            elif n.op == "matmul":
                if not self.dep[args[0]] or self.dep[args[1]]:
                    self.fail(nid, "only (per-step value) @ (parameter-derived matrix) products "
                                   "and batch contractions can be lowered")
                kind = "gemm"
            elif n.op == "concat":
                if ir.thaw_attrs(n)["axis"] != 1 or len(n.shape) != 2:
                    self.fail(nid, "concat is lowered along the feature axis of (batch, features)"
                                   " values only")
                kind = "concat"
            elif (PRIMITIVES[n.op].kind == "elementwise" or self.is_rowred(nid) or
                  (n.op == "broadcast_to" and len(n.shape) == 2)):
                kind = "fused"     # a row reduction is the epilogue of its operand's kernel
            elif n.op == "pad_into" and len(n.shape) == 2:
                kind = "pad"
            elif n.op in ("sum", "max") and 0 in ir.thaw_attrs(n)["axis"] and \
                    len(self.node(args[0]).shape) == 2:
                self.fail(nid, batch_mixing(n.op))
            else:
                self.fail(nid, f"no native lowering for a per-step {n.op} here")
            if len(n.shape) != 2 and kind != "colsum":
                self.fail(nid, "native lowering works on (batch, features) values")
            gi = None
            if kind == "fused":
                dom = self.domain(nid)
                for k in range(len(self.groups) - 1, max(ready, 0) - 1, -1):   # ready -1: none
                    g = self.groups[k]
                    if g[0] != STAGE_LIST[st]:
                        continue
                    if g[1] == "fused" and self.domain(g[2][0]) == dom:
                        gi = k
                        break
                    if g[1] != "fused" and g[0] == STAGE_LIST[st]:
                        break   # never hoist a kernel above a product of its own stage
            if gi is None:
                self.groups.append([STAGE_LIST[st], kind, []])
                gi = len(self.groups) - 1
            self.groups[gi][2].append(nid)
            self.group_of[nid] = gi
            produced[nid] = gi

    def is_col_of_kernel(self, nid, produced):
        """A one-column window of a value a fused kernel computes (z[:, -1:] of z's kernel)."""
        n = self.node(nid)
        return (is_col_view(n) and len(n.shape) == 2 and n.shape[1] == 1 and
                self.groups[produced[nid]][1] == "fused")

    def read_transposed(self, nid):
        """A transpose only batch contractions read: their Gemm reads the source with trans_a,
        so it needs neither a kernel nor storage."""
        return self.node(nid).op == "transpose" and all(
            is_contraction(self.J, u, self.dep, self.B) and self.args(u)[0] == nid
            for u in self.J.successors(nid))

    def domain(self, nid):
        """The iteration space a node computes in: a row reduction in its operand's."""
        if self.is_rowred(nid):
            return tuple(self.node(self.args(nid)[0]).shape)
        return tuple(self.node(nid).shape)

    def is_rowred(self, nid):
        """A per-step row reduction (stages.is_row_reduction)."""
        return self.stage.get(nid) not in (None, "inv", "tail") and is_row_reduction(self.J, nid)

    # ---------------------------------------------------------------- homes
    def needs_home(self, nid):
        """Read outside its own kernel (another kernel, another stage, a view) or an output."""
        if nid in self.J.graph["outputs"]:
            return True
        g = self.group_of.get(nid)
        for u in self.J.successors(nid):
            if u in self.stage and (self.group_of.get(u) != g or is_col_view(self.node(u))):
                return True
            if u in self.stage and self.groups[g][1] != "fused":
                return True
        return False

    def crosses(self, nid):
        """Read by a different stage (or, for forward values, by the reverse loop)."""
        st = STAGE_LIST.get(self.stage.get(nid))
        for u in self.J.successors(nid):
            su = self.stage.get(u)
            if su is None or su == "inv":
                continue
            if (is_col_view(self.node(u)) or self.read_transposed(u)) and self.crosses(u):
                return True     # views are storage: their readers read ours
            if STAGE_LIST.get(su, su) != st:
                return True
        return False

    def _carried(self, nid, shape, name, buf, init, slot, home_slot):
        """State leaf j (or its cotangent) lives in the T+1-slot output buffer <buf>j, whose
        `slot` ("first"/"last") is filled from the input <init>j before the loop."""
        j = int(name.split("[")[1].rstrip("]"))
        self.homes[nid] = Home(self.buffer(f"{buf}{j}", shape, "T+1", "output"), home_slot)
        self.buffer(f"{init}{j}", shape, None, "input")
        self.inits.append(Copy(Ref(f"{buf}{j}", slot), Ref(f"{init}{j}")))

    def assign_homes(self, order):
        roles, names, G = self.J.graph["roles"], self.J.graph["names"], self.J.graph
        for nid in G["inputs"]:
            n, role, name = self.node(nid), roles[nid], names[nid]
            if role == "x":
                self.homes[nid] = Home(self.buffer("x", n.shape, "T", "input"), 0)
            elif role == "state":
                self._carried(nid, n.shape, name, "S", "s0_", "first", 0)
            elif role == "ct" and name == "ct:y":
                self.homes[nid] = Home(self.buffer("d_out", n.shape, "T", "input"), 0)
            elif role == "ct":
                self._carried(nid, n.shape, name, "DS", "d_sT_", "last", 1)
        # invariant values read by native kernels
        for nid in order:
            if self.stage.get(nid) != "inv" and not (nid in roles and roles[nid] == "param"):
                continue
            if any(self.stage.get(u) not in (None, "inv", "tail") for u in self.J.successors(nid)):
                n = self.node(nid)
                if n.op == "const" and n.shape == ():
                    continue      # a literal in the kernel body
                # kind "param": parameter-derived, never split across batch threads
                name = self.buffer(f"inv{nid}", n.shape if len(n.shape) != 0 else (1,),
                                   None, "param")
                self.inv[name] = nid
                self.homes[nid] = Home(name)
        self.force_outputs()
        # concat operands written in place
        for nid in order:
            n = self.node(nid)
            if self.stage.get(nid) in (None, "inv", "tail") or n.op != "concat":
                continue
            home = self.homes.get(nid) or self.fresh(nid)
            self.homes[nid] = home
            col = home.col
            for a in self.args(nid):
                w = self.node(a).shape[1]
                # computed here and not yet placed: write it straight into the window (its other
                # readers read it from there), unless another stage reads it per step and the
                # concat's buffer keeps only the current step (found by hypothesis: relu's
                # backward read the last forward step's value of a concat operand)
                if (a not in self.homes and self.group_of.get(a) is not None and
                        a not in self.J.graph["outputs"] and
                        self.stage.get(a) == self.stage.get(nid) and
                        (self.bufs[home.buf].steps is not None or not self.crosses(a))):
                    self.homes[a] = Home(home.buf, home.off, col, w)
                col += w
        for nid in order:
            st = self.stage.get(nid)
            if st in (None, "inv", "tail") or nid in self.homes:
                continue
            n = self.node(nid)
            if is_col_view(n) or self.read_transposed(nid):
                continue
            if st == "contract" or (st == "bwd" and is_contraction(self.J, nid, self.dep, self.B)):
                shape = n.shape if n.op == "matmul" else (int(np.prod(n.shape)),)
                name = self.buffer(f"g{nid}", shape, None, "grad")
                self.grads[nid] = name
                self.homes[nid] = Home(name)
                if st == "bwd":
                    self.inits.append(Fill(Ref(name), 0.0))
            elif self.needs_home(nid):
                self.homes[nid] = self.in_place(nid) or self.fresh(nid)

    def in_place(self, nid):
        """The storage of an operand nothing else reads, for an elementwise result of its shape
        (e.g. a gate update written over the value it updates): one buffer and pass fewer.
        Safe in a fused kernel, which reads each element before it writes it."""
        g = self.group_of.get(nid)
        if g is None or self.groups[g][1] != "fused" or self.is_rowred(nid):
            return None
        n = self.node(nid)
        for a in self.args(nid):
            an = self.node(a)
            if tuple(an.shape) != tuple(n.shape):
                continue
            owner = self.src_of(a)
            home = self.homes.get(owner)
            og = self.group_of.get(owner)
            if (home is None or og is None or owner in self.J.graph["outputs"] or
                    self.stage.get(owner) != self.stage.get(nid) or home.col or home.cols):
                continue
            if self.crosses(nid) and home.off is None:
                continue      # read by a later stage: needs its own slot per step
            r = self.ref(a, self.stage[nid])
            if self.shares_storage(owner, home, r.col, r.cols):
                continue      # a concat operand lives in this window and is read again later
            readers = [a] if owner == a else list(self.J.successors(owner))
            if owner != a and not all(is_col_view(self.node(v)) for v in readers):
                continue
            if all(list(self.J.successors(v)) == [nid] if v == a else
                   all(self.group_of.get(w) == g for w in self.J.successors(v))
                   and len(list(self.J.successors(v))) == 1 for v in readers) and \
                    (owner == a or len(list(self.J.successors(a))) == 1):
                return Home(home.buf, home.off, r.col, r.cols)
        return None

    def shares_storage(self, owner, home, col, cols):
        """Whether another value stored in columns [col, col+cols) of owner's storage (a concat
        operand written into its window) is read by something other than owner: writing over
        those columns would lose it."""
        width = self.bufs[home.buf].shape[-1]
        lo, hi = col, col + (width if cols is None else cols)
        for v, h in self.homes.items():
            if v == owner or h.buf != home.buf or h.off != home.off:
                continue
            vlo = h.col
            vhi = vlo + (width if h.cols is None else h.cols)
            if vlo < hi and lo < vhi and any(w != owner for w in self.J.successors(v)):
                return True
        return False

    def fresh(self, nid):
        n, st = self.node(nid), self.stage[nid]
        if st in ("pre", "post") or self.crosses(nid):
            return Home(self.buffer(f"v{nid}", n.shape, "T"), 0)
        return Home(self.buffer(f"v{nid}", n.shape))

    def force_outputs(self):
        outs, wrt = self.J.graph["outputs"], self.J.graph.get("wrt", [])
        roles, names = self.J.graph["roles"], self.J.graph["names"]
        self.out_copies = {"fwd_loop": [], "bwd_loop": [], "post": []}
        self.outputs = {"state": [], "d_state": [], "d_params": {}}
        y = outs[0]
        for j, o in enumerate(outs[1:self.n_fwd]):
            self.place(o, Home(f"S{j}", 1), "fwd")
            self.outputs["state"].append(f"S{j}")
        states = outs[1:self.n_fwd]
        if y in states:
            self.outputs["y"] = ("S%d" % states.index(y), "all+1")
        else:
            self.buffer("Y", self.node(y).shape, "T", "output")
            self.place(y, Home("Y", 0), "fwd")
            self.outputs["y"] = ("Y", "all")
        if not self.train:
            return
        extra = outs[self.n_fwd + len(wrt):]
        if extra:
            self.outputs["adjoints"] = []
        for j, o in enumerate(extra):
            self.buffer(f"ADJ{j}", self.node(o).shape, "T", "output")
            self.place(o, Home(f"ADJ{j}", 0), "bwd")
            self.outputs["adjoints"].append(f"ADJ{j}")
        for o, w in zip(outs[self.n_fwd:], wrt):
            role = roles[w]
            if role == "state":
                j = int(names[w].split("[")[1].rstrip("]"))
                self.place(o, Home(f"DS{j}", 0), "bwd")
                self.outputs["d_state"].append(f"DS{j}")
            elif role == "x":
                self.buffer("DX", self.node(o).shape, "T", "output")
                self.place(o, Home("DX", 0), "bwd" if self.stage.get(o) == "bwd" else "post")
                self.outputs["d_x"] = "DX"
            else:
                self.outputs["d_params"][names[w]] = o

    def place(self, nid, home, loop_stage):
        """Make `nid`'s value land in `home`: computed straight into it when it is produced in
        that stage, else copied there at the end of the stage."""
        st = self.stage.get(nid)
        if st == loop_stage and nid not in self.homes and not is_col_view(self.node(nid)):
            self.homes[nid] = home
            return
        if st == "inv" and self.literal(nid) is None:
            # a parameter-derived per-step value (e.g. zeros for an input the step never
            # reads): one numpy-filled buffer, copied into every step's slot
            if nid not in self.homes:
                name = self.buffer(f"inv{nid}", self.node(nid).shape, None, "param")
                self.inv[name] = nid
                self.homes[nid] = Home(name)
            loop_stage = "fwd" if loop_stage == "fwd" else "bwd"
        self.out_copies[STAGE_LIST[loop_stage]].append((nid, home))

    # ---------------------------------------------------------------- emission
    def ref(self, nid, stage):
        if nid in self.homes:
            return self.homes[nid].ref(stage)
        n = self.node(nid)
        if is_col_view(n):
            r = self.ref(self.args(nid)[0], stage)
            idx = ir.thaw_attrs(n)["index"]
            if len(idx) == 1:
                return r
            sl = idx[1]
            lo, hi, _ = sl.indices(self.node(self.args(nid)[0]).shape[1])
            return Ref(r.buf, r.t, r.col + lo, hi - lo)
        raise AssertionError(f"value %{nid} ({n.op}) has no storage")

    def literal(self, nid):
        """The float a node always equals, if it is a (broadcast) scalar constant."""
        n = self.node(nid)
        if nid in self.homes:
            return None
        if n.op == "broadcast_to":
            src = self.args(nid)[0]
            return self.literal(src) if int(np.prod(self.node(src).shape)) == 1 else None
        if n.op == "const" and int(np.prod(n.shape, dtype=np.int64)) == 1:
            return float(ir.const_value(n).reshape(()))
        return None

    def emit(self):
        for gi, (stage, kind, nodes) in enumerate(self.groups):
            ks = self.kernels[stage]
            st = "pre" if stage == "pre" else ("post" if stage == "post" else stage[:3])
            if kind == "gemm":
                nid = nodes[0]
                a, b = self.args(nid)
                if is_contraction(self.J, nid, self.dep, self.B):
                    ks.append(Gemm(self.ref(nid, st), self.ref(self.args(a)[0], st),
                                   self.ref(b, st), trans_a=True, accumulate=stage == "bwd_loop"))
                else:
                    ks.append(Gemm(self.ref(nid, st), self.ref(a, st), self.ref(b, st)))
            elif kind == "colsum":
                nid = nodes[0]
                ks.append(Fused(f"colsum{nid}", ((self.ref(self.args(nid)[0], st), "full"),), (),
                                (), ((("in0", self.ref(nid, st), stage == "bwd_loop")),),
                                (nid,)))
            elif kind in ("concat", "pad"):
                nid = nodes[0]
                out = self.ref(nid, st)
                if kind == "pad":
                    ks.append(Fill(out, 0.0))
                    lo, hi, _ = ir.thaw_attrs(self.node(nid))["index"][1].indices(
                        self.node(nid).shape[1])
                    ks.append(Copy(Ref(out.buf, out.t, out.col + lo, hi - lo),
                                   self.ref(self.args(nid)[0], st)))
                    continue
                col = out.col
                for a in self.args(nid):
                    w = self.node(a).shape[1]
                    win = Ref(out.buf, out.t, col, w)
                    if self.ref(a, st) != win:
                        ks.append(Copy(win, self.ref(a, st)))
                    col += w
            else:
                ks.append(self.fused(gi, stage, st, nodes))
        for stage, copies in self.out_copies.items():
            st = "post" if stage == "post" else stage[:3]
            for nid, home in copies:
                lit = self.literal(nid)
                if lit is not None:
                    self.kernels[stage].append(Fill(home.ref(st), lit))
                else:
                    self.kernels[stage].append(Copy(home.ref(st), self.ref(nid, st)))
        self.kernels["pre"][:0] = self.inits

    def fused(self, gi, stage, st, nodes):
        inputs, body, outputs, rowreds = {}, [], [], []
        members = set(nodes)

        def operand(a, shape, user):
            """The body name of value a read by `user` (iterating over `shape`)."""
            if a in members:
                return f"v{a}"
            lit = self.literal(a)
            if lit is not None:
                return lit
            an = self.node(a)
            if tuple(an.shape) == tuple(shape):
                bc = "full"
            elif tuple(an.shape) == (shape[0], 1) and (self.dep[a] or shape[0] > 1):
                bc = "col"     # a per-step one also with one row: over all T steps, a column
            elif int(np.prod(an.shape, dtype=np.int64)) == 1:
                bc = "scalar"
            elif len(an.shape) <= 2 and an.shape[-1] == shape[-1] and \
                    int(np.prod(an.shape[:-1], dtype=np.int64)) == 1:
                bc = "row"
            else:
                self.fail(user, f"operand of shape {list(an.shape)} broadcasts in a way the "
                                f"fused kernels do not support")
            key = (self.ref(a, st), bc)
            inputs.setdefault(key, f"in{len(inputs)}")
            return inputs[key]

        for nid in nodes:
            n = self.node(nid)
            if self.is_rowred(nid):
                src = self.args(nid)[0]
                rowreds.append((operand(src, self.node(src).shape, nid),
                                self.homes[nid].ref(st), n.op))
                continue
            names = tuple(operand(a, n.shape, nid) for a in self.args(nid))
            if n.op == "broadcast_to":
                # operands arrive broadcast ("row", "col", "scalar"): only the value is left,
                # and x * 1.0 is x exactly (NaN, -0.0 and inf included)
                body.append((f"v{nid}", "mul", names + (1.0,), ()))
            else:
                body.append((f"v{nid}", n.op, names, n.attrs))
            if nid in self.homes:
                outputs.append((f"v{nid}", self.homes[nid].ref(st)))
        if rowreds and not outputs and all(bc != "full" for _, bc in inputs):
            # nothing of the reduced width is read or written (a sum of broadcasts): store
            # the first reduced value so the kernel has a (rows, features) iteration space
            src = self.args(next(n for n in nodes if self.is_rowred(n)))[0]
            steps = "T" if stage in ("pre", "post") else None
            home = Home(self.buffer(f"v{src}", self.node(src).shape, steps),
                        0 if steps else None)
            outputs.append((f"v{src}", home.ref(st)))
        ops = "_".join(dict.fromkeys(self.node(n).op for n in nodes))[:40]
        return Fused(f"{stage}{gi}_{ops}", tuple(inputs), tuple(body), tuple(outputs), (),
                     tuple(nodes), tuple(rowreds))


def evaluate(J, targets, env):
    """Values of `targets` by the primitives' numpy forwards; env holds inputs (node id -> array)."""
    return evaluator(J, targets, env)(env)


def evaluator(J, targets, given):
    """evaluate(J, targets, env) with the graph walk done once: a function env -> values, for
    env with the node ids `given`. The graph side calls it on every training step (weights into
    the kernels' layouts, gradients back into the parameters'), where walking the networkx graph
    again cost more than the arithmetic (~0.2 ms a step at B = 1)."""
    given, steps, seen = set(given), [], set()
    consts = {}

    def visit(nid):
        if nid in seen or nid in given:
            return
        seen.add(nid)
        n = ir.node(J, nid)
        if n.op == "const":
            consts[nid] = ir.const_value(n)
        elif n.op == "input":
            raise KeyError(f"input %{nid} ({J.graph['names'].get(nid)}) was not given")
        else:
            args = tuple(ir.args_of(J, nid))
            for a in args:
                visit(a)
            steps.append((nid, PRIMITIVES[n.op].fwd, args, ir.thaw_attrs(n)))
    for t in targets:
        visit(t)
    targets = list(targets)

    def run(env):
        env = {**env, **consts}
        for nid, fwd, args, attrs in steps:
            env[nid] = np.asarray(fwd(*[env[a] for a in args], **attrs))
        return [env[t] for t in targets]
    return run


def memory_per_step(prog, itemsize):
    """Bytes per time step of the per-step buffers, by what they are for: what the forward loop
    saves for the reverse loop (activations; the states are the outputs anyway), the hoisted
    input projection, and what either loop stores for the weight-gradient products after the
    reverse loop (a forward-loop value that only those products read, such as the Cho GRU's
    r * h_prev, counts there and not as saved for the reverse loop)."""
    writer, readers = {}, {}
    for stage, k in prog.kernels():
        ins, outs = kernel_refs(k)
        for r in ins:
            readers.setdefault(r.buf, set()).add(stage)
        for r in outs:
            writer.setdefault(r.buf, stage)
    out = {"saved_for_reverse_bytes": 0, "hoisted_bytes": 0, "kept_for_post_bytes": 0}
    for buf in prog.buffers.values():
        if not buf.steps or buf.kind != "temp":
            continue
        w, r = writer.get(buf.name), readers.get(buf.name, set())
        if w == "pre":
            key = "hoisted_bytes"
        elif w == "fwd_loop" and "bwd_loop" in r:
            key = "saved_for_reverse_bytes"
        elif w in ("fwd_loop", "bwd_loop") and "post" in r:
            key = "kept_for_post_bytes"
        else:
            continue
        out[key] += int(np.prod(buf.shape)) * itemsize
    return out


def _batch_major_invariants(prog, inv, batch):
    """Invariant buffers (numpy-filled, kind "param": never split between batch threads) that
    kernels read one row per batch row (a (B, H) or (B, 1) constant the step closes over, the
    zeros of a gate window the step never reads in a packed gradient) are batch-major: kind
    "input", so the batch split gives each half its own rows (it crashed: "input ... has shape
    (4, False, 4), expected (2, False, 4)"). A buffer also read as a matrix or a broadcast row
    keeps its kind."""
    per_row, shared = set(), set()
    for _, k in prog.kernels():
        if isinstance(k, Fused):
            for r, bc in k.inputs:
                (per_row if bc in ("full", "col") else shared).add(r.buf)
        elif isinstance(k, Copy):
            (per_row if is_batched(prog, k.out.buf) else shared).add(k.src.buf)
        elif isinstance(k, Gemm):
            per_row.add(k.a.buf)
            shared.add(k.b.buf)
    for name in inv:
        buf = prog.buffers[name]
        if name in per_row and name not in shared and len(buf.shape) == 2 and \
                buf.shape[0] == batch:
            prog.buffers[name] = replace(buf, kind="input")


def build(J, stage, dep, batch, n_fwd, train=True) -> Built:
    b = _Builder(J, stage, dep, batch, n_fwd, train)
    b.dt = ir.node(J, J.graph["outputs"][0]).dtype
    order = ir.order(J)
    b.group_nodes(order)
    b.assign_homes(order)
    b.emit()
    prog = Program(b.bufs, b.kernels["pre"], b.kernels["fwd_loop"], b.kernels["bwd_loop"],
                   b.kernels["post"], {"batch": batch})
    _batch_major_invariants(prog, b.inv, batch)
    report = {**memory_per_step(prog, np.dtype(b.dt).itemsize),
              "buffers": len(b.bufs),
              "fused_kernels": sum(isinstance(k, Fused) and bool(k.body or k.rowreds)
                                   for _, k in prog.kernels()),
              "gemms_per_step": sum(isinstance(k, Gemm) for s, k in prog.kernels()
                                    if s in ("fwd_loop", "bwd_loop"))}
    return Built(prog, J, stage, b.inv, b.grads, b.outputs, report)
