"""A builder of synthetic libumem heaps, laid out through the umem dmod's own descriptors.

SynthUmem plays libumem's part in miniature: it creates caches (hashed audit caches like
umem_alloc_*, a plain non-hash cache), slabs with their freelists, bufctl_audit records with
stacks, a transaction log, magazines (CPU-loaded and in the depot), vmem arenas with span, alloc
and free segments, and malloc's hidden headers, redzones and buftags, exactly as the real
allocator writes them (the constants and formulas of umem.c and malloc.c). A test then asks the
dcmds about the heap and compares with what the builder knows to be true.

Every structure is written through the bound layouts of mdbpy_commands.umem.layouts, so the
builder and the dmod can only disagree if a layout is wrong for both, which the layout test
(checked against the measured offsets) rules out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdbpy.layout.bind import Binder
from mdbpy.session import Session
from mdbpy.symbols.base import Symbol
from mdbpy.target.base import Mapping, Thread
from mdbpy.target.synthetic import SyntheticTarget
from mdbpy_commands.umem import layouts as L

LIB = "libumem.so.0"
LIB_PATH = "/usr/lib/x86_64-linux-gnu/libumem.so.0"
LIB_TEXT = 0x7F3A40010000  # libumem's code (function symbols for stack frames)
LIB_DATA = 0x7F3A40040000  # libumem's .data/.bss: its globals
EXE_TEXT = 0x555555555000
EXE_DATA = 0x555555558000  # the program's data: roots
HEAP = 0x7F3A40400000  # mmap'd memory libumem manages (the mmap_top span)
HEAP_SIZE = 0x200000
STACK = 0x7FFC12340000
STACK_SIZE = 0x4000
ANON = 0x7F3A40800000  # an anonymous mapping no one references: an MMAP leak
PRIVATE = 0x7F3A40C00000  # v2's per-CPU arrays, each mapped by libumem itself (cpu_layers)
BRK = 0x555555600000  # [heap]: sbrk memory outside umem
PAGE = 0x1000
T0 = (0x6B03E595 << 32) | 0x469FB  # gethrtime() on Linux: seconds << 32 | microseconds
THREAD1 = 0x7FCC7AE58740
THREAD2 = 0x7FCC7A657640

LIB_FUNCS = ["umem_cache_alloc", "umem_alloc", "umem_free", "vmem_alloc", "vmem_xalloc",
             "malloc", "free"]
EXE_FUNCS = ["main", "make_node", "make_table", "leak_some", "read_config"]


def _highbit(v: int) -> int:
    return v.bit_length()


def _round(v: int, a: int) -> int:
    return (v + a - 1) // a * a


def lib_pc(name: str, off: int = 0x20) -> int:
    return LIB_TEXT + 0x100 * LIB_FUNCS.index(name) + off


def exe_pc(name: str, off: int = 0x10) -> int:
    return EXE_TEXT + 0x100 * EXE_FUNCS.index(name) + off


@dataclass
class SynthCache:
    addr: int
    name: str
    bufsize: int
    chunk: int
    slabsize: int
    flags: int
    hashed: bool
    bufctl_off: int
    buftag_off: int
    verify: int
    slabs: list = field(default_factory=list)  # (slab addr, base, nchunks)
    bufctl: dict = field(default_factory=dict)  # buffer -> bufctl
    free_list: dict = field(default_factory=dict)  # slab -> [bufctl, ...] (head first)
    allocated: set = field(default_factory=set)
    magazine: list = field(default_factory=list)  # buffers in the magazine layer
    depot: list = field(default_factory=list)  # buffers in full depot magazines
    arena: int = 0


class Memory:
    """Bytes of the synthetic mappings, written field by field through bound layouts."""

    def __init__(self, layouts):
        self.layouts = layouts
        self.segs: dict[int, bytearray] = {}

    def add(self, start: int, size: int) -> None:
        self.segs[start] = bytearray(size)

    def _seg(self, addr: int, n: int):
        for s, data in self.segs.items():
            if s <= addr and addr + n <= s + len(data):
                return data, addr - s
        raise ValueError(f"synthetic write outside the mappings at 0x{addr:x}")

    def write(self, addr: int, raw: bytes) -> None:
        data, off = self._seg(addr, len(raw))
        data[off:off + len(raw)] = raw

    def read(self, addr: int, n: int) -> bytes:
        data, off = self._seg(addr, n)
        return bytes(data[off:off + n])

    def u64(self, addr: int, v: int) -> None:
        self.write(addr, (v & (1 << 64) - 1).to_bytes(8, "little"))

    def u32(self, addr: int, v: int) -> None:
        self.write(addr, (v & 0xFFFFFFFF).to_bytes(4, "little"))

    def get64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def put(self, struct: str, addr: int, **values) -> None:
        """Write the named fields of `struct` at addr (bytes for char arrays, sequences for
        arrays of scalars)."""
        b = self.layouts[struct]
        for name, v in values.items():
            f = b.field(name)
            a = addr + f.offset
            if f.kind == "array" and f.elem_kind == "char":
                self.write(a, v.encode() if isinstance(v, str) else v)
            elif f.kind == "array":
                for i, x in enumerate(v):
                    self.write(a + i * f.elem_size,
                               (x & (1 << 8 * f.elem_size) - 1).to_bytes(f.elem_size, "little"))
            else:
                self.write(a, (v & (1 << 8 * f.size) - 1).to_bytes(f.size, "little"))

    def fill64(self, addr: int, n: int, pattern: int) -> None:
        self.write(addr, pattern.to_bytes(8, "little") * (n // 8))


class SynthUmem:
    """A libumem heap under construction. `session()` gives a Session over it."""

    def __init__(self, ncpus: int = 2, version=L.CLASSIC, stack_depth: int = 15,
                 flags: int = L.UMF_AUDIT | L.UMF_DEADBEEF | L.UMF_REDZONE | L.UMF_CONTENTS,
                 heap_size: int = HEAP_SIZE):
        self.layouts = Binder(L.descriptors(version), version=version)
        self.version = version
        self.ncpus = ncpus
        self.stack_depth = stack_depth
        self.flags = flags
        self.m = Memory(self.layouts)
        self.heap_size = heap_size
        # the unreferenced mapping follows a heap too big to fit before it
        self.anon = ANON if HEAP + heap_size <= ANON else _round(HEAP + heap_size + PAGE, 1 << 20)
        for start, size in ((LIB_DATA, 0x40000), (EXE_DATA, 0x1000), (HEAP, heap_size),
                            (STACK, STACK_SIZE), (self.anon, 0x3000), (BRK, 0x21000)):
            self.m.add(start, size)
        self.lib_syms: list[Symbol] = []
        self._lib_next = LIB_DATA
        self._heap_next = HEAP
        self.clock = T0
        self.caches: list[SynthCache] = []
        self.arenas: dict[str, int] = {}
        self.oversize: dict[int, int] = {}  # buffer -> vmem_seg
        self.threads = [Thread(4242, "prog", {})]
        self._globals()

    # -- memory -----------------------------------------------------------------------------
    def global_(self, name: str, size: int, value: int | None = None, align: int = 8,
                bind: str = "global") -> int:
        a = _round(self._lib_next, align)
        self._lib_next = a + size
        self.lib_syms.append(Symbol(name, a, size, "object", bind))
        if value is not None:
            self.m.write(a, value.to_bytes(size, "little", signed=value < 0))
        return a

    def heap(self, size: int, align: int = 16) -> int:
        a = _round(self._heap_next, align)
        self._heap_next = a + size
        if self._heap_next > HEAP + self.heap_size:
            raise ValueError("synthetic umem heap is full")
        return a

    def tick(self, usec: int = 1500) -> int:
        sec, us = self.clock >> 32, (self.clock & 0xFFFFFFFF) + usec
        self.clock = ((sec + us // 1000000) << 32) | (us % 1000000)
        return self.clock

    # -- libumem's globals ------------------------------------------------------------------
    def _globals(self) -> None:
        g = self.global_
        self.null_cache = g("umem_null_cache", self.layouts["umem_cache"].size)
        off = self.layouts["umem_cache"].offset
        self.m.u64(self.null_cache + off("cache_next"), self.null_cache)
        self.m.u64(self.null_cache + off("cache_prev"), self.null_cache)
        g("umem_ready", 4, L.UMEM_READY)
        g("umem_flags", 4, self.flags)
        g("umem_logging", 4, 1)
        g("umem_stack_depth", 4, self.stack_depth)
        g("umem_max_ncpus", 4, self.ncpus)
        g("pagesize", 8, PAGE)
        g("vmem_seg_size", 8, self.layouts["vmem_seg"].size)
        self.log_ptr = g("umem_transaction_log", 8, 0)
        g("umem_content_log", 8, 0)
        g("umem_failure_log", 8, 0)
        g("umem_slab_log", 8, 0)
        g("umem_transaction_log_size", 8, 0x8000)
        g("umem_error_begin", 4, 0, bind="local")
        if self.version >= L.ILLUMOS_2016:
            g("umem_ptc_size", 8, 0)
        if self.version >= L.V2_1:
            g("umem_depot_steal_max", 4, 8)  # what tells a v2.1+ library (layouts.release)
        self.private: list[tuple[int, int]] = []  # (start, size) of v2's own mappings
        cpus = g("umem_cpus_array", 8 * self.ncpus, bind="local")
        cc0 = off("cache_cpu")
        for i in range(self.ncpus):
            self.m.put("umem_cpu", cpus + 8 * i, cpu_cache_offset=cc0 + 128 * i, cpu_number=i)
        g("umem_cpus", 8, cpus, bind="local")
        self.sizes = [8, 16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448,
                      512, 640, 768, 896, 1024, 1152, 1344, 1600, 2048, 2688, 4096, 5440, 8192,
                      9216, 12288, 16384]
        sizes = g("umem_alloc_sizes", 4 * 56, bind="local")
        for i, s in enumerate(self.sizes):
            self.m.u32(sizes + 4 * i, s)
        self.alloc_table = g("umem_alloc_table", 8 * (L.maxbuf(self.version) >> 3),
                             bind="local")
        mt = self.layouts["umem_magtype"]
        self.magtype = g("umem_magtype", 9 * mt.size, bind="local")
        for i, (n, lo, hi) in enumerate(((1, 8, 3200), (3, 16, 256), (7, 32, 64),
                                         (15, 64, 0), (31, 64, 0), (47, 64, 0), (63, 64, 0),
                                         (95, 64, 0), (143, 64, 0))):
            self.m.put("umem_magtype", self.magtype + i * mt.size, mt_magsize=n, mt_align=lo,
                       mt_minbuf=hi, mt_maxbuf=0)
        self.vmem_list = g("vmem_list", 8, 0, bind="local")
        self._vmem0 = g("vmem0", 6 * self.layouts["vmem"].size, bind="local")
        self._vmem_used = 0

    # -- vmem -------------------------------------------------------------------------------
    def arena(self, name: str, source: str | None = None, quantum: int = PAGE) -> int:
        """A vmem arena (the first six in the static vmem0[], the rest on the heap), appended
        to vmem_list, with an empty segment ring anchored at vm_seg0."""
        size = self.layouts["vmem"].size
        if self._vmem_used < 6:
            a = self._vmem0 + self._vmem_used * size
            self._vmem_used += 1
        else:
            a = self.heap(size, 64)
        seg0 = a + self.layouts["vmem"].offset("vm_seg0")
        self.m.put("vmem", a, vm_name=name, vm_quantum=quantum, vm_id=len(self.arenas),
                   vm_source=self.arenas[source] if source else 0)
        self.m.put("vmem_seg", seg0, vs_anext=seg0, vs_aprev=seg0)
        # append to vmem_list
        link = self.vmem_list
        nxt = self.layouts["vmem"].offset("vm_next")
        while self.m.get64(link):
            link = self.m.get64(link) + nxt
        self.m.u64(link, a)
        self.arenas[name] = a
        return a

    def seg(self, arena: str, start: int, end: int, vtype: int, stack=(), thread: int = 0,
            when: int = 0) -> int:
        """A segment appended to the arena's ring, with kstat kept as vmem does."""
        a = self.arenas[arena]
        vo = self.layouts["vmem"].offset
        seg0 = a + vo("vm_seg0")
        s = self.heap(self.layouts["vmem_seg"].size, 8)
        last = self.m.get64(seg0 + self.layouts["vmem_seg"].offset("vs_aprev"))
        so = self.layouts["vmem_seg"].offset
        self.m.put("vmem_seg", s, vs_start=start, vs_end=end, vs_type=vtype, vs_anext=seg0,
                   vs_aprev=last, vs_depth=len(stack), vs_stack=list(stack), vs_thread=thread,
                   vs_timestamp=when)
        self.m.u64(last + so("vs_anext"), s)
        self.m.u64(seg0 + so("vs_aprev"), s)
        k = a + vo("vm_kstat")
        ko = self.layouts["vmem_kstat"].offset
        size = end - start
        if vtype == L.VMEM_SPAN:
            self.m.u64(k + ko("vk_mem_total"), self.m.get64(k + ko("vk_mem_total")) + size)
        elif vtype == L.VMEM_ALLOC:
            self.m.u64(k + ko("vk_mem_inuse"), self.m.get64(k + ko("vk_mem_inuse")) + size)
            self.m.u64(k + ko("vk_alloc"), self.m.get64(k + ko("vk_alloc")) + 1)
        return s

    def standard_arenas(self) -> None:
        """The arena tree of a Linux libumem: mmap_top > mmap_heap > internal arenas."""
        self.arena("mmap_top")
        self.arena("mmap_heap", "mmap_top")
        self.arena("umem_internal", "mmap_heap")
        self.arena("umem_cache", "umem_internal", quantum=64)
        self.arena("umem_log", "mmap_heap")
        self.arena("umem_oversize", "mmap_heap")
        self.arena("umem_memalign", "mmap_heap")
        self.arena("umem_default", "mmap_heap")
        end = HEAP + self.heap_size
        self.seg("mmap_top", HEAP, end, L.VMEM_SPAN)
        self.seg("mmap_top", HEAP, end, L.VMEM_ALLOC)
        self.seg("mmap_heap", HEAP, end, L.VMEM_SPAN)
        self.global_("heap_arena", 8, self.arenas["mmap_heap"], bind="local")
        for name in ("umem_internal", "umem_cache", "umem_log", "umem_oversize",
                     "umem_memalign", "umem_default"):
            self.global_(f"{name}_arena", 8, self.arenas[name], bind="local")

    def oversize_alloc(self, size: int, stack=(), thread: int = THREAD1) -> int:
        """A malloc larger than UMEM_MAXBUF: a page-rounded vmem segment of umem_oversize
        (malloc's 16-byte MALLOC_OVERSIZE_MAGIC header at its start)."""
        n = _round(size + 16, PAGE)
        a = self.heap(n, PAGE)
        self.seg("umem_oversize", a, a + n, L.VMEM_SPAN)
        s = self.seg("umem_oversize", a, a + n, L.VMEM_ALLOC, stack, thread, self.tick())
        self.m.u32(a + 8, size + 16)
        self.m.u32(a + 12, L.MALLOC_OVERSIZE_MAGIC - (size + 16))
        self.oversize[a] = s
        return a

    # -- caches -----------------------------------------------------------------------------
    def cache(self, name: str, bufsize: int, flags: int | None = None, cflags: int = 0,
              align: int = 8, arena: str = "umem_default", color: int = 0) -> SynthCache:
        """umem_cache_create: the chunk layout, slab size and hashing as umem.c computes
        them; the cache goes at the end of the umem_null_cache list."""
        flags = self.flags if flags is None else flags
        chunk = _round(bufsize, 8)
        bufctl_off = chunk - 8
        buftag_off = 0
        if flags & L.UMF_BUFTAG:
            bufctl_off = buftag_off = chunk
            chunk += self.layouts["umem_buftag"].size
        verify = buftag_off if flags & L.UMF_DEADBEEF else 0
        chunk = _round(chunk, align)
        hashed = bool(flags & L.UMF_AUDIT) or chunk >= PAGE // 8
        if hashed:
            flags |= L.UMF_HASH
            slabsize = PAGE if chunk <= PAGE // 8 else _round(chunk * 8, PAGE)
        else:
            slabsize = PAGE
        cs = self.layouts["umem_cache"]
        size = cs.offset("cache_cpu") + self.ncpus * self.layouts["umem_cpu_cache"].size
        # libumem places caches so that cache_cpu is 128-byte aligned (addresses end in 0x48)
        a = self.heap(size + 128, 128)
        a += (-(a + cs.offset("cache_cpu"))) % 128
        c = SynthCache(a, name, bufsize, chunk, slabsize, flags, hashed, bufctl_off,
                       buftag_off, verify, arena=self.arenas.get(arena, 0))
        nslab = a + cs.offset("cache_nullslab")
        magtype = self.magtype + 2 * self.layouts["umem_magtype"].size
        hash_table = 0
        if hashed:
            hash_table = self.heap(64 * 8, 64)
        self.m.put("umem_cache", a, cache_name=name, cache_bufsize=bufsize,
                   cache_align=align, cache_arena=c.arena, cache_cflags=cflags,
                   cache_flags=flags, cache_chunksize=chunk, cache_slabsize=slabsize,
                   cache_bufctl=bufctl_off, cache_buftag=buftag_off, cache_verify=verify,
                   cache_contents=min(bufctl_off, 256), cache_color=color,
                   cache_maxcolor=64 if hashed else (slabsize - 56) % chunk,
                   cache_hash_shift=_highbit(chunk) - 1 if hashed else 0,
                   cache_hash_mask=63 if hashed else 0, cache_hash_table=hash_table,
                   cache_freelist=nslab, cache_magtype=magtype)
        self.m.put("umem_slab", nslab, slab_cache=a, slab_next=nslab, slab_prev=nslab)
        for i in range(self.ncpus):
            cc = a + cs.offset("cache_cpu") + i * self.layouts["umem_cpu_cache"].size
            self.m.put("umem_cpu_cache", cc, cc_magsize=7, cc_rounds=-1, cc_prounds=-1)
        # link at the end of the cache list
        prev = self.m.get64(self.null_cache + cs.offset("cache_prev"))
        self.m.put("umem_cache", a, cache_next=self.null_cache, cache_prev=prev)
        self.m.u64(prev + cs.offset("cache_next"), a)
        self.m.u64(self.null_cache + cs.offset("cache_prev"), a)
        self.caches.append(c)
        if name.startswith("umem_alloc_"):
            lo = max([s for s in self.sizes if s < bufsize], default=0)
            for k in range(lo, bufsize, 8):
                self.m.u64(self.alloc_table + 8 * (k >> 3), a)
        return c

    def _cget(self, c: SynthCache, name: str) -> int:
        f = self.layouts["umem_cache"].field(name)
        return int.from_bytes(self.m.read(c.addr + f.offset, f.size), "little")

    def _cset(self, c: SynthCache, **values) -> None:
        self.m.put("umem_cache", c.addr, **values)

    def grow(self, c: SynthCache) -> int:
        """umem_slab_create: a new slab, every buffer on its freelist (free-patterned with a
        free buftag in debug caches), linked at the end of the slab list."""
        slab_mem = self.heap(c.slabsize, c.slabsize if not c.hashed else PAGE)
        color = self._cget(c, "cache_color")
        base = slab_mem + color
        if c.hashed:
            nchunks = (c.slabsize - color) // c.chunk
            sp = self.heap(self.layouts["umem_slab"].size, 8)
        else:
            nchunks = (c.slabsize - self.layouts["umem_slab"].size - color) // c.chunk
            sp = slab_mem + c.slabsize - self.layouts["umem_slab"].size
        if c.flags & L.UMF_DEADBEEF:
            self.m.fill64(slab_mem, c.slabsize - (0 if c.hashed else 56),
                          L.UMEM_UNINITIALIZED_PATTERN)
        head = 0
        chain = []
        audit = L.audit_size(self.stack_depth)
        for i in range(nchunks):
            buf = base + i * c.chunk
            if c.hashed:
                bcp = self.heap(audit if c.flags & L.UMF_AUDIT else 24, 32)
                if c.flags & L.UMF_AUDIT:
                    self.m.put("umem_bufctl_audit", bcp, bc_cache=c.addr)
                self.m.put("umem_bufctl", bcp, bc_addr=buf, bc_slab=sp)
            else:
                bcp = buf + c.bufctl_off
            if c.flags & L.UMF_BUFTAG:
                self.m.put("umem_buftag", buf + c.buftag_off, bt_redzone=L.UMEM_REDZONE_PATTERN,
                           bt_bufctl=bcp, bt_bxstat=bcp ^ L.UMEM_BUFTAG_FREE)
                if c.flags & L.UMF_DEADBEEF:
                    self.m.fill64(buf, c.verify, L.UMEM_FREE_PATTERN)
            self.m.u64(bcp, head)  # bc_next
            head = bcp
            chain.insert(0, bcp)
            c.bufctl[buf] = bcp
        nslab = c.addr + self.layouts["umem_cache"].offset("cache_nullslab")
        so = self.layouts["umem_slab"].offset
        last = self.m.get64(nslab + so("slab_prev"))
        self.m.put("umem_slab", sp, slab_cache=c.addr, slab_base=base, slab_head=head,
                   slab_refcnt=0, slab_chunks=nchunks, slab_next=nslab, slab_prev=last)
        self.m.u64(last + so("slab_next"), sp)
        self.m.u64(nslab + so("slab_prev"), sp)
        if self._cget(c, "cache_freelist") == nslab:
            self._cset(c, cache_freelist=sp)
        self._cset(c, cache_slab_create=self._cget(c, "cache_slab_create") + 1,
                   cache_buftotal=self._cget(c, "cache_buftotal") + nchunks)
        c.slabs.append((sp, base, nchunks))
        c.free_list[sp] = chain
        return sp

    def _slab_of(self, c: SynthCache, buf: int) -> int:
        for sp, base, n in c.slabs:
            if base <= buf < base + n * c.chunk:
                return sp
        raise ValueError(f"0x{buf:x} is in no slab of {c.name}")

    def _audit(self, c: SynthCache, bcp: int, stack, thread: int) -> None:
        """UMEM_AUDIT: timestamp, thread, stack, and a copy into the transaction log."""
        if not c.flags & L.UMF_AUDIT:
            return
        self.m.put("umem_bufctl_audit", bcp, bc_timestamp=self.tick(), bc_thread=thread,
                   bc_depth=len(stack))
        bstack = self.layouts["umem_bufctl_audit"].offset("bc_stack")
        for i, pc in enumerate(stack):
            self.m.u64(bcp + bstack + 8 * i, pc)
        self.m.put("umem_bufctl_audit", bcp, bc_lastlog=self._log(bcp))

    def alloc(self, c: SynthCache, size: int | None = None, stack=(), thread: int = THREAD1,
              malloc: bool = True) -> int:
        if size is not None and size + 8 + (8 if size + 8 > L.UMEM_SECOND_ALIGN else 0) > \
                c.bufsize:
            raise ValueError(f"malloc({size}) does not fit {c.name}")
        """umem_cache_alloc (+ malloc's header and umem_alloc's redzone when `size` is given):
        the buffer's address. Takes from the first slab with a free buffer."""
        for sp, _base, _n in c.slabs:
            if c.free_list[sp]:
                break
        else:
            sp = self.grow(c)
        bcp = c.free_list[sp].pop(0)
        so = self.layouts["umem_slab"].offset
        self.m.u64(sp + so("slab_head"), c.free_list[sp][0] if c.free_list[sp] else 0)
        self.m.u64(sp + so("slab_refcnt"), self.m.get64(sp + so("slab_refcnt")) + 1)
        buf = self.m.get64(bcp + 8) if c.hashed else bcp - c.bufctl_off
        if c.hashed:
            shift, table = self._cget(c, "cache_hash_shift"), self._cget(c, "cache_hash_table")
            bucket = table + 8 * ((buf >> shift) & 63)
            self.m.u64(bcp, self.m.get64(bucket))
            self.m.u64(bucket, bcp)
        self._cset(c, cache_slab_alloc=self._cget(c, "cache_slab_alloc") + 1)
        self._audit(c, bcp, stack, thread)
        if c.flags & L.UMF_BUFTAG:
            if c.flags & L.UMF_DEADBEEF:
                self.m.fill64(buf, c.verify, L.UMEM_UNINITIALIZED_PATTERN)
            redzone = L.UMEM_REDZONE_PATTERN
            n = 0
            if size is not None:
                n = size + 8 + (8 if size + 8 > L.UMEM_SECOND_ALIGN else 0)
                redzone = (L.size_encode(n) << 32) | (L.UMEM_REDZONE_PATTERN & 0xFFFFFFFF)
            self.m.put("umem_buftag", buf + c.buftag_off, bt_redzone=redzone,
                       bt_bxstat=bcp ^ L.UMEM_BUFTAG_ALLOC)
            if n:  # a buffer used to its end gets the 0xbb in the redzone word's first byte
                self.m.write(buf + n, bytes([L.UMEM_REDZONE_BYTE]))
        c.allocated.add(buf)
        if size is not None and malloc:
            return self._malloc_header(buf, size)
        return buf

    def bulk_malloc(self, c: SynthCache, size: int, n: int, stack=(), thread: int = THREAD1):
        """n malloc(size) calls served by a fresh hashed audit cache, written at once with
        numpy (for heaps of hundreds of thousands of buffers): full slabs in address order,
        each buffer with its malloc header, size-encoded redzone, buftag and bufctl_audit on
        the hash chains, a hash table of a power of two >= the buffers (libumem rescales its
        table as the cache grows), and the rest of the last slab on its freelist. Returns the
        buffer addresses (numpy uint64)."""
        import numpy as np

        if c.slabs or not c.hashed or (c.flags & (L.UMF_AUDIT | L.UMF_BUFTAG)) != (
                L.UMF_AUDIT | L.UMF_BUFTAG):
            raise ValueError("bulk_malloc fills a fresh hashed audit cache with redzones")
        req = size + 16  # malloc's 8-byte tag, 16-byte aligned (UMEM_SECOND_ALIGN)
        per = c.slabsize // c.chunk
        nslabs = -(-n // per)
        total = nslabs * per
        lay = self.layouts
        asz = L.audit_size(self.stack_depth)
        mem = self.heap(nslabs * c.slabsize, PAGE)
        slab0 = self.heap(nslabs * lay["umem_slab"].size, 8)
        ctl0 = self.heap(total * asz, 32)
        nb = 1 << max(6, (total - 1).bit_length())
        table = self.heap(8 * nb, 64)
        shift = _highbit(c.chunk) - 1
        w = np.frombuffer(self.m.segs[HEAP], np.uint8).view("<u8")

        def word(addrs, off: int = 0):
            """Indexes into w of the words at addrs + off."""
            return (np.asarray(addrs, np.uint64) + np.uint64(off) - np.uint64(HEAP)) // 8

        def put(addrs, struct, name, values):
            w[word(addrs, lay[struct].offset(name))] = values

        k = np.arange(total, dtype=np.uint64)
        slabs = np.uint64(slab0) + np.arange(nslabs, dtype=np.uint64) * np.uint64(
            lay["umem_slab"].size)
        bases = np.uint64(mem) + np.arange(nslabs, dtype=np.uint64) * np.uint64(c.slabsize)
        bufs = bases[k // np.uint64(per)] + (k % np.uint64(per)) * np.uint64(c.chunk)
        ctls = np.uint64(ctl0) + k * np.uint64(asz)
        live = k < np.uint64(n)
        w[(mem - HEAP) // 8:(mem + nslabs * c.slabsize - HEAP) // 8] = \
            L.UMEM_UNINITIALIZED_PATTERN
        # the slab ring, anchored at cache_nullslab
        anchor = c.addr + lay["umem_cache"].offset("cache_nullslab")
        ring = np.concatenate(([anchor], slabs, [anchor])).astype(np.uint64)
        for name, v in (("slab_cache", c.addr), ("slab_base", bases), ("slab_next", ring[2:]),
                        ("slab_prev", ring[:-2]), ("slab_refcnt", per), ("slab_chunks", per)):
            put(slabs, "umem_slab", name, v)
        self.m.put("umem_slab", anchor, slab_next=int(slabs[0]), slab_prev=int(slabs[-1]))
        # the bufctls: audit records of the allocations
        for name, v in (("bc_addr", bufs), ("bc_slab", slabs[k // np.uint64(per)]),
                        ("bc_cache", c.addr), ("bc_thread", np.where(live, thread, 0)),
                        ("bc_timestamp", np.where(live, np.uint64(self.clock) + k, 0)),
                        ("bc_depth", np.where(live, len(stack), 0))):
            put(ctls, "umem_bufctl_audit", name, v)
        for j, pc in enumerate(stack):
            w[word(ctls[live], lay["umem_bufctl_audit"].offset("bc_stack") + 8 * j)] = pc
        # buftags, malloc tags and the redzone byte past the requested bytes
        tags = bufs + np.uint64(c.buftag_off)
        redzone = (L.size_encode(req) << 32) | (L.UMEM_REDZONE_PATTERN & 0xFFFFFFFF)
        put(tags, "umem_buftag", "bt_redzone", np.where(live, redzone, L.UMEM_REDZONE_PATTERN))
        put(tags, "umem_buftag", "bt_bufctl", ctls)
        put(tags, "umem_buftag", "bt_bxstat", ctls ^ np.where(
            live, np.uint64(L.UMEM_BUFTAG_ALLOC), np.uint64(L.UMEM_BUFTAG_FREE)))
        w[word(bufs[live], 8)] = ((L.MALLOC_SECOND_MAGIC - req) << 32) | req
        w.view(np.uint8)[(bufs[live] + np.uint64(req) - np.uint64(HEAP)).astype(np.int64)] = \
            L.UMEM_REDZONE_BYTE
        # allocated bufctls on their hash chains
        bucket = (bufs[live] >> np.uint64(shift)) & np.uint64(nb - 1)
        order = np.argsort(bucket, kind="stable")
        b, cs = bucket[order], ctls[live][order]
        same = b[1:] == b[:-1]
        put(cs[:-1][same], "umem_bufctl_audit", "bc_next", cs[1:][same])
        first = np.concatenate(([True], ~same))
        w[word(np.uint64(table) + np.uint64(8) * b[first])] = cs[first]
        # the rest of the last slab: free, on its freelist
        free = ctls[~live].tolist()
        for bcp, nxt in zip(free, free[1:] + [0]):
            self.m.u64(bcp, nxt)
            self.m.fill64(self.m.get64(bcp + 8), c.verify, L.UMEM_FREE_PATTERN)
        last = int(slabs[-1])
        self.m.put("umem_slab", last, slab_head=free[0] if free else 0,
                   slab_refcnt=per - len(free))
        self._cset(c, cache_hash_table=table, cache_hash_mask=nb - 1, cache_hash_shift=shift,
                   cache_buftotal=total, cache_slab_create=nslabs, cache_slab_alloc=n,
                   cache_freelist=last if free else anchor)
        self.clock += total
        bl, sl = bufs.tolist(), slabs.tolist()
        c.slabs = [(s, int(bases[i]), per) for i, s in enumerate(sl)]
        c.bufctl = dict(zip(bl, ctls.tolist()))
        c.free_list = {s: [] for s in sl}
        c.free_list[last] = free
        c.allocated.update(bl[:n])
        return bufs[:n]

    @staticmethod
    def user_ptr(buf: int, size: int) -> int:
        return buf + (8 if size + 8 <= L.UMEM_SECOND_ALIGN else 16)

    def _malloc_header(self, buf: int, size: int) -> int:
        n = size + 8
        if n <= L.UMEM_SECOND_ALIGN:
            self.m.put("malloc_data", buf, malloc_size=n, malloc_stat=L.MALLOC_MAGIC - n)
            return buf
        n += 8
        self.m.put("malloc_data", buf + 8, malloc_size=n, malloc_stat=L.MALLOC_SECOND_MAGIC - n)
        return buf

    def free(self, c: SynthCache, buf: int, where: str = "slab", stack=(),
             thread: int = THREAD1) -> None:
        """umem_cache_free: the buffer is free-patterned with a free buftag, then goes to CPU 0's
        loaded magazine ('magazine'), a full depot magazine ('depot'), back to its slab, or to
        the caller ('held': for v2's per-CPU layers, cpu_layers)."""
        bcp = c.bufctl[buf]
        c.allocated.discard(buf)
        self._audit(c, bcp, stack, thread)
        if c.flags & L.UMF_BUFTAG:
            if c.flags & L.UMF_DEADBEEF:
                self.m.fill64(buf, c.verify, L.UMEM_FREE_PATTERN)
            self.m.put("umem_buftag", buf + c.buftag_off, bt_redzone=L.UMEM_REDZONE_PATTERN,
                       bt_bxstat=bcp ^ L.UMEM_BUFTAG_FREE)
        if where == "magazine":
            c.magazine.append(buf)
            return
        if where == "depot":
            c.depot.append(buf)
            return
        if where == "held":
            return
        sp = self._slab_of(c, buf)
        if c.hashed:
            shift, table = self._cget(c, "cache_hash_shift"), self._cget(c, "cache_hash_table")
            link = table + 8 * ((buf >> shift) & 63)
            while self.m.get64(link) != bcp:
                link = self.m.get64(link)
            self.m.u64(link, self.m.get64(bcp))
        so = self.layouts["umem_slab"].offset
        self.m.u64(bcp, self.m.get64(sp + so("slab_head")))
        self.m.u64(sp + so("slab_head"), bcp)
        self.m.u64(sp + so("slab_refcnt"), self.m.get64(sp + so("slab_refcnt")) - 1)
        c.free_list[sp].insert(0, bcp)
        self._cset(c, cache_slab_free=self._cget(c, "cache_slab_free") + 1)

    def _magazines(self, c: SynthCache) -> None:
        """Write the magazine layer: CPU 0's loaded magazine and the depot's full magazines
        (magsize 7, umem_magtype[2])."""
        mag = self.layouts["umem_magazine"]
        cc = c.addr + self.layouts["umem_cache"].offset("cache_cpu")
        if c.magazine:
            m = self.heap(mag.offset("mag_round") + 8 * 7, 64)
            for i, b in enumerate(c.magazine):
                self.m.u64(m + 8 + 8 * i, b)
            self.m.put("umem_cpu_cache", cc, cc_loaded=m, cc_rounds=len(c.magazine),
                       cc_alloc=len(c.magazine) + 3, cc_free=len(c.magazine))
        if c.depot:
            assert len(c.depot) % 7 == 0, "depot magazines are full: 7 rounds each"
            head = 0
            for k in range(len(c.depot) // 7):
                m = self.heap(mag.offset("mag_round") + 8 * 7, 64)
                self.m.u64(m, head)
                for i, b in enumerate(c.depot[7 * k:7 * k + 7]):
                    self.m.u64(m + 8 + 8 * i, b)
                head = m
            self.m.put("umem_maglist", c.addr + self.layouts["umem_cache"].offset("cache_full"),
                       ml_list=head, ml_total=len(c.depot) // 7, ml_alloc=2)

    def cpu_layers(self, c: SynthCache, depot: list[list[int]],
                   rseq: list[tuple[list[int], list[int]]]) -> list[int]:
        """v2's per-CPU layers of a cache, each array in a mapping of its own (libumem mmaps
        them): depot[i], the rounds of the full magazines on CPU i's depot list (7 each);
        rseq[i], the rounds of CPU i's rseq cache's loaded and previous magazines. Also the
        empty-magazine depot array. Returns the three arrays' addresses."""
        assert self.version >= L.V2_0, "per-CPU depot and rseq caches came with v2"
        ml, rc = self.layouts["umem_maglist"], self.layouts["umem_rseq_cache"]
        mag = self.layouts["umem_magazine"]

        def mapping(size: int) -> int:
            start = PRIVATE + sum(_round(n, PAGE) + PAGE for _a, n in self.private)
            self.m.add(start, _round(size, PAGE))
            self.private.append((start, size))
            return start

        def magazine(rounds, link=0) -> int:
            m = self.heap(mag.offset("mag_round") + 8 * 7, 64)
            self.m.u64(m, link)
            for i, b in enumerate(rounds):
                self.m.u64(m + mag.offset("mag_round") + 8 * i, b)
            return m

        full, empty = mapping(len(depot) * ml.size), mapping(len(depot) * ml.size)
        for i, bufs in enumerate(depot):
            head = 0
            for k in range(0, len(bufs), 7):
                head = magazine(bufs[k:k + 7], head)
            self.m.put("umem_maglist", full + i * ml.size, ml_list=head,
                       ml_total=len(bufs) // 7)
            self.m.put("umem_maglist", empty + i * ml.size, ml_list=magazine([]), ml_total=1)
        if not any(x.name == "umem_rseq_ncpus" for x in self.lib_syms):
            self.global_("umem_rseq_ncpus", 4, len(rseq), bind="local")
        rseq_arr = mapping(len(rseq) * rc.size)
        for i, (loaded, prev) in enumerate(rseq):
            self.m.put("umem_rseq_cache", rseq_arr + i * rc.size, magsize=7,
                       loaded_mag=magazine(loaded) if loaded else 0, rounds=len(loaded),
                       previous_mag=magazine(prev) if prev else 0, prounds=len(prev))
        self._cset(c, cache_depot_ncpus=len(depot), cache_depot_full=full,
                   cache_depot_empty=empty, cache_rseq=rseq_arr)
        return [full, empty, rseq_arr]

    def per_thread(self, c: SynthCache, bufs: list[int], tp: int, tmem_off: int = 0x80) -> None:
        """A 2016 libumem's per-thread cache (UMF_PTC on the cache, umem_ptc_enabled): the
        buffers (allocated from the cache, as ptcmalloc's refills take them) go on the list of
        thread pointer `tp` (the main thread's fs_base) in the tm_roots slot of c's size,
        linked through each buffer's first word."""
        assert self.version >= L.ILLUMOS_2016, "per-thread caches came with the 2016 libumem"
        if not any(s.name == "umem_tmem_off" for s in self.lib_syms):
            self.global_("umem_ptc_enabled", 4, 1)
            self.global_("umem_tmem_off", 8, tmem_off)
        self._cset(c, cache_flags=self._cget(c, "cache_flags") | L.UMF_PTC)
        head = 0
        for b in reversed(bufs):
            self.m.u64(b, head)
            head = b
        self.m.u64(tp + tmem_off + 8 + 8 * self.sizes.index(c.bufsize), head)
        self.set_registers(fs_base=tp)

    # -- the transaction log ----------------------------------------------------------------
    def start_log(self, chunksize: int = PAGE) -> int:
        lh = self.layouts["umem_log_header"]
        clh = self.layouts["umem_cpu_log_header"]
        nchunks = 4 * self.ncpus
        hdr = self.heap(lh.offset("lh_cpu") + self.ncpus * clh.size, 64)
        base = self.heap(chunksize * nchunks, PAGE)
        free = self.heap(4 * nchunks, 8)
        for i in range(self.ncpus, nchunks):
            self.m.u32(free + 4 * i, i)
        self.m.put("umem_log_header", hdr, lh_base=base, lh_free=free, lh_chunksize=chunksize,
                   lh_nchunks=nchunks, lh_head=self.ncpus, lh_tail=0)
        for i in range(self.ncpus):
            self.m.put("umem_cpu_log_header", hdr + lh.offset("lh_cpu") + i * clh.size,
                       clh_current=base + i * chunksize, clh_avail=chunksize, clh_chunk=i)
        self.m.u64(self.log_ptr, hdr)
        self.log = hdr
        return hdr

    def _log(self, bcp: int) -> int:
        """umem_log_enter on CPU 0: copy the audit record into the current chunk (taking the
        next free chunk when it is full)."""
        if not getattr(self, "log", 0):
            return 0
        lh = self.layouts["umem_log_header"]
        hdr = self.log
        clh = hdr + lh.offset("lh_cpu")
        co = self.layouts["umem_cpu_log_header"].offset
        ho = lh.offset
        size = L.audit_size(self.stack_depth)
        avail = self.m.get64(clh + co("clh_avail"))
        chunksize = self.m.get64(hdr + ho("lh_chunksize"))
        if size > avail:
            nchunks = int.from_bytes(self.m.read(hdr + ho("lh_nchunks"), 4), "little")
            head = int.from_bytes(self.m.read(hdr + ho("lh_head"), 4), "little")
            tail = int.from_bytes(self.m.read(hdr + ho("lh_tail"), 4), "little")
            free = self.m.get64(hdr + ho("lh_free"))
            chunk = int.from_bytes(self.m.read(clh + co("clh_chunk"), 4), "little")
            self.m.u32(free + 4 * tail, chunk)
            chunk = int.from_bytes(self.m.read(free + 4 * head, 4), "little")
            self.m.put("umem_log_header", hdr, lh_tail=(tail + 1) % nchunks,
                       lh_head=(head + 1) % nchunks)
            self.m.put("umem_cpu_log_header", clh, clh_chunk=chunk, clh_avail=chunksize,
                       clh_current=self.m.get64(hdr + ho("lh_base")) + chunk * chunksize)
            avail = chunksize
        cur = self.m.get64(clh + co("clh_current"))
        self.m.write(cur, self.m.read(bcp, size))
        self.m.put("umem_cpu_log_header", clh, clh_current=cur + size, clh_avail=avail - size)
        return cur

    # -- the program around the heap --------------------------------------------------------
    def root(self, offset: int, value: int) -> int:
        """A pointer in the program's data (a root); returns the slot's address."""
        self.m.u64(EXE_DATA + offset, value)
        return EXE_DATA + offset

    def stack_slot(self, offset: int, value: int) -> int:
        """A word in the main thread's stack, `offset` bytes above its stack pointer."""
        a = STACK + STACK_SIZE // 2 + offset
        self.m.u64(a, value)
        return a

    def set_registers(self, **regs) -> None:
        r = {"rsp": STACK + STACK_SIZE // 2, "rip": exe_pc("main", 0x40)}
        r.update(regs)
        self.threads[0].regs = r

    # -- result -----------------------------------------------------------------------------
    def finish(self) -> None:
        """Write what is kept until the end (the magazine layer), once: a test may damage the
        finished heap and build another session over it."""
        if getattr(self, "_finished", False):
            return
        self._finished = True
        for c in self.caches:
            self._magazines(c)
        if not self.threads[0].regs:
            self.set_registers()

    def target(self) -> SyntheticTarget:
        self.finish()
        segs = [
            (Mapping(LIB_TEXT, LIB_TEXT + 0x10000, "r-xp", 0, "fe:00", 11, LIB_PATH), b""),
            (Mapping(LIB_DATA, LIB_DATA + 0x40000, "rw-p", 0x30000, "fe:00", 11, LIB_PATH),
             self.m.segs[LIB_DATA]),
            (Mapping(EXE_TEXT - 0x1000, EXE_TEXT, "r--p", 0, "fe:00", 12, "/usr/bin/prog"),
             b""),
            (Mapping(EXE_TEXT, EXE_TEXT + 0x1000, "r-xp", 0x1000, "fe:00", 12, "/usr/bin/prog"),
             b""),
            (Mapping(EXE_DATA, EXE_DATA + 0x1000, "rw-p", 0x3000, "fe:00", 12, "/usr/bin/prog"),
             self.m.segs[EXE_DATA]),
            (Mapping(BRK, BRK + 0x21000, "rw-p", path="[heap]"), self.m.segs[BRK]),
            (Mapping(HEAP, HEAP + self.heap_size, "rw-p"), self.m.segs[HEAP]),
            (Mapping(self.anon, self.anon + 0x3000, "rw-p"), self.m.segs[self.anon]),
            (Mapping(STACK, STACK + STACK_SIZE, "rw-p", path="[stack]"), self.m.segs[STACK]),
        ] + [(Mapping(a, a + _round(n, PAGE), "rw-p"), self.m.segs[a]) for a, n in self.private]
        return SyntheticTarget(segs, threads=self.threads, name="synthetic libumem")

    def symbols(self, stripped: bool = False) -> tuple[list[Symbol], list[Symbol]]:
        """(libumem's, the executable's) symbols; stripped leaves libumem only what a stripped
        library keeps in .dynsym: no local (static) symbols such as umem_cpus or vmem_list."""
        lib = [s for s in self.lib_syms if not (stripped and s.bind == "local")] + [
            Symbol(n, LIB_TEXT + 0x100 * i, 0x100) for i, n in enumerate(LIB_FUNCS)]
        exe = [Symbol(n, EXE_TEXT + 0x100 * i, 0x100) for i, n in enumerate(EXE_FUNCS)]
        exe.append(Symbol("list_head", EXE_DATA, 8, "object"))
        return lib, exe

    def session(self, stripped: bool = False, **kw) -> Session:
        s = Session(self.target(), **kw)
        lib, exe = self.symbols(stripped)
        s.symbols.add_symbols(LIB, lib)
        s.symbols.add_symbols("a.out", exe, is_exe=True)
        return s


class Run:
    """An mdb language engine over a synthetic heap: run(cmd) -> (stdout, stderr) text."""

    def __init__(self, u: SynthUmem, stripped: bool = False):
        import io

        from mdbpy.lang.engine import Engine

        self.out, self.err = io.StringIO(), io.StringIO()
        self.session = u.session(stripped, out=self.out, err=self.err)
        self.engine = Engine(self.session)

    def __call__(self, cmd: str) -> tuple[str, str]:
        for f in (self.out, self.err):
            f.seek(0)
            f.truncate()
        self.engine.run_string(cmd)
        return self.out.getvalue(), self.err.getvalue()


def leaky_heap() -> tuple[SynthUmem, dict]:
    """The scenario of the umem tests: a small program's heap with live, leaked, freed,
    cached and corrupted buffers, and the truth about each (name -> address)."""
    u = SynthUmem()
    u.standard_arenas()
    u.start_log()
    c16 = u.cache("umem_alloc_16", 16, align=16)
    c32 = u.cache("umem_alloc_32", 32, align=16)
    c80 = u.cache("umem_alloc_80", 80, align=16)
    objs = u.cache("my_objs", 40, flags=0)
    u.cache("umem_bufctl_audit_cache", 192, flags=0xE, cflags=0x80080000,
            arena="umem_internal")

    def st(fn, *more):
        return [lib_pc("umem_cache_alloc"), lib_pc("umem_alloc"), lib_pc("malloc"),
                exe_pc(fn), *more, exe_pc("main", 0x40)]

    t = {}
    t["A"] = u.alloc(c80, 50, st("make_node"))
    t["B"] = u.alloc(c80, 50, st("make_node"))
    t["L1"] = u.alloc(c32, 16, st("leak_some"), THREAD2)
    t["L2"] = u.alloc(c32, 16, st("leak_some"), THREAD2)
    t["L3"] = u.alloc(c80, 60, st("read_config"))
    t["S"] = u.alloc(c32, 10, st("make_table"))
    t["R"] = u.alloc(c16, 4, st("make_table"))
    t["C1"] = u.alloc(c80, 40, st("read_config"))
    t["F"] = u.alloc(c80, 64, st("read_config"))
    u.free(c80, t["F"], stack=[lib_pc("umem_free"), lib_pc("free"), exe_pc("read_config")])
    u.m.write(u.user_ptr(t["F"], 64), b"\x01")  # a write after free
    u.m.write(t["C1"] + 16 + 40, b"\x00")  # overwrites the 0xbb redzone byte
    t["M1"] = u.alloc(c32, 12, st("make_table"))
    t["M2"] = u.alloc(c32, 12, st("make_table"))
    u.free(c32, t["M1"], "magazine", [lib_pc("umem_free")], THREAD2)
    u.free(c32, t["M2"], "magazine", [lib_pc("umem_free")], THREAD2)
    t["D"] = [u.alloc(c16, 8, st("make_table")) for _ in range(7)]
    for b in t["D"]:
        u.free(c16, b, "depot", [lib_pc("umem_free")])
    t["P1"] = u.alloc(objs)
    t["P2"] = u.alloc(objs)
    t["P3"] = u.alloc(objs)
    u.free(objs, t["P3"])
    t["O1"] = u.oversize_alloc(20000, [lib_pc("vmem_xalloc"), lib_pc("vmem_alloc"),
                                       lib_pc("malloc"), exe_pc("leak_some", 0x30)])
    t["O2"] = u.oversize_alloc(30000, [lib_pc("vmem_xalloc"), lib_pc("vmem_alloc"),
                                       lib_pc("malloc"), exe_pc("make_table", 0x30)])
    # references: list_head -> A -> B (user pointers, 16 bytes in), C1, P2, O2 from data
    u.root(0, u.user_ptr(t["A"], 50))
    u.m.u64(u.user_ptr(t["A"], 50), u.user_ptr(t["B"], 50))
    u.root(8, u.user_ptr(t["C1"], 40))
    u.root(16, t["P2"])
    u.root(24, t["O2"] + 16)
    u.stack_slot(0x40, u.user_ptr(t["S"], 10))  # live stack: above rsp
    u.stack_slot(-0x40, u.user_ptr(t["L3"], 60))  # dead stack: below rsp
    u.set_registers(rax=u.user_ptr(t["R"], 4))
    t["caches"] = {"umem_alloc_16": c16, "umem_alloc_32": c32, "umem_alloc_80": c80,
                   "my_objs": objs}
    return u, t


def list_heap(n: int, size: int = 2000) -> tuple[SynthUmem, object]:
    """The heap of bench/umem_bench.py's program: n malloc(size) list nodes in umem_alloc_2048,
    every other one linked into a list held by the program's data (its `next` at the user
    pointer), the rest dropped (leaked). Returns the heap and the buffer addresses."""
    import numpy as np

    per_slab = 20480 // 2072  # the slab geometry cache() gives umem_alloc_2048
    slabs = -(-n // per_slab)
    u = SynthUmem(heap_size=_round(slabs * (20480 + 56 + per_slab * 192) + 8 * n + (4 << 20),
                                   1 << 20))
    u.standard_arenas()
    c = u.cache("umem_alloc_2048", 2048, align=8)
    bufs = u.bulk_malloc(c, size, n, [lib_pc("umem_cache_alloc"), lib_pc("umem_alloc"),
                                      lib_pc("malloc"), exe_pc("make_node"), exe_pc("main")])
    kept = bufs[::2] + np.uint64(16)  # user pointers of the listed nodes, newest first
    w = np.frombuffer(u.m.segs[HEAP], np.uint8).view("<u8")
    w[(kept[1:] - np.uint64(HEAP)) // np.uint64(8)] = kept[:-1]  # node i+1 -> node i
    u.root(0, int(kept[-1]))
    return u, bufs
