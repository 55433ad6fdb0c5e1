"""Time one BPTT training step of the compiled program against its peers, in one run.

    python benchmarks/bench_bptt.py                 # full table -> BENCHMARKS.md
    python benchmarks/bench_bptt.py --quick         # smallest configuration only, no file written

Each thread count runs in its own worker process, because BLAS, PyTorch and XLA fix their thread
pools when they start; the worker is pinned to that many cores (thread settings alone let XLA's
matmuls use both cores in the one-thread rows). Within a configuration the peers are timed
round-robin (one burst of calls each per round), so the ratios compare calls made under the
same machine conditions. Reported:
median ms per step, matmul GFLOP/s, and the fraction of this machine's measured float32 FMA peak
(single-core peak x threads). The tape (the eager reference) is timed at one thread only, with
fewer repeats: it is seconds per step at the large sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

CONFIGS = [(1, 32, 64, 100), (32, 64, 128, 100), (32, 256, 256, 100), (64, 512, 512, 50),
           (16, 128, 1024, 50)]
CELLS = ["rnn", "lstm", "gru"]
BURST_MS = 30.0
# PyTorch's OpenMP workers spin for several ms after each call before they sleep. Timed straight
# after a torch burst, the two-thread compiled LSTM (32,64,128,100) took 27-28 ms against 21-22
# ms alone or 10 ms later (it shared its two cores with the spinning worker).
SETTLE_S = 0.05
PEER_ORDER = ["compiled", "compiled-custom", "torch", "torch-loop", "jax", "tape"]
# float32 over up to 100 steps: the peers sum in different orders (measured up to ~1e-5)
AGREE_TOL = 1e-3
# On a VM the host can take a share of our cores ("steal" in /proc/stat): 10-60 % in phases on
# the 2-vCPU machine these tables come from, which slowed every peer of a row, two-thread spin
# barriers most (one two-thread GRU row read 240 ms against 16 ms in a quiet run). A row whose
# cores lost more than MAX_STEAL is timed again, up to RETRIES times; the quietest attempt is kept
# and the steal it saw is reported beside it.
MAX_STEAL = 0.05
RETRIES = 2


def pin(threads):
    """Confine this process, and every thread pool it starts later, to `threads` cores.

    Thread-count settings alone do not bound every peer: with intra_op_parallelism_threads=1
    and Eigen's multi-threading off, XLA's matmuls still ran on both cores (CPU time 1.8x the
    wall time), which made JAX's "1 thread" rows two-core rows. Affinity bounds all of them."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < threads:
        raise SystemExit(f"--threads {threads}: only {len(cpus)} CPU(s) available to this process")
    os.sched_setaffinity(0, cpus[:threads])


def cpu_ticks(cpus):
    """(steal, total) clock ticks summed over `cpus` since boot, from /proc/stat; None where
    there is no such file (not Linux)."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = {f"cpu{c}" for c in cpus}
    steal = total = 0
    for ln in lines:
        parts = ln.split()
        if parts and parts[0] in want:
            # user nice system idle iowait irq softirq steal (guest time is inside user)
            v = [int(x) for x in parts[1:9]]
            total, steal = total + sum(v), steal + (v[7] if len(v) > 7 else 0)
    return steal, total


def steal_between(a, b):
    """The fraction of the cores' time the host took between two cpu_ticks readings."""
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


def timed_quietly(time_row, cpus, max_steal=MAX_STEAL, retries=RETRIES, ticks=cpu_ticks):
    """Run time_row() (-> result) until the host's steal on `cpus` during it is at most
    max_steal, at most 1 + retries times; returns (result of the quietest attempt, its steal,
    attempts made). Steal that cannot be read (None) counts as quiet."""
    best = None
    for attempt in range(1 + retries):
        t0 = ticks(cpus)
        res = time_row()
        st = steal_between(t0, ticks(cpus))
        if best is None or (st is not None and (best[1] is None or st < best[1])):
            best = (res, st)
        if st is None or st <= max_steal:
            break
    return best[0], best[1], attempt + 1


def round_robin(fns, inner, repeats, settle_s=None):
    """Per-call ms and cores busy (CPU time / wall time) of each peer, `repeats` samples each.

    Round-robin: one burst of each peer per round, so a slow phase of the VM hits every peer
    alike instead of whichever happened to be running. A burst is inner[name] calls (as many as
    fill ~BURST_MS: one call at the large sizes, so sub-millisecond steps are timed warm, as in
    a training loop). The slow peers (seconds per step) take part in the first rounds only.
    Before each burst the process sleeps `settle_s` (default SETTLE_S), so no peer is timed
    while the previous one's idle thread pool still spins on the cores."""
    settle_s = SETTLE_S if settle_s is None else settle_s
    samples = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for rnd in range(repeats):
        for name, fn in fns.items():
            if name in ("tape", "torch-loop") and rnd >= max(3, repeats // 4):
                continue
            time.sleep(settle_s)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(inner[name]):
                fn()
            wall = time.perf_counter() - t0
            samples[name].append(wall * 1e3 / inner[name])
            cpu[name].append((time.process_time() - c0) / wall)
    return samples, cpu


def worker(threads, cells, configs, peers, repeats, max_steal=MAX_STEAL, retries=RETRIES):
    pin(threads)      # before torch or jax start their thread pools
    cpus = sorted(os.sched_getaffinity(0))
    import statistics
    import peers as P
    from runtime.timing import auto_inner
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    for cell in cells:
        for cfg in configs:
            B, I, H, T = cfg
            model, xs, d_out = P.problem(cell, B, I, H, T)
            fns = {}
            for name in peers:
                if name == "tape" and threads > 1:
                    continue   # the tape's reference timing is single-threaded numpy
                try:
                    fns[name] = P.PEERS[name](model, xs, d_out, **(
                        {"threads": threads} if name.startswith("compiled") else {}))
                except ImportError as e:
                    print(json.dumps({"cell": cell, "cfg": cfg, "peer": name, "skip": str(e)}),
                          flush=True)
            first = {}
            for name, fn in fns.items():     # warm-up (JIT, caches, thread pools) + gradients
                first[name] = P.gradients(name, fn(), model)
                fn()
            err = agreement(first, cell, cfg)
            inner = {name: auto_inner(fn, BURST_MS) for name, fn in fns.items()}
            (samples, cpu), steal, attempts = timed_quietly(
                lambda: round_robin(fns, inner, repeats), cpus, max_steal, retries)
            for name, ms in samples.items():
                print(json.dumps({"cell": cell, "cfg": cfg, "peer": name,
                                  "ms": statistics.median(ms),
                                  "cores": statistics.median(cpu[name]),
                                  "steal": steal, "attempts": attempts,
                                  "err": err.get(name)}), flush=True)


def agreement(first, cell, cfg):
    """Each peer's relative difference from the reference's gradients (the compiled program's,
    or the tape's when compiled is not among the peers; every weight and the inputs' gradient,
    from its first call); a peer that computed something else stops the run, since its time
    would not be comparable. No reference among the peers: nothing is compared (None)."""
    from peers import disagreement
    ref = "compiled" if "compiled" in first else "tape" if "tape" in first else None
    err = {}
    for name, g in first.items():
        if ref is None:
            err[name] = None
            continue
        err[name], what = disagreement(g, first[ref])
        if err[name] > AGREE_TOL:
            raise SystemExit(f"{name} {cell} {tuple(cfg)}: gradient {what} differs from the "
                             f"{ref} program's by {err[name]:.1e} (relative); not timed")
    return err


def run_workers(args):
    rows = []
    for threads in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads),
                   XLA_FLAGS=f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
                             f"intra_op_parallelism_threads={threads}")
        cmd = [sys.executable, __file__, "--worker", "--threads", str(threads),
               "--cells", *args.cells, "--peers", *args.peers, "--repeats", str(args.repeats),
               "--max-steal", str(args.max_steal), "--retries", str(args.retries),
               "--configs", *[",".join(map(str, c)) for c in args.configs]]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            r = json.loads(line)
            r["threads"] = threads
            rows.append(r)
            what = f"{r['ms']:.3f} ms, {r['cores']:.2f} cores busy{_steal_text(r)}" \
                if "ms" in r else f"skipped ({r['skip']})"
            print(f"  {threads}T {r['cell']:<5}{str(tuple(r['cfg'])):<22}{r['peer']:<12}{what}",
                  file=sys.stderr, flush=True)
        if proc.wait():
            raise SystemExit(f"worker for {threads} thread(s) failed")
    return rows


def _steal_text(r):
    st = r.get("steal")
    tries = f", {r['attempts']} attempts" if r.get("attempts", 1) > 1 else ""
    return "" if st is None else f", host steal {100 * st:.0f} %{tries}"


def table(rows, peak1):
    from peers import flops
    out = []
    order = {c: i for i, c in enumerate(CONFIGS)}
    keys = sorted({(r["threads"], r["cell"], tuple(r["cfg"])) for r in rows},
                  key=lambda k: (k[0], CELLS.index(k[1]), order.get(k[2], len(order)), k[2]))
    peers = [p for p in PEER_ORDER if any(r["peer"] == p and "ms" in r for r in rows)]
    custom = "compiled-custom" in peers
    head = ["threads", "cell", "(B, I, H, T)"] + [f"{p} ms" for p in peers] + \
        ["compiled GFLOP/s", "% of FMA peak", "fastest peer / compiled"] + \
        (["torch-loop / custom", "jax / custom"] if custom else []) + ["host steal"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for th, cell, cfg in keys:
        ms = {r["peer"]: r["ms"] for r in rows if (r["threads"], r["cell"], tuple(r["cfg"]))
              == (th, cell, cfg) and "ms" in r}
        cells = [str(th), cell, str(cfg)] + [f"{ms[p]:.3f}" if p in ms else "–" for p in peers]
        if "compiled" in ms:
            gf = flops(cell, *cfg) / ms["compiled"] / 1e6
            others = [v for p, v in ms.items() if p not in ("compiled", "compiled-custom", "tape")]
            ratio = f"{min(others) / ms['compiled']:.2f}x" if others else "–"
            cells += [f"{gf:.1f}", f"{100 * gf / (peak1 * th):.0f}%", ratio]
        else:
            cells += ["–", "–", "–"]
        if custom:
            c = ms.get("compiled-custom")
            cells += [f"{ms[p] / c:.1f}x" if c and p in ms else "–" for p in ("torch-loop", "jax")]
        st = [r.get("steal") for r in rows if (r["threads"], r["cell"], tuple(r["cfg"]))
              == (th, cell, cfg) and r.get("steal") is not None]
        cells.append(f"{100 * max(st):.0f}%" if st else "–")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None, prog=None, parser=argparse.ArgumentParser):
    ap = parser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cells", nargs="+", default=CELLS, choices=CELLS)
    ap.add_argument("--peers", nargs="+", default=PEER_ORDER, choices=PEER_ORDER)
    ap.add_argument("--configs", nargs="+", default=None,
                    help="B,I,H,T tuples, e.g. 32,64,128,100")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="smallest config, 1 thread, no file")
    ap.add_argument("--max-steal", type=float, default=MAX_STEAL,
                    help="time a configuration again when the host took more than this fraction "
                         "of its cores meanwhile (/proc/stat steal; default %(default)s)")
    ap.add_argument("--retries", type=int, default=RETRIES,
                    help="how many times a configuration is timed again at most (default "
                         "%(default)s); the quietest attempt is reported")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.configs = [tuple(int(v) for v in c.split(",")) for c in args.configs] \
        if args.configs else CONFIGS
    if args.worker:
        return worker(args.threads[0], args.cells, args.configs, args.peers, args.repeats,
                      args.max_steal, args.retries)
    if args.quick:
        args.configs = args.configs if "--configs" in (argv or sys.argv) else CONFIGS[:1]
        args.threads, args.repeats = [1], 10
    from fma_peak import fma_peak_gflops
    # The peak is read before and after the timings and the higher reading is used: a slow
    # phase of the VM can only lower a reading (one run read 101 GFLOP/s against the usual
    # 133), and a low peak would inflate the "% of FMA peak" column.
    peaks = [fma_peak_gflops()]
    print(f"float32 FMA peak, one core: {peaks[0]:.1f} GFLOP/s", file=sys.stderr)
    rows = run_workers(args)
    peaks.append(fma_peak_gflops())
    print(f"float32 FMA peak, one core, after the timings: {peaks[1]:.1f} GFLOP/s",
          file=sys.stderr)
    text = table(rows, max(peaks))
    print(text)
    checked = agreement_note(rows)
    print(checked, file=sys.stderr)
    if not args.quick:
        given = sys.argv[1:] if argv is None else list(argv)
        cmd = " ".join([prog or "python benchmarks/" + os.path.basename(__file__)] + given)
        write_report(args.out, text, peaks, cmd, checked)
    return 0


def agreement_note(rows):
    errs = [(r["err"], r["peer"], r["threads"], r["cell"], tuple(r["cfg"])) for r in rows
            if r.get("err") is not None and r["peer"] != "compiled"]
    if not errs:
        return "No peer's gradients were compared (neither compiled nor tape was among the peers)."
    ref = "compiled program's" if any(r["peer"] == "compiled" for r in rows) else "tape's"
    e, peer, th, cell, cfg = max(errs)
    return (f"Before its timing, every peer's gradients (all weights and the inputs) were compared "
            f"with the {ref} on the same data: the largest relative difference was "
            f"{e:.1e} ({peer}, {th} thread{'s' if th > 1 else ''}, {cell} {cfg}).")


def write_report(path, text, peaks, cmd, checked=""):
    import llvmlite.binding as llvm
    import numpy as np
    intro = (f"# Benchmarks\n\nOne BPTT training step: forward over T steps and backward with every "
             f"gradient (weights, inputs, initial state), float32, median of repeated runs. The "
             f"peers of a thread count run in one process pinned to that many cores, so a "
             f"1-thread row is one core for every peer.\n\n"
             f"Command: `{cmd}`\n\nMachine: {platform.machine()}, LLVM host CPU "
             f"`{llvm.get_host_cpu_name()}`, {os.cpu_count()} cores, numpy {np.__version__}. "
             f"Measured float32 FMA peak: **{max(peaks):.1f} GFLOP/s per core**, the higher of "
             f"two readings taken before and after the timings "
             f"({' and '.join(f'{p:.1f}' for p in peaks)}; `python benchmarks/fma_peak.py`).\n\n"
             + (f"{checked}\n\n" if checked else ""))
    notes = ""
    if os.path.exists(path):     # hand-written reading notes below the table survive a re-run
        old = open(path).read()
        if "\n## Notes" in old:
            notes = "\n" + old[old.index("\n## Notes") + 1:]
    with open(path + ".tmp", "w") as f:
        f.write(intro + text + "\n" + notes)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(main())
