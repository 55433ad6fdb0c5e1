"""compiler: trace recurrent step functions into a graph IR, differentiate, schedule and lower
the whole forward + BPTT loop to native code."""
from .api import CompiledProgram, compile
from .errors import CompileError

__all__ = ["CompileError", "CompiledProgram", "compile"]
