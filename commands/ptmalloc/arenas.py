"""glibc's arenas and their heaps, walked from the main arena a finder found (finders.py).

The arena ring (mdbpy/heap/walk.py's chain) and each thread arena's heap_info chain are walked
bounded and each node once; damage on the way (a cut ring, a top outside any heap, a smashed
top size) is returned as Damage records. A cut ring loses the arenas after the cut: they are
found again by their heaps, whose HEAP_MAX_SIZE-aligned heap_info names them. Nothing here
depends on mapping names: cores have no `[heap]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdbpy.errors import MdbError, ReadError
from mdbpy.heap import walk
from mdbpy.heap.damage import Damage

from .damage import arena_owner
from .layouts import HEAP_MAX_SIZE

MAX_ARENAS = 1024
MAX_HEAPS = 4096
MALLOC_ALIGNMENT = 16
MINSIZE = 32
PAGE = 4096
NONCONTIGUOUS_BIT = 2  # malloc_state.flags: the main arena's memory is not one sbrk run


@dataclass
class Heap:
    """One contiguous run of chunks: [first, end) walked, `top` its top chunk or None."""

    first: int
    end: int  # the top chunk's address (top heap) or the end of the heap's memory
    region: tuple[int, int]  # the memory the heap occupies
    info: int | None = None  # the heap_info header (non-main arenas)
    top: int | None = None
    # the end is glibc's own accounting (_counted_end): the top must end exactly there
    counted: bool = False


@dataclass
class Arena:
    addr: int
    index: int
    state: object  # View of malloc_state
    heaps: list[Heap] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.index == 0


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
    to where glibc's counters (_counted_end) or its top chunk end it (_main_heap_end), across
    the adjacent mappings brk grew into (brk_run)."""
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
    counted = None
    if run[0] <= first <= top:
        counted = _counted_end(st, mp)
    else:
        first = m.start
    first = (first + MALLOC_ALIGNMENT - 1) & ~(MALLOC_ALIGNMENT - 1)
    end, exact = _main_heap_end(session, m, run, top, counted)
    return Heap(first, top, (first, end), None, top, exact)


def _counted_end(st, mp) -> int | None:
    """Where glibc's own accounting says its brk memory ends: mp_.sbrk_base plus the main
    arena's system_mem. sysmalloc counts every byte its sbrk calls obtained from the first
    (sbrk_base) on, and counts a foreign block between two of its extensions too, while
    systrim takes off what it gives back; so while the main arena is contiguous this is
    the end of its top chunk, and the brk memory past it is another sbrk user's (jemalloc's
    dss extents). None when the counters cannot say: no mp_ (the heuristics did not find
    it), or a main arena that fell back to mmap (NONCONTIGUOUS_BIT: its memory is then not
    one run from sbrk_base)."""
    if mp is None or not mp.sbrk_base or int(st.flags) & NONCONTIGUOUS_BIT:
        return None
    return int(mp.sbrk_base) + int(st.system_mem)


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


def _main_heap_end(session, m, run: tuple[int, int], top: int,
                   counted: int | None) -> tuple[int, bool]:
    """Where the main heap ends, and whether that is glibc's own accounting (_counted_end),
    which the top chunk must then end at exactly. Two witnesses say where: the top chunk's
    size, and the counters. Where they agree, that is the end, and the brk memory past it is
    another sbrk user's. Where they do not, one of them is damaged: the mapping decides. A
    top that ends where its brk mapping does (within a page: the break need not be
    page-aligned) is believed, and the counters are what is wrong (verify.py's system_mem
    checks report that); a top that ends elsewhere is damage measured against the counted
    end. Without counters (or with a counted end outside the brk run), the top chunk's end,
    which may lie in a later mapping of the brk run (brk_run); a top size that leaves the
    run is not believed (the heap then ends with m, the mapping holding top)."""
    try:
        top_end = top + (session.mem.read_u64(top + 8) & ~7)
    except ReadError:
        top_end = None
    if counted is not None and top < counted <= run[1]:
        at = session.mem.mapping_at(top_end - 1) if top_end is not None and top_end > top else None
        ends_mapping = (at is not None and run[0] <= at.start and at.end <= run[1]
                        and at.end - top_end < PAGE)
        if counted == top_end or not ends_mapping:
            return counted, True
    if top_end is None:
        return m.end, False
    return (top_end if m.end < top_end <= run[1] else m.end), False


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
    """The top chunk must end where its heap ends: exactly where glibc's counters end it
    (Heap.counted), else within a page of its mapping's end (the break need not be
    page-aligned). A size past the end is smashed (the House of Force would let malloc hand
    out any address); a top that ends short of it is a smashed top size or pointer, and
    the chunks after it are not walked."""
    try:
        raw = session.mem.read_u64(heap.top + 8)
    except ReadError:
        return Damage(arena_owner(arena), heap.top, f"top chunk 0x{heap.top:x} is "
                      "unreadable", heap.top, heap.region[1])
    size, end = raw & ~7, heap.region[1]
    top_end = heap.top + size
    if MINSIZE <= size and not size & 15 and top_end <= end:
        if top_end == end or (not heap.counted and end - top_end < PAGE):
            return None
        return Damage(arena_owner(arena), heap.top, f"top chunk 0x{heap.top:x}: ends at "
                      f"0x{top_end:x}, short of the heap end 0x{end:x}; the rest is not "
                      "walked", top_end, end)
    why = (f"size 0x{size:x} runs past the heap end 0x{end:x}" if size >= MINSIZE
           and not size & 15 else f"bad size 0x{raw:x}")
    return Damage(arena_owner(arena), heap.top, f"top chunk 0x{heap.top:x}: {why}",
                  heap.top, end)


def find_arenas(session, structs, main: int, mp) -> tuple[list[Arena], list[Damage]]:
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
