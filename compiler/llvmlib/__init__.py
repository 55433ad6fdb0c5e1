"""LLVM IR building blocks for the code generator: vector math and GEMM kernels.

Independent of the rest of graphgrad; see docs/runtime.md.
"""
from compiler.llvmlib import vecmath  # noqa: F401
