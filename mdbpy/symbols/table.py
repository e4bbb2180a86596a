"""SymbolTable: every load object's symbols, by name and by address, for one session.

Load objects come from the target's file mappings (ELF files, loaded lazily) and from synthetic
sources added with add_symbols() (tests, the simulator). Addresses are runtime addresses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mdbpy.errors import ReadError
from mdbpy.symbols.base import LoadObject, Symbol
from mdbpy.symbols.elf import load_objects

if TYPE_CHECKING:
    from mdbpy.session import Session


def named_at(pc: int, ret: bool = True) -> int:
    """The address whose symbol (and source line) names pc: pc itself for an exact pc (a
    thread's innermost frame, a signal trampoline, the pc a signal interrupted), else pc-1.

    Every other pc of a stack, live or stored by an allocator (libumem's bc_stack and vs_stack,
    the simulator's tracks), is a return address: the instruction after a call. A call to a
    noreturn function (abort, exit, __assert_fail, longjmp) can be the last instruction of its
    function, so its return address is the first byte of whatever follows in memory; pc-1 is
    the call's last byte, inside its caller (gdb's get_frame_address_in_block). This is the one
    place the rule lives: the stack printers pass ret to SymbolTable.format_addr / lookup_addr /
    locate, and checks such as "is this frame inside the allocator" look frames up here."""
    return (pc - 1) & 0xFFFFFFFFFFFFFFFF if ret and pc else pc


class SymbolTable:
    def __init__(self, session: Session):
        self.session = session
        self._objects: list[LoadObject] | None = None
        self._synthetic: list[LoadObject] = []
        self._previous: list[LoadObject] = []  # reused by the next load when unchanged

    def refresh(self) -> None:
        """The mappings may have changed: rebuild the object list on next use, keeping the
        already-read symbols of every object that is still mapped at the same place."""
        if self._objects is not None:
            synthetic = {id(o) for o in self._synthetic}
            self._previous = [o for o in self._objects if id(o) not in synthetic]
        self._objects = None

    # -- objects ----------------------------------------------------------------------------
    def objects(self) -> list[LoadObject]:
        if self._objects is None:
            self._objects = sorted(self._load_objects() + self._synthetic,
                                   key=lambda o: o.base)
        return self._objects

    def _load_objects(self) -> list[LoadObject]:
        """The ELF load objects of the target's mappings (see elf.py)."""

        objs = load_objects(self.session, self._previous)
        self._previous = []
        return objs

    def add_symbols(self, name: str, symbols, is_exe: bool = False) -> LoadObject:
        """Add a synthetic load object with the given Symbols (runtime addresses)."""
        syms = [s if s.obj == name else Symbol(**{**s.__dict__, "obj": name}) for s in symbols]
        lo = LoadObject(name, base=min((s.addr for s in syms), default=0),
                        end=max((s.addr + max(s.size, 1) for s in syms), default=0),
                        is_exe=is_exe, symbols=syms)
        lo.finish()
        self._synthetic.append(lo)
        self._objects = None
        return lo

    def object_named(self, name: str) -> LoadObject | None:
        for o in self.objects():
            if name in (o.name, o.path) or (name == "a.out" and o.is_exe):
                return o
        for o in self.objects():  # 'libc' matches 'libc.so.6', as mdb's module names do
            if o.name.split(".so")[0] == name:
                return o
        return None

    def object_for_addr(self, addr: int) -> LoadObject | None:
        for o in self.objects():
            if o.base <= addr < o.end:
                return o
        return None

    def read_file(self, addr: int, n: int) -> bytes:
        """The bytes of the object file that back [addr, addr+n): mdb's `?` verb and `%e`."""
        o = self.object_for_addr(addr)
        if o is None:
            raise ReadError(addr, n, "no object file maps this address")
        return o.read_file(addr, n)

    # -- lookups ----------------------------------------------------------------------------
    def lookup(self, name: str, obj: str | None = None) -> Symbol | None:
        """A symbol by name: in `obj` when given, else the executable first, then the others."""
        if obj is not None:
            o = self.object_named(obj)
            return o.lookup(name) if o else None
        objs = sorted(self.objects(), key=lambda o: not o.is_exe)
        weak = None
        for o in objs:
            s = o.lookup(name)
            if s is not None and s.type != "undefined":
                if s.bind != "weak":
                    return s
                weak = weak or s
        return weak

    def locate(self, addr: int, ret: bool = False) -> tuple[LoadObject | None, Symbol | None]:
        """The load object and the symbol that name addr (see named_at: with ret, addr is a
        return address, named by the call before it)."""
        at = named_at(addr, ret)
        o = self.object_for_addr(at)
        return o, (o.lookup_addr(at) if o else None)

    def lookup_addr(self, addr: int, ret: bool = False) -> tuple[Symbol, int] | None:
        """(symbol, offset of addr in it); with ret, the symbol of a return address (see
        named_at), the offset still counted from addr itself."""
        s = self.locate(addr, ret)[1]
        return (s, addr - s.addr) if s else None

    def format_addr(self, addr: int, ret: bool = False) -> str:
        """mdb's %a: `obj`sym+0xoff` (no object prefix in the executable), else 0x-hex. With
        ret, addr is a return address (a frame of a stack above the innermost): named after the
        function of its call, as gdb names it, so the caller of a noreturn call that ends `f`
        prints as `f+<size of f>`, not as the function placed after f."""
        o, s = self.locate(addr, ret)
        if s is None:
            return f"0x{addr:x}"
        off = addr - s.addr
        name = s.name if (o is None or o.is_exe) else f"{o.name}`{s.name}"
        return f"{name}+0x{off:x}" if off else name
