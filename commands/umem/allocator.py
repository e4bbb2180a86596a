"""UmemAllocator: libumem for the generic heap engines (::findleaks, ::whatis, ::heap_verify,
::heap_stats), following mdb's leaky_subr.c for what is a candidate:

- cache buffers: the allocated buffers of every cache (for findleaks only those whose arena is
  umem_default or umem_firewall, i.e. not libumem's own metadata caches); audit caches give
  each its bufctl, whose record (stack, thread, time) groups the leaks;
- oversized allocations: the ALLOC segments of the umem_oversize and umem_memalign arenas.

mdb's MMAP and SBRK candidates (anonymous memory and brk outside every umem heap span) are
the one heap view's (mdbpy.heap.view), for every allocator alike: the umem spans (of the top
ancestor of heap_arena) are what this module claims.

Heap memory is never a root: the umem spans are the heap regions, and libumem's own data
(umem_null_cache, vmem0, the alloc table) is metadata, as mdb ignores "part of umem" mappings.
"""

from __future__ import annotations

import functools
import os

from mdbpy.errors import MdbError, ReadError
from mdbpy.heap.model import (ALLOC, KIND_BUFFER, KIND_OVERSIZE,
                              AllocRecord, Allocator, BufferTable, HeapStat, Problem)
from mdbpy.heap.roots import merge_ranges

from mdbpy_commands.umem import layouts as L
from mdbpy_commands.umem.contents import buffer_table, cache_contents
from mdbpy_commands.umem.damage import damage
from mdbpy_commands.umem.state import MAX_DEPTH, Umem
from mdbpy_commands.umem.verify import verify_cache

LEAK_ARENAS = ("umem_default", "umem_firewall")  # caches whose buffers findleaks reports
OVERSIZE_ARENAS = ("umem_oversize", "umem_memalign")
ALLOC_CACHES = "umem_alloc_"  # the caches umem_alloc and malloc serve by size


class UmemAllocator(Allocator):
    name = "umem"
    oversize_label = "umem_oversize"  # mdb's leaky_subr.c names every oversize leak so

    def __init__(self, session, umem: Umem):
        super().__init__(session)
        self.umem = umem
        self.version = umem.version
        self.binder = umem.layouts
        self._buffers = None
        self._segs = None
        self._malloc_memo = None  # (table, _malloc_objects of it)
        self.stack_skip = _Memo(self.umem.in_allocator).__getitem__

    @classmethod
    def detect(cls, session):
        try:
            umem = Umem.get(session)
        except MdbError:
            return None
        if umem.ready != L.UMEM_READY:
            return None
        return cls(session, umem)

    # -- buffers ----------------------------------------------------------------------------
    def _caches(self, leak_caches: bool) -> list:
        """The caches whose buffers are buffers (not UMC_NOTOUCH: theirs are other caches'
        slabs); leak_caches: only those whose buffers findleaks reports."""
        return [c for c in self.umem.caches() if not c.cache_cflags & L.UMC_NOTOUCH and not (
            leak_caches and self._arena_name(c.cache_arena) not in LEAK_ARENAS)]

    def _arena_name(self, addr: int) -> str:
        if not addr:
            return ""
        key = ("umem_arena_name", addr)
        name = self.session.cache.get(key)
        if name is None:
            try:
                name = self.umem.view("vmem", addr).cstr("vm_name")
            except ReadError:
                name = ""  # a wild cache_arena: not one of the arenas findleaks reports
            self.session.cache[key] = name
        return name

    def oversize_segs(self) -> list:
        """ALLOC segments of the oversize and memalign arenas (views)."""
        if self._segs is None:
            segs = []
            try:
                for name in OVERSIZE_ARENAS:
                    a = self.umem.arena_named(name)
                    if a is None:
                        continue
                    for s in self.umem.segs(a.addr, (L.VMEM_ALLOC,)):
                        if s.vs_start < s.vs_end:
                            segs.append((name, s))
                        else:
                            damage(self.session).report(
                                s.addr, s.addr + 8, f"arena 0x{a.addr:x} segment 0x{s.addr:x}:"
                                f" [0x{s.vs_start:x}, 0x{s.vs_end:x}) is empty or reversed")
            except MdbError as e:
                self.session.warn(f"umem: oversized allocations skipped: {e}")
            self._segs = segs
        return self._segs

    def _oversize_table(self) -> BufferTable:
        segs = self.oversize_segs()
        names = sorted({n for n, _s in segs})
        return BufferTable.from_columns(
            [s.vs_start for _n, s in segs], [s.vs_end - s.vs_start for _n, s in segs],
            [ALLOC] * len(segs), [names.index(n) for n, _s in segs], [s.addr for _n, s in segs],
            [KIND_OVERSIZE] * len(segs), groups=[(n, 0) for n in names])

    def buffers(self) -> BufferTable:
        if self._buffers is None:
            self._buffers = buffer_table(self.umem, self._caches(False), False,
                                         self._oversize_table())
        return self._buffers

    def buffer_count(self) -> int:
        """Every cache's buffers and the oversize segments, counted from the caches' contents
        (which findleaks has gathered) without the table of two million rows."""
        if self._buffers is not None:
            return len(self._buffers)
        return (sum(len(cache_contents(self.umem, c).bufs) for c in self._caches(False))
                + len(self.oversize_segs()))

    def candidates(self) -> BufferTable:
        """The allocated buffers and oversize segments (the anonymous memory beside the umem
        heap is the one heap view's, mdbpy.heap.view)."""
        return buffer_table(self.umem, self._caches(True), True, self._oversize_table())

    def request_sizes(self, table: BufferTable):
        """A buffer of a cache the program made (umem_cache_create) serves exactly the object
        size it gave (umem keeps it as cache_bufsize, unrounded); a umem_alloc_N cache's
        buffer the requests above the next smaller umem_alloc cache (_alloc_requests); an
        oversize segment: unknown. But any buffer malloc made (its header verifies:
        _malloc_objects) served exactly the request its header records: the object's size,
        as the typegraph's containers compare it with the object (object_offsets)."""
        import numpy as np

        lo, hi = np.zeros(len(table), np.uint64), np.zeros(len(table), np.uint64)
        for name, c, rows in self._groups(table):
            if c is None:
                continue
            if name.startswith(ALLOC_CACHES):
                lo[rows], hi[rows] = self._alloc_requests(c, table.base[rows])
            else:
                lo[rows] = hi[rows] = c.cache_bufsize
        head, size = self._malloc_objects(table)
        lo[head > 0] = hi[head > 0] = size[head > 0]
        return lo, hi

    def object_offsets(self, table: BufferTable):
        """The length of libumem's malloc header where a buffer begins with one that verifies
        (_malloc_objects): the program's object follows it. 0 elsewhere: umem_cache_alloc's
        and umem_alloc's buffers, and a buffer whose header does not verify (overwritten, or
        no header at all), which is to the debugger exactly a umem_alloc'd buffer."""
        return self._malloc_objects(table)[0]

    def _groups(self, table: BufferTable):
        """(group name, its cache or None, its rows) of every group of table with rows."""
        import numpy as np

        caches = {c.addr: c for c in self.umem.caches()}
        order = np.argsort(table.group, kind="stable")
        bounds = np.searchsorted(table.group[order], np.arange(len(table.groups) + 1))
        for g, (name, addr) in enumerate(table.groups):
            rows = order[bounds[g]:bounds[g + 1]]
            if len(rows):
                yield name, caches.get(addr), rows

    def _malloc_objects(self, table: BufferTable):
        """(header length, object size) columns (of the table asked for last, kept: the
        typegraph asks twice): of every row that begins with the header
        libumem's malloc or memalign writes where such a buffer is (_tag_kinds), verified:
        its magics, and a recorded size that lands in that buffer (above the class below,
        at most the buffer) and leaves an object (malloc(0)'s empty one is left as is, a
        zero-size object would start where the next buffer may); 0, 0 elsewhere."""
        import numpy as np

        from mdbpy_commands.umem.dcmds import malloc_headers

        memo = self._malloc_memo
        if memo is not None and memo[0] is table:  # request_sizes and object_offsets both ask
            return memo[1]
        head, size = np.zeros(len(table), np.uint64), np.zeros(len(table), np.uint64)
        for name, c, rows in self._groups(table):
            for tags, floor, ceil in self._tag_kinds(name, c, table.size[rows]):
                ok, got, h = malloc_headers(self.umem, table.base[rows], tags)
                ok &= (got > np.uint64(floor)) & (got <= ceil) & (got > np.uint64(h))
                head[rows[ok]], size[rows[ok]] = h, got[ok] - np.uint64(h)
        self._malloc_memo = (table, (head, size))
        return head, size

    def _tag_kinds(self, name: str, c, sizes) -> list[tuple]:
        """[(tags, floor, ceil)]: the malloc headers (dcmds.TAG_*) a buffer of the group
        named may hold, with the sizes they may record, in (floor, ceil]: a umem_alloc
        cache's are its class (malloc.c allocates through umem_alloc); an oversize
        segment's (umem_alloc past the largest cache) one or two tags, a memalign segment's
        two, at most the segment; nothing elsewhere (a cache the program made)."""
        from mdbpy_commands.umem import dcmds as D

        if c is not None and name.startswith(ALLOC_CACHES):
            return [(D.cache_tags(c), self._below(c), c.cache_bufsize)]
        oversize, memalign = OVERSIZE_ARENAS
        if name == oversize:  # umem_alloc sends there only what no cache holds
            top = self.alloc_sizes[-1] if self.alloc_sizes else 0
            return [(D.TAG_SECOND, top, sizes), (D.TAG_HUGE, top, sizes)]
        if name == memalign:
            return [(D.TAG_MEMALIGN, 0, sizes)]
        return []

    def _below(self, c) -> int:
        """The size of the umem_alloc cache below cache c (0 under the smallest): umem_alloc
        serves a size from the smallest cache that holds it."""
        import bisect

        sizes = self.alloc_sizes
        k = bisect.bisect_left(sizes, c.cache_bufsize)
        return sizes[k - 1] if k else 0

    @functools.cached_property
    def alloc_sizes(self) -> list[int]:
        """The object sizes of the umem_alloc caches, ascending (read once: every cache's
        name would be read again for each cache asked about)."""
        return sorted(x.cache_bufsize for x in self.umem.caches()
                      if x.cstr("cache_name").startswith(ALLOC_CACHES))

    def _alloc_requests(self, c, bufs):
        """(lo, hi) of the buffers of umem_alloc cache c: (the class below, bufsize], or
        exactly the size umem_alloc recorded in the redzone where the cache has one
        (UMEM_DEBUG); unknown for a recorded size outside the class (a damaged redzone)."""
        import numpy as np

        from mdbpy.heap.gather import session_gather

        below = self._below(c)
        lo = np.full(len(bufs), below + 1, np.uint64)
        hi = np.full(len(bufs), c.cache_bufsize, np.uint64)
        if c.cache_flags & L.UMF_REDZONE:
            word, read = session_gather(self.session).read(
                bufs + np.uint64(c.cache_buftag + 4), 4, "<u4")
            word = word.astype(np.uint64)
            size = L.size_decode(word)
            encoded = read & L.size_valid(word)
            lo[encoded], hi[encoded] = size[encoded], size[encoded]
            outside = encoded & ((size <= np.uint64(below)) | (size > hi))
            hi[outside] = 0
        return lo, hi

    # -- regions ----------------------------------------------------------------------------
    def spans(self) -> list[tuple[int, int]]:
        """The umem heap spans: SPAN segments of the top ancestor of heap_arena (of vmem_list's
        head, which is that ancestor, when the library is stripped of heap_arena)."""
        key = "umem_spans"
        got = self.session.cache.get(key)
        if got is None:
            umem = self.umem
            top = (umem.mem.read_ptr(umem.addr_of("heap_arena")) if umem.sym("heap_arena")
                   else umem.first_arena())
            known = {v.addr: v for v in self.umem.arenas()}
            for _ in range(MAX_DEPTH):
                src = known[top].vm_source if top in known else 0
                if not src:
                    break
                top = src
            cols = self.umem.seg_columns(top, (L.VMEM_SPAN,))
            got = merge_ranges((a, b) for a, b in zip(cols["vs_start"].tolist(),
                                                      cols["vs_end"].tolist()) if a < b)
            self.session.cache[key] = got
        return got

    def heap_regions(self) -> list[tuple[int, int]]:
        return self.spans()

    def metadata_regions(self) -> list[tuple[int, int]]:
        """libumem's own writable data (its mappings and their bss), or, linked statically,
        its big globals; and the memory v2 maps for itself outside its arenas (per-CPU depot
        and rseq arrays: anonymous mappings that would otherwise be taken for mmap leaks)."""
        obj = self.umem.obj
        out = []
        maps = self.session.mem.mappings()
        names = {obj.name, os.path.basename(obj.path)} - {""}
        for k, m in enumerate(maps):
            mine = m.is_file and os.path.basename(m.path) in names and not obj.is_exe
            bss = (not m.path and k and maps[k - 1].end == m.start and maps[k - 1].is_file
                   and os.path.basename(maps[k - 1].path) in names and not obj.is_exe)
            if m.writable and (mine or bss):
                out.append((m.start, m.end))
        if obj.is_exe:
            for name in ("umem_null_cache", "vmem0", "umem_alloc_table", "umem_cpus"):
                s = self.umem.sym(name)
                if s is not None:
                    out.append((s.addr, s.addr + max(s.size, 8)))
        try:
            out += self.umem.private_maps()
        except MdbError as e:
            self.session.warn(f"umem: libumem's own mappings not all found: {e}")
        return out

    # -- records ----------------------------------------------------------------------------
    def record(self, table: BufferTable, i: int) -> AllocRecord | None:
        ctl = int(table.ctl[i])
        if not ctl:
            return None
        kind = int(table.kind[i])
        try:
            if kind == KIND_OVERSIZE:
                s = self.umem.view("vmem_seg", ctl)
                stack = self.umem.seg_stack(s)
                return AllocRecord(stack, s.vs_thread, s.vs_timestamp, ctl)
            if kind != KIND_BUFFER:
                return None
            bc = self.umem.bufctl(ctl)
            return AllocRecord(self.umem.stack(bc), bc.bc_thread, bc.bc_timestamp, ctl)
        except ReadError:
            return None  # a wild bufctl: the buffer is reported without its record

    def records(self, table: BufferTable, indexes) -> list[AllocRecord | None]:
        """Every asked-for record at once: the audit records (bufctls) and the oversize
        segments are read in clustered blocks and decoded column-wise."""
        import numpy as np

        idx = np.asarray(indexes, np.int64)
        out: list[AllocRecord | None] = [None] * len(idx)
        ctl, kind = table.ctl[idx], table.kind[idx]
        for k, decode in ((KIND_BUFFER, self._bufctl_records),
                          (KIND_OVERSIZE, self._seg_records)):
            sel = np.nonzero((kind == k) & (ctl != 0))[0]
            if len(sel):
                for j, rec in zip(sel.tolist(), decode(ctl[sel])):
                    out[j] = rec
        return out

    def _columns(self, struct: str, addrs, size: int):
        """(column(field name) -> array, readable mask) of the structs at addrs."""
        import numpy as np

        from mdbpy.heap.gather import session_gather

        rows, ok = session_gather(self.session).rows(addrs, size)
        b = self.binder[struct]

        def column(name, count=1):
            f = b.field(name)
            width = f.elem_size if f.kind == "array" else f.size
            raw = np.ascontiguousarray(rows[:, f.offset:f.offset + width * count])
            return raw.view(f"<{'i' if f.signed and f.kind != 'ptr' else 'u'}{width}")

        return column, ok

    def _bufctl_records(self, ctls) -> list[AllocRecord | None]:
        import numpy as np

        depth_max = self.umem.stack_depth
        col, ok = self._columns("umem_bufctl_audit", ctls, L.audit_size(depth_max))
        depth = np.clip(col("bc_depth")[:, 0], 0, depth_max)
        return _records(col("bc_stack", depth_max), depth, col("bc_thread")[:, 0],
                        col("bc_timestamp")[:, 0], ctls, ok)

    def _seg_records(self, segs) -> list[AllocRecord | None]:
        import numpy as np

        col, ok = self._columns("vmem_seg", segs, self.binder["vmem_seg"].size)
        depth = col("vs_depth")[:, 0].astype(np.int64)
        depth[(col("vs_type")[:, 0] != L.VMEM_ALLOC) | (depth > L.VMEM_STACK_DEPTH)] = 0
        return _records(col("vs_stack", L.VMEM_STACK_DEPTH), depth, col("vs_thread")[:, 0],
                        col("vs_timestamp")[:, 0], segs, ok)

    def record_lines(self, rec, buf, group_addr, kind) -> list[str] | None:
        """As mdb's libumem prints a record in findleaks -d and ::whatis: `::bufctl -v` of an
        audit record, `::vmem_seg -v` of an oversize segment (each with its header)."""
        from mdbpy_commands.umem.audit import VERBOSE_HEAD, verbose_lines
        from mdbpy_commands.umem.vmem import SEG_VERBOSE_HEAD, seg_verbose_lines

        try:
            if kind == KIND_OVERSIZE:
                seg = self.umem.view("vmem_seg", rec.addr)
                return SEG_VERBOSE_HEAD + seg_verbose_lines(self.session, seg, rec.stack)
            bc = self.umem.bufctl(rec.addr)
            return VERBOSE_HEAD + verbose_lines(self.session, rec.addr, bc, rec.stack)
        except ReadError:
            return None  # a record that cannot be read again: the generic form of what was

    def untrusted(self) -> list[tuple[int, int, str]]:
        """The damage the walks reported (umem/damage.py), as findleaks names it."""
        return damage(self.session).untrusted()

    def group_name(self, table: BufferTable, i: int) -> str:
        g = table.groups[int(table.group[i])] if table.groups else ("", 0)
        return g[0] if isinstance(g, tuple) else str(g)

    def group_addr(self, table: BufferTable, i: int) -> int:
        g = table.groups[int(table.group[i])] if table.groups else ("", 0)
        return g[1] if isinstance(g, tuple) else 0

    def stack_skip(self, pc: int) -> bool:
        """Frames inside libumem (and its malloc library) name no caller. (Each instance
        replaces this with a lookup in a memo of its answers: findleaks asks for every frame
        of every leak.)"""
        return self.umem.in_allocator(pc)

    # -- verify and stats -------------------------------------------------------------------
    def verify(self, progress=None) -> list[Problem]:
        out = []
        for c in self.umem.caches():
            name = c.cstr("cache_name")
            for bad in verify_cache(self.umem, c):
                out.append(Problem(bad.message().split(") ", 1)[1], name, bad.buf,
                                   c.cache_bufsize, bad.at, None if bad.at is None
                                   else bad.at + 8, note=bad.state))
        return out

    def stats(self) -> list[HeapStat]:
        import numpy as np

        rows = []
        for c in self.umem.caches():
            if c.cache_cflags & L.UMC_NOTOUCH:
                continue
            ct = cache_contents(self.umem, c)
            rows.append(HeapStat(c.cstr("cache_name"), c.cache_bufsize, len(ct.bufs),
                                 int(np.count_nonzero(ct.alloc)),
                                 (c.cache_slab_create - c.cache_slab_destroy) *
                                 c.cache_slabsize, c.addr))
        return rows


class _Memo(dict):
    """A function's answers by argument, computed on first use."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def __missing__(self, key):
        got = self[key] = self.fn(key)
        return got


def _records(stacks, depth, thread, timestamp, addr, ok) -> list[AllocRecord | None]:
    """AllocRecords from columns (stacks: a matrix of pcs, cut at each row's depth); rows not
    read are None. Identical stacks (most leaks of one site) share one tuple, found by a hash
    of each row (and checked, so that a collision costs time, never a wrong stack)."""
    import numpy as np

    depth = np.asarray(depth, np.int64)
    keep = np.arange(stacks.shape[1]) < depth[:, None]
    mat = np.column_stack((np.where(keep, stacks, np.uint64(0)).astype(np.uint64),
                           depth.astype(np.uint64)))
    key = np.zeros(len(mat), np.uint64)
    for col in mat.T:
        key = (key * np.uint64(0x9E3779B97F4A7C15)) ^ col
    _u, first, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    if np.array_equal(mat, mat[first][inv]):
        shared = [tuple(row[:row[-1]]) for row in mat[first].tolist()]
    else:
        shared, inv = [tuple(row[:row[-1]]) for row in mat.tolist()], np.arange(len(mat))
    return [AllocRecord(shared[k], th, ts, a) if good else None
            for k, th, ts, a, good in zip(inv.tolist(), thread.tolist(), timestamp.tolist(),
                                         addr.tolist(), ok.tolist())]
