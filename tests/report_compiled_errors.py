"""Print the worst relative error of compiled programs vs the tape and vs PyTorch, per model.

    python tests/report_compiled_errors.py [--fresh-cache]

Runs the native table of tests/test_compile.py (compile_checks.CASES: every built-in model kind
and layout, float64 and float32, B in {1, 3, 64}, T in {1, 7, 100, 1000}) against the eager tape
and, in float64 where PyTorch has the same module, against torch.nn.RNN/LSTM/GRU after
load_state_dict; then the native custom-step table and the four-matrix LSTM of
tests/test_compile_custom.py. A check above its tolerance (1e-10 float64, 1e-4 float32) raises,
so a printed table means every check passed. --fresh-cache compiles into a temporary object
cache instead of GRAPHGRAD_CACHE_DIR / ~/.cache/graphgrad.
"""
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--fresh-cache" in argv:
        os.environ["GRAPHGRAD_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphgrad_cache_")
    import numpy as np
    import compile_checks as C
    import test_compile_custom as TC

    start = time.perf_counter()
    table, progs = C.ErrorTable(), C.Programs()
    have_torch = True
    try:
        import torch   # noqa: F401
    except ImportError:
        have_torch = False
    for label, kind, _, dt, _, T in C.CASES:
        C.check_case(progs, label, table)
        if have_torch and kind in C.TORCH_KINDS and dt == np.float64 and T <= 100:
            C.check_case(progs, label, table, against="torch", seed=5)
    for name, (recipe, two, reverse, T, B, H, dt, wide) in TC.NATIVE.items():
        worst = TC.run_case(recipe, two, reverse, T, B, H, dt, "native", seed=3, wide_y=wide)
        table.add(f"custom step: {name} ({C.DT_NAME[np.dtype(dt)]})", "tape", worst)
    model = TC.four_matrix_lstm()
    B, T = 3, 6
    rng = np.random.default_rng(1)
    s0 = (rng.normal(size=(B, TC.H4)) * 0.5, rng.normal(size=(B, TC.H4)) * 0.5)
    prog = C.compiler.compile(model, seq_len=T, batch=B, input_size=TC.I, state=s0)
    errs = C.compare(prog, model, rng.normal(size=(T, B, TC.I)), s0)
    table.add("custom four-matrix LSTM (f64)", "tape", C.check(errs, np.float64, "4-matrix"))
    print(table.text("worst relative error of native compiled programs (forward and all "
                     "gradients)"))
    torch_note = f"PyTorch {sys.modules['torch'].__version__}" if have_torch else "no PyTorch"
    print(f"\n(tolerances 1e-10 float64 / 1e-4 float32; {torch_note}; "
          f"{time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
