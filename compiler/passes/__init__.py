"""Graph passes, each a function Graph -> Graph that keeps the graph runnable by compiler.interp.

The pipeline is a short list of named passes (as tinygrad's codegen list), run one by one; with
check=True every intermediate graph goes through compiler.verify.
"""
from __future__ import annotations

from .simplify import RULES, Pat, cse, dce, fold_constants, rewrite, simplify

SIMPLIFY = [("rewrite", rewrite), ("fold_constants", fold_constants), ("cse", cse), ("dce", dce)]


def run_passes(G, passes=SIMPLIFY, check=False):
    """Apply (name, pass) pairs in order; verify after each when check is set."""
    from ..verify import verify
    for name, p in passes:
        G = p(G)
        if check:
            verify(G)
    return G


__all__ = ["RULES", "Pat", "SIMPLIFY", "cse", "dce", "fold_constants", "rewrite", "run_passes",
           "simplify"]
