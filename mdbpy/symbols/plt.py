"""Names for PLT stubs (`malloc@plt`), synthesized the way binutils' objdump names them.

A PLT stub has no symbol of its own: the linker leaves only the relocation of the GOT slot the
stub jumps through. So each stub is decoded: an entry of .plt, .plt.sec, .plt.got or .plt.bnd
that starts (after an optional `endbr64` and an optional `bnd` prefix) with
`jmp *disp32(%rip)` jumps through the GOT slot at entry + offset + 6 + disp32, and the dynamic
relocation at that slot (JUMP_SLOT in .rela.plt, GLOB_DAT in .rela.dyn for .plt.got, IRELATIVE
for ifuncs) names it: `sym@plt`, `sym+0xaddend@plt`, or `*ABS*+0xaddend@plt` without a symbol.

Decoding the jump instead of assuming a layout covers every x86-64 variant without a table of
templates: the lazy .plt (16-byte header `push GOT+8; jmp *GOT+16` that names no relocation, so
it gets no name, then `jmp *slot; push n; jmp .plt`), the IBT pair (.plt entries `endbr64; push
n; jmp .plt` have no GOT jump, the .plt.sec entries `endbr64; bnd jmp *slot` get the names), and
the non-lazy .plt.got (`jmp *slot; xchg ax,ax`, 8 bytes, or 16 with IBT).

Everything read from the file is bounded: at most MAX_ENTRIES stubs and MAX_RELOCS relocations.
"""

from __future__ import annotations

import struct
from array import array

from mdbpy.symbols.cache import Columns
from mdbpy.target import elfcore as ec

PLT_SECTIONS = (".plt", ".plt.sec", ".plt.got", ".plt.bnd")
SYM_NAME = struct.Struct("<I")  # the st_name at the start of an Elf64_Sym
ENDBR64 = b"\xf3\x0f\x1e\xfa"
BND = 0xF2
JMP_RIP = b"\xff\x25"  # jmp *disp32(%rip)
MAX_ENTRIES = 1 << 16  # libc has about 60 stubs; a larger count is not a real PLT
MAX_RELOCS = 1 << 20
STT_FUNC_LOCAL = 0x02  # st_info of the synthesized symbols: local function


def stub_slot(entry: bytes, addr: int) -> int | None:
    """The GOT slot address a PLT entry at `addr` jumps through, or None when the entry does
    not begin with an (optionally endbr64- and bnd-prefixed) rip-relative indirect jump."""
    pos = len(ENDBR64) if entry.startswith(ENDBR64) else 0
    if pos < len(entry) and entry[pos] == BND:
        pos += 1
    if entry[pos:pos + 2] != JMP_RIP or len(entry) < pos + 6:
        return None
    (disp,) = struct.unpack_from("<i", entry, pos + 2)
    return (addr + pos + 6 + disp) & ((1 << 64) - 1)


def stub_name(symbol: str, addend: int) -> str:
    """objdump's name for a stub whose slot relocation names `symbol` (maybe '') + addend."""
    base = symbol or "*ABS*"
    if addend or not symbol:
        base += f"+0x{addend & ((1 << 64) - 1):x}"
    return base + "@plt"


def slot_names(elf) -> dict[int, str]:
    """GOT slot address -> stub name, from every RELA section linked to a dynamic symbol
    table (and symbol-less ones, which hold IRELATIVE slots)."""
    out: dict[int, str] = {}
    budget = MAX_RELOCS
    for sec in elf.iter_sections():
        if sec["sh_type"] != "SHT_RELA" or sec["sh_entsize"] != ec.RELA.size:
            continue
        symtab = elf.get_section(sec["sh_link"]) if sec["sh_link"] else None
        if symtab is not None and symtab["sh_type"] != "SHT_DYNSYM":
            continue
        syms = symtab.data() if symtab is not None else b""
        strs = elf.get_section(symtab["sh_link"]).data() if symtab is not None else b""
        data = sec.data()
        n = min(len(data) // ec.RELA.size, budget)
        budget -= n
        for off, info, addend in ec.RELA.iter_unpack(data[:n * ec.RELA.size]):
            out.setdefault(off, stub_name(_sym_name(syms, strs, info >> 32), addend))
    return out


def _sym_name(syms: bytes, strs: bytes, index: int) -> str:
    at = index * ec.SYM.size
    if not index or at + ec.SYM.size > len(syms):
        return ""
    (name,) = SYM_NAME.unpack_from(syms, at)
    end = strs.find(b"\0", name)
    return strs[name:end if end >= 0 else len(strs)].decode("utf-8", "replace")


def plt_columns(path: str) -> Columns:
    """The synthesized stub symbols of an ELF file, as a symbol-table Columns (values are
    file addresses; sizes the entry sizes; local functions in their PLT section). A file
    whose sections or relocations cannot be parsed has none: its real symbols still count."""
    try:
        stubs = _stubs(path)
    except Exception:  # pyelftools' many parse errors on a damaged file: no stub names
        stubs = []
    n = len(stubs)
    return Columns([name for name, _, _, _ in stubs], array("Q", [s[1] for s in stubs]),
                   array("Q", [s[2] for s in stubs]), array("B", [STT_FUNC_LOCAL] * n),
                   array("B", bytes(n)), array("H", [s[3] for s in stubs]))


def _stubs(path: str) -> list[tuple[str, int, int, int]]:
    """(name, file address, entry size, section index) of each named PLT entry."""
    from elftools.elf.elffile import ELFFile

    out = []
    with open(path, "rb") as f:
        elf = ELFFile(f)
        secs = [(i, s) for i, s in enumerate(elf.iter_sections())
                if s.name in PLT_SECTIONS and s["sh_type"] == "SHT_PROGBITS"]
        slots = slot_names(elf) if secs else {}
        for index, sec in secs:
            step = sec["sh_entsize"] if sec["sh_entsize"] in (8, 16) else 16
            data = sec.data()
            base = sec["sh_addr"]
            for at in range(0, min(len(data), MAX_ENTRIES * step), step):
                name = slots.get(stub_slot(data[at:at + step], base + at))
                if name is not None:
                    out.append((name, base + at, step, index))
    return out
