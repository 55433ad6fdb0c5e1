"""The LLVM side of the elementwise lowering protocol.

Each elementwise primitive in graphgrad/ops.py lowers itself by calling methods of an emitter
(`e.add(x, y)`, `e.tanh(x)`, ...). `LLVMEmitter` implements them on llvmlite vector (or scalar)
values, with the transcendental functions inlined from compiler.llvmlib.vecmath, so the code
generator never restates an op's math: it only looks the op's `lower` rule up and calls it.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from compiler.llvmlib import library, vecmath
from graphgrad.core import PRIMITIVES

# contract lets LLVM fuse a*b+c into one FMA; no reassociation, so results stay within an
# ulp-level distance of numpy's and the 1e-10 float64 checks hold.
_FLAGS = ("contract",)


def llvm_float(dtype) -> ir.Type:
    dt = np.dtype(dtype)
    if dt == np.float64:
        return ir.DoubleType()
    if dt == np.float32:
        return ir.FloatType()
    raise TypeError(f"native code supports float32/float64 buffers, got {dt}")


class LLVMEmitter:
    """Emitter over values of `width` lanes (width=None: scalars) inserted at `builder`.

    outline=True calls the kernel library's out-of-line vector functions (gg_vm_*, linked at
    load time) for exp/log/tanh/sigmoid instead of inlining the polynomials: same code, a much
    smaller module to compile.
    """

    def __init__(self, builder: ir.IRBuilder, width: int | None, outline: bool = False):
        self.b = builder
        self.width = width
        self.outline = outline

    def _math(self, op, x):
        if self.outline and library.has_vm(op, x.type):
            return library.vm_call(self.b, op, x)
        return vecmath.UNARY[op](self.b, x)

    def type_of(self, dtype) -> ir.Type:
        el = llvm_float(dtype)
        return ir.VectorType(el, self.width) if self.width else el

    def const(self, value, like) -> ir.Constant:
        """A splat of `value` with the type of the value `like` (or of a dtype)."""
        ty = like.type if isinstance(like, ir.Value) else self.type_of(like)
        return ir.Constant(ty, float(value))

    def _ones_where(self, cond, like):
        return self.b.select(cond, self.const(1.0, like), self.const(0.0, like))

    # -- the protocol used by OpDef.lower rules
    def add(self, x, y): return self.b.fadd(x, y, flags=_FLAGS)
    def sub(self, x, y): return self.b.fsub(x, y, flags=_FLAGS)
    def mul(self, x, y): return self.b.fmul(x, y, flags=_FLAGS)
    def div(self, x, y): return self.b.fdiv(x, y)
    def neg(self, x): return self.b.fneg(x)
    def exp(self, x): return self._math("exp", x)
    def log(self, x): return self._math("log", x)
    def tanh(self, x): return self._math("tanh", x)
    def sigmoid(self, x): return self._math("sigmoid", x)
    def relu(self, x): return vecmath.relu(self.b, x)

    def positive(self, x):
        return self._ones_where(self.b.fcmp_ordered(">", x, self.const(0.0, x)), x)

    def equal(self, x, y):
        return self._ones_where(self.b.fcmp_ordered("==", x, y), x)

    def greater(self, x, y):
        return self._ones_where(self.b.fcmp_ordered(">", x, y), x)

    def greater_equal(self, x, y):
        return self._ones_where(self.b.fcmp_ordered(">=", x, y), x)

    def where(self, c, x, y):
        # "une": NaN counts as nonzero, as in np.where
        return self.b.select(self.b.fcmp_unordered("!=", c, self.const(0.0, c)), x, y)

    def pow(self, x, y):
        """x**y with numpy's values: a constant small integer exponent is repeated
        multiplication (exact for squares); otherwise |x|**y = exp(y*log|x|) with x's sign for
        an odd integer y, NaN for a finite negative base and a fractional y, 1 for y = 0 or
        x = 1 (as numpy, even for a NaN other operand)."""
        b, zero, one = self.b, self.const(0.0, x), self.const(1.0, x)
        n = _small_int(y)
        if n is not None:
            r = one if n == 0 else x
            for _ in range(abs(n) - 1):
                r = b.fmul(r, x)
            return self.div(one, r) if n < 0 else r
        mag = self.exp(self.mul(y, self.log(vecmath.fabs(b, x))))
        whole = b.fcmp_ordered("==", vecmath._rint(b, y), y)
        half = self.mul(y, self.const(0.5, y))
        odd = b.and_(whole, b.fcmp_ordered("!=", vecmath._rint(b, half), half))
        r = b.select(odd, vecmath._copysign(b, mag, x), mag)     # (-0.0)**-3 = -inf too
        neg = b.and_(b.fcmp_ordered("<", x, zero),                  # C pow: (-inf)**0.5 = inf
                     b.fcmp_ordered(">", x, self.const(float("-inf"), x)))
        r = b.select(b.and_(neg, b.not_(whole)), self.const(float("nan"), x), r)
        trivial = b.or_(b.fcmp_ordered("==", y, zero), b.fcmp_ordered("==", x, one))
        return b.select(trivial, one, r)

    def cast(self, x, dtype):
        ty = self.type_of(dtype)
        if ty == x.type:
            return x
        src64 = (x.type.element if self.width else x.type) == ir.DoubleType()
        return self.b.fptrunc(x, ty) if src64 else self.b.fpext(x, ty)


def _small_int(v, limit=4):
    """The integer a constant (splat) holds, if it is one with |n| <= limit; else None."""
    c = getattr(v, "constant", None) if isinstance(v, ir.Constant) else None
    if isinstance(c, list):
        vals = {getattr(e, "constant", e) for e in c}
        c = vals.pop() if len(vals) == 1 else None
    if isinstance(c, (int, float)) and float(c).is_integer() and abs(c) <= limit:
        return int(c)
    return None


def lower_op(e: LLVMEmitter, op: str, args, attrs) -> ir.Value:
    """Emit one body row through the primitive's own lowering rule."""
    opdef = PRIMITIVES.get(op)
    if opdef is None or opdef.lower is None:
        raise NotImplementedError(f"primitive {op!r} has no elementwise lowering rule; it cannot "
                                  f"appear in a Fused body")
    attrs = dict(attrs)
    if "dtype" in attrs:
        attrs["dtype"] = np.dtype(attrs["dtype"])
    return opdef.lower(e, *args, **attrs)
