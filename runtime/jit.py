"""Host-CPU code generation and loading.

compile_ir() is pure (IR text -> ELF object bytes) so its output can be cached on
disk; load() turns object bytes into callable ctypes function pointers through an
ORC LLJIT instance. Errors surface as Python exceptions: LLJIT reports unresolved
symbols as errors instead of MCJIT's fatal abort, and we check the object's symbol
table ourselves first so the message names the symbol.
"""
from __future__ import annotations

import ctypes
import functools
import itertools
import struct
from dataclasses import dataclass, field

import llvmlite.binding as llvm

from runtime.sources import source_hash


@functools.cache
def _init() -> None:
    # llvm.initialize() raises on llvmlite >= 0.45; core init is automatic.
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()


@dataclass(frozen=True)
class TargetInfo:
    triple: str
    cpu: str
    features: str


@functools.cache
def target_info() -> TargetInfo:
    _init()
    return TargetInfo(llvm.get_process_triple(), llvm.get_host_cpu_name(),
                      llvm.get_host_cpu_features().flatten())


def codegen_id() -> str:
    """What besides the IR and the target decides the object code: the LLVM and llvmlite
    versions and this module's pass pipeline (its source), so cached objects made by another
    code generator are not loaded."""
    import llvmlite
    return f"llvm {llvm.llvm_version_info} llvmlite {llvmlite.__version__} jit {source_hash(__file__)}"


@functools.cache
def target_machine(opt: int = 3):
    ti = target_info()
    target = llvm.Target.from_triple(ti.triple)
    return target.create_target_machine(cpu=ti.cpu, features=ti.features, opt=opt,
                                        jit=True)


def _optimized_module(ir_text: str, opt: int):
    _init()
    mod = llvm.parse_assembly(str(ir_text))
    mod.verify()
    if opt > 0:
        pto = llvm.create_pipeline_tuning_options(speed_level=opt)
        pto.loop_vectorization = True
        pto.slp_vectorization = True
        pto.loop_unrolling = True
        pb = llvm.create_pass_builder(target_machine(opt), pto)
        pb.getModulePassManager().run(mod, pb)
    return mod


def compile_ir(ir_text: str, opt: int = 3) -> bytes:
    """Parse, verify, optimise (new PM, loop + SLP vectorisation) and emit an object."""
    mod = _optimized_module(ir_text, opt)
    return bytes(target_machine(opt).emit_object(mod))


def emit_asm(ir_text: str, opt: int = 3) -> str:
    """Assembly for the host CPU; used by tests to check for zmm/vfmadd."""
    mod = _optimized_module(ir_text, opt)
    return target_machine(opt).emit_assembly(mod)


def elf_symbols(obj: bytes) -> tuple[set[str], set[str]]:
    """(defined global names, undefined names) from an ELF64 little-endian object."""
    if obj[:4] != b"\x7fELF" or obj[4] != 2 or obj[5] != 1:
        raise ValueError("expected an ELF64 little-endian object")
    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", obj, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * shentsize)
                for i in range(shnum)]
    defined, undefined = set(), set()
    for _name, sh_type, _f, _a, off, size, link, _i, _al, entsize in sections:
        if sh_type != 2:  # SHT_SYMTAB
            continue
        stroff = sections[link][4]
        for k in range(size // entsize):
            st_name, st_info, _o, shndx, _v, _s = struct.unpack_from(
                "<IBBHQQ", obj, off + k * entsize)
            bind = st_info >> 4
            if not st_name or bind not in (1, 2):  # GLOBAL, WEAK
                continue
            end = obj.index(b"\0", stroff + st_name)
            name = obj[stroff + st_name:end].decode()
            (undefined if shndx == 0 else defined).add(name)
    return defined, undefined


def add_library(path: str) -> None:
    """Make a shared library's symbols visible to JIT-compiled code."""
    _init()
    llvm.load_library_permanently(str(path))


def add_symbol(name: str, address: int) -> None:
    """Register an external symbol (e.g. a BLAS entry point) for all later loads."""
    _init()
    llvm.add_symbol(name, int(address))


@functools.cache
def _lljit():
    return llvm.create_lljit_compiler(target_machine(3))


_lib_counter = itertools.count()


@dataclass
class Loaded:
    """Loaded object code. Keep this object alive while its pointers are used."""
    addresses: dict[str, int]
    _tracker: object = field(repr=False)
    _cfuncs: dict[str, object] = field(default_factory=dict, repr=False)

    def address(self, name: str) -> int:
        if name not in self.addresses:
            raise KeyError(f"symbol {name!r} was not requested at load time; "
                           f"available: {sorted(self.addresses)}")
        return self.addresses[name]

    def function(self, name: str, restype=None, *argtypes):
        """A ctypes function pointer; it holds a reference to this Loaded."""
        f = ctypes.CFUNCTYPE(restype, *argtypes)(self.address(name))
        f._keepalive = self
        return f

    def __getitem__(self, name: str):
        """The ctypes pointer for a signature given to load(), else the address."""
        return self._cfuncs.get(name) or self.address(name)


def load(obj: bytes, symbols, externals: dict[str, int] | None = None) -> Loaded:
    """Link object bytes into the process.

    symbols: names to export, or a dict name -> ctypes CFUNCTYPE type (or None).
    externals: name -> address for undefined symbols; other undefined symbols are
    resolved from the process (libc, libraries given to add_library/add_symbol).
    Raises KeyError naming any requested symbol the object lacks or any external
    that cannot be resolved.
    """
    _init()
    sigs = dict(symbols) if isinstance(symbols, dict) else {s: None for s in symbols}
    defined, undefined = elf_symbols(obj)
    missing = sorted(set(sigs) - defined)
    if missing:
        raise KeyError(f"symbols {missing} not defined in object "
                       f"(defined: {sorted(defined)})")
    externals = dict(externals or {})
    imports = {}
    for name in sorted(undefined):
        addr = externals.get(name) or llvm.address_of_symbol(name)
        if not addr:
            raise KeyError(f"object needs external symbol {name!r} that is not "
                           f"loaded; pass externals= or call add_library()")
        imports[name] = addr
    builder = llvm.JITLibraryBuilder().add_object_img(obj)
    for name, addr in imports.items():
        builder.import_symbol(name, addr)
    for name in sigs:
        builder.export_symbol(name)
    tracker = builder.link(_lljit(), f"gg{next(_lib_counter)}")
    loaded = Loaded({n: tracker[n] for n in sigs}, tracker)
    for name, proto in sigs.items():
        if proto is not None:
            f = proto(loaded.addresses[name])
            f._keepalive = loaded
            loaded._cfuncs[name] = f
    return loaded


def jit(ir_text: str, symbols, opt: int = 3, externals=None) -> Loaded:
    """compile_ir + load, uncached (see runtime.cache.compile_cached for caching)."""
    return load(compile_ir(ir_text, opt), symbols, externals)
