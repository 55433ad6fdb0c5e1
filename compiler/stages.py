"""Where each node of a layer's joint forward+backward graph runs.

The joint graph J has the step's inputs (params, x, state leaves, and the cotangents ct:y and
ct:new_state[i]) and as outputs the step's outputs followed by the cotangents of params, x and
state. Each live node gets one stage:

  inv        depends on parameters and constants only: computed once per call, in numpy
             (parameter-sized: transposed or packed weights)
  pre        forward, independent of the state, and row-mappable: runs once over all T*B rows
             (the input projection x @ W_ih^T, and row-mappable work a hoisted product reads)
  fwd        the rest of the forward step: the time loop
  bwd        the reverse loop: everything the state cotangent's recurrence needs
  post       backward work off that recurrence, row-mappable: once over T*B rows (d_x = dG @ W)
  contract   sums over t of per-step contractions over the batch axis (A_t^T @ G_t, column sums):
             one product over T*B rows after the loop; in the loop they accumulate
  tail       parameter-sized linear work after a contraction (transposes, slices of packed
             gradients): in numpy after the native call, since sum_t f(C_t) = f(sum_t C_t)
"""
from __future__ import annotations

import networkx as nx

from graphgrad import ops as gops
from graphgrad.core import PRIMITIVES

from . import ir
from .errors import CompileError
from .trace import GraphTrace

# Linear maps that commute with the sum over time steps.
LINEAR = {"transpose", "reshape", "add", "sub", "neg", "getitem", "pad_into", "concat",
          "broadcast_to", "sum", "stop_gradient"}


def deps(J):
    """nid -> frozenset of dependency kinds among {"x", "state", "cty", "cts"}."""
    roles, names = J.graph["roles"], J.graph["names"]
    out = {}
    for nid in ir.order(J):
        if nid in roles:
            r = roles[nid]
            kind = {"x": "x", "state": "state", "param": None}.get(r)
            if r == "ct":
                kind = "cty" if names.get(nid) == "ct:y" else "cts"
            out[nid] = frozenset([kind]) if kind else frozenset()
        else:
            out[nid] = frozenset().union(*(out[a] for a in ir.args_of(J, nid)))
    return out


def is_col_view(n) -> bool:
    """getitem taking a column window of a 2-d value: a Ref window, no kernel."""
    if n.op != "getitem" or len(n.shape) != 2:
        return False
    idx = ir.thaw_attrs(n)["index"]
    if len(idx) == 1:
        return isinstance(idx[0], slice) and idx[0] == slice(None)
    return (len(idx) == 2 and idx[0] == slice(None) and isinstance(idx[1], slice)
            and idx[1].step in (None, 1))


def is_contraction(J, nid, dep, batch) -> bool:
    """A per-step reduction over the batch axis: transpose(A_t) @ G_t or sum(G_t, axis=0)."""
    n = ir.node(J, nid)
    args = ir.args_of(J, nid)
    if n.op == "matmul" and len(n.shape) == 2:
        a, b = args
        an, bn = ir.node(J, a), ir.node(J, b)
        return (an.op == "transpose" and an.shape[-1] == batch and bn.shape[0] == batch and
                len(bn.shape) == 2 and bool(dep[a]) and bool(dep[b]))
    if n.op == "sum":
        src = ir.node(J, args[0])
        return (ir.thaw_attrs(n)["axis"] == (0,) and len(src.shape) == 2 and
                src.shape[0] == batch and bool(dep[args[0]]))
    if n.op == "reshape" and batch == 1:
        # with one row, simplify turns the batch sum into a reshape (1, N) -> (N,)
        src = ir.node(J, args[0])
        return len(src.shape) == 2 and src.shape[0] == 1 and n.shape == src.shape[1:] and \
            bool(dep[args[0]])
    return False


def is_row_reduction(J, nid) -> bool:
    """A sum or max over the features of a (rows, features) value, keeping the (rows, 1) shape
    (layer norm's mean, softmax's max and normalizer, the gradient of a (rows, 1) column
    broadcast across the features)."""
    n = ir.node(J, nid)
    if n.op not in ("sum", "max"):
        return False
    src = ir.node(J, ir.args_of(J, nid)[0]).shape
    return len(src) == 2 and ir.thaw_attrs(n)["axis"] == (1,) and tuple(n.shape) == (src[0], 1)


def one_row_sums(J, batch, n_fwd_outputs):
    """With one batch row, a parameter broadcast over the batch has no batch sum in its
    gradient (the tape's unbroadcast of (1, H) onto (1, H) is the identity), so nothing
    contracts it and it would not be summed over time: d(h * g)/dg = ct_h * h for g of shape
    (1, H). Put the one-row sum back where the gradient's per-step part ends, so `assign`
    sums it over T like any other contraction and keeps what follows as the linear tail."""
    if batch != 1:
        return J
    J = ir.copy_graph(J)
    dep, roles = deps(J), J.graph["roles"]
    outs = J.graph["outputs"]
    grads = {n_fwd_outputs + i for i, w in enumerate(J.graph.get("wrt", []))
             if roles.get(w) == "param"}
    others = set()
    for i, o in enumerate(outs):
        if i not in grads:
            others |= nx.ancestors(J, o) | {o}
    # walk first, rewire after: the walk must see the graph it started from (a linear node
    # reached again from another gradient still has its own arguments)
    seen, cut = set(), []        # cut: (value, its user: a node, or ("out", i))
    for i in sorted(grads):
        stack = [(outs[i], ("out", i))]
        while stack:
            v, user = stack.pop()
            if (v, user) in seen or not dep[v] or is_contraction(J, v, dep, batch):
                continue
            seen.add((v, user))
            n, args = ir.node(J, v), ir.args_of(J, v)
            if v not in others and n.op != "input" and \
                    _linear_in_summed(n.op, args, {a for a in args if dep[a]}):
                stack += [(a, v) for a in set(args) if dep[a]]
            elif len(n.shape) == 2 and n.shape[0] == 1:
                cut.append((v, user))
            # else: not a (batch, features) value; lowering names what it cannot do
    tr, summed = GraphTrace(J), {}
    for v, user in cut:
        if v not in summed:
            n = ir.node(J, v)
            tr.src = n.src or None
            summed[v] = gops.reshape(gops.sum(tr.tracer(v), axis=0), n.shape).nid
        if isinstance(user, tuple):
            outs[user[1]] = summed[v]
        else:
            pos = J.edges[v, user]["pos"]
            J.remove_edge(v, user)
            J.add_edge(summed[v], user, pos=pos)
    return J


def row_mappable(J, nid, dep, batch) -> bool:
    """Can the node run on the T steps stacked as T*B rows with the same attributes?"""
    n = ir.node(J, nid)
    if len(n.shape) != 2 or n.shape[0] != batch:
        return False
    args = ir.args_of(J, nid)
    if n.op == "matmul":
        return bool(dep[args[0]]) and not dep[args[1]] and ir.node(J, args[0]).shape[0] == batch
    if is_col_view(n):
        return True
    if n.op == "concat":
        return ir.thaw_attrs(n)["axis"] == 1 and all(dep[a] for a in args)
    if n.op in ("sum", "max"):      # over the features: each row on its own
        return is_row_reduction(J, nid) and bool(dep[args[0]])
    if n.op == "broadcast_to":      # a (B, 1) column across the features
        return bool(dep[args[0]]) and ir.node(J, args[0]).shape == (batch, 1)
    if PRIMITIVES[n.op].kind == "elementwise":
        # per-step operands must be full (B, N) or (B, 1) columns; invariant ones rows or scalars
        return all((dep[a] and ir.node(J, a).shape in (n.shape, (batch, 1))) or
                   (not dep[a] and len(ir.node(J, a).shape) < 2) for a in args)
    return False


def assign(J, batch, n_fwd_outputs, train=True):
    """nid -> stage for every live non-input node of J (see the module docstring)."""
    dep = deps(J)
    outs = J.graph["outputs"]
    targets = outs if train else outs[:n_fwd_outputs]
    live = set(targets).union(*(nx.ancestors(J, o) for o in targets))
    order = [n for n in ir.order(J) if n in live and ir.node(J, n).op != "input"]
    stage = {}
    for nid in order:
        if not dep[nid]:
            stage[nid] = "inv"
    # forward: hoist matmuls on x before the loop, with the row-mappable work between them
    for nid in order:
        d = dep[nid]
        if nid in stage or d & {"cty", "cts"}:
            continue
        n = ir.node(J, nid)
        args = ir.args_of(J, nid)
        hoist = False
        if "state" not in d and row_mappable(J, nid, dep, batch):
            src_ok = all(stage.get(a) in ("inv", "pre") or not dep[a] or
                         J.graph["roles"].get(a) == "x" for a in args)
            if n.op == "matmul" or is_col_view(n):
                hoist = src_ok
            else:    # the bias add on the projection, layer norm of it, ... (see below)
                hoist = src_ok and any(stage.get(a) == "pre" for a in args)
        stage[nid] = "pre" if hoist else "fwd"
    _unhoist_elementwise(J, stage, order)
    if not train:
        return stage, dep
    # Forward values only the backward reads (1 - a*a for tanh', ...) are recomputed in the
    # reverse loop from the saved activations instead of being saved themselves.
    fwd_targets = outs[:n_fwd_outputs]
    fwd_live = set(fwd_targets).union(*(nx.ancestors(J, o) for o in fwd_targets))
    for nid in order:
        if stage.get(nid) == "fwd" and nid not in fwd_live:
            del stage[nid]
    bwd_nodes = [n for n in order if n not in stage]   # incl. the recomputed forward values
    wrt = J.graph.get("wrt", [])
    d_state_outs = [o for o, w in zip(outs[n_fwd_outputs:], wrt)
                    if J.graph["roles"].get(w) == "state"]
    forced = set(o for o in d_state_outs if o in bwd_nodes)
    while True:
        loop = set(forced)
        for o in forced:
            loop |= {a for a in nx.ancestors(J, o) if a in bwd_nodes and stage.get(a) is None}
        placed, summed = {}, set()   # summed: values that are sums over t (param-sized)
        fallback = set()
        for nid in bwd_nodes:
            n = ir.node(J, nid)
            args = ir.args_of(J, nid)
            if is_contraction(J, nid, dep, batch):
                summed.add(nid)
                placed[nid] = "bwd" if nid in loop else "contract"
            elif nid in loop:
                placed[nid] = "bwd"
            elif args and all(a in summed or not dep[a] for a in args) \
                    and any(a in summed for a in args) and _linear_in_summed(n.op, args, summed):
                summed.add(nid)
                placed[nid] = "tail"
            elif row_mappable(J, nid, dep, batch) and not any(a in summed for a in args):
                placed[nid] = "post"
            else:
                fallback.add(nid)
        if not fallback - forced:
            break
        forced |= fallback
    for nid, s in placed.items():
        stage[nid] = s
    _check_tail(J, stage)
    _check_batch_sums(J, stage, dep, batch, n_fwd_outputs)
    _check_param_grads(J, stage, dep, batch, n_fwd_outputs)
    return stage, dep


def _unhoist_elementwise(J, stage, order):
    """Move hoisted elementwise work and row reductions that no hoisted node reads back into
    the forward loop. Hoisting them saves no arithmetic: in pre they are an extra pass over
    all T*B rows of the projection (6.5 MB for the LSTM at (32, 64, 128, 100)); in the loop
    they join the gate kernel, which reads those rows anyway."""
    for nid in reversed(order):
        if stage.get(nid) != "pre":
            continue
        n = ir.node(J, nid)
        if n.op in ("matmul", "concat") or is_col_view(n):
            continue
        if not any(stage.get(u) == "pre" for u in J.successors(nid)):
            stage[nid] = "fwd"


def _param_grads(J, n_fwd_outputs):
    """(gradient output, parameter input) pairs of the joint graph."""
    roles = J.graph["roles"]
    return [(o, w) for o, w in zip(J.graph["outputs"][n_fwd_outputs:], J.graph.get("wrt", []))
            if roles.get(w) == "param"]


def _check_param_grads(J, stage, dep, batch, n_fwd_outputs):
    """Each parameter gradient must be a sum over the batch rows (a contraction, summed over
    the steps as it accumulates) or parameter-sized work after one. A parameter with a row per
    batch row (a (B, 1) per-row gate, a (B, H) gain) is not broadcast over the batch: its
    gradient is a per-step (B, ...) value with nothing to sum it over the steps (the vjp failed
    with KeyError: 'input ... (ct:y) was not given'). Refuse it, naming the parameter."""
    names = J.graph["names"]
    for o, w in _param_grads(J, n_fwd_outputs):
        if not dep[o] or stage.get(o) in ("tail", "contract") or is_contraction(J, o, dep, batch):
            continue
        shape = list(ir.node(J, w).shape)
        users = sorted((u for u in J.successors(w) if ir.node(J, u).src), key=str)
        n = ir.node(J, users[0]) if users else ir.node(J, w)
        rows = (f" has a row per batch row ({batch})" if len(shape) == 2 and shape[0] == batch
                else " is not broadcast over the batch rows")
        raise CompileError(
            f"{n.op}: parameter {names.get(w)!r} of shape {shape}{rows}: its gradient is a "
            f"per-step value, not a sum over the batch, and has no native lowering (parameters "
            f"are shared by the rows of a batch; give it one row, e.g. shape [1, "
            f"{shape[-1] if shape else 1}], to broadcast over them); the tape runs it",
            n.op, n.src)


def batch_mixing(op):
    """Why a per-step reduction over the batch rows is refused."""
    return (f"a per-step {op} over the batch axis (mixing the rows of a batch within a step) has "
            f"no native lowering: compiled programs keep batch rows independent, and sum over "
            f"the batch only in parameter gradients; the tape runs it")


def _check_batch_sums(J, stage, dep, batch, n_fwd_outputs):
    """A batch reduction is lowered as a parameter-gradient sum over time (a contraction), so
    one whose value a step reads (batch statistics in the forward step, their cotangents in the
    reverse one) or that is a step output would be summed over the steps: refuse it."""
    outs = J.graph["outputs"]
    grads = {o for o, _ in _param_grads(J, n_fwd_outputs)}
    for nid in stage:
        if not is_contraction(J, nid, dep, batch):
            continue
        per_step = [u for u in J.successors(nid) if stage.get(u) not in (None, "inv", "tail")]
        if per_step or (nid in outs and nid not in grads):
            n = ir.node(J, nid)
            why = ("reshaping a per-step (1, N) value to (N,) has no native lowering at batch 1 "
                   "(a sum, mean or max over the batch axis without keepdims is one; with "
                   "keepdims=True it compiles)" if n.op == "reshape" else batch_mixing(n.op))
            raise CompileError(f"{n.op}: {why}", n.op, n.src)


def _linear_in_summed(op, args, summed):
    """Is the op linear in its summed operands (the others being parameter-derived)?"""
    if op in LINEAR:
        return True
    if op in ("mul", "matmul"):   # sum_t (C_t @ W) = (sum_t C_t) @ W for W parameter-derived
        return sum(a in summed for a in args) == 1
    if op == "div":
        return args[0] in summed and args[1] not in summed
    return False


def _check_tail(J, stage):
    for nid, s in stage.items():
        if s != "tail":
            continue
        for u in J.successors(nid):
            if stage.get(u) not in ("tail", None):
                n = ir.node(J, u)
                raise CompileError(f"{n.op}: a per-step value depends on a parameter gradient "
                                   f"sum; this step function cannot be compiled to a loop",
                                   n.op, n.src)
