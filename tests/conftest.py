"""Shared test settings and helpers.

Hypothesis: no deadlines (numerical checks vary in speed); with CI set in the environment the
"ci" profile is loaded, which derandomizes so a CI failure replays identically.

The sequence-model tests record the worst relative error per model (vs finite differences and
vs PyTorch) through the session-scoped `error_log` fixture; the table is printed in the terminal
summary, and tests/report_errors.py prints the same table on its own.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("default", **_COMMON)
settings.register_profile("ci", derandomize=True, print_blob=True, **_COMMON)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def rel_err(got, want):
    """max |got - want| relative to max |want| (absolute when want is all zero)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    if got.size == 0:
        return 0.0
    err = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    return err / scale if scale > 0 else err


# ---------------------------------------------------------------- worst-error table
_ERRORS: dict = {}   # model name -> {"fd": worst, "torch": worst}


class ErrorLog:
    def __init__(self, table):
        self.table = table

    def add(self, model, kind, err):
        row = self.table.setdefault(model, {})
        row[kind] = max(row.get(kind, 0.0), float(err))


@pytest.fixture(scope="session")
def error_log():
    return ErrorLog(_ERRORS)


def format_error_table(table):
    lines = [f"{'model':<28}| {'worst rel err vs finite differences':>36} | "
             f"{'worst rel err vs PyTorch':>26}"]
    lines.append("-" * len(lines[0]))
    for model, row in table.items():
        fd = f"{row['fd']:.2e}" if "fd" in row else "-"
        th = f"{row['torch']:.2e}" if "torch" in row else "-"
        lines.append(f"{model:<28}| {fd:>36} | {th:>26}")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter):
    if _ERRORS:
        terminalreporter.section("worst relative gradient/output errors per model")
        terminalreporter.write_line(format_error_table(_ERRORS))
