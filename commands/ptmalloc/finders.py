"""The ways of finding glibc's malloc state in a target, one class each behind one interface
(the shape of pwndbg's DebugSymsHeap / HeuristicHeap):

- SymbolFinder: libc's symbols (`main_arena`, `mp_`, the TLS `tcache`, `tcache_key`,
  `perturb_byte`) from its debug file, and the structs bound from that file's DWARF when it
  has any, each difference from the builtin descriptors noted for ::layout (layout/bind.py);
- HeuristicFinder: no debug information; candidates found in libc's data and checked: an arena
  candidate must have a `next` ring that returns to it and a `top` inside a heap; an mp_
  candidate must have a sane tcache configuration and an `sbrk_base` under the main arena's
  top; a tcache candidate must sit in a chunk of exactly its struct's size with counts within
  mp_.tcache_count.

The setting `ptmalloc.locate` (auto | symbols | heuristic; ::ptmalloc -m) chooses the finders
(auto: symbols first, the heuristics for what they lack: finders_for), and locate.py records
which one found each part, for ::ptmalloc to show.
"""

from __future__ import annotations

from mdbpy.errors import ReadError
from mdbpy.layout.bind import X86_64, Binder
from mdbpy.symbols import tls
from mdbpy.types.layouts import dwarf_layouts

from .arenas import _readable, _top_in_heap, arena_ring, brk_run
from .layouts import HEAP_MAX_SIZE, PTMALLOC_LAYOUTS, V_NUM_SLOTS, tcache_bins

LIBC_DATA_MAX = 4 << 20  # bytes of a libc data range the heuristics scan (.data+.bss: < 1M)
MINSIZE = 32


def request2size(n: int) -> int:
    return max(MINSIZE, (n + 8 + 15) & ~15)


class Finder:
    """One way of finding the parts of glibc's malloc state. Each query answers None when
    this way cannot tell (another finder may), never a guess."""

    name = ""  # what locate.py records as the part's origin

    def __init__(self, session, libc, version):
        self.session, self.libc, self.version = session, libc, version

    def structs(self) -> Binder | None:
        """The structs bound as this finder knows them (None: it has no better binding than
        the builtin descriptors)."""
        return None

    def main_arena(self, structs) -> int | None:
        return None

    def mp(self, structs, main_state) -> tuple[int | None, str]:
        """(address of mp_, why not when None)."""
        return None, "not found"

    def tcache(self, structs, fs: int, limit: int) -> tuple[int | None, str | None]:
        """(a thread's tcache_perthread_struct, how it was found) from its thread pointer."""
        return None, None

    def first_chunk_tcaches(self, structs, arenas, limit: int) -> list[int]:
        """Tcaches found without any thread pointer to go by."""
        return []

    def tcache_key(self) -> int | None:
        return None

    def perturb(self) -> int | None:
        return None


class SymbolFinder(Finder):
    """libc's symbols (its debug file's .symtab), and its DWARF for the structs."""

    name = "symbols"

    def _sym(self, name: str):
        s = self.session.symbols.lookup(name, obj=self.libc.name)
        return s if s is not None and s.type != "undefined" else None

    def structs(self) -> Binder | None:
        dwarf = dwarf_layouts(self.session, self.libc.name, PTMALLOC_LAYOUTS.structs)
        return bind_structs(self.version, dwarf) if dwarf else None

    def main_arena(self, structs) -> int | None:
        s = self._sym("main_arena")
        return s.addr if s else None

    def mp(self, structs, main_state) -> tuple[int | None, str]:
        s = self._sym("mp_")
        return (s.addr, "") if s else (None, "no symbol for it")

    def tcache(self, structs, fs: int, limit: int) -> tuple[int | None, str | None]:
        sym = self._sym("tcache")
        if sym is not None and not hasattr(self, "_block"):
            self._block = tls.block_offset(self.session, self.libc)  # the same in every thread
        block = getattr(self, "_block", None)
        if sym is None or block is None:
            return None, None
        try:
            return self.session.mem.read_ptr(fs + block + sym.value), "symbols"
        except ReadError:
            return None, None

    def _read(self, name: str, size: int) -> int | None:
        s = self._sym(name)
        if s is None:
            return None
        try:
            return self.session.mem.read_int(s.addr, size) if size == 4 else \
                self.session.mem.read_u64(s.addr)
        except ReadError:
            return None

    def tcache_key(self) -> int | None:
        return self._read("tcache_key", 8) if self.version >= (2, 34) else None

    def perturb(self) -> int | None:
        return self._read("perturb_byte", 4)


class HeuristicFinder(Finder):
    """No debug information: candidates in libc's data and the threads' TLS, each verified."""

    name = "heuristic"

    def main_arena(self, structs) -> int | None:
        return find_main_arena(self.session, structs, self.libc)

    def mp(self, structs, main_state) -> tuple[int | None, str]:
        return find_mp(self.session, structs, self.libc, main_state, self.version)

    def tcache(self, structs, fs: int, limit: int) -> tuple[int | None, str | None]:
        for _value, tp in tls.slot_offsets(self.session, self.libc):
            try:
                cand = self.session.mem.read_ptr(fs + tp)
            except ReadError:
                continue
            if tcache_ok(self.session, structs, cand, limit, self.version):
                return cand, "TLS slot"
        ptr = scan_tls(self.session, structs, fs, limit, self.version)
        return (ptr, "TLS scan") if ptr else (None, None)

    def first_chunk_tcaches(self, structs, arenas, limit: int) -> list[int]:
        """The first chunk of each arena's first heap, where a thread's tcache is made."""
        return [a.heaps[0].first + 16 for a in arenas if a.heaps and tcache_ok(
            self.session, structs, a.heaps[0].first + 16, limit, self.version)]


def finders_for(mode: str, session, libc, version) -> list[Finder]:
    """The finders a locate mode asks, in order."""
    kinds = {"symbols": (SymbolFinder,), "heuristic": (HeuristicFinder,),
             "auto": (SymbolFinder, HeuristicFinder)}[mode]
    return [k(session, libc, version) for k in kinds]


def bind_structs(version, dwarf_file: str | dict | None = None) -> Binder:
    """The descriptors bound for x86_64 and this version; with a debug file (its path) or
    DWARF layouts already read (a dict), DWARF's offsets."""
    if isinstance(dwarf_file, dict):
        return Binder(PTMALLOC_LAYOUTS, X86_64, version, dwarf_file)
    dwarf = {}
    if dwarf_file:
        from mdbpy.layout.dwarf import find_struct

        from .layouts import DWARF_CU_HINT

        for name in PTMALLOC_LAYOUTS.structs:
            d = find_struct(dwarf_file, name, DWARF_CU_HINT)
            if d is not None:
                dwarf[name] = d
    return Binder(PTMALLOC_LAYOUTS, X86_64, version, dwarf)


def libc_data(session, libc) -> list[tuple[int, int]]:
    """libc's writable mappings plus the anonymous one right after them (the rest of .bss),
    each cut to its first LIBC_DATA_MAX bytes: the heuristics read each range in one block,
    and the kernel merges the .bss tail with anonymous memory mapped right after it, which
    can be a heap of any size."""
    out = []
    maps = session.mem.mappings()
    for m in maps:
        if not (m.readable and m.writable):
            continue
        if (libc.base <= m.start < libc.end
                or out and out[-1][1] == m.start and not m.path):
            out.append((m.start, min(m.end, m.start + LIBC_DATA_MAX)))
    return out


def find_main_arena(session, structs, libc) -> int | None:
    """The malloc_state in libc's data whose next ring returns and whose arenas' tops lie in
    heaps; the ring's members must all be outside libc except the main arena itself."""
    import numpy as np

    ms = structs["malloc_state"]
    nxt = ms.offset("next") // 8
    top = ms.offset("top") // 8
    hinfo = structs["_heap_info"].size
    partial = None  # the first candidate whose verified ring was cut (a damaged ring)
    for start, end in libc_data(session, libc):
        try:
            words = session.mem.words(start, (end - start) // 8)
        except ReadError:
            continue
        n = len(words) - nxt
        if n <= 0:
            continue
        addrs = np.uint64(start) + np.arange(n, dtype=np.uint64) * np.uint64(8)
        # the main arena's next is itself, or a thread arena right after its heap_info
        link = words[nxt:nxt + n]
        hits = np.nonzero((link == addrs) | (
            (words[top:top + n] != 0)
            & ((link & np.uint64(HEAP_MAX_SIZE - 1)) == np.uint64(hinfo))))[0]
        for i in hits.tolist():
            cand = start + 8 * i
            ring, cut = arena_ring(session, structs, cand)
            if cut is not None and (len(ring) < 2 or partial is not None):
                continue
            ok = True
            for k, a in enumerate(ring):
                t = session.mem.read_ptr(a + ms.offset("top"))
                if not _top_in_heap(session, structs, a, t, k == 0):
                    ok = False
                    break
                if k and libc.base <= a < libc.end:
                    ok = False
                    break
            if ok and cut is None:
                return cand
            if ok:
                partial = cand
    return partial


def find_mp(session, structs, libc, main_state, version) -> tuple[int | None, str]:
    """malloc_par in libc's data, and why not when it is not found. A candidate has a sane
    tcache configuration and mmap counters, and an sbrk_base in the brk heap at or below the
    main arena's top. Where several pass, the data decides: glibc counts every byte of its
    contiguous brk heap (foreign sbrk gaps included) in main_arena.system_mem, so the true
    sbrk_base + system_mem is the end of the top chunk; then the tunables' defaults
    (tcache_count 7, all tcache bins, top_pad 128 KiB). A tie after that is not guessed."""
    import numpy as np

    mp = structs["malloc_par"]
    dt = mp.dtype()
    top = main_state.top
    run = brk_run(session, top)
    cands = []
    for start, end in libc_data(session, libc):
        try:
            raw = session.mem.read(start, end - start)
        except ReadError:
            continue
        for off in range(0, dt.itemsize, 8):  # every 8-aligned offset, modulo the size
            cnt = (len(raw) - off) // dt.itemsize
            if cnt <= 0:
                continue
            a = np.frombuffer(raw, dtype=dt, count=cnt, offset=off)
            ok = ((a["tcache_bins"] <= tcache_bins(version))
                  & (a["tcache_count"] <= 0xFFFF)
                  & (a["tcache_max_bytes"] <= 4 << 20)
                  & (a["n_mmaps"] >= 0) & (a["n_mmaps"] <= a["max_n_mmaps"])
                  & (a["n_mmaps_max"] >= 0)
                  & (a["mmapped_mem"] <= a["max_mmapped_mem"])
                  & (a["mmap_threshold"] >= 4096) & (a["mmap_threshold"] <= 64 << 20)
                  & (a["arena_test"] > 0) & (a["arena_test"] <= 1 << 16))
            if run != (0, 0):
                ok &= (a["sbrk_base"] >= run[0]) & (a["sbrk_base"] <= top)
            cands += [(start + off + i * dt.itemsize, a[i]) for i in np.nonzero(ok)[0].tolist()]
    if not cands:
        return None, "no malloc_par in libc's data has sane counters and a heap's sbrk_base"
    if len(cands) == 1:
        return cands[0][0], ""
    try:
        top_end = top + (session.mem.read_u64(top + 8) & ~7)
        system_mem = int(main_state.system_mem)
    except ReadError:
        top_end = system_mem = None

    def score(rec) -> tuple[bool, int]:
        spans = top_end is not None and int(rec["sbrk_base"]) + system_mem == top_end
        defaults = ((int(rec["tcache_count"]) == 7) + (int(rec["top_pad"]) == 128 << 10)
                    + (int(rec["tcache_bins"]) == tcache_bins(version)))
        return spans, defaults

    ranked = sorted(((score(rec), addr) for addr, rec in cands), reverse=True)
    if ranked[0][0] == ranked[1][0]:
        return None, (f"{sum(r[0] == ranked[0][0] for r in ranked)} malloc_par candidates in "
                      f"libc's data fit equally (0x{ranked[0][1]:x}, 0x{ranked[1][1]:x}, ...)")
    return ranked[0][1], ""


def tcache_ok(session, structs, addr: int, limit: int, version) -> bool:
    """A plausible tcache_perthread_struct at addr: its chunk has exactly the struct's size
    and its counts are nonzero exactly where the bin has entries, all but two at most within
    limit (tcache_count). A count or two beyond it is damage ::ptmalloc_verify reports (a
    tcache poisoning bumps a count), not a reason to lose the thread's tcache; more is not a
    tcache."""
    if not addr or addr & 15 or not _readable(session, addr):
        return False
    tp = structs["tcache_perthread_struct"]
    try:
        size = session.mem.read_u64(addr - 8) & ~7
        v = tp.view(session.mem, addr)
    except ReadError:
        return False
    if size != request2size(tp.size):
        return False
    counts = v.num_slots if version >= V_NUM_SLOTS else v.counts
    bad = over = 0
    for c, e in zip(counts, v.entries):
        over += c > limit
        if version < V_NUM_SLOTS and (c == 0) != (e == 0):
            bad += 1
    return bad <= 2 and over <= 2


TLS_SCAN = 0x2000


def scan_tls(session, structs, fs: int, limit: int, version) -> int | None:
    """A verified tcache pointer among the words of static TLS below the thread pointer."""
    lo = fs - TLS_SCAN
    m = session.mem.mapping_at(lo)
    if m is None:
        return None
    try:
        words = session.mem.words(lo, TLS_SCAN // 8).tolist()
    except ReadError:
        return None
    for w in reversed(words):
        if w and not w & 15 and tcache_ok(session, structs, w, limit, version):
            return w
    return None
