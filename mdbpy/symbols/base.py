"""The symbol records every source produces: ELF files on disk, and synthetic tables (tests,
the simulator). Addresses here are always runtime addresses (file value + load bias)."""

from __future__ import annotations

from dataclasses import dataclass


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
