"""The symbol records every source produces: ELF files on disk, and synthetic tables (tests,
the simulator), and the load object that holds them. Addresses here are always runtime
addresses (file value + load bias)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from mdbpy.errors import ReadError


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int  # runtime address
    size: int
    type: str = "func"  # 'func' 'object' 'notype' 'section' 'file' 'tls' ...
    bind: str = "global"  # 'global' 'local' 'weak'
    obj: str = ""  # the load object's short name, e.g. 'libc.so.6' or 'a.out'
    other: int = 0
    shndx: str = ""
    value: int = 0  # the st_value as in the file (before the load bias)

    def contains(self, addr: int) -> bool:
        return self.addr <= addr < self.addr + max(self.size, 1)


@dataclass
class LoadObject:
    """A named object with symbols: an ELF file mapped by the target, or a synthetic table."""

    name: str  # short name as mdb prints it: 'a.out' for the executable, else the basename
    path: str = ""
    base: int = 0  # lowest mapped address
    end: int = 0  # highest mapped address (exclusive)
    bias: int = 0  # runtime address - file address
    is_exe: bool = False
    symbols: list[Symbol] = field(default_factory=list)  # sorted by address once loaded
    _by_name: dict[str, Symbol] | None = None
    _addrs: list[int] | None = None

    def finish(self) -> None:
        """Index the symbols (call after filling `symbols`)."""
        self.symbols.sort(key=lambda s: (s.addr, -s.size))
        self._addrs = [s.addr for s in self.symbols]
        by_name: dict[str, Symbol] = {}
        for s in self.symbols:
            old = by_name.get(s.name)
            if old is None or preferred(s, old):
                by_name[s.name] = s
        for s in self.symbols:
            base = alias_of(s.name)
            if base:
                by_name.setdefault(base, s)
        self._by_name = by_name

    def table(self, which: str = "symtab") -> list[Symbol]:
        """The symbol table in file order, as ::nm lists it (ELF objects override this to
        give .symtab or .dynsym with undefined and section entries; a synthetic object has
        one table)."""
        return self.symbols

    def read_file(self, addr: int, n: int) -> bytes:
        """The object-file bytes behind [addr, addr+n) (ELF objects override this)."""
        raise ReadError(addr, n, f"{self.name} has no object file")

    def lookup(self, name: str) -> Symbol | None:
        if self._by_name is None:
            self.finish()
        return self._by_name.get(name)

    def lookup_addr(self, addr: int) -> Symbol | None:
        """The symbol containing addr; else the closest preceding sized-0 symbol within the
        object; None outside the object."""
        if self._addrs is None:
            self.finish()
        i = bisect.bisect_right(self._addrs, addr) - 1
        best = None
        while i >= 0:
            s = self.symbols[i]
            if s.type in ("func", "object", "notype", "tls") and s.name:
                if s.contains(addr):
                    return s
                if best is None and s.size == 0:
                    best = s
                if addr - s.addr > (1 << 20):
                    break
            i -= 1
        return best


def _rank(s: Symbol) -> int:
    return {"global": 2, "weak": 1}.get(s.bind, 0)


def preferred(s: Symbol, old: Symbol) -> bool:
    """Whether s names its name rather than old (met before it in address order): global
    over weak over local, then sized over unsized."""
    return (_rank(s), s.size > 0) > (_rank(old), old.size > 0)


def alias_of(name: str) -> str:
    """The name a versioned one also answers to, or '': `stdout` finds `stdout@GLIBC_2.2.5`
    (newer linkers keep versions in .symtab names), but `malloc` is never the PLT stub
    `malloc@plt`, which only calls it."""
    base = name.split("@", 1)[0]
    return base if base != name and not name.endswith("@plt") else ""
