"""Where a loaded object's thread-local variables are at run time (glibc's `tcache`,
libumem's `thread_ptc`): a thread's copy of a variable is at `fs_base + block + offset`.

A shared object reaches its variables through the initial-exec model: each has a GOT slot
relocated with R_X86_64_TPOFF64 whose run-time value is the variable's offset from the thread
pointer. So the file's .rela.dyn names the slots, the target's memory holds their values, and
the block's offset is what every slot agrees on. With the object's symbols, the slot of a
given variable is the one whose (symbol value + addend) is that variable's TLS offset; without
them every slot is a candidate that the caller verifies. A slot of a variable another object
defines holds that object's offset, and is not one of obj's. The executable's own block (TLS
module 1) ends at the thread pointer, aligned as glibc places it, from its PT_TLS.

A library whose code reaches its variables through __tls_get_addr (the general-dynamic model,
the default for -fPIC) has no such slots; its block is found per thread through the thread's
dynamic thread vector (DTV), indexed by the module id ld.so writes into its R_X86_64_DTPMOD64
slots. That also finds the blocks of libraries loaded by dlopen, which are not static. A
thread's DTV entry is the library's block only when the loader's slotinfo entry for that id
names the library's own link_map (mdbpy/symbols/linkmap.py) and the thread has brought its DTV
up to the generation at which the loader last (re)assigned the id (dtv_is_current): after a
dlclose, another library may get the id while a thread's entry still holds the old block.
Where the slotinfo list is in ld.so's _rtld_global is not guessed: an offset its DWARF or
RTLD_OFFSETS tells, or a search of the struct (slotinfo_list), is taken only where the list
there names every TLS object whose module id and link_map are known.
"""

from __future__ import annotations

import struct

from mdbpy.symbols.linkmap import link_map_of, segment
from mdbpy.target import elfcore as ec

R_X86_64_DTPMOD64 = 16
R_X86_64_TPOFF64 = 18
MAX_SLOTS = 4096
MASK = (1 << 64) - 1
TLS_DTV_UNALLOCATED = MASK  # glibc's mark of a dynamic block not yet allocated in a thread
DTV_ENTRY = 16  # glibc's dtv_t: {void *val; void *to_free}
MAX_MODULES = 1 << 16
SLOTINFO_HEADER = 16  # glibc's struct dtv_slotinfo_list: {size_t len; next; slotinfo[]}
SLOTINFO_ENTRY = 16  # its struct dtv_slotinfo: {size_t gen; struct link_map *map}
MAX_SLOTINFO_LISTS = 64
MAX_RTLD_GLOBAL = 1 << 16  # bytes of _rtld_global searched for the slotinfo list
SLOTINFO_MEMBER = b"_dl_tls_dtv_slotinfo_list"
# The offset of SLOTINFO_MEMBER in ld.so's struct rtld_global (the variable _rtld_global,
# glibc's GL()) per glibc release, for an ld.so whose DWARF is not at hand: what the DWARF of
# Debian's libc6-dbg of that release says (tests/test_tls_reuse.py checks them against it). A
# first guess only, validated like the DWARF's (slotinfo_list): another build of the release
# may differ, and a release not here is searched for.
RTLD_OFFSETS = {(2, 31): 0xF48, (2, 36): 0x1070, (2, 41): 0xAC8}
_rtld_dwarf: dict[str, int | None] = {}  # debug file -> SLOTINFO_MEMBER's offset


def tpoff_slots(obj) -> list[tuple[int, int]]:
    """[(runtime GOT slot address, TLS offset of the variable within obj's block)]."""
    return _slots(obj, R_X86_64_TPOFF64)


def _slots(obj, rtype: int) -> list[tuple[int, int]]:
    """[(runtime address, symbol value + addend)] of obj's RELA relocations of type rtype,
    but those against a symbol obj does not define (another object's variable, such as
    libGL's initial-exec slot of libGLdispatch's _glapi_tls_Current: its value says nothing
    of obj's block)."""
    path = getattr(obj, "file", None)
    if not path:
        return []
    try:
        from elftools.elf.elffile import ELFFile

        from mdbpy.symbols.elf import SHN_UNDEF  # here: ::status loads no symbol module

        out = []
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for sec in elf.iter_sections():
                if sec["sh_type"] != "SHT_RELA" or sec["sh_entsize"] != ec.RELA.size:
                    continue
                # unpacked with struct, not pyelftools' per-entry parser: a library has tens
                # of thousands of relocations (libumem v2.4.0: 17,000, 0.3 s that way)
                data, syms = sec.data(), None
                for off, info, addend in ec.RELA.iter_unpack(
                        data[:len(data) // ec.RELA.size * ec.RELA.size]):
                    if info & 0xFFFFFFFF != rtype:
                        continue
                    value = addend
                    if info >> 32:
                        if syms is None:
                            syms = elf.get_section(sec["sh_link"]).data()
                        at = (info >> 32) * ec.SYM.size
                        if at + ec.SYM.size > len(syms):
                            continue  # no such symbol: a damaged file
                        _name, _info, _other, shndx, st_value, _size = ec.SYM.unpack_from(
                            syms, at)
                        if shndx == SHN_UNDEF:
                            continue
                        value += st_value
                    out.append((off + obj.bias, value))
                    if len(out) >= MAX_SLOTS:
                        return out
        return out
    except (OSError, ValueError, KeyError, AttributeError, AssertionError, TypeError,
            struct.error):
        return []  # a damaged or foreign file: no TLS slots, the callers fall back


def slot_offsets(session, obj) -> list[tuple[int, int]]:
    """[(TLS offset within obj's block, thread-pointer offset)] of every readable slot."""
    key = ("tls.tpoff", obj.path, obj.bias)
    got = session.cache.get(key)
    if got is None:
        from mdbpy.errors import ReadError

        got = []
        for slot, value in tpoff_slots(obj):
            try:
                tp = session.mem.read_int(slot, 8)
            except ReadError:
                continue
            got.append((value, tp))
        session.cache[key] = got
    return got


def block_offset(session, obj) -> int | None:
    """The thread-pointer offset of obj's static TLS block (the same in every thread), or
    None when it cannot be told."""
    if obj.is_exe:
        seg = tls_segment(obj)
        if seg is None:
            return None
        vaddr, memsz, align = seg
        align = max(align, 1)
        first = -vaddr & (align - 1)
        return -((memsz - first + align - 1) // align * align + first)  # below the pointer
    seen = {tp - value for value, tp in slot_offsets(session, obj)}
    return seen.pop() if len(seen) == 1 else None


def tls_segment(obj) -> tuple[int, int, int] | None:
    """(p_vaddr, p_memsz, p_align) of obj's PT_TLS (its TLS template; p_memsz is each
    thread's block), None when it has none or its headers cannot be read."""
    return segment(obj, ec.PT_TLS)


def thread_block(session, obj, thread) -> int | None:
    """The address of `thread`'s copy of obj's TLS block, or None when the thread has no
    thread pointer (fs_base) or the block cannot be placed. A static block is at the thread
    pointer plus block_offset (kept per session: the same in every thread); a block
    block_offset cannot tell (a library whose code reaches its variables through
    __tls_get_addr, one loaded by dlopen) is the one the thread's DTV holds for the module id
    ld.so wrote into the object's R_X86_64_DTPMOD64 slots, when the thread has allocated it
    and the loader names the object's link_map for that id (dtv_block)."""
    tp = thread.regs.get("fs_base")
    if not tp:
        return None
    key = ("tls.block", obj.path, obj.bias)
    if key not in session.cache:
        session.cache[key] = block_offset(session, obj)
    block = session.cache[key]
    if block is not None:
        return (tp + block) & MASK
    found = _module(session, obj)
    return None if found is None else dtv_block(session, tp, *found)


def _module(session, obj) -> tuple[int, int] | None:
    """(obj's TLS module id (module_id), its link_map (link_map_of)), None unless both are
    known: the id is confirmed by the loader's slotinfo entry naming that link_map."""
    modid = module_id(session, obj)
    lmap = link_map_of(session, obj) if modid is not None else None
    return None if lmap is None else (modid, lmap)


def thread_address(session, obj, offset: int, name: str) -> int:
    """The address of the current thread's copy of obj's thread-local variable `name`, at
    `offset` in its TLS block (a TLS symbol's value, or the variable's DWARF location); a
    one-line MdbError when the block cannot be placed in that thread."""
    from mdbpy.errors import MdbError

    th = session.current_thread()
    block = thread_block(session, obj, th) if th is not None else None
    if block is None:
        raise MdbError(f"{name} is thread-local, and {obj.name}'s TLS block cannot be placed "
                       "in " + (f"thread {th.tid}" if th is not None else
                                "a target without threads"))
    return (block + offset) & MASK


def module_id(session, obj) -> int | None:
    """obj's TLS module id, as every readable R_X86_64_DTPMOD64 slot of it says (None when
    they disagree or there are none)."""
    from mdbpy.errors import ReadError

    key = ("tls.modid", obj.path, obj.bias)
    if key not in session.cache:
        seen = set()
        for slot, _ in _slots(obj, R_X86_64_DTPMOD64):
            try:
                seen.add(session.mem.read_int(slot, 8))
            except ReadError:
                continue
        session.cache[key] = seen.pop() if len(seen) == 1 else None
    return session.cache[key]


def dtv_block(session, tp: int, modid: int, lmap: int) -> int | None:
    """The block of module modid, the object whose link_map is at lmap, in the thread whose
    thread pointer is tp, from its DTV (glibc's tcbhead_t: tcb, dtv, self; the tcb and self
    words are tp itself, which is checked, and dtv[-1] counts the entries); None when
    unreadable, not allocated, or not known to be that object's current block
    (dtv_is_current): a thread that has not brought its DTV up to date since a dlclose let a
    new library reuse the module id still holds the old library's block there."""
    from mdbpy.errors import ReadError

    if not 0 < modid < MAX_MODULES:
        return None
    try:
        tcb, dtv, self_ = (session.mem.read_int(tp + 8 * k, 8) for k in range(3))
        if tcb != tp or self_ != tp or session.mem.read_int(dtv - DTV_ENTRY, 8) < modid:
            return None
        val = session.mem.read_int(dtv + DTV_ENTRY * modid, 8)
        if val in (0, TLS_DTV_UNALLOCATED) or not dtv_is_current(session, dtv, modid, lmap):
            return None
    except ReadError:
        return None
    return val


def dtv_is_current(session, dtv: int, modid: int, lmap: int) -> bool:
    """Whether the DTV at dtv holds, for module id modid, the block of the object whose
    link_map is at lmap, as glibc's __tls_get_addr tells (dl-tls.c): the entry of modid in
    GL(dl_tls_dtv_slotinfo_list) holds the map of the object that has the id now (NULL when it
    is free) and the generation at which the id was last assigned or freed; a thread's DTV is
    of the generation its dtv[0] holds, and its entry is the object's block only when that is
    no older. The entry's map being lmap confirms the module id and where the list was found
    at once. The generation is not also checked against GL(dl_tls_generation): dtv[0] only
    ever takes a generation the loader had published (the one __tls_get_addr reads from
    there, or an entry's no newer than it) and that counter only grows, so an entry newer than
    it (a dlopen under way) is newer than dtv[0] as well. False where the list is not found
    (slotinfo_list). Raises ReadError where the memory cannot be read."""
    listp = slotinfo_list(session)
    if listp is None:
        return False
    gen = _generation(session.mem, listp, modid, lmap)
    return gen is not None and session.mem.read_int(dtv, 8) >= gen


def _generation(mem, listp: int, modid: int, lmap: int) -> int | None:
    """The gen of modid's entry in the slotinfo list at listp when its map is lmap, else
    None (no entry, a free id, or another object's)."""
    entry = _slot(mem, listp, modid)
    return entry[0] if entry is not None and entry[1] == lmap else None


def _slot(mem, listp: int, modid: int) -> tuple[int, int] | None:
    """(gen, map) of module id modid's entry in the slotinfo list at listp (a chain of arrays,
    each covering the next `len` ids), None when no entry covers it or a list's len is not
    one glibc would give (a pointer that is no slotinfo list)."""
    read = mem.read_int
    for _ in range(MAX_SLOTINFO_LISTS):
        if not listp:
            return None
        n = read(listp, 8)
        if not 0 < n <= MAX_MODULES:
            return None
        if modid < n:
            at = listp + SLOTINFO_HEADER + SLOTINFO_ENTRY * modid
            return read(at, 8), read(at + 8, 8)
        modid, listp = modid - n, read(listp + 8, 8)
    return None


def slotinfo_list(session) -> int | None:
    """The address of ld.so's first slotinfo list, GL(dl_tls_dtv_slotinfo_list), read from
    _rtld_global at the offset _rtld finds; None where it is not found."""
    found = _rtld(session)
    return None if found is None else session.mem.read_int(found[0] + found[1], 8)


def _rtld(session) -> tuple[int, int] | None:
    """(address of ld.so's _rtld_global, the offset in it of SLOTINFO_MEMBER), kept per
    session: the offset rtld_offset tells when the word there points to a list naming every
    known TLS module (_known_modules), else the one offset whose word does (search_offset);
    None without the symbol, without a known module, or where neither finds the list."""
    key = "tls.rtld"
    if key not in session.cache:
        session.cache[key] = None
        sym = session.symbols.lookup("_rtld_global")
        known = _known_modules(session) if sym is not None else []
        if known:
            told = _told_offset(session, sym)
            if told is not None and search_offset(session.mem, sym.addr + told, 8, known) == 0:
                session.cache[key] = sym.addr, told
            else:
                off = search_offset(session.mem, sym.addr, sym.size, known)
                session.cache[key] = None if off is None else (sym.addr, off)
    return session.cache[key]


def _told_offset(session, sym) -> int | None:
    """rtld_offset for the ld.so that defines sym and the libc whose release names it."""
    ldso = session.symbols.object_named(sym.obj)
    ver = session.symbols.lookup("gnu_get_libc_version")
    libc = session.symbols.object_named(ver.obj) if ver is not None else None
    return rtld_offset(session.mem, ldso, libc) if ldso is not None else None


def _known_modules(session) -> list[tuple[int, int]]:
    """[(module id, link_map address)] of every loaded object with a PT_TLS whose module id
    and link_map are both known (_module): what a slotinfo list must name."""
    found = (_module(session, o) for o in session.symbols.objects()
             if tls_segment(o) is not None)
    return [m for m in found if m is not None]


def search_offset(mem, rtld: int, size: int, known: list[tuple[int, int]]) -> int | None:
    """The offset in the size bytes of _rtld_global at rtld of the one word that points to a
    slotinfo list naming every (module id, link_map) of known (_lists_modules); None where no
    word does, or several do (ambiguous: nothing is placed)."""
    from mdbpy.errors import ReadError

    try:
        blob = mem.read(rtld, min(size, MAX_RTLD_GLOBAL))
    except ReadError:
        return None
    words = struct.iter_unpack("<Q", blob[:len(blob) // 8 * 8])
    hits = [8 * k for k, (word,) in enumerate(words) if _lists_modules(mem, word, known)]
    return hits[0] if len(hits) == 1 else None


def _lists_modules(mem, listp: int, known: list[tuple[int, int]]) -> bool:
    """Whether listp points to a slotinfo list whose entry for each module id of known
    holds that module's link_map."""
    from mdbpy.errors import ReadError

    try:
        return all(_generation(mem, listp, modid, lmap) is not None for modid, lmap in known)
    except ReadError:
        return False


def rtld_offset(mem, ldso, libc) -> int | None:
    """The offset of SLOTINFO_MEMBER in the struct rtld_global of ld.so's load object ldso,
    to be validated (_rtld): as its DWARF states it (its own, or its debug file's), else
    RTLD_OFFSETS of the glibc release that libc's release string names (in its file, else in
    the target's memory mem). libc.so.6 is asked because it carries `GNU C Library (...)
    release version X.Y` in every release, while ld.so has a string of its own (`ld.so (...)
    release version X.Y`) only in younger ones (2.36's and 2.41's, not 2.31's); the two are
    one build of one release (they bind through GLIBC_PRIVATE symbols). None when neither
    tells."""
    from mdbpy.symbols.embedded import GLIBC_SCAN, embedded, glibc_release

    for where in (lambda: getattr(ldso, "file", None), ldso.find_debug_file):
        path = where()  # the debug file only when the file's own DWARF does not tell
        if path:
            if path not in _rtld_dwarf:
                _rtld_dwarf[path] = _dwarf_rtld_offset(path)
            if _rtld_dwarf[path] is not None:
                return _rtld_dwarf[path]
    if libc is None:
        return None
    return RTLD_OFFSETS.get(embedded(mem, libc, glibc_release, GLIBC_SCAN))


def _dwarf_rtld_offset(path: str) -> int | None:
    """SLOTINFO_MEMBER's offset in the first definition of struct rtld_global at the top level
    of a unit of the ELF file's DWARF (ldsodefs.h defines it; nearly every unit of ld.so
    includes it, so the search ends in the first few), None when there is none."""
    from elftools.common.exceptions import DWARFError, ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return None
            for cu in elf.get_dwarf_info().iter_CUs():
                for die in cu.get_top_DIE().iter_children():
                    if die.tag == "DW_TAG_structure_type" and _name(die) == b"rtld_global" \
                            and "DW_AT_declaration" not in die.attributes:
                        return _member_offset(die, SLOTINFO_MEMBER)
    except (OSError, ValueError, KeyError, AttributeError, AssertionError, TypeError,
            struct.error, ELFError, DWARFError):
        pass  # a damaged or foreign file: no offset from it
    return None


def _name(die) -> bytes | None:
    a = die.attributes.get("DW_AT_name")
    return None if a is None else a.value


def _member_offset(die, name: bytes) -> int | None:
    """The DW_AT_data_member_location of the struct DIE's member name (a constant: gcc's
    form), None when it has no such member."""
    for m in die.iter_children():
        if m.tag == "DW_TAG_member" and _name(m) == name:
            at = m.attributes.get("DW_AT_data_member_location")
            return at.value if at is not None and isinstance(at.value, int) else None
    return None
