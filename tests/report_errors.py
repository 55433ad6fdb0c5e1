"""Print the worst relative error per model vs finite differences and vs PyTorch (float64).

    python tests/report_errors.py

Runs the deterministic checks of tests/test_models.py (every model kind over its
finite-difference variants and over all 16 layout variants vs torch in both state_dict
directions, the cells and a custom Recurrent step) and prints the table the test session prints.
A check that fails its tolerance raises, so a printed table means every check passed.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import conftest  # noqa: E402
import test_models as M  # noqa: E402


def main():
    start = time.perf_counter()
    log = conftest.ErrorLog({})
    for kind in M.KINDS:
        for variant in M.FD_VARIANTS:
            M.test_model_vs_finite_differences(kind, variant, log)
        for variant in M.VARIANTS:
            for direction in ("torch->ours", "ours->torch"):
                M.test_model_vs_torch(kind, variant, direction, log)
    for name in M.CELLS:
        for bias in (True, False):
            M.test_cell_vs_torch_cell(name, bias, log)
    for reverse in (False, True):
        M.test_recurrent_custom_step(reverse, log)
    print(conftest.format_error_table(log.table))
    print(f"\n(float64; finite differences: central, eps 1e-6, tolerance {M.FD_TOL:g}; "
          f"PyTorch {M.torch.__version__}: tolerance {M.TORCH_TOL:g}; "
          f"{time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
