"""The kernel library: code every program shares, compiled once per dtype and linked by name.

A program module only declares these functions; runtime/library.py compiles the library module
(through the on-disk cache, so once per machine), loads it once per process and hands the
addresses to each program's load as externals. Program modules therefore stay small: their own
code is the fused elementwise kernels and the driver loop, and their LLVM compile time no longer
pays for the GEMM micro-kernels or five inlined transcendental functions per fused kernel.

Contents for a dtype ("float32" | "float64"):
  * pgemm: gg_pack_<t>, gg_prepack_<t>, gg_gemm_<t>  (t = f32 | f64; see pgemm.py)
  * vector math: `<W x T> gg_vm_<op>_<suffix>(<W x T>)` for op in VM_OPS, suffix like v16f32,
    for the vector widths fused kernels use (16 and 8 lanes for float32, 8 for float64).
Both sides are compiled for the same host CPU and features, so vector arguments travel in zmm
registers under one calling convention.
"""
from __future__ import annotations

from llvmlite import ir

from compiler.llvmlib import pgemm, vecmath

VM_OPS = ("exp", "expm1", "log", "tanh", "sigmoid")
LIBRARY_VERSION = 1        # bump when generated code changes in a way the IR text does not show


def vm_widths(dtype):
    return (16, 8) if dtype == "float32" else (8,)


def _fty(dtype):
    return ir.DoubleType() if dtype == "float64" else ir.FloatType()


def vm_name(op, vty) -> str:
    el = "f64" if vty.element == ir.DoubleType() else "f32"
    return f"gg_vm_{op}_v{vty.count}{el}"


def vm_call(b: ir.IRBuilder, op: str, x):
    """Call the library's out-of-line vector `op` on x (declared in b's module on first use)."""
    name = vm_name(op, x.type)
    fn = b.module.globals.get(name) or ir.Function(b.module, ir.FunctionType(x.type, [x.type]),
                                                    name=name)
    return b.call(fn, [x])


def has_vm(op, ty) -> bool:
    """Whether the library provides op for this value type (vectors of the widths above)."""
    if op not in VM_OPS or not isinstance(ty, ir.VectorType):
        return False
    dt = "float64" if ty.element == ir.DoubleType() else "float32"
    return ty.count in vm_widths(dt) or (dt == "float32" and ty.count == 8)


def symbols(dtype) -> list:
    """Every exported name of the library for dtype."""
    t = pgemm.tag(dtype)
    names = [f"{p}_{t}" for p in pgemm.SIGS]
    for w in vm_widths(dtype):
        names += [vm_name(op, ir.VectorType(_fty(dtype), w)) for op in VM_OPS]
    return names


def build(dtype: str, triple: str | None = None) -> ir.Module:
    mod = ir.Module(name=f"graphgrad_lib_{dtype}_v{LIBRARY_VERSION}")
    if triple:
        mod.triple = triple
    pgemm.emit_all(mod, dtype)
    for w in vm_widths(dtype):
        vty = ir.VectorType(_fty(dtype), w)
        for op in VM_OPS:
            fn = ir.Function(mod, ir.FunctionType(vty, [vty]), name=vm_name(op, vty))
            b = ir.IRBuilder(fn.append_basic_block("entry"))
            b.ret(vecmath.UNARY[op](b, fn.args[0]))
    return mod


def owner(name: str) -> str:
    """The dtype whose library defines the symbol `name`."""
    return "float64" if name.endswith("f64") else "float32"
