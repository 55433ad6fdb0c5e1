"""Errors the compiler raises. Each names the op and, when known, the user's source line."""
from __future__ import annotations


class CompileError(Exception):
    """The step function does something the compiler cannot turn into a graph."""

    def __init__(self, msg, op=None, src=""):
        self.op, self.src = op, src
        where = f" (at {src})" if src else ""
        super().__init__(f"{msg}{where}")


class IRError(Exception):
    """A graph broke an IR invariant (raised by compiler.verify; always a compiler bug)."""
