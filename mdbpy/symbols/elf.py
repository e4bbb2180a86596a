"""ELF load objects of a target: headers, load bias, and lazily read symbol tables.

Building the object list reads only each file's ELF and program headers (a few hundred bytes,
plain struct, no pyelftools) because the load bias and the object's extent need nothing more.
The bias is derived from a mapping and the PT_LOAD that covers its file offset, which stays
right for any layout (non-PIE executables, prelinked libraries, split RELRO mappings), unlike
"the first executable mapping". Symbol tables are read only when a lookup first needs that
object: from the on-disk cache by build-id when possible, else with pyelftools from the file
and, when the file has no .symtab, from its separate debug file (debuginfo.py).
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mdbpy.errors import MdbError, ReadError
from mdbpy.symbols import cache, debuginfo
from mdbpy.symbols.base import LoadObject, Symbol, alias_of, preferred
from mdbpy.symbols.plt import plt_columns
from mdbpy.target import elfcore as ec

if TYPE_CHECKING:
    from mdbpy.session import Session
    from mdbpy.target.base import Mapping

SHN_UNDEF, SHN_ABS, SHN_COMMON = 0, 0xFFF1, 0xFFF2
SHNDX_NAMES = {SHN_UNDEF: "UNDEF", SHN_ABS: "ABS", SHN_COMMON: "COMMON"}
MAX_PHDRS = 512  # real objects have about a dozen; anything near 64K is hostile
MAX_FILE_READ = 64 << 20  # read_file(): larger requests are refused, not allocated

STT = {0: "notype", 1: "object", 2: "func", 3: "section", 4: "file", 5: "common", 6: "tls",
       10: "func"}  # 10 is STT_GNU_IFUNC: a function as far as lookups are concerned
STB = {0: "local", 1: "global", 2: "weak", 10: "global"}  # 10 is STB_GNU_UNIQUE
LOOKUP_TYPES = ("func", "object", "notype", "tls", "common")


@dataclass(frozen=True)
class ElfInfo:
    """What the headers say: ELF type, program headers, interpreter present, build-id."""

    etype: int
    phdrs: tuple[ec.Phdr, ...]
    interp: bool
    build_id: str | None

    def loads(self) -> list[ec.Phdr]:
        return [p for p in self.phdrs if p.type == ec.PT_LOAD]


def parse_elf_info(read_at: Callable[[int, int], bytes]) -> ElfInfo | None:
    """Headers through read_at(offset, n) (a file, or the target's memory), which returns
    fewer bytes at the end of the data; None when the bytes are not a little-endian ELF64
    object."""
    head = read_at(0, ec.EHDR.size)
    if ec.check_ident(head) is not None:
        return None
    try:
        eh = ec.parse_ehdr(head)
    except ValueError:
        return ElfInfo(ec.ET_REL, (), False, None)
    count = min(eh.phnum, MAX_PHDRS)
    phdrs = tuple(ec.parse_phdrs(read_at(eh.phoff, count * ec.PHDR.size), count))
    bid = ec.gnu_build_id(read_at)
    return ElfInfo(eh.type, phdrs, any(p.type == ec.PT_INTERP for p in phdrs),
                   bid.hex() if bid else None)


def elf_info_of(path: str) -> ElfInfo | None:
    """Headers of a file on disk; None when it is not ELF (OSError when it cannot be read)."""
    with open(path, "rb") as f:
        def read_at(off: int, n: int) -> bytes:
            f.seek(off)
            return f.read(n)

        return parse_elf_info(read_at)


def build_id_of(path: str) -> str | None:
    try:
        info = elf_info_of(path)
    except OSError:
        return None
    return info.build_id if info else None


def load_bias(maps: list[Mapping], info: ElfInfo) -> int | None:
    """bias = m.start - m.offset - (p_vaddr - p_offset) for a mapping whose file offset lies
    in a PT_LOAD; None when no mapping lines up with any PT_LOAD."""
    for m in maps:
        for p in info.loads():
            if (p.offset & ~(ec.PAGE - 1)) <= m.offset < p.offset + max(p.filesz, 1):
                return (m.start - m.offset - (p.vaddr - p.offset)) & ((1 << 64) - 1)
    return None


# -- symbol sections ----------------------------------------------------------------------------
def parse_symbol_sections(path: str) -> tuple[dict[str, cache.Columns], tuple[str, int] | None]:
    """The .symtab and .dynsym of a file as Columns, and its .gnu_debuglink (name, crc).

    Sections of type NOBITS (a debug file's stand-in .dynsym) are skipped. pyelftools finds
    the sections; the entries are decoded with struct in one pass, far faster than building
    pyelftools' per-symbol containers.
    """
    from elftools.elf.elffile import ELFFile

    tables: dict[str, cache.Columns] = {}
    link = None
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for sec in elf.iter_sections():
            kind = {"SHT_SYMTAB": "symtab", "SHT_DYNSYM": "dynsym"}.get(sec["sh_type"])
            if kind and sec["sh_entsize"] == ec.SYM.size and kind not in tables:
                tables[kind] = _columns(sec.data(), elf.get_section(sec["sh_link"]).data())
            elif sec.name == ".gnu_debuglink" and sec["sh_type"] != "SHT_NOBITS":
                link = debuginfo.parse_debuglink(sec.data())
    return tables, link


def _columns(data: bytes, strtab: bytes) -> cache.Columns:
    """Decode Elf64_Sym entries (name, info, other, shndx, value, size) into columns."""
    rows = list(ec.SYM.iter_unpack(data[:len(data) // ec.SYM.size * ec.SYM.size]))
    name, info, other, shndx, value, size = zip(*rows) if rows else ((),) * 6
    return cache.Columns([_cstr(strtab, off) for off in name], array("Q", value),
                         array("Q", size), array("B", info), array("B", other),
                         array("H", shndx))


def _cstr(blob: bytes, off: int) -> str:
    end = blob.find(b"\0", off)
    return blob[off:end if end >= 0 else len(blob)].decode("utf-8", "replace")


def make_symbols(cols: cache.Columns, bias: int, obj: str,
                 keep: Callable[[str], bool] | None = None) -> list[Symbol]:
    """Symbols in file order (only those whose name passes `keep`, when given)."""
    return [_symbol(*row, bias, obj) for row in zip(
            cols.names, cols.value, cols.size, cols.info, cols.other, cols.shndx)
            if keep is None or keep(row[0])]


def _symbol(name: str, value: int, size: int, info: int, other: int, shndx: int, bias: int,
            obj: str) -> Symbol:
    """One entry. Runtime address = st_value + bias, except absolute symbols and TLS offsets
    (kept as in the file) and undefined ones (address 0)."""
    stype = STT.get(info & 0xF) or f"stt{info & 0xF}"
    if shndx == SHN_UNDEF:
        addr = 0
    elif shndx == SHN_ABS or stype == "tls":
        addr = value
    else:
        addr = (value + bias) & ((1 << 64) - 1)
    return Symbol(name, addr, size, stype, STB.get(info >> 4) or f"stb{info >> 4}",
                  obj, other, SHNDX_NAMES.get(shndx) or str(shndx), value)


# -- load objects -------------------------------------------------------------------------------
class ElfObject(LoadObject):
    """A load object backed by an ELF file; `symbols` is read on first access.

    `file` is where the file was found on this machine (None when absent: the object still
    has its range, but no symbols); `debug_file` the separate debug file used, if any.
    """

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __init__(self, name: str, path: str, base: int, end: int, bias: int,
                 file: str | None, info: ElfInfo | None, debug_dirs: list[str]):
        self._symbols: list[Symbol] | None = None
        super().__init__(name, path, base, end, bias)
        self.file = file
        self.info = info
        self.debug_dirs = debug_dirs
        self.debug_file: str | None = None
        self.debuginfod: debuginfo.Debuginfod | None = None  # the session's client
        self.error: str | None = None  # why the symbol tables could not be read
        self._columns: dict[str, cache.Columns] | None = None
        self._tables: dict[str, list[Symbol]] = {}
        self._index = None  # lookup()'s name index, until the whole table is built
        self._looked: dict[str, Symbol | None] = {}  # and what it answered
        # lines.LineTable, or the MdbError saying why there is none (lines.py, on first use)
        self.line_table = None

    def __repr__(self) -> str:
        return f"ElfObject({self.name!r}, {self.path!r}, 0x{self.base:x}-0x{self.end:x})"

    @property
    def symbols(self) -> list[Symbol]:
        if self._symbols is None:
            self._symbols = self._lookup_symbols()
        return self._symbols

    @symbols.setter
    def symbols(self, value: list[Symbol]) -> None:
        # LoadObject.__init__ assigns an empty list; keep it unread so the first access loads
        self._symbols = value or None

    def table(self, which: str = "symtab") -> list[Symbol]:
        """Every entry of .symtab (falling back to .dynsym) or .dynsym, in file order,
        undefined and section/file symbols included: what ::nm prints."""
        cols = self.columns()
        if which == "symtab" and "symtab" not in cols:
            which = "dynsym"
        if which not in self._tables:
            self._tables[which] = (make_symbols(cols[which], self.bias, self.name)
                                   if which in cols else [])
        return self._tables[which]

    def lookup(self, name: str) -> Symbol | None:
        """A symbol by name, as LoadObject.lookup answers it, without building the whole
        table: a session asks an object for a few names (an allocator's globals, an
        expression's), and libc's tables are ten thousand entries. The first lookup indexes
        the names; each builds only the entries of its name. Once the table is built
        (an address was looked up), it is used."""
        if self._by_name is not None or self._symbols is not None:
            return super().lookup(name)
        if name in self._looked:  # the same Symbol each time, as the table gives
            return self._looked[name]
        exact, aliases = self._name_index()
        found = self._entries(exact.get(name, ()))
        best = found[0] if found else None
        for s in found[1:]:
            if preferred(s, best):
                best = s
        if best is None:
            found = self._entries(aliases.get(name, ()))
            best = found[0] if found else None
        self._looked[name] = best
        return best

    def _entries(self, rows) -> list[Symbol]:
        """The lookup table's entries at rows [(table, index)], in its address order."""
        cols = self.columns()
        out = []
        for which, i in rows:
            t = cols[which]
            s = _symbol(t.names[i], t.value[i], t.size[i], t.info[i], t.other[i], t.shndx[i],
                        self.bias, self.name)
            if s.shndx != "UNDEF" and s.name and s.type in LOOKUP_TYPES:
                out.append(s)
        out.sort(key=lambda s: (s.addr, -s.size))
        return out

    def _name_index(self):
        """({name: rows}, {versioned name's alias: rows}) over the tables _lookup_symbols
        joins, rows as (table, index) in its order: the main table, .dynsym names it
        lacks, the PLT stubs."""
        if self._index is None:
            cols = self.columns()
            main = "symtab" if "symtab" in cols else "dynsym"
            exact: dict[str, list] = {}
            aliases: dict[str, list] = {}
            extra = ["dynsym"] if main == "symtab" else []
            for which in [main, *extra, "plt"]:
                if which not in cols:
                    continue
                skip = exact if which in extra else {}
                for i, n in enumerate(cols[which].names):
                    if n in skip and skip[n][0][0] == main:
                        continue
                    exact.setdefault(n, []).append((which, i))
                    if "@" in n and (base := alias_of(n)):
                        aliases.setdefault(base, []).append((which, i))
            self._index = (exact, aliases)
        return self._index

    def _lookup_symbols(self) -> list[Symbol]:
        """Defined, named symbols for lookups: the full table plus .dynsym names it lacks,
        plus the synthesized PLT stub names."""
        main = self.table("symtab")
        cols = self.columns()
        extra = []
        if "symtab" in cols and "dynsym" in cols:
            names = set(cols["symtab"].names)
            extra = make_symbols(cols["dynsym"], self.bias, self.name,
                                 lambda n: n not in names)
        if "plt" in cols:  # `malloc@plt` stubs (plt.py)
            extra += make_symbols(cols["plt"], self.bias, self.name)
        return [s for s in main + extra
                if s.shndx != "UNDEF" and s.name and s.type in LOOKUP_TYPES]

    def columns(self) -> dict[str, cache.Columns]:
        if self._columns is None:
            self._columns = {}
            if self.file is not None:
                try:
                    self._columns = self._read_columns()
                except Exception as e:  # a hostile or truncated file: an object without symbols
                    self.error = f"{self.file}: {type(e).__name__}: {e}"
        return self._columns

    def _read_columns(self) -> dict[str, cache.Columns]:
        bid = self.info.build_id if self.info else None
        hit = cache.load(bid) if bid else None
        if hit is not None:
            meta, tables = hit
            self.debug_file = meta.get("debug_file")
            link = meta.get("debuglink")
            # an entry without "plt" predates PLT stub names: parse the file again
            if "plt" in tables and ("symtab" in tables or self._find_debug(bid, link) is None):
                return tables
        tables, link = parse_symbol_sections(self.file)
        tables["plt"] = plt_columns(self.file)
        if "symtab" not in tables:
            dbg = self._find_debug(bid, link)
            if dbg is not None:
                dtables, _ = parse_symbol_sections(dbg)
                if "symtab" in dtables:
                    tables["symtab"] = dtables["symtab"]
                    self.debug_file = dbg
        if bid:
            cache.store(bid, {"debuglink": list(link) if link else None,
                              "debug_file": self.debug_file}, tables)
        return tables

    def find_debug_file(self) -> str | None:
        """The separate debug file (for .debug_frame and DWARF as well as symbols): the one the
        symbol tables came from, else the one the build-id names."""
        self.columns()  # reading the symbol tables finds the debug file when they need one
        if self.debug_file is None and self.info and self.info.build_id:
            return self._find_debug(self.info.build_id, None)
        return self.debug_file

    def _find_debug(self, build_id: str | None, link) -> str | None:
        """gdb's order: by build-id in the debug directories, by .gnu_debuglink, then
        debuginfod (its cache, then its servers when $DEBUGINFOD_URLS names some)."""
        dbg = debuginfo.by_build_id(build_id, self.debug_dirs, build_id_of) if build_id else None
        if dbg is None and link:
            dbg = debuginfo.by_debuglink(self.file, link[0], link[1], self.debug_dirs)
        if dbg is None and build_id and self.debuginfod is not None:
            dbg = self.debuginfod.find(build_id, self.name, build_id_of)
        return dbg

    def read_file(self, addr: int, n: int) -> bytes:
        """The file bytes that PT_LOAD segments map at [addr, addr+n)."""
        if self.file is None or self.info is None:
            raise ReadError(addr, n, f"object file of {self.name} not found")
        if n > MAX_FILE_READ:
            raise ReadError(addr, n, "request too large")
        out = bytearray()
        try:
            with open(self.file, "rb") as f:
                while len(out) < n:
                    cur = addr + len(out)
                    vaddr = (cur - self.bias) & ((1 << 64) - 1)
                    seg = next((p for p in self.info.loads()
                                if p.vaddr <= vaddr < p.vaddr + p.filesz), None)
                    if seg is None:
                        raise ReadError(cur, n - len(out), f"not in object file {self.name}")
                    take = min(n - len(out), seg.vaddr + seg.filesz - vaddr)
                    f.seek(seg.offset + vaddr - seg.vaddr)
                    chunk = f.read(take)
                    if len(chunk) != take:
                        raise ReadError(cur, take, f"object file {self.file} is truncated")
                    out += chunk
        except OSError as e:
            raise ReadError(addr, n, f"cannot read {self.file}: {e.strerror}") from None
        return bytes(out)


def load_objects(session: Session, previous: list[LoadObject] = ()) -> list[LoadObject]:
    """One ElfObject per mapped ELF file (or per mapped file that is absent here). An object
    of `previous` mapped from the same path at the same place is kept with what it has read."""
    known = {(o.path, o.base): o for o in previous if isinstance(o, ElfObject)}
    target = session.target
    groups: dict[str, list[Mapping]] = {}
    for m in session.mem.mappings():
        if m.is_file and not m.path.startswith("["):  # a pseudo-name newer than PSEUDO_PATHS
            groups.setdefault(m.path, []).append(m)
    dirs = debuginfo.debug_dirs(session.debug_dirs, session.sysroot)
    # one debuginfod client per session: what it learned (a dead server) outlives a reload
    client = next((o.debuginfod for o in known.values() if o.debuginfod is not None), None) \
        or debuginfo.Debuginfod(session.err)
    objs = []
    for path, maps in groups.items():
        o = known.get((path, min(m.start for m in maps)))
        if o is None:
            o = _make_object(session, path, maps, dirs)
        if o is not None:
            o.debuginfod = client
            objs.append(o)
    _mark_exe(objs, target.exe_path())
    return objs


def _make_object(session: Session, path: str, maps: list[Mapping],
                 dirs: list[str]) -> ElfObject | None:
    file: str | None = session.target.file_path(path)
    info: ElfInfo | None | bool = None
    if os.path.isfile(file):
        try:
            info = elf_info_of(file)
        except OSError:
            file = None
        if file is not None and info is None:
            return None  # a mapped data file (locale archive, fonts): not a load object
    elif os.path.exists(file):
        return None  # a mapped device: never opened
    else:
        file = None
    if file is None:
        info = _info_from_memory(session, maps)
        if info is False:
            return None
    base = min(m.start for m in maps)
    end = max(m.end for m in maps)
    bias = load_bias(maps, info) if info else None
    if bias is None:
        bias = (maps[0].start - maps[0].offset) & ((1 << 64) - 1)
    elif info.loads():
        # the object extends over its bss, which is mapped anonymously after the file pages
        hi = max(p.vaddr + p.memsz for p in info.loads()) + bias
        hi = -(-hi // ec.PAGE) * ec.PAGE
        if end < hi <= end + (1 << 32):
            end = hi
    return ElfObject(os.path.basename(path), path, base, end, bias, file, info, dirs)


def _info_from_memory(session: Session, maps: list[Mapping]) -> ElfInfo | None | bool:
    """Headers of an object whose file is absent, from its first page in the target;
    False when that page is readable and is not ELF, None when it cannot be read."""
    first = next((m for m in maps if m.offset == 0), None)
    if first is None:
        return None
    def read_at(off: int, n: int) -> bytes:
        try:
            return session.mem.read(first.start + off, n)
        except MdbError:
            return b""

    try:
        session.mem.read(first.start, 4)
    except MdbError:
        return None
    info = parse_elf_info(read_at)
    return False if info is None else info


def _mark_exe(objs: list[ElfObject], exe: str | None) -> None:
    """The executable is the object at the target's exe path; failing that, the lowest
    ET_EXEC object, else the lowest ET_DYN object with an interpreter."""
    chosen = None
    if exe:
        want = {exe, os.path.realpath(exe)}
        chosen = next((o for o in objs if {o.path, o.file, os.path.realpath(o.file or o.path)}
                       & want), None)
    if chosen is None:
        ranked = [o for o in sorted(objs, key=lambda o: o.base) if o.info is not None]
        chosen = (next((o for o in ranked if o.info.etype == ec.ET_EXEC), None)
                  or next((o for o in ranked if o.info.etype == ec.ET_DYN and o.info.interp),
                          None))
    if chosen is not None:
        chosen.is_exe = True
        chosen.name = "a.out"
