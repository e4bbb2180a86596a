"""Finding glibc malloc's state in a target: arenas, their heaps, mp_ and each thread's tcache.

From symbols when libc's debug file is present (`main_arena`, `mp_`, the TLS `tcache`), else by
heuristics that verify what they find: an arena candidate in libc's data must have a `next`
ring that returns to it and a `top` inside a heap; an mp_ candidate must have a sane tcache
configuration and an `sbrk_base` under the main arena's top; a tcache candidate must sit in a
chunk of exactly its struct's size with counts within mp_.tcache_count. The setting
`ptmalloc.locate` (auto | symbols | heuristic; ::ptmalloc -m) chooses, and `found` records
what each part came from, for ::ptmalloc to show. Nothing here depends on mapping names:
cores have no `[heap]`.

The arena ring and each thread arena's heap_info chain are walked bounded and each node once;
damage on the way (a cut ring, a top outside any heap, a smashed top size) is recorded in
State.damage. A cut ring loses the arenas after the cut: they are found again by their heaps,
whose HEAP_MAX_SIZE-aligned heap_info names them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mdbpy.errors import MdbError, ReadError
from mdbpy.heap import walk
from mdbpy.heap.damage import Damage, warn
from mdbpy.layout.bind import X86_64, Binder

from . import tls
from .damage import arena_owner
from .layouts import HEAP_MAX_SIZE, PTMALLOC_LAYOUTS, V_NUM_SLOTS, V_SAFE_LINKING, tcache_bins
from .version import find_libc, glibc_version

MODES = ("auto", "symbols", "heuristic")
WARNED = "ptmalloc.warned"  # cache key: the damage warnings printed in this stop
SETTING = "ptmalloc.locate"
ENV_SETTING = "MDBPY_PTMALLOC_LOCATE"
MAX_ARENAS = 1024
MAX_HEAPS = 4096
MALLOC_ALIGNMENT = 16
MINSIZE = 32
PAGE = 4096
LIBC_DATA_MAX = 4 << 20  # bytes of a libc data range the heuristics scan (.data+.bss: < 1M)


def locate_mode(session) -> str:
    """The setting in force: the session's, else $MDBPY_PTMALLOC_LOCATE, else auto."""
    mode = session.settings.get(SETTING) or os.environ.get(ENV_SETTING) or "auto"
    if mode not in MODES:
        raise MdbError(f"ptmalloc: locate mode '{mode}' is not one of {', '.join(MODES)}")
    return mode


class NotInUse(MdbError):
    """glibc's malloc never ran in this process: another allocator (libumem through
    LD_PRELOAD, jemalloc, a static one) replaced it. Not an error of the heap, so automatic
    detection passes over it in silence; ::ptmalloc says it."""


@dataclass
class Heap:
    """One contiguous run of chunks: [first, end) walked, `top` its top chunk or None."""

    first: int
    end: int  # the top chunk's address (top heap) or the end of the heap's memory
    region: tuple[int, int]  # the memory the heap occupies
    info: int | None = None  # the heap_info header (non-main arenas)
    top: int | None = None


@dataclass
class Arena:
    addr: int
    index: int
    state: object  # View of malloc_state
    heaps: list[Heap] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.index == 0


@dataclass
class Tcache:
    addr: int
    tid: int | None  # the owning thread, when known
    how: str  # 'symbols', 'TLS slot', 'TLS scan', 'first chunk'


@dataclass
class State:
    """Everything located, for one session and one stop of the target."""

    version: tuple
    structs: Binder
    libc: object
    main_arena: int
    mp: object  # View of malloc_par, or None
    arenas: list[Arena]
    tcaches: list[Tcache]
    safe_linking: bool
    tcache_key: int | None  # 2.34+: libc's random key (None when unknown)
    perturb: int | None  # glibc.malloc.perturb, when known
    found: dict[str, str]  # part -> 'symbols' | 'heuristic' | ...
    mode: str
    warnings: list[str] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)  # met finding arenas and heaps

    @property
    def tcache_chunk_size(self) -> int:
        return _request2size(self.structs["tcache_perthread_struct"].size)

    def heap_ranges(self) -> list[tuple[int, int]]:
        return [h.region for a in self.arenas for h in a.heaps]


def _request2size(n: int) -> int:
    return max(MINSIZE, (n + 8 + 15) & ~15)


def _sym(session, libc, name: str):
    s = session.symbols.lookup(name, obj=libc.name)
    return s if s is not None and s.type != "undefined" else None


# -- arenas ------------------------------------------------------------------------------------
def _readable(session, addr: int) -> bool:
    m = session.mem.mapping_at(addr)
    return m is not None and m.readable


def _arena_fault(session, structs, addr: int) -> str | None:
    """Why addr cannot be a thread arena, or None: a thread arena's malloc_state sits right
    after the heap_info that opens its first heap, and that heap_info names it."""
    if addr & 15:
        return "is misaligned"
    if session.mem.mapping_at(addr) is None:
        return "points to unmapped memory"
    h = addr & ~(HEAP_MAX_SIZE - 1)
    try:
        ok = addr - h == structs["_heap_info"].size and session.mem.read_ptr(h) == addr
    except ReadError:
        ok = False
    return None if ok else "is not an arena (no heap_info of its own)"


def arena_ring(session, structs, start: int) -> tuple[list[int], Damage | None]:
    """The arenas along `next` from start (mdbpy/heap/walk.py's chain, as a ring), and the
    damage that cut the ring before it came back to start (None when it did). Bounded by
    MAX_ARENAS, each arena once; every arena but start must be a thread arena."""
    off = structs["malloc_state"].offset("next")

    def read(addr):
        try:
            return addr, session.mem.read_ptr(addr + off)
        except ReadError:
            return None

    def check(addr):
        return None if addr == start else _arena_fault(session, structs, addr)

    nodes, broke = walk.chain(start, read, lambda n: n[1], MAX_ARENAS, "arena", check,
                              end=start)
    ring = [a for a, _next in nodes]
    if broke is None:
        return ring, None
    if broke.cause == "unreadable":
        at = broke.cur + off
        return ring, Damage(arena_owner(broke.cur), at, "next is unreadable", at, at + 8)
    why = {"cycle": f"next: cycle at 0x{broke.cur:x}",
           "limit": f"next: more than {MAX_ARENAS} arenas"}.get(
        broke.cause, f"next 0x{broke.cur:x} {broke.why}")
    at = broke.prev + off
    return ring, Damage(arena_owner(broke.prev), at, why + "; the arena ring is cut there", at,
                        at + 8)


def _stray_arenas(session, structs, known) -> list[tuple[int, int]]:
    """(arena, heap) of the thread arenas a cut ring lost: at each HEAP_MAX_SIZE-aligned
    address of a writable anonymous mapping, a heap_info whose ar_ptr is the malloc_state
    right after it, whose top lies in a heap of its own."""
    hinfo = structs["_heap_info"].size
    top = structs["malloc_state"].offset("top")
    out = []
    probes = 0
    for m in session.mem.mappings():
        if not (m.readable and m.writable) or (m.is_file and m.path):
            continue
        h = (m.start + HEAP_MAX_SIZE - 1) & ~(HEAP_MAX_SIZE - 1)
        while h + hinfo <= m.end and probes < MAX_HEAPS:
            probes += 1
            try:
                a = session.mem.read_ptr(h)
                ok = (a == h + hinfo and a not in known
                      and _top_in_heap(session, structs, a, session.mem.read_ptr(a + top),
                                       False))
            except ReadError:
                ok = False
            if ok:
                out.append((a, h))
            h += HEAP_MAX_SIZE
    return out


def _main_heap(session, st, mp, damage: list) -> Heap | None:
    """The main arena's heap: from mp_.sbrk_base (else the start of the mapping holding top)
    to the end of its top chunk, across the adjacent mappings brk grew into (brk_run)."""
    top = st.top
    m = session.mem.mapping_at(top)
    if m is None or not m.writable or (m.is_file and m.path):
        unsorted = st.addr + st.struct.offset("bins") - 16
        if top != unsorted:  # before the first malloc, top is the arena's own unsorted bin
            slot = st.addr + st.struct.offset("top")
            damage.append(Damage(arena_owner(st.addr), slot, f"top 0x{top:x} is not in a "
                                 "heap; its heap is not walked", slot, slot + 8))
        return None
    run = brk_run(session, top)
    first = mp.sbrk_base if mp is not None and mp.sbrk_base else m.start
    if not run[0] <= first <= top:
        first = m.start
    first = (first + MALLOC_ALIGNMENT - 1) & ~(MALLOC_ALIGNMENT - 1)
    return Heap(first, top, (first, _main_heap_end(session, m, run, top)), None, top)


def brk_run(session, addr: int) -> tuple[int, int]:
    """[start, end) of the run of adjacent writable anonymous mappings holding addr: the brk
    heap, whatever pieces it is in. brk grown after a fork is a mapping the kernel does not
    merge with the inherited one (their anon_vmas differ: an nginx worker's [heap] is two
    mappings), so the main heap may start in one mapping and have its top in the next.
    (0, 0) when addr is not in such a mapping."""
    maps = session.mem.mappings()
    k = next((i for i, x in enumerate(maps) if x.start <= addr < x.end), None)

    def brk_like(x) -> bool:
        return x.writable and not x.is_file and not x.shared

    if k is None or not brk_like(maps[k]):
        return 0, 0
    lo, hi = k, k
    while lo > 0 and maps[lo - 1].end == maps[lo].start and brk_like(maps[lo - 1]):
        lo -= 1
    while hi + 1 < len(maps) and maps[hi + 1].start == maps[hi].end and brk_like(maps[hi + 1]):
        hi += 1
    return maps[lo].start, maps[hi].end


def _main_heap_end(session, m, run: tuple[int, int], top: int) -> int:
    """Where the main heap ends: at its top chunk's end, which may lie in a later mapping of
    the brk run (brk_run); a top size that leaves the run is not believed (the heap then
    ends with m, the mapping holding top)."""
    try:
        top_end = top + (session.mem.read_u64(top + 8) & ~7)
    except ReadError:
        return m.end
    return top_end if m.end < top_end <= run[1] else m.end


def _thread_heaps(session, structs, arena: int, top: int, damage: list) -> list[Heap]:
    """The heaps of a non-main arena, oldest first, from the heap holding its top along each
    heap_info's prev (bounded, each once); where the chain breaks, the older heaps are lost
    and the damage says so."""
    hi = structs["_heap_info"]
    ms = structs["malloc_state"]
    out = []
    h = top & ~(HEAP_MAX_SIZE - 1)
    seen = set()
    holder = None  # the heap_info whose prev led to h (None: the arena's top did)

    def cut(why: str) -> None:
        at = arena + ms.offset("top") if holder is None else holder + hi.offset("prev")
        damage.append(Damage(arena_owner(arena), at, why, at, at + 8))

    while h:
        if h in seen:
            cut(f"heap_info 0x{holder:x}: prev cycle at 0x{h:x}")
            break
        if len(out) >= MAX_HEAPS:
            cut(f"more than {MAX_HEAPS} heaps; the older ones are not walked")
            break
        seen.add(h)
        try:
            v = hi.view(session.mem, h)
        except ReadError:
            v = None
        if v is None or v.ar_ptr != arena or not 0 < v.size <= HEAP_MAX_SIZE:
            cut(f"top 0x{top:x} is in no heap of this arena" if holder is None else
                f"heap_info 0x{holder:x}: prev 0x{h:x} is not a heap of this arena")
            break
        first = h + hi.size
        if arena == first:  # the arena's first heap also holds its malloc_state
            first = arena + ms.size
        first = (first + MALLOC_ALIGNMENT - 1) & ~(MALLOC_ALIGNMENT - 1)
        is_top = h <= top < h + v.size
        out.append(Heap(first, top if is_top else h + v.size, (h, h + v.size), h,
                        top if is_top else None))
        holder, h = h, v.prev
    out.reverse()
    return out


def _top_damage(session, arena: int, heap: Heap) -> Damage | None:
    """The top chunk must end where its heap ends (within a page: the break need not be
    page-aligned). A size past the end is smashed (the House of Force would let malloc hand
    out any address); a top that ends well short of it is a smashed top pointer, and the
    chunks after it are not walked."""
    try:
        raw = session.mem.read_u64(heap.top + 8)
    except ReadError:
        return Damage(arena_owner(arena), heap.top, f"top chunk 0x{heap.top:x} is "
                      "unreadable", heap.top, heap.region[1])
    size, end = raw & ~7, heap.region[1]
    top_end = heap.top + size
    if MINSIZE <= size and not size & 15 and top_end <= end:
        if end - top_end < PAGE:
            return None
        return Damage(arena_owner(arena), heap.top, f"top chunk 0x{heap.top:x}: ends at "
                      f"0x{top_end:x}, short of the heap end 0x{end:x}; the rest is not "
                      "walked", top_end, end)
    why = (f"size 0x{size:x} runs past the heap end 0x{end:x}" if size >= MINSIZE
           and not size & 15 else f"bad size 0x{raw:x}")
    return Damage(arena_owner(arena), heap.top, f"top chunk 0x{heap.top:x}: {why}",
                  heap.top, end)


def _arenas(session, structs, main: int, mp) -> tuple[list[Arena], list[Damage]]:
    """Every arena: the ring from main and, when the ring is cut, the thread arenas found by
    their heaps; and the damage met on the way."""
    ring, cut = arena_ring(session, structs, main)
    damage: list[Damage] = []
    if cut is not None:
        damage.append(cut)
        for a, h in _stray_arenas(session, structs, set(ring)):
            damage.append(Damage(arena_owner(a), a, f"is not on the arena ring (found by its "
                                 f"heap 0x{h:x})", a, a))
            ring.append(a)
    ms = structs["malloc_state"]
    out = []
    for i, a in enumerate(ring):
        try:
            st = ms.view(session.mem, a)
        except ReadError as e:
            if i == 0:
                raise MdbError(f"ptmalloc: the main arena is unreadable: {e}") from None
            damage.append(Damage(arena_owner(a), a, "is unreadable", a, a + ms.size))
            continue
        arena = Arena(a, len(out), st)
        if i == 0:
            h = _main_heap(session, st, mp, damage)
            arena.heaps = [h] if h else []
        else:
            arena.heaps = _thread_heaps(session, structs, a, st.top, damage)
        for h in arena.heaps:
            d = _top_damage(session, a, h) if h.top is not None else None
            if d is not None:
                damage.append(d)
        out.append(arena)
    return out, damage


def _libc_data(session, libc) -> list[tuple[int, int]]:
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


def _top_in_heap(session, structs, arena: int, top: int, is_main: bool) -> bool:
    m = session.mem.mapping_at(top)
    if m is None or not m.writable:
        return False
    if is_main:
        # before the first malloc, top is the main arena's own unsorted bin
        unsorted = arena + structs["malloc_state"].offset("bins") - 16
        return top == unsorted or not (m.is_file and m.path)
    try:
        return session.mem.read_ptr(top & ~(HEAP_MAX_SIZE - 1)) == arena
    except ReadError:
        return False


def find_main_arena_heuristic(session, structs, libc) -> int | None:
    """The malloc_state in libc's data whose next ring returns and whose arenas' tops lie in
    heaps; the ring's members must all be outside libc except the main arena itself."""
    import numpy as np

    ms = structs["malloc_state"]
    nxt = ms.offset("next") // 8
    top = ms.offset("top") // 8
    hinfo = structs["_heap_info"].size
    partial = None  # the first candidate whose verified ring was cut (a damaged ring)
    for start, end in _libc_data(session, libc):
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


def find_mp_heuristic(session, structs, libc, main_state, version) -> tuple[int | None, str]:
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
    for start, end in _libc_data(session, libc):
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


# -- tcaches ---------------------------------------------------------------------------------
def _tcache_ok(session, structs, addr: int, limit: int, version) -> bool:
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
    if size != _request2size(tp.size):
        return False
    counts = v.num_slots if version >= V_NUM_SLOTS else v.counts
    bad = over = 0
    for c, e in zip(counts, v.entries):
        over += c > limit
        if version < V_NUM_SLOTS and (c == 0) != (e == 0):
            bad += 1
    return bad <= 2 and over <= 2


def _tcaches(session, structs, libc, mode, limit, version, found, arenas) -> list[Tcache]:
    out: list[Tcache] = []
    threads = [t for t in session.target.threads() if t.regs.get("fs_base")]
    sym = _sym(session, libc, "tcache") if mode != "heuristic" else None
    block = tls.block_offset(session, libc) if threads else None
    for t in threads:
        fs = t.regs["fs_base"]
        ptr, how = None, None
        if sym is not None and block is not None:
            try:
                ptr, how = session.mem.read_ptr(fs + block + sym.value), "symbols"
            except ReadError:
                ptr = None
        if ptr is None and mode != "symbols":
            for _value, tp in tls.slot_offsets(session, libc):
                try:
                    cand = session.mem.read_ptr(fs + tp)
                except ReadError:
                    continue
                if _tcache_ok(session, structs, cand, limit, version):
                    ptr, how = cand, "TLS slot"
                    break
        if ptr is None and mode != "symbols":
            ptr = _scan_tls(session, structs, fs, limit, version)
            how = "TLS scan" if ptr else None
        if ptr:
            out.append(Tcache(ptr, t.tid, how))
    if not out and mode != "symbols":
        # no thread pointer to go by: the first chunk of each arena's first heap
        for a in arenas:
            if a.heaps and _tcache_ok(session, structs, a.heaps[0].first + 16, limit, version):
                out.append(Tcache(a.heaps[0].first + 16, None, "first chunk"))
    if out:
        found["tcache"] = ", ".join(sorted({t.how for t in out}))
    seen, uniq = set(), []
    for t in out:
        if t.addr not in seen:
            seen.add(t.addr)
            uniq.append(t)
    return uniq


TLS_SCAN = 0x2000


def _scan_tls(session, structs, fs: int, limit: int, version) -> int | None:
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
        if w and not w & 15 and _tcache_ok(session, structs, w, limit, version):
            return w
    return None


# -- safe-linking --------------------------------------------------------------------------
def decide_safe_linking(session, structs, tcaches, heaps, version) -> bool:
    """Whether tcache links are protected, from the first entry of every non-empty bin: a
    stored link is plain when it is 0 or a heap address, protected when it decodes to one."""
    def in_heap(p):
        return any(a <= p < b for a, b in heaps)

    plain = prot = 0
    tp = structs["tcache_perthread_struct"]
    for t in tcaches:
        try:
            v = tp.view(session.mem, t.addr)
        except ReadError:
            continue
        for e in v.entries:
            if not e:
                continue
            try:
                s = session.mem.read_ptr(e)
            except ReadError:
                continue
            d = s ^ (e >> 12)
            plain += s == 0 or (in_heap(s) and not s & 15)
            prot += d == 0 or (in_heap(d) and not d & 15)
    if plain != prot:
        return prot > plain
    return version >= V_SAFE_LINKING


# -- the whole state ---------------------------------------------------------------------------
def bind_structs(version, dwarf_file: str | None = None) -> Binder:
    """The descriptors bound for x86_64 and this version; with a debug file, DWARF's offsets."""
    dwarf = {}
    if dwarf_file:
        from mdbpy.layout.dwarf import find_struct

        from .layouts import DWARF_CU_HINT

        for name in PTMALLOC_LAYOUTS.structs:
            d = find_struct(dwarf_file, name, DWARF_CU_HINT)
            if d is not None:
                dwarf[name] = d
    return Binder(PTMALLOC_LAYOUTS, X86_64, version, dwarf)


def locate(session) -> State:
    """The located malloc state (cached per stop of the target)."""
    st = session.cache.get("ptmalloc.state")
    if st is None:
        st = _locate(session)
        session.cache["ptmalloc.state"] = st
        warn(session, "ptmalloc", st.damage)
        shown = session.cache.setdefault(WARNED, set())
        for w in st.warnings:  # what was not found, and so is not checked: once per stop
            if w not in shown:
                shown.add(w)
                session.warn(f"ptmalloc: {w}")
    return st


def _locate(session) -> State:
    mode = locate_mode(session)
    version = glibc_version(session)
    libc = find_libc(session)
    structs = bind_structs(version)
    found: dict[str, str] = {}
    main = mp_addr = None
    if mode != "heuristic":
        s = _sym(session, libc, "main_arena")
        main = s.addr if s else None
        s = _sym(session, libc, "mp_")
        mp_addr = s.addr if s else None
        if main:
            found["main_arena"] = "symbols"
        if mp_addr:
            found["mp_"] = "symbols"
        if mode == "symbols" and main is None:
            raise MdbError("ptmalloc: main_arena has no symbol (no libc debug file?); "
                           "try ::ptmalloc -m heuristic")
    if main is None:
        main = find_main_arena_heuristic(session, structs, libc)
        if main is None:
            raise MdbError("ptmalloc: no arena found in libc's data")
        found["main_arena"] = "heuristic"
    main_state = structs["malloc_state"].view(session.mem, main)
    try:
        never_ran = main_state.top == 0  # malloc_init_state points top at the unsorted bin
    except ReadError:
        never_ran = False
    if never_ran:
        raise NotInUse(f"ptmalloc: glibc's malloc is not in use in this process (main_arena "
                       f"0x{main:x} was never initialized: another allocator replaces it)")
    mp_why = "no symbol for it"
    if mp_addr is None and mode != "symbols":
        mp_addr, mp_why = find_mp_heuristic(session, structs, libc, main_state, version)
        if mp_addr:
            found["mp_"] = "heuristic"
    mp = structs["malloc_par"].view(session.mem, mp_addr) if mp_addr else None
    arenas, damage = _arenas(session, structs, main, mp)
    limit = mp.tcache_count if mp is not None else 0xFFFF
    tcaches = _tcaches(session, structs, libc, mode, limit, version, found, arenas)
    heaps = [h.region for a in arenas for h in a.heaps]
    safe = decide_safe_linking(session, structs, tcaches, heaps, version)
    key = None
    if version >= (2, 34) and mode != "heuristic":
        s = _sym(session, libc, "tcache_key")
        if s is not None:
            try:
                key = session.mem.read_u64(s.addr)
            except ReadError:
                key = None
    perturb = None
    s = _sym(session, libc, "perturb_byte") if mode != "heuristic" else None
    if s is not None:
        try:
            perturb = session.mem.read_int(s.addr, 4)
        except ReadError:
            perturb = None
    if perturb is None:  # else what the start-up read from the environment, when readable
        from .tunables import perturb_of

        perturb = perturb_of(session.target)
    warnings = []
    if mp is None:
        warnings.append(f"mp_ not found ({mp_why}): the main heap starts at its top's "
                        "mapping, and the mmapped chunks and tcache counts are not checked "
                        "against glibc's counters")
    if not tcaches and session.target.threads():
        warnings.append("no thread's tcache found: tcache chunks count as in use")
    main_heap = arenas[0].heaps[0] if arenas and arenas[0].heaps else None
    if (mp is not None and mp.sbrk_base and main_heap is not None
            and main_heap.first != (mp.sbrk_base + MALLOC_ALIGNMENT - 1) & -MALLOC_ALIGNMENT):
        warnings.append(f"mp_.sbrk_base 0x{mp.sbrk_base:x} is not in the mappings of the "
                        f"main arena's top (glibc's brk heap is not contiguous): only the "
                        f"main heap from 0x{main_heap.first:x} is walked")
    return State(version, structs, libc, main, mp, arenas, tcaches, safe, key, perturb, found,
                 mode, warnings, damage)
