"""DWARF call-frame information (CFI): how to find a frame's caller from any pc.

Compilers describe, for every instruction of a function, where the canonical frame address (CFA)
is and where the caller's registers were saved. Two sections carry it: `.eh_frame` (loaded with
the code, kept by strip, used by C++ exceptions; present in glibc, which has no frame pointers)
and `.debug_frame` (in -g output, or only in a separate debug file). This module reads both with
pyelftools, imported on the first unwind only, and answers one question: the rule Row in force at
a file address of one ELF file.

.eh_frame lookups go through the binary-search table of `.eh_frame_hdr` and parse only the FDE
that covers the pc: libc has ~3700 FDEs, and parsing them all costs ~0.6 s on every session.
`.debug_frame` has no such table, so it is parsed once and indexed.
"""

from __future__ import annotations

import bisect
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

from mdbpy.errors import MdbError

# DWARF register numbers of x86_64 (System V psABI, figure 3.36); 16 is the return address.
DWARF_REGS = ("rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")
RA = 16

MAX_EXPR_OPS = 64  # CFI expressions are a handful of ops; anything longer is not trusted
MASK = (1 << 64) - 1

# pyelftools' RegisterRule types -> the short names used here
_RULE_KINDS = {"UNDEFINED": "undefined", "SAME_VALUE": "same", "OFFSET": "offset",
               "VAL_OFFSET": "val_offset", "REGISTER": "register", "EXPRESSION": "expr",
               "VAL_EXPRESSION": "val_expr", "ARCHITECTURAL": "undefined"}


class UnwindError(MdbError):
    """The unwind information cannot be followed (an unsupported rule or expression)."""


@dataclass(frozen=True)
class Row:
    """The unwind rules in force at one pc.

    The CFA is `cfa_reg + cfa_offset`, or the value of `cfa_expr` (parsed ops). `rules` maps a
    DWARF register number to (kind, arg): 'undefined', 'same', 'offset' (saved at CFA+arg),
    'val_offset' (is CFA+arg), 'register' (is in register arg), 'expr' (saved at the address the
    ops compute) or 'val_expr' (is what they compute). `signal` marks a signal trampoline's FDE
    (CIE augmentation 'S'): the pc of the frame it unwinds to is exact, not a return address.
    """

    cfa_reg: int | None
    cfa_offset: int
    cfa_expr: tuple | None
    rules: dict
    signal: bool = False


def eval_expr(ops, reg, read_u64, initial=()) -> int:
    """Run a CFI DWARF expression: `ops` are (name, args) pairs, `reg(n)` gives DWARF register n,
    `read_u64(addr)` reads memory; `initial` is pushed first (the CFA for register rules).

    Covers the stack-machine subset that compilers and glibc emit in CFI (PLT entries, signal
    frames): literals and constants, bregN, arithmetic and comparisons, deref. Branches and
    anything else raise UnwindError rather than guessing.
    """
    stack = list(initial)

    def pop() -> int:
        if not stack:
            raise UnwindError("malformed CFI expression: stack underflow")
        return stack.pop()

    if len(ops) > MAX_EXPR_OPS:
        raise UnwindError("CFI expression too long")
    for name, args in ops:
        if stack_op(name, args, stack, pop):
            continue
        if name.startswith("DW_OP_breg") and name != "DW_OP_bregx":
            stack.append(reg(int(name[10:])) + args[0])
        elif name == "DW_OP_bregx":
            stack.append(reg(args[0]) + args[1])
        elif name == "DW_OP_deref":
            stack.append(read_u64(pop() & MASK))
        else:
            raise UnwindError(f"unsupported CFI expression op {name}")
        if stack:
            stack[-1] &= MASK
    return pop()


def signed64(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


BINARY_OPS = {
    "DW_OP_plus": lambda a, b: a + b, "DW_OP_minus": lambda a, b: a - b,
    "DW_OP_mul": lambda a, b: a * b, "DW_OP_and": lambda a, b: a & b,
    "DW_OP_or": lambda a, b: a | b, "DW_OP_xor": lambda a, b: a ^ b,
    "DW_OP_shl": lambda a, b: a << (b & 63), "DW_OP_shr": lambda a, b: a >> (b & 63),
    "DW_OP_shra": lambda a, b: signed64(a) >> (b & 63),
    "DW_OP_eq": lambda a, b: int(a == b), "DW_OP_ne": lambda a, b: int(a != b),
    "DW_OP_ge": lambda a, b: int(signed64(a) >= signed64(b)),
    "DW_OP_gt": lambda a, b: int(signed64(a) > signed64(b)),
    "DW_OP_le": lambda a, b: int(signed64(a) <= signed64(b)),
    "DW_OP_lt": lambda a, b: int(signed64(a) < signed64(b)),
}


def stack_op(name: str, args, stack: list, pop) -> bool:
    """One op of the plain DWARF stack machine, shared by CFI expressions (eval_expr) and
    variable locations (mdbpy/types/locations.py): literals and constants, arithmetic and
    comparisons, the stack shuffles. `pop()` raises the caller's error on an empty stack.
    Returns False for any other op, which the caller handles or refuses."""
    if name.startswith("DW_OP_lit"):
        stack.append(int(name[9:]))
    elif name.startswith("DW_OP_const") and name not in ("DW_OP_const_type", "DW_OP_constx"):
        stack.append(args[0] & MASK)
    elif name in BINARY_OPS:
        b, a = pop(), pop()
        stack.append(BINARY_OPS[name](a, b) & MASK)
    elif name == "DW_OP_plus_uconst":
        stack.append((pop() + args[0]) & MASK)
    elif name == "DW_OP_dup":
        stack.append(stack[-1] if stack else pop())
    elif name == "DW_OP_drop":
        pop()
    elif name == "DW_OP_swap":
        b, a = pop(), pop()
        stack += [b, a]
    elif name == "DW_OP_over":
        b, a = pop(), pop()
        stack += [a, b, a]
    elif name == "DW_OP_neg":
        stack.append(-pop() & MASK)
    elif name == "DW_OP_not":
        stack.append(~pop() & MASK)
    elif name != "DW_OP_nop":
        return False
    return True



class _Section:
    """One CFI section (.eh_frame or .debug_frame) of one file, searchable by file address.

    `table` is the sorted (initial location, entry offset) list of .eh_frame_hdr; without it the
    whole section is parsed on the first lookup.
    """

    def __init__(self, cfi, structs, table: list[tuple[int, int]] | None):
        self._cfi = cfi
        self._structs = structs
        self._table = table
        self._starts: list[int] | None = None
        self._fdes: list | None = None
        self._rows: dict[int, tuple[int, list[int], list[Row]]] = {}  # i -> (end, pcs, rows)

    def _index(self) -> None:
        if self._table is not None:
            self._starts = [loc for loc, _ in self._table]
            return
        from elftools.dwarf.callframe import FDE

        fdes = [e for e in self._cfi.get_entries() if isinstance(e, FDE)]
        fdes.sort(key=lambda e: e.header.initial_location)
        self._fdes = fdes
        self._starts = [e.header.initial_location for e in fdes]

    def _fde(self, i: int):
        if self._fdes is not None:
            return self._fdes[i]
        # One FDE from the hdr table: pyelftools has no public single-entry parser, and its
        # _parse_entry_at() is what get_entries() itself loops over.
        return self._cfi._parse_entry_at(self._table[i][1])

    def row(self, pc: int) -> Row | None:
        """The row in force at file address pc, or None when no FDE covers it; UnwindError
        when the covering FDE cannot be parsed."""
        if self._starts is None:
            try:
                self._index()
            except Exception as e:  # a malformed section: treated as absent from now on
                self._starts = []
                raise UnwindError(f"malformed CFI section: {type(e).__name__}") from None
        i = bisect.bisect_right(self._starts, pc) - 1
        if i < 0:
            return None
        entry = self._rows.get(i)
        if entry is None:
            try:
                fde = self._fde(i)
                end = fde.header.initial_location + fde.header.address_range
                entry = self._rows[i] = (end, *self._decode(fde))
            except UnwindError:
                raise
            except Exception as e:  # the file is target data: any malformation ends the walk
                raise UnwindError(f"malformed CFI for 0x{pc:x}: {type(e).__name__}") from None
        end, pcs, rows = entry
        if pc >= end:
            return None
        j = bisect.bisect_right(pcs, pc) - 1
        return rows[j] if j >= 0 else None

    def _decode(self, fde) -> tuple[list[int], list[Row]]:
        from elftools.dwarf.dwarf_expr import DWARFExprParser

        parser = DWARFExprParser(self._structs)

        def ops(expr) -> tuple:
            return tuple((op.op_name, tuple(op.args)) for op in parser.parse_expr(expr))

        signal = b"S" in bytes(fde.cie.header.get("augmentation") or b"")
        pcs, rows = [], []
        for line in fde.get_decoded().table:
            cfa = line["cfa"]
            rules = {}
            for regno, rule in line.items():
                if isinstance(regno, int):
                    kind = _RULE_KINDS.get(rule.type, "undefined")
                    rules[regno] = (kind, ops(rule.arg) if kind in ("expr", "val_expr")
                                    else rule.arg)
            rows.append(Row(cfa.reg, cfa.offset or 0,
                            ops(cfa.expr) if cfa.expr is not None else None, rules, signal))
            pcs.append(line["pc"])
        return pcs, rows


class ObjectCFI:
    """The CFI of one ELF file (a path, or an image read from memory): its own .eh_frame and
    .debug_frame, then the .debug_frame of its separate debug file, which `find_debug()` names and which is looked for only when the file
    itself has no answer for a pc. Addresses are file addresses (runtime address - load bias).
    """

    def __init__(self, source: str | bytes, find_debug: Callable[[], str | None]):
        self.source = source
        self._find_debug = find_debug
        self._own: list[_Section] | None = None
        self._debug: list[_Section] | None = None

    def row(self, pc: int) -> Row | None:
        if self._own is None:
            self._own = read_sections(self.source)
        for sec in self._own:
            r = sec.row(pc)
            if r is not None:
                return r
        if self._debug is None:
            found = self._find_debug()
            self._debug = read_sections(found) if found else []
        for sec in self._debug:
            r = sec.row(pc)
            if r is not None:
                return r
        return None


def read_sections(source: str | bytes) -> list[_Section]:
    """The CFI sections of an ELF file (a path, or the image itself), .eh_frame first.

    A file that cannot be read or parsed has no CFI: the unwinder then falls back to frame
    pointers, so a missing or damaged file degrades the stack instead of failing the command.
    """
    from elftools.common.exceptions import ELFError
    from elftools.dwarf.callframe import CallFrameInfo
    from elftools.dwarf.structs import DWARFStructs
    from elftools.elf.elffile import ELFFile

    try:
        with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as f:
            elf = ELFFile(f)
            structs = DWARFStructs(little_endian=elf.little_endian, dwarf_format=32,
                                   address_size=elf.elfclass // 8)
            sections = []
            for name in (".eh_frame", ".debug_frame"):
                sec = elf.get_section_by_name(name)
                if sec is None or sec["sh_type"] == "SHT_NOBITS":
                    continue
                data = sec.data()
                eh = name == ".eh_frame"
                cfi = CallFrameInfo(io.BytesIO(data), len(data), sec["sh_addr"], structs,
                                    for_eh_frame=eh)
                sections.append(_Section(cfi, structs, _hdr_table(elf, sec) if eh else None))
            return sections
    except (OSError, ELFError, struct.error, ValueError, OverflowError):
        return []  # OverflowError: an offset past 2**63 (a damaged vDSO's headers in a core)


def _hdr_table(elf, eh_frame) -> list[tuple[int, int]] | None:
    """The .eh_frame_hdr search table as sorted (initial location, .eh_frame offset) pairs, or
    None when absent or in an encoding other than the one linkers write (udata4 count,
    datarel|sdata4 entries); the caller then indexes the whole section."""
    hdr = elf.get_section_by_name(".eh_frame_hdr")
    if hdr is None or hdr["sh_type"] == "SHT_NOBITS":
        return None
    data = hdr.data()
    if len(data) < 4 or data[0] != 1:
        return None
    ptr_size = {0x02: 2, 0x03: 4, 0x04: 8, 0x0A: 2, 0x0B: 4, 0x0C: 8}.get(data[1] & 0x0F)
    if ptr_size is None or data[2] != 0x03 or data[3] != 0x3B:
        return None
    pos = 4 + ptr_size
    if pos + 4 > len(data):
        return None
    (count,) = struct.unpack_from("<I", data, pos)
    pos += 4
    count = min(count, (len(data) - pos) // 8)
    base, eh_addr, eh_size = hdr["sh_addr"], eh_frame["sh_addr"], eh_frame.data_size
    flat = struct.unpack_from(f"<{2 * count}i", data, pos)
    table = []
    for k in range(count):
        off = base + flat[2 * k + 1] - eh_addr
        if 0 <= off < eh_size:
            table.append((base + flat[2 * k], off))
    table.sort()
    return table


def cfi_for(session, obj) -> ObjectCFI | None:
    """The CFI of a load object (cached in the session by the file's build-id, else its path),
    or None when the object has no ELF file on this machine."""
    from mdbpy.symbols.elf import ElfObject

    if not isinstance(obj, ElfObject) or obj.file is None:
        return None
    bid = obj.info.build_id if obj.info else None
    key = ("unwind.cfi", bid or obj.file)
    cfi = session.cache.get(key)
    if cfi is None:
        cfi = session.cache[key] = ObjectCFI(obj.file, obj.find_debug_file)
    return cfi


AT_SYSINFO_EHDR = 33  # auxv: where the kernel mapped the vDSO
MAX_VDSO = 1 << 20  # the vDSO is two pages; a larger mapping at that address is not trusted


def vdso_cfi(session, addr: int) -> tuple[ObjectCFI, int] | None:
    """(CFI, load bias) of the kernel's vDSO when addr is inside it. The vDSO is no file: its
    ELF image (with .eh_frame) is read from the target's memory at the auxv's
    AT_SYSINFO_EHDR, which live processes and cores both record."""
    base = session.target.auxv().get(AT_SYSINFO_EHDR)
    m = session.mem.mapping_at(base) if base else None
    if m is None or not m.contains(addr) or m.size > MAX_VDSO:
        return None
    key = ("unwind.cfi", "[vdso]", m.start)
    hit = session.cache.get(key)
    if hit is None:
        from mdbpy.symbols.elf import load_bias, parse_elf_info

        try:
            image = session.mem.read(m.start, m.size)
        except MdbError:
            image = b""
        info = parse_elf_info(lambda off, n: image[off:off + n]) if image else None
        bias = load_bias([m], info) if info else None
        hit = session.cache[key] = (ObjectCFI(image, lambda: None), m.start if bias is None
                                    else bias)
    return hit
