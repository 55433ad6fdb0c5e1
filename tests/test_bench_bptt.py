"""The benchmark script's bookkeeping: core pinning, the ratio table, the report file.

Timings themselves are never asserted (they belong to `benchmarks/`, run on demand)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import bench_bptt  # noqa: E402


def test_pin_confines_the_worker_and_the_threads_it_starts_later():
    code = ("import os, sys, threading; sys.path.insert(0, 'benchmarks'); import bench_bptt; "
            "bench_bptt.pin(1); seen = []; "
            "t = threading.Thread(target=lambda: seen.append(len(os.sched_getaffinity(0)))); "
            "t.start(); t.join(); print(len(os.sched_getaffinity(0)), seen[0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["1", "1"]


def test_pin_refuses_more_threads_than_cores():
    n = len(os.sched_getaffinity(0))
    with pytest.raises(SystemExit, match=f"--threads {n + 1}: only {n} CPU"):
        bench_bptt.pin(n + 1)


def _rows():
    cfg = [32, 64, 128, 100]
    ms = {"compiled": 10.0, "compiled-custom": 12.0, "torch": 9.0, "torch-loop": 60.0,
          "jax": 30.0, "tape": 1.0}
    return [{"threads": 1, "cell": "lstm", "cfg": cfg, "peer": p, "ms": v} for p, v in ms.items()]


def test_table_ratio_is_the_fastest_peer_over_compiled_and_ignores_tape_and_custom():
    text = bench_bptt.table(_rows(), peak1=100.0)
    head, _, row = text.splitlines()
    cols = dict(zip([c.strip() for c in head.strip("|").split("|")],
                    [c.strip() for c in row.strip("|").split("|")]))
    # torch (9 ms) is the fastest peer; the tape's 1 ms and the custom cell are not peers
    assert cols["fastest peer / compiled"] == "0.90x"
    assert cols["torch-loop / custom"] == "5.0x" and cols["jax / custom"] == "2.5x"
    from peers import flops
    gf = flops("lstm", 32, 64, 128, 100) / 10.0 / 1e6
    assert cols["compiled GFLOP/s"] == f"{gf:.1f}" and cols["% of FMA peak"] == f"{gf:.0f}%"


def test_report_replaces_the_table_and_keeps_the_notes(tmp_path):
    path = str(tmp_path / "BENCHMARKS.md")
    bench_bptt.write_report(path, "| old table |", [100.0, 90.0], "python x.py")
    with open(path, "a") as f:
        f.write("\n## Notes\n\nhand-written reading\n")
    bench_bptt.write_report(path, "| new table |", [120.0, 130.0], "python y.py")
    text = open(path).read()
    assert "| new table |" in text and "| old table |" not in text
    assert text.endswith("## Notes\n\nhand-written reading\n")
    assert "**130.0 GFLOP/s per core**" in text and "`python y.py`" in text
    assert not os.path.exists(path + ".tmp")


def test_round_robin_lets_each_peer_start_on_quiet_cores():
    import time
    log = []

    def peer(name):
        def call():
            log.append((name, time.perf_counter()))
            time.sleep(0.001)
            log.append((name, time.perf_counter()))
        return call
    fns = {n: peer(n) for n in ("compiled", "torch", "tape")}
    samples, cpu = bench_bptt.round_robin(fns, {"compiled": 2, "torch": 1, "tape": 1}, repeats=4,
                                          settle_s=0.02)
    # bursts alternate peer by peer; the tape drops out after its rounds (max(3, repeats // 4))
    bursts = [log[0][0]] + [b[0] for a, b in zip(log, log[1:]) if a[0] != b[0]]
    assert bursts == ["compiled", "torch", "tape"] * 3 + ["compiled", "torch"]
    assert [len(samples[n]) for n in fns] == [4, 4, 3]
    # from one peer's last return to the next peer's first call: at least the settle time
    gaps = [b[1] - a[1] for a, b in zip(log, log[1:]) if a[0] != b[0]]
    assert min(gaps) >= 0.02
    assert all(ms >= 1.0 for v in samples.values() for ms in v)   # per call, not per burst


def test_a_peer_that_computes_other_gradients_is_not_timed():
    import numpy as np
    ref = {"weight_hh_l0": np.ones((4, 2)), "xs": np.ones((3, 1, 2))}
    close = {k: v * (1 + 1e-6) for k, v in ref.items()}
    err = bench_bptt.agreement({"compiled": ref, "torch": close}, "lstm", (1, 2, 2, 3))
    assert err["compiled"] == 0.0 and err["torch"] == pytest.approx(1e-6)
    off = dict(ref, xs=2 * ref["xs"])
    with pytest.raises(SystemExit, match=r"jax lstm \(1, 2, 2, 3\): gradient xs differs .* "
                                         r"1\.0e\+00 .* not timed"):
        bench_bptt.agreement({"compiled": ref, "jax": off}, "lstm", (1, 2, 2, 3))
    rows = [{"peer": p, "threads": 1, "cell": "lstm", "cfg": [1, 2, 2, 3], "ms": 1.0, "err": e}
            for p, e in (("compiled", 0.0), ("torch", 2e-6), ("jax", 5e-7))]
    assert "largest relative difference was 2.0e-06 (torch, 1 thread, lstm (1, 2, 2, 3))" in \
        bench_bptt.agreement_note(rows)


def test_cpu_ticks_reads_this_machines_cores():
    if not os.path.exists("/proc/stat"):
        assert bench_bptt.cpu_ticks([0]) is None
        return
    cpus = sorted(os.sched_getaffinity(0))
    steal, total = bench_bptt.cpu_ticks(cpus)
    one = bench_bptt.cpu_ticks(cpus[:1])
    assert 0 <= steal <= total and 0 < one[1] <= total
    assert bench_bptt.steal_between((5, 100), (15, 300)) == pytest.approx(0.05)
    assert bench_bptt.steal_between((5, 100), (5, 100)) is None     # no tick went by
    assert bench_bptt.steal_between(None, (5, 100)) is None


def _fake_ticks(steals):
    """A tick source whose successive attempts see the given steal fractions (100 ticks each)."""
    readings = []
    for k, st in enumerate(steals):
        readings += [(0, 1000 * k), (int(100 * st), 1000 * k + 100)]
    it = iter(readings)
    return lambda cpus: next(it)


def test_a_noisy_row_is_timed_again_and_the_quietest_attempt_kept():
    calls = []

    def row():
        calls.append(len(calls))
        return calls[-1]
    res, st, n = bench_bptt.timed_quietly(row, [0], max_steal=0.05, retries=2,
                                          ticks=_fake_ticks([0.30, 0.10, 0.20]))
    assert (res, st, n) == (1, pytest.approx(0.10), 3) and calls == [0, 1, 2]
    calls.clear()
    res, st, n = bench_bptt.timed_quietly(row, [0], max_steal=0.05, retries=2,
                                          ticks=_fake_ticks([0.30, 0.02, 0.0]))
    assert (res, st, n) == (1, pytest.approx(0.02), 2) and calls == [0, 1]
    calls.clear()
    res, st, n = bench_bptt.timed_quietly(row, [0], retries=5, ticks=lambda cpus: None)
    assert (res, st, n) == (0, None, 1)       # steal unreadable: one attempt, reported as such


def test_table_reports_the_worst_steal_of_a_row():
    rows = _rows()
    for r, st in zip(rows, [0.01, 0.03, None, 0.02, 0.0, 0.0]):
        r["steal"] = st
    head, _, row = bench_bptt.table(rows, peak1=100.0).splitlines()
    cols = dict(zip([c.strip() for c in head.strip("|").split("|")],
                    [c.strip() for c in row.strip("|").split("|")]))
    assert cols["host steal"] == "3%"
    assert bench_bptt.table(_rows(), peak1=100.0).splitlines()[2].endswith("| – |")
