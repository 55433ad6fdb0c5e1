"""Inline vector math for llvmlite IRBuilders: exp, expm1, log, tanh, sigmoid, relu.

LLVM 22 turns llvm.exp on vectors into one libm call per lane, so the compiler
uses these instead. Every function takes an ir.IRBuilder and a value of type
<W x float>, <W x double>, float or double and returns a value of the same type.
Scheme (all our own): Cody-Waite range reduction x = n*ln2 + r, a Horner
polynomial with FMAs, and 2**n built from exponent bits. Float64 uses longer
polynomials. Special values (NaN, +-inf, overflow, underflow, saturation) are
handled with selects so no lane ever feeds NaN into fptosi (which is poison).
"""
from __future__ import annotations

import math

from llvmlite import ir

LN2 = math.log(2.0)
LOG2E = 1.0 / LN2


class _Ty:
    """Float/int/bool types and intrinsic suffix matching a float value's type."""

    def __init__(self, ty):
        self.ty = ty
        self.w = ty.count if isinstance(ty, ir.VectorType) else None
        el = ty.element if self.w else ty
        if not isinstance(el, (ir.FloatType, ir.DoubleType)):
            raise TypeError(f"vecmath needs float/double (vector) values, got {ty}")
        self.f64 = isinstance(el, ir.DoubleType)
        self.bits = 64 if self.f64 else 32
        self.mant = 52 if self.f64 else 23
        self.bias = 1023 if self.f64 else 127
        wrap = (lambda t: ir.VectorType(t, self.w)) if self.w else (lambda t: t)
        self.ity = wrap(ir.IntType(self.bits))
        self.suffix = (f"v{self.w}" if self.w else "") + f"f{self.bits}"

    def c(self, v):
        return ir.Constant(self.ty, float(v))

    def ci(self, v):
        return ir.Constant(self.ity, int(v))


def declare(mod: ir.Module, name: str, ret, args) -> ir.Function:
    """The function `name` of mod, declared as ret(args) on first use."""
    return mod.globals.get(name) or ir.Function(mod, ir.FunctionType(ret, list(args)), name=name)


def intrinsic(b: ir.IRBuilder, name: str, ty, nargs: int = 1) -> ir.Function:
    """Declare llvm.<name>.<suffix> by full name (declare_intrinsic rejects vectors)."""
    return declare(b.module, f"llvm.{name}.{_Ty(ty).suffix}", ty, [ty] * nargs)


def prefetch(b: ir.IRBuilder, p, write: bool, locality: int = 3):
    """Prefetch the cache line at p (a prefetch never faults): into every cache level at
    locality 3, into L2 and beyond only at locality 2."""
    i32 = ir.IntType(32)
    fn = declare(b.module, "llvm.prefetch.p0", ir.VoidType(), [ir.PointerType(), i32, i32, i32])
    b.call(fn, [p, ir.Constant(i32, int(write)), ir.Constant(i32, locality), ir.Constant(i32, 1)])


def splat(ty, value):
    """Constant of a scalar or vector type with every lane equal to value."""
    return ir.Constant(ty, value)


def fma(b, x, y, z):
    """x*y + z with one rounding, on scalars or vectors."""
    return b.call(intrinsic(b, "fma", x.type, 3), [x, y, z])


def fabs(b, x):
    return b.call(intrinsic(b, "fabs", x.type), [x])


def _rint(b, x):
    return b.call(intrinsic(b, "rint", x.type), [x])


def _copysign(b, mag, sign):
    return b.call(intrinsic(b, "copysign", mag.type, 2), [mag, sign])


def _horner(b, r, coeffs, t: _Ty):
    """coeffs[0] + r*(coeffs[1] + r*(...)) with FMAs."""
    acc = t.c(coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = fma(b, acc, r, t.c(c))
    return acc


def _pow2(b, n, t: _Ty):
    """2**n for an integer vector n inside the normal exponent range."""
    e = b.shl(b.add(n, t.ci(t.bias)), t.ci(t.mant))
    return b.bitcast(e, t.ty)


def _isnan(b, x):
    return b.fcmp_unordered("uno", x, x)


def _reduce(b, x, t: _Ty):
    """n = rint(x/ln2), r = x - n*ln2 (two-constant Cody-Waite). x must be finite."""
    nf = _rint(b, b.fmul(x, t.c(LOG2E)))
    if t.f64:  # ln2_hi has 21 trailing zero bits: n*ln2_hi exact for |n| < 2**21
        hi, lo = 6.93147180369123816490e-01, 1.90821492927058770002e-10
    else:      # 9 trailing zero bits; |n| <= 151 needs 8
        hi, lo = 0.693145751953125, 1.428606820309417232e-06
    r = fma(b, nf, t.c(-hi), x)
    r = fma(b, nf, t.c(-lo), r)
    return b.fptosi(nf, t.ity), r


def _taylor(deg):
    return [1.0 / math.factorial(k) for k in range(deg + 1)]


def exp(b: ir.IRBuilder, x):
    """e**x; overflows to inf, underflows (through subnormals) to 0, NaN -> NaN."""
    t = _Ty(x.type)
    # Clamp slightly beyond the overflow/underflow thresholds so the result still
    # rounds to inf/0 while n stays small enough for the two-step 2**n below.
    lo, hi = (-745.2, 709.8) if t.f64 else (-104.0, 88.73)
    nan = _isnan(b, x)
    xc = b.select(b.fcmp_ordered("<", x, t.c(lo)), t.c(lo), x)
    xc = b.select(b.fcmp_ordered(">", xc, t.c(hi)), t.c(hi), xc)
    xc = b.select(nan, t.c(0.0), xc)
    n, r = _reduce(b, xc, t)
    p = _horner(b, r, _taylor(13 if t.f64 else 7), t)
    # 2**n as 2**n1 * 2**n2 so both factors are normal; the last multiply is the
    # only rounding, which also makes subnormal results correctly rounded.
    n1 = b.ashr(n, t.ci(1))
    n2 = b.sub(n, n1)
    y = b.fmul(b.fmul(p, _pow2(b, n1, t)), _pow2(b, n2, t))
    return b.select(nan, x, y)


def _expm1_small(b, y, t: _Ty):
    """e**y - 1 for finite 0 <= y <= 40, accurate near 0 (used by tanh)."""
    n, r = _reduce(b, y, t)
    deg = 13 if t.f64 else 7
    q = fma(b, b.fmul(r, r), _horner(b, r, _taylor(deg)[2:], t), r)  # e**r - 1
    s = _pow2(b, n, t)
    return fma(b, s, q, b.fsub(s, t.c(1.0)))  # 2**n * (e**r - 1) + (2**n - 1)


def expm1(b: ir.IRBuilder, x):
    """e**x - 1, accurate near 0; for x > 40 or x < -1 falls back to exp(x) - 1."""
    t = _Ty(x.type)
    small = b.and_(b.fcmp_ordered(">=", x, t.c(0.0)), b.fcmp_ordered("<=", x, t.c(40.0)))
    neg = b.and_(b.fcmp_ordered("<", x, t.c(0.0)), b.fcmp_ordered(">=", x, t.c(-1.0)))
    a = b.select(b.or_(small, neg), fabs(b, x), t.c(0.0))
    em = _expm1_small(b, a, t)
    # e**-a - 1 = -(e**a - 1) / e**a = -em / (em + 1)
    em_neg = b.fsub(t.c(-0.0), b.fdiv(em, b.fadd(em, t.c(1.0))))
    big = b.fsub(exp(b, x), t.c(1.0))
    return b.select(small, em, b.select(neg, em_neg, big))


def log(b: ir.IRBuilder, x):
    """Natural log; log(0) = -inf, log(<0) = NaN, log(inf) = inf, subnormals ok."""
    t = _Ty(x.type)
    min_normal = 2.0 ** (1 - t.bias)
    sub = b.fcmp_ordered("<", x, t.c(min_normal))
    scale = 54 if t.f64 else 24
    xs = b.select(sub, b.fmul(x, t.c(2.0 ** scale)), x)
    kadj = b.select(sub, t.ci(-scale), t.ci(0))
    # Shift the mantissa split to sqrt(1/2) so m lies in [sqrt(.5), sqrt(2)) and
    # log(m) stays small: bits of sqrt(1/2) as the new "one".
    sqrt_half = 0x3FE6A09E667F3BCD if t.f64 else 0x3F3504F3
    one = t.bias << t.mant
    ix = b.add(b.bitcast(xs, t.ity), t.ci(one - sqrt_half))
    k = b.add(b.sub(b.lshr(ix, t.ci(t.mant)), t.ci(t.bias)), kadj)
    m = b.bitcast(b.add(b.and_(ix, t.ci((1 << t.mant) - 1)), t.ci(sqrt_half)), t.ty)
    f = b.fsub(m, t.c(1.0))
    # log(1+f) = f - (hfsq - s*(hfsq + R)), s = f/(2+f), R = sum 2 s^2k/(2k+1)
    hfsq = b.fmul(t.c(0.5), b.fmul(f, f))
    s = b.fdiv(f, b.fadd(f, t.c(2.0)))
    z = b.fmul(s, s)
    nterms = 10 if t.f64 else 4
    rpoly = _horner(b, z, [2.0 / (2 * j + 1) for j in range(1, nterms + 1)], t)
    big_r = b.fmul(z, rpoly)
    logm = b.fsub(f, b.fsub(hfsq, b.fmul(s, b.fadd(hfsq, big_r))))
    kf = b.sitofp(k, t.ty)
    hi, lo = ((6.93147180369123816490e-01, 1.90821492927058770002e-10) if t.f64
              else (0.693145751953125, 1.428606820309417232e-06))
    y = fma(b, kf, t.c(hi), fma(b, kf, t.c(lo), logm))
    y = b.select(b.fcmp_ordered("==", x, t.c(math.inf)), t.c(math.inf), y)
    y = b.select(b.fcmp_ordered("==", x, t.c(0.0)), t.c(-math.inf), y)
    y = b.select(b.fcmp_ordered("<", x, t.c(0.0)), t.c(math.nan), y)
    return b.select(_isnan(b, x), x, y)


def tanh(b: ir.IRBuilder, x):
    """tanh via expm1(2|x|)/(expm1(2|x|)+2); exactly +-1 for |x| > 20."""
    t = _Ty(x.type)
    a = fabs(b, x)
    sat = b.fcmp_ordered(">", a, t.c(20.0))
    y = b.select(b.fcmp_ordered("<=", a, t.c(20.0)), b.fadd(a, a), t.c(40.0))
    em = _expm1_small(b, y, t)
    th = b.fdiv(em, b.fadd(em, t.c(2.0)))
    th = b.select(sat, t.c(1.0), th)
    return b.select(_isnan(b, x), x, _copysign(b, th, x))


def sigmoid(b: ir.IRBuilder, x):
    """1/(1+e**-x) computed from e**-|x| so neither tail loses precision.

    Results are correctly saturated where the true value rounds to 1 or 0; small
    tails (e.g. sigmoid(-30) ~ 9e-14) are kept, not flushed, so float64 programs
    still match the reference to 1e-10 relative.
    """
    t = _Ty(x.type)
    e = exp(b, b.fsub(t.c(-0.0), fabs(b, x)))
    num = b.select(b.fcmp_ordered(">=", x, t.c(0.0)), t.c(1.0), e)
    y = b.fdiv(num, b.fadd(e, t.c(1.0)))
    return b.select(_isnan(b, x), x, y)


def relu(b: ir.IRBuilder, x):
    """max(x, 0); NaN passes through like np.maximum."""
    t = _Ty(x.type)
    return b.select(b.fcmp_ordered("<", x, t.c(0.0)), t.c(0.0), x)


UNARY = {"exp": exp, "expm1": expm1, "log": log, "tanh": tanh, "sigmoid": sigmoid,
         "relu": relu}


def emit_unary_kernel(module: ir.Module, name: str, op: str, dtype: str = "float32",
                      width: int | None = None) -> ir.Function:
    """void name(ptr out, ptr in, i64 n): out[i] = op(in[i]), width-wide then scalar.

    Used by tests and benchmarks; the compiler inlines the op functions directly.
    """
    fty = ir.DoubleType() if dtype == "float64" else ir.FloatType()
    width = width or (8 if dtype == "float64" else 16)
    vty, i64, ptr = ir.VectorType(fty, width), ir.IntType(64), ir.PointerType()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr, ptr, i64]), name=name)
    out, inp, n = fn.args
    out.add_attribute("noalias")
    inp.add_attribute("noalias")
    entry = fn.append_basic_block("entry")
    b = ir.IRBuilder(entry)
    nvec = b.mul(b.udiv(n, ir.Constant(i64, width)), ir.Constant(i64, width))
    for ty, step, start, stop, tag in ((vty, width, None, nvec, "v"), (fty, 1, nvec, n, "s")):
        head, body, done = (fn.append_basic_block(tag + s) for s in ("head", "body", "done"))
        pre = b.block
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(i64)
        i.add_incoming(start if start is not None else ir.Constant(i64, 0), pre)
        b.cbranch(b.icmp_signed("<", i, stop), body, done)
        b.position_at_end(body)
        src = b.gep(inp, [i], inbounds=True, source_etype=fty)
        v = b.load(src, typ=ty, align=4)
        r = UNARY[op](b, v)
        b.store(r, b.gep(out, [i], inbounds=True, source_etype=fty), align=4)
        nxt = b.add(i, ir.Constant(i64, step))
        i.add_incoming(nxt, b.block)
        b.branch(head)
        b.position_at_end(done)
    b.ret_void()
    return fn
