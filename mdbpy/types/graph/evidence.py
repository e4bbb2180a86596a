"""Where the typegraph's evidence comes from, read in bulk: the heap's pointer words, the typed
globals, and C++ vtable pointers.

- `scan_heap`: one pass over the memory of every buffer, in large blocks viewed as numpy words,
  keeping each aligned word that points into a buffer as an edge (source buffer, offset in it,
  target buffer, offset in it), and each buffer's first word (a C++ object's vtable pointer).
  Which words are *typed* pointers depends on the source buffer's type, known only during
  propagation; the edges are the same whatever the types, so they are found once (in one
  compiled pass per block, kernel.c's tg_scan, when the caller hands in the kernel; else with
  numpy, block_edges, the reference), and propagation (solve.py) only looks up the few words
  each typed buffer has.
- `global_roots`: every global and static variable with a DWARF location in every object that
  has DWARF (the executable, and libraries whose debug files are found), its plan's pointer
  words read in one read per mapping (which words, per object, is kept in the catalogue:
  variable_words).
- `tls_roots`: every thread's copy of every `__thread` variable with a DWARF type, where the
  object's TLS block can be placed in the thread (mdbpy/symbols/tls.py). A worker thread's
  state is often reachable only from its thread-local variables.
- `frame_roots`: every thread's frames' arguments and locals (and those of the functions
  inlined at each frame's pc) whose DWARF locations resolve at the frame's pc
  (mdbpy/types/frames.py: never a guessed register), their pointer words taken from the
  variable's own bytes, in registers or on the stack. A program's working structures are often
  reachable only from a local of a function that is running.
- `vtables`: the `_ZTV` symbols of every object; a buffer whose first word is a vtable's address
  point (symbol + 16) is an object of that class, whatever pointers say.

Only aligned words are edges: a packed struct's unaligned pointer is no evidence.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

MERGE_GAP = 64 << 10  # buffers closer than this are read in one range
PTR = 8
MASK = (1 << 64) - 1


@dataclass
class Edges:
    """The heap's pointers between buffers, sorted by source buffer (CSR: start[i] is the
    first edge of buffer i), and each buffer's first word (0 where it could not be read)."""

    start: object  # int64 (n + 1)
    soff: object  # int64: offset of the word in its source buffer
    dst: object  # int64: the buffer it points into
    doff: object  # int64: where in that buffer
    first: object  # uint64 (n)
    unreadable: int = 0  # bytes of buffers that could not be read


def locate(base, ends, values):
    """(row, offset) of the buffer containing each value, row -1 where none does."""
    import numpy as np

    row = np.searchsorted(base, values, side="right").astype(np.int64) - 1
    ok = row >= 0
    row[~ok] = 0
    ok &= values < ends[row] if len(base) else ok
    row[~ok] = -1
    off = np.where(ok, values - base[row], 0).astype(np.int64)
    return row, off


def read_ranges(base, ends):
    """[lo, hi) ranges covering the buffers, neighbours closer than MERGE_GAP merged."""
    import numpy as np

    if not len(base):
        return []
    cut = np.flatnonzero(base[1:] - ends[:-1] > MERGE_GAP) + 1
    los = base[np.concatenate(([0], cut))]
    his = np.maximum.reduceat(ends, np.concatenate(([0], cut)))
    return list(zip(los.tolist(), his.tolist()))


def scan_heap(mem, base, ends, kernel=None) -> Edges:
    """The heap's edges, each block's found by the compiled kernel's tg_scan when one is
    given (the dcmds give mdbpy.heap.kernel's), else with numpy (block_edges: the reference)."""
    import numpy as np

    n = len(base)
    lo_all = np.uint64(base[0]) if n else np.uint64(0)
    hi_all = np.uint64(ends.max()) if n else np.uint64(0)
    first = np.zeros(n, np.uint64)
    parts = []
    failed: list = []
    for lo, hi in read_ranges(base, ends):
        for at, data in mem.blocks(lo, hi, failed=failed):
            skip = (-at) % PTR
            words = np.frombuffer(data, "<u8", (len(data) - skip) // PTR, skip)
            w0 = np.uint64(at + skip)
            # buffers starting in this block: their first words
            b0 = np.searchsorted(base, w0)
            b1 = np.searchsorted(base, np.uint64(at + len(data) - PTR), side="right")
            if b1 > b0:
                rel = (base[b0:b1] - w0)
                at_word = (rel // np.uint64(PTR)).astype(np.int64)
                ok = ((rel % np.uint64(PTR)) == 0) & (at_word < len(words))
                first[np.flatnonzero(ok) + b0] = words[at_word[ok]]
            if kernel is None:
                parts.append(block_edges(base, ends, words, w0, lo_all, hi_all))
            else:
                parts.append(_block_edges_compiled(kernel, base, ends, words, w0, lo_all,
                                                   hi_all))
    if parts:
        src, soff, dst, doff = (np.concatenate([p[k] for p in parts]) for k in range(4))
    else:
        src = soff = dst = doff = np.zeros(0, np.int64)
    start = np.zeros(n + 1, np.int64)  # src is ascending: a buffer's edges follow the last's
    np.cumsum(np.bincount(src, minlength=n), out=start[1:])
    unreadable = sum(b - a for a, b in failed)
    return Edges(start, soff, dst, doff, first, unreadable)


def block_edges(base, ends, words, w0, lo_all, hi_all):
    """(src, soff, dst, doff) of the words (the first at w0) inside a buffer that point into
    one (values outside [lo_all, hi_all) are in none), in word order."""
    import numpy as np

    hit = np.flatnonzero((words >= lo_all) & (words < hi_all))
    dst, doff = locate(base, ends, words[hit])
    keep = dst >= 0
    hit, dst, doff = hit[keep], dst[keep], doff[keep]
    src, soff = locate(base, ends, w0 + hit.astype(np.uint64) * np.uint64(PTR))
    inside = src >= 0
    return src[inside], soff[inside], dst[inside], doff[inside]


def _block_edges_compiled(kernel, base, ends, words, w0, lo_all, hi_all):
    """block_edges in one compiled pass over the words."""
    import numpy as np

    out = [np.empty(len(words), np.int64) for _ in range(4)]
    words = np.ascontiguousarray(words)
    k = kernel.tg_scan(base.ctypes.data, ends.ctypes.data, len(base), words.ctypes.data,
                       len(words), int(w0), int(lo_all), int(hi_all),
                       *(a.ctypes.data for a in out))
    return tuple(a[:k] for a in out)


# -- typed globals ----------------------------------------------------------------------------
_globals: dict[tuple[int, str], tuple] = {}  # (id(DwarfTypes), which) -> (DwarfTypes, [...])


def typed_globals(d) -> list[tuple[int, object]]:
    """(file address, type) of every variable the DWARF file d places at a static address
    (kept per file: the same for every session)."""
    return _typed(d, "addr")


def typed_thread_locals(d) -> list[tuple[int, object]]:
    """(offset in the object's TLS block, type) of every `__thread` variable of d."""
    return _typed(d, "tls")


def _typed(d, which: str) -> list[tuple[int, object]]:
    hit = _globals.get((id(d), which))
    if hit is not None and hit[0] is d:
        return hit[1]
    from mdbpy.errors import MdbError

    out = []
    idx = d.index
    keys, dies = (idx.addr_keys, idx.addr_dies) if which == "addr" else \
        (idx.tls_keys, idx.tls_dies)
    for key, die_off in zip(keys, dies):
        try:
            out.append((key, d.var_type(d.die(die_off))))
        except MdbError:
            continue
    _globals[(id(d), which)] = (d, out)
    return out


@dataclass
class RootEvidence:
    """Pointers from typed globals into buffers: dst rows, offsets there, pointee tids, and
    the address of each pointer (its slot, for ::whattype -v and tests)."""

    dst: object
    doff: object
    tid: object
    slot: object
    variables: int = 0


def global_roots(space, catalog, base, ends, exclude=()) -> RootEvidence:
    """The evidence of every typed global's pointers into buffers, except pointers lying in
    `exclude` ([lo, hi) ranges: an allocator's own bookkeeping, such as glibc's main_arena,
    whose pointers are to chunk headers, which lie inside the buffer before them)."""
    import numpy as np

    words = []
    for o, d in space.objects():
        offs, tids, nvars = catalog.memo(("globals", id(d)), d,
                                         lambda: variable_words(catalog, typed_globals(d)))
        words.append((offs + np.uint64(o.bias & MASK), tids, nvars))
    return _placed_roots(space, base, ends, words, exclude)


def tls_roots(space, catalog, base, ends, exclude=()) -> RootEvidence:
    """The evidence of every thread's copy of every typed `__thread` variable: each object's
    TLS block in each thread (static, or the one the thread's DTV holds: mdbpy/symbols/tls.py)
    holds its variables at their DWARF offsets. A thread without a block of an object (a
    dlopen'd library whose variables it never touched) gives none of that object's."""
    import numpy as np

    from mdbpy.symbols.tls import thread_block

    session = space.session
    threads = session.target.threads()
    words = []
    for o, d in space.objects():
        offs, tids, nvars = catalog.memo(("tls", id(d)), d,
                                         lambda: variable_words(catalog,
                                                                typed_thread_locals(d)))
        if not nvars:
            continue
        for th in threads:
            block = thread_block(session, o, th)
            if block is not None:
                words.append((offs + np.uint64(block & MASK), tids, nvars))
    return _placed_roots(space, base, ends, words, exclude)


def variable_words(catalog, variables):
    """(addresses, pointee tids, variables): the evidence words of typed variables ((address,
    type) pairs), at their addresses, and how many variables have any (computed once per
    object and kept in the catalog: the same whatever the heap)."""
    import numpy as np

    slots, tids = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
    for at, t in variables:
        tid = catalog.tid_of(t)
        plan = catalog.plan_of(tid).plan if tid is not None else None
        if not plan:
            continue
        slots.append(np.fromiter(plan.keys(), np.uint64, len(plan)) + np.uint64(at & MASK))
        tids.append(np.fromiter(plan.values(), np.int64, len(plan)))
    return np.concatenate(slots), np.concatenate(tids), len(slots) - 1


def _placed_roots(space, base, ends, words, exclude) -> RootEvidence:
    """The evidence of typed variables' words ((addresses, tids, variables) per object and
    placement), read in one read per mapping."""
    import numpy as np

    slot = np.concatenate([np.zeros(0, np.uint64)] + [w[0] for w in words])
    tid = np.concatenate([np.zeros(0, np.int64)] + [w[1] for w in words])
    nvars = sum(w[2] for w in words)
    if exclude:
        keep = ~in_ranges(slot, exclude)
        slot, tid = slot[keep], tid[keep]
    values = read_words(space.mem, slot)
    dst, doff = locate(base, ends, values)
    keep = dst >= 0
    return RootEvidence(dst[keep], doff[keep], tid[keep], slot[keep], nvars)


def frame_roots(session, catalog, base, ends) -> RootEvidence:
    """The evidence of every thread's typed frame variables' pointers into buffers (slot: the
    pointer's address on the stack, 0 for one held in a register)."""
    import numpy as np

    from mdbpy.errors import MdbError
    from mdbpy.types.frames import frame_variables, shown_frames
    from mdbpy.unwind import unwind

    values, slots, tids = [], [], []
    nvars = 0
    for t in session.target.threads():
        try:
            frames = unwind(session, t)
        except MdbError:
            continue
        for sh in shown_frames(session, frames):  # functions inlined there have locals too
            try:
                found = frame_variables(session, frames, sh.index, scope=sh.scope) or []
            except MdbError:
                continue
            for var in found:
                tid = catalog.tid_of(var.type) if var.value is not None else None
                plan = catalog.plan_of(tid).plan if tid is not None else None
                if not plan:
                    continue
                try:
                    data = var.value.read_()
                except MdbError:
                    continue
                nvars += 1
                at = var.value.address
                for off, pointee in plan.items():
                    if off + PTR <= len(data):
                        values.append(int.from_bytes(data[off:off + PTR], "little"))
                        slots.append(0 if at is None else at + off)
                        tids.append(pointee)
    values_ = np.array(values, np.uint64)
    dst, doff = locate(base, ends, values_)
    keep = dst >= 0
    return RootEvidence(dst[keep], doff[keep], np.array(tids, np.int64)[keep],
                        np.array(slots, np.uint64)[keep], nvars)


def merged(*parts: RootEvidence) -> RootEvidence:
    """Bodies of root evidence as one."""
    import numpy as np

    return RootEvidence(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ("dst", "doff", "tid", "slot")),
                        sum(p.variables for p in parts))


def in_ranges(addrs, ranges):
    """A bool per address: inside one of the [lo, hi) ranges."""
    import numpy as np

    rs = sorted((lo, hi) for lo, hi in ranges if lo < hi)
    lo = np.array([r[0] for r in rs], np.uint64)
    hi = np.array([r[1] for r in rs], np.uint64)
    hi = np.maximum.accumulate(hi) if len(hi) else hi
    i = np.searchsorted(lo, addrs, side="right") - 1
    ok = i >= 0
    return ok & (addrs < hi[np.maximum(i, 0)]) if len(rs) else np.zeros(len(addrs), bool)


def read_words(mem, addrs):
    """The 8-byte words at addrs (0 where unreadable), reading each mapping's span of them
    once."""
    import numpy as np

    from mdbpy.errors import ReadError

    out = np.zeros(len(addrs), np.uint64)
    order = np.argsort(addrs, kind="stable")
    s = addrs[order]
    i = 0
    n = len(s)
    while i < n:
        a = int(s[i])
        m = mem.mapping_at(a)
        if m is None:
            i += 1
            continue
        j = int(np.searchsorted(s, np.uint64(m.end - PTR), side="right"))
        j = max(j, i + 1)
        hi = min(int(s[j - 1]) + PTR, m.end)
        try:
            data = np.frombuffer(mem.read(a, hi - a), np.uint8)
        except ReadError:
            i = j
            continue
        rel = (s[i:j] - np.uint64(a)).astype(np.int64)
        fits = rel + PTR <= len(data)
        idx = rel[fits, None] + np.arange(PTR)
        out[order[i:j][fits]] = data[idx].view("<u8").reshape(-1)
        i = j
    return out


# -- vtables ----------------------------------------------------------------------------------
VTABLE_POINT = 16  # offset-to-top and the RTTI pointer precede the address point


_vtables = weakref.WeakKeyDictionary()  # load object -> its vtable points (_object_vtables)


def vtable_points(symbols) -> dict[int, str]:
    """{address point: class name} of every `_ZTV` symbol whose name demangles here; each
    object's found once (its symbol table does not change: a typegraph built again with -f
    would look through a hundred thousand names again)."""
    out = {}
    for o in symbols.objects():
        hit = _vtables.get(o)
        if hit is None:
            hit = _vtables[o] = _object_vtables(o)
        out.update(hit)
    return out


def _object_vtables(o) -> dict[int, str]:
    out = {}
    for s in o.symbols:
        if s.name.startswith("_ZTV") and s.type == "object":
            name = demangle_type(s.name[4:])
            if name:
                out[s.addr + VTABLE_POINT] = name
    return out


def demangle_type(m: str) -> str | None:
    """The class a mangled <type> names (`6Circle`, `N6shapes6CircleE`, `St9exception`);
    None for what this small demangler does not read (templates, substitutions)."""
    names = []
    i = 0
    if m.startswith("St"):
        names.append("std")
        i = 2
    nested = m.startswith("N", i)
    if nested:
        i += 1
        if m.startswith("St", i):
            names.append("std")
            i += 2
    while i < len(m) and m[i].isdigit():
        j = i
        while j < len(m) and m[j].isdigit():
            j += 1
        k = int(m[i:j])
        name = m[j:j + k]
        if len(name) != k:
            return None
        names.append("(anonymous namespace)" if name.startswith("_GLOBAL__N") else name)
        i = j + k
        if not nested:
            break
    if nested:
        if not m.startswith("E", i):
            return None
        i += 1
    return "::".join(names) if names and i == len(m) else None
