"""Source lines from DWARF line tables: runtime address -> (file, line), as addr2line gives.

The line table of an object comes from the object file when it has .debug_line, else from its
separate debug file (ElfObject.find_debug_file(): build-id or .gnu_debuglink, as libc6-dbg
installs them). pyelftools is imported on first use only.

A lookup decodes one compilation unit's line program, never all of them: the CU comes from
.debug_aranges when the file has it (a sorted table, searched by bisection), else from an
index of the CUs' address ranges (DW_AT_low_pc/high_pc, DW_AT_ranges) built once per object.
Each decoded CU is kept as sorted rows, so later lookups in it are a bisection.

The answer is addr2line's (bfd's dwarf2.c), the reference the tests compare with: the row
covering an address is the last row at the greatest address not above it, within its sequence;
the file name is the line table's directory joined to the CU's DW_AT_comp_dir unless either is
absolute (`./string/../sysdeps/x86_64/multiarch/strcmp.c` in libc). Where addr2line misreads
DWARF 5 file numbers (see _file_name) mdbpy names the file gdb names.
"""

from __future__ import annotations

import bisect
import os
from typing import TYPE_CHECKING

from mdbpy.errors import MdbError

if TYPE_CHECKING:
    from mdbpy.symbols.base import LoadObject

MAX_DEBUG_BYTES = 512 << 20  # DWARF sections larger than this in total are not loaded
MAX_ROWS = 4 << 20  # rows decoded from one CU's line program
MAX_CUS = 1 << 20  # CUs indexed when there is no .debug_aranges
MAX_RANGES = 1 << 16  # address ranges taken from one CU's range list
NESTED = 8  # index entries checked below the nearest start (CU ranges rarely overlap)


class LineTable:
    """The line information of one ELF file (file addresses, before any load bias)."""

    def __init__(self, path: str):
        from elftools.elf.elffile import ELFFile

        self.path = path
        with open(path, "rb") as f:
            elf = ELFFile(f)
            size = sum(s["sh_size"] for s in elf.iter_sections() if s.name.startswith(".debug"))
            if size > MAX_DEBUG_BYTES:
                raise MdbError(f"{path}: {size >> 20} MiB of DWARF is more than mdbpy loads")
            if elf.get_section_by_name(".debug_line") is None:
                raise MdbError(f"{path} has no line table (.debug_line)")
            # pyelftools reads (and decompresses) the DWARF sections into memory here, so the
            # file need not stay open
            self.dwarf = elf.get_dwarf_info()
        aranges = self.dwarf.get_aranges()
        self._aranges = aranges if aranges is not None and aranges.entries else None
        self._cu_index: tuple[list[int], list[tuple[int, int, int]]] | None = None
        self._rows: dict[int, tuple[list[int], list[tuple[str, int] | None]]] = {}

    def lookup(self, vaddr: int) -> tuple[str, int] | None:
        """(file, line) for a file address, or None when no line row covers it."""
        cu_off = self._cu_offset(vaddr)
        if cu_off is None:
            return None
        addrs, rows = self._cu_rows(cu_off)
        i = bisect.bisect_right(addrs, vaddr) - 1
        return rows[i] if i >= 0 else None

    # -- which CU -----------------------------------------------------------------------------
    def _cu_offset(self, vaddr: int) -> int | None:
        if self._aranges is not None:
            return self._aranges.cu_offset_at_addr(vaddr)
        starts, spans = self._ranges_index()
        i = bisect.bisect_right(starts, vaddr) - 1
        for lo, hi, off in reversed(spans[max(i - NESTED, -1) + 1:i + 1]):
            if lo <= vaddr < hi:  # the nearest start first; a few more for nested ranges
                return off
        return None

    def _ranges_index(self) -> tuple[list[int], list[tuple[int, int, int]]]:
        """Every CU's address ranges, sorted by start (built on first use)."""
        if self._cu_index is None:
            spans = []
            for n, cu in enumerate(self.dwarf.iter_CUs()):
                if n >= MAX_CUS:
                    break
                spans += [(lo, hi, cu.cu_offset) for lo, hi in self._cu_ranges(cu) if lo < hi]
            spans.sort()
            self._cu_index = ([s[0] for s in spans], spans)
        return self._cu_index

    def _cu_ranges(self, cu) -> list[tuple[int, int]]:
        top = cu.get_top_DIE()
        attrs = top.attributes
        low = attrs["DW_AT_low_pc"].value if "DW_AT_low_pc" in attrs else None
        if low is not None and "DW_AT_high_pc" in attrs:
            high = attrs["DW_AT_high_pc"]
            # DWARF 4+: a high_pc of constant class is a length
            end = high.value if high.form == "DW_FORM_addr" else low + high.value
            return [(low, end)]
        ranges = attrs.get("DW_AT_ranges")
        lists = self.dwarf.range_lists()
        if ranges is None or lists is None or ranges.form != "DW_FORM_sec_offset":
            return []
        out, base = [], low or 0
        for entry in lists.get_range_list_at_offset(ranges.value, cu=cu)[:MAX_RANGES]:
            if hasattr(entry, "base_address"):
                base = entry.base_address
            elif getattr(entry, "is_absolute", False):
                out.append((entry.begin_offset, entry.end_offset))
            else:
                out.append((base + entry.begin_offset, base + entry.end_offset))
        return out

    # -- one CU's rows --------------------------------------------------------------------------
    def _cu_rows(self, cu_off: int):
        """(addresses, (file, line) or None) of a CU, sorted; None marks a sequence's end."""
        got = self._rows.get(cu_off)
        if got is None:
            got = self._rows[cu_off] = self._decode(cu_off)
        return got

    def _decode(self, cu_off: int):
        cu = self.dwarf.get_CU_at(cu_off)
        prog = self.dwarf.line_program_for_CU(cu)
        if prog is None:
            return [], []
        comp_dir = cu.get_top_DIE().attributes.get("DW_AT_comp_dir")
        comp_dir = _str(comp_dir.value) if comp_dir is not None else ""
        names: dict[int, str] = {}
        rows: list[tuple[int, int, tuple[str, int] | None]] = []  # (address, order, row)
        for entry in prog.get_entries():
            st = entry.state
            if st is None:
                continue
            if len(rows) >= MAX_ROWS:
                break
            if st.end_sequence:
                rows.append((st.address, len(rows), None))
                continue
            if st.file not in names:
                names[st.file] = _file_name(prog, st.file, comp_dir)
            rows.append((st.address, len(rows), (names[st.file], st.line)))
        rows.sort(key=lambda r: (r[0], r[2] is not None, r[1]))
        addrs: list[int] = []
        out: list[tuple[str, int] | None] = []
        for addr, _order, row in rows:
            if addrs and addrs[-1] == addr:
                out[-1] = row  # bfd keeps the last row at an address
            else:
                addrs.append(addr)
                out.append(row)
        return addrs, out


def _file_name(prog, index: int, comp_dir: str) -> str:
    """A line-table file as addr2line names it: comp_dir/dir/name, where an absolute dir or
    name cuts off what stands before it. DWARF 5 numbers files and directories from 0, entry
    0 being the CU itself and its directory the compilation directory; earlier versions
    number files from 1 and leave directory 0 implicit.

    binutils 2.40's addr2line reads DWARF 5 file numbers as if they counted from 1 and joins
    directory 0 to comp_dir (`./csu/./csu/check_fds.c`); mdbpy follows the standard, as gdb
    does, so it names the included file where addr2line names the including one."""
    v5 = prog["version"] >= 5
    files = prog["file_entry"]
    i = index if v5 else index - 1
    if not 0 <= i < len(files):
        return "??"
    entry = files[i]
    name = _str(entry.name)
    if os.path.isabs(name):
        return name
    dirs = prog["include_directory"]
    d = entry.dir_index if v5 else entry.dir_index - 1
    sub = _str(dirs[d]) if (entry.dir_index > 0 and 0 <= d < len(dirs)) else ""
    parts = [sub] if os.path.isabs(sub) else [comp_dir, sub]
    return "/".join([p for p in parts if p] + [name])


def _str(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def line_table(obj: LoadObject) -> LineTable:
    """The object's line table (built once and kept on the object); MdbError saying why when
    it has none."""
    table = getattr(obj, "line_table", None)
    if isinstance(table, LineTable):
        return table
    if isinstance(table, MdbError):
        raise table
    try:
        table = LineTable(_dwarf_file(obj))
    except MdbError as e:
        table = e
    except Exception as e:  # a malformed DWARF file: no lines for this object, said once
        table = MdbError(f"{obj.name}: cannot read its line table: {type(e).__name__}: {e}")
    obj.line_table = table
    if isinstance(table, MdbError):
        raise table
    return table


def _dwarf_file(obj: LoadObject) -> str:
    """The object file when it has .debug_line, else its separate debug file."""
    from mdbpy.symbols.elf import ElfObject

    if not isinstance(obj, ElfObject) or obj.file is None:
        raise MdbError(f"{obj.name} has no object file here")
    from elftools.elf.elffile import ELFFile

    with open(obj.file, "rb") as f:
        if ELFFile(f).get_section_by_name(".debug_line") is not None:
            return obj.file
    dbg = obj.find_debug_file()
    if dbg is None:
        raise MdbError(f"{obj.name} has no line table and no debug file")
    return dbg


def source_line(session, addr: int) -> tuple[str, int]:
    """(file, line) of a runtime address; MdbError saying why when there is none."""
    obj = session.symbols.object_for_addr(addr)
    if obj is None:
        raise MdbError(f"0x{addr:x} is in no load object")
    table = line_table(obj)
    try:
        hit = table.lookup((addr - obj.bias) & ((1 << 64) - 1))
    except Exception as e:  # a damaged line program: pyelftools raises many kinds of error
        raise MdbError(f"{obj.name}: cannot read its line table: {type(e).__name__}: {e}") \
            from None
    if hit is None:
        raise MdbError(f"no source line for 0x{addr:x} in {obj.name}")
    return hit


def source_line_or_none(session, addr: int) -> tuple[str, int] | None:
    """As source_line(), None where it fails: for listings that add lines where known."""
    try:
        return source_line(session, addr)
    except MdbError:
        return None
