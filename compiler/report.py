"""Human-readable views of a scheduled layer: kernels per stage, fusion, memory."""
from __future__ import annotations

from . import ir
from .schedule import Copy, Fill, Fused, Gemm


def _ref(r):
    t = "" if r.t is None else f"[{r.t}]" if isinstance(r.t, str) else f"[t{r.t:+d}]"
    w = "" if r.col == 0 and r.cols is None else f"[:, {r.col}:{'' if r.cols is None else r.col + r.cols}]"
    return f"{r.buf}{t}{w}"


def kernel_text(k, J=None):
    if isinstance(k, Gemm):
        a = _ref(k.a) + (".T" if k.trans_a else "")
        b = _ref(k.b) + (".T" if k.trans_b else "")
        return f"{_ref(k.out)} {'+=' if k.accumulate else '='} {a} @ {b}"
    if isinstance(k, Copy):
        return f"{_ref(k.out)} = {_ref(k.src)}"
    if isinstance(k, Fill):
        return f"{_ref(k.out)} = {k.value}"
    if isinstance(k, Fused):
        ins = ", ".join(f"{n}={_ref(r)}{'' if bc == 'full' else '(' + bc + ')'}"
                        for n, (r, bc) in zip([f"in{i}" for i in range(len(k.inputs))], k.inputs))
        lines = [f"fused {k.name}({ins})"]
        for dst, op, args, _ in k.body:
            lines.append(f"    {dst} = {op}({', '.join(map(str, args))})")
        for loc, r in k.outputs:
            lines.append(f"    {_ref(r)} <- {loc}")
        for loc, r, acc in k.colsums:
            lines.append(f"    {_ref(r)} {'+=' if acc else '='} colsum({loc})")
        for loc, r, op in k.rowreds:
            lines.append(f"    {_ref(r)} = row{op}({loc})")
        return "\n".join(lines)
    return repr(k)


def schedule_text(built, with_stages=False):
    p = built.program
    out = []
    if with_stages:
        for nid in ir.order(built.J):
            if nid in built.stage:
                n = ir.node(built.J, nid)
                out.append(f"%{nid:<5} {built.stage[nid]:<9} {n}")
    out.append("buffers: " + ", ".join(f"{b.name}{list(b.shape)}{'x' + b.steps if b.steps else ''}"
                                        for b in p.buffers.values()))
    for stage in ("pre", "fwd_loop", "bwd_loop", "post"):
        out.append(f"-- {stage}")
        out += ["  " + kernel_text(k).replace("\n", "\n  ") for k in getattr(p, stage)]
    out.append(f"-- report: {built.report}")
    return "\n".join(out)


def fusion_report(prog) -> str:
    """Which primitive ops went into which kernel, matmuls per step before and after, memory."""
    out = []
    for cl, built in zip([c for row in prog.compiled for c in row], prog.programs("train")):
        step = cl.ld.step.G
        mm_fwd = sum(ir.node(step, n).op == "matmul" for n in step.nodes)
        J = built.J
        p = built.program
        per_step = {s: sum(isinstance(k, Gemm) for k in getattr(p, s))
                    for s in ("fwd_loop", "bwd_loop")}
        out.append(f"layer {cl.ld.layer} direction {cl.ld.direction}: traced step has {mm_fwd} "
                   f"matmuls; after merging and hoisting the forward loop runs "
                   f"{per_step['fwd_loop']} product(s) per step and the reverse loop "
                   f"{per_step['bwd_loop']}")
        r = built.report
        out.append(f"  per step: {r['saved_for_reverse_bytes']} bytes of activations saved for the "
                   f"reverse loop, {r['hoisted_bytes']} of hoisted input projection, "
                   f"{r['kept_for_post_bytes']} kept for the weight-gradient products; "
                   f"{len(p.buffers)} buffers")
        for stage in ("pre", "fwd_loop", "bwd_loop", "post"):
            for k in getattr(p, stage):
                if isinstance(k, Fused) and (k.body or k.rowreds):
                    ops = [ir.node(J, n).op for n in k.sources if n in J]
                    counts = {o: ops.count(o) for o in dict.fromkeys(ops)}
                    desc = ", ".join(f"{o} x{c}" if c > 1 else o for o, c in counts.items())
                    extra = f" + {len(k.colsums)} column-sum epilogue(s)" if k.colsums else ""
                    if k.rowreds:
                        extra += (f" + {len(k.rowreds)} row reduction(s) over the features ("
                                  f"{', '.join(op for _, _, op in k.rowreds)})")
                    out.append(f"  {stage:<9} {k.name}: {len(k.sources)} ops fused ({desc}){extra}")
                elif isinstance(k, Fused) and k.colsums:
                    out.append(f"  {stage:<9} {k.name}: column sums (bias gradients) over "
                               f"{'all T*B rows' if stage in ('pre', 'post') else 'B rows'}")
                elif isinstance(k, Gemm):
                    out.append(f"  {stage:<9} gemm {kernel_text(k)}")
    return "\n".join(out)
