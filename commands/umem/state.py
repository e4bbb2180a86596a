"""The libumem found in a target: its load object, globals, bound layouts, caches and arenas.

mdb's libumem dmod reads libumem's globals by name from the object whose name starts with
`libumem.so` (or from the executable when libumem is linked in statically). Some of them are
static (umem_cpus, vmem_list, umem_alloc_table, umem_magtype, ...) and live only in .symtab: an
unstripped library (or its debug file) is needed for those, and commands that need one say so.
Where the dynamic symbols lead to the same thing it is found that way (vmem_list's head and
heap_arena's root from a cache's arena ancestry; umem_alloc_sizes from the umem_alloc_* caches).

One Umem per session is kept in session.cache (dropped whenever the target changes).
"""

from __future__ import annotations

import functools
import os

from mdbpy.errors import MdbError, ReadError
from mdbpy.heap.gather import session_gather
from mdbpy.layout.bind import Binder
from mdbpy.types.layouts import dwarf_layouts

from mdbpy_commands.umem import layouts as L
from mdbpy_commands.umem.damage import chain_addrs, damage, walk_chain, walk_ring

MAX_CACHES = 4096  # real processes have about 60
MAX_ARENAS = 1024
MAX_DEPTH = 64  # arena ancestry (real trees are 4 deep)
MAX_SLABS = 1 << 24
MAX_SEGS = 1 << 24
MAX_STACK = 256  # frames read from one record, whatever its depth says
MAX_MAGSIZE = 4096  # rounds per magazine (libumem's largest magtype has 143)
MAX_CPUS = 1 << 16  # entries of a per-CPU array (cache_cpu, v2's depot and rseq arrays)
PAGE = 4096  # when the library has no `pagesize` global

# globals of the mdb port's list that the dmod reads; the dynamic ones identify libumem
IDENTIFYING = "umem_null_cache"
STATIC_GLOBALS = ("umem_cpus", "vmem_list", "umem_alloc_table", "umem_alloc_sizes",
                  "umem_magtype", "heap_arena")


# libumem's malloc replacement (libumem_malloc: malloc.c, and v2's bootstrap allocator), as
# linked into an executable: frames of these are the allocator's, as libumem_malloc.so's are
STATIC_MALLOC = frozenset((
    "malloc", "free", "calloc", "realloc", "memalign", "valloc", "posix_memalign",
    "aligned_alloc", "process_free", "process_memalign", "_malloc", "_free",
    "bootstrap_malloc", "bootstrap_free"))


class NoUmem(MdbError):
    """libumem is not in the target (or not usable)."""


def find_object(session):
    """The load object holding libumem's globals: a libumem.so*, else the executable (static
    link); None when neither has umem_null_cache."""
    objs = session.symbols.objects()
    ordered = ([o for o in objs if o.name.startswith("libumem.so")] +
               [o for o in objs if o.is_exe])
    for o in ordered:
        s = o.lookup(IDENTIFYING)
        if s is not None and s.type != "undefined" and s.addr:
            return o
    return None


class Umem:
    """libumem in one session: globals by name, layouts, and the structures reached from them."""

    def __init__(self, session, obj):
        self.session = session
        self.mem = session.mem
        self.obj = obj
        self.version = L.release(lambda name: self.sym(name) is not None)
        descs = L.descriptors(self.version)
        # libumem's own DWARF where it has some (the types index, cached by build-id); a
        # struct it does not define (malloc's tag, in libumem_malloc) keeps its builtin layout
        dwarf = dwarf_layouts(session, obj.name, descs.structs)
        self.layouts = Binder(descs, version=self.version, dwarf=dwarf)
        self.ready = self.readvar("umem_ready", signed=True)
        ncpus = self.sym("umem_max_ncpus") or self.sym("max_ncpus")
        self.ncpus = min(max(self.mem.read_u32(ncpus.addr), 0), 1024) if ncpus else 1
        self.stack_depth = min(self.readvar("umem_stack_depth", default=0), MAX_STACK)
        self.flags = self.readvar("umem_flags", default=0)
        self.maxbuf = L.maxbuf(self.version)

    # -- the session's Umem -----------------------------------------------------------------
    @classmethod
    def get(cls, session) -> Umem:
        """The session's libumem, or NoUmem with the reason."""
        u = session.cache.get("umem")
        if u is None:
            obj = find_object(session)
            if obj is None:
                raise NoUmem("libumem is not loaded in this target (no umem_null_cache)")
            u = cls(session, obj)
            session.cache["umem"] = u
        return u

    def check_ready(self) -> None:
        """Refuse commands that walk caches before libumem has initialised."""
        if self.ready != L.UMEM_READY:
            state = {0: "not loaded into address space", L.UMEM_READY_STARTUP: "uninitialized",
                     L.UMEM_READY_INITING: "initialization in process",
                     L.UMEM_READY_INIT_FAILED: "initialization failed"}.get(
                self.ready, "unknown (umem_ready invalid)")
            raise MdbError(f"libumem is not ready: {state}")

    # -- globals ----------------------------------------------------------------------------
    def sym(self, name: str):
        s = self.obj.lookup(name)
        return s if s is not None and s.type != "undefined" and s.addr else None

    def addr_of(self, name: str) -> int:
        """A libumem global's address; a clear error when the library is stripped of it."""
        s = self.sym(name)
        if s is None:
            hint = (" (a static symbol: the library is stripped; use an unstripped libumem or "
                    "install its debug file)" if name in STATIC_GLOBALS or
                    name.endswith("_arena") else "")
            raise MdbError(f"{self.obj.name} has no symbol {name}{hint}")
        return s.addr

    def readvar(self, name: str, size: int | None = None, signed: bool = False,
                default: int | None = None) -> int:
        """A global's value (its symbol size, 4 or 8 bytes, unless size is given)."""
        s = self.sym(name)
        if s is None:
            if default is not None:
                return default
            self.addr_of(name)  # raises the explanation
        n = size or (s.size if s.size in (1, 2, 4, 8) else 8)
        return int.from_bytes(self.mem.read(s.addr, n), "little", signed=signed)

    @functools.cached_property
    def debug_file(self) -> str:
        """The library's file when it carries DWARF, else "": looked for on first use, as
        only a command reading a variable the symbol tables lack needs it and opening the
        ELF file costs every session that merely finds libumem."""
        from mdbpy.layout.dwarf import has_debug_info

        path = self.session.target.file_path(self.obj.path) if self.obj.path else ""
        return path if path and os.path.isfile(path) and has_debug_info(path) else ""

    def dwarf_variable(self, name: str, cu_hint: str) -> int | None:
        """A libumem variable its symbol tables lack, from its DWARF: the run-time address, 0
        when DWARF says the compiler dropped it, None when there is no DWARF naming it."""
        if not self.debug_file:
            return None
        from mdbpy.layout.dwarf import find_variable

        where = find_variable(self.debug_file, name, cu_hint)
        return where + self.obj.bias if where else where

    def debug(self, msg: str) -> None:
        """mdb's dprintf: a `umem debug: ` trace line while ::umem_debug has it on."""
        if self.session.settings.get("umem.debug") == "on":
            self.session.out.write(f"umem debug: {msg}\n")

    def view(self, struct: str, addr: int):
        return self.layouts[struct].view(self.mem, addr)

    # -- caches -----------------------------------------------------------------------------
    def cache_addrs(self) -> list[int]:
        """Every cache, in umem_null_cache's list order (cache_next); a break in the list is
        reported and the caches behind it are found from the other end (cache_prev)."""
        self.check_ready()
        got = self.session.cache.get("umem_caches")
        if got is not None:
            return got
        out = walk_ring(self, "cache list", self.addr_of("umem_null_cache"), "umem_cache",
                        "cache_next", "cache_prev", MAX_CACHES, "cache")[0]
        self.session.cache["umem_caches"] = out
        return out

    def cache(self, addr: int):
        """A view of the cache at addr (read once per session state)."""
        key = ("umem_cache", addr)
        v = self.session.cache.get(key)
        if v is None:
            v = self.view("umem_cache", addr)
            self.session.cache[key] = v
        return v

    def caches(self) -> list:
        return [self.cache(a) for a in self.cache_addrs()]

    def cache_named(self, name: str):
        for c in self.caches():
            if c.cstr("cache_name") == name:
                return c
        return None

    def cpu_caches(self, cache) -> list:
        """cache_cpu[0 .. umem_max_ncpus) of a cache."""
        cc = self.layouts["umem_cpu_cache"]
        base = cache.addr_of("cache_cpu")
        return [cc.view(self.mem, base + i * cc.size) for i in range(self.ncpus)]

    def magsize(self, cache) -> int:
        """Rounds per magazine: CPU 0's cc_magsize, else the cache's magtype (mdb's rule)."""
        n = self.cpu_caches(cache)[0].cc_magsize if self.ncpus else 0
        if n or cache.cache_flags & L.UMF_NOMAGAZINE or not cache.cache_magtype:
            return max(n, 0)
        try:
            return max(self.view("umem_magtype", cache.cache_magtype).mt_magsize, 0)
        except ReadError:
            return 0

    def array(self, struct: str, addr: int, n: int) -> list:
        """Views of n consecutive structs at addr, read in one piece."""
        b = self.layouts[struct]
        raw = self.mem.read(addr, n * b.size) if n > 0 else b""
        return [b.from_bytes(raw[i * b.size:(i + 1) * b.size], addr + i * b.size, self.mem)
                for i in range(n)]

    def _has(self, struct: str, field: str) -> bool:
        """Whether this libumem's struct has the field (v2's per-CPU depot and rseq caches):
        decided by the bound layout, i.e. by what the library contains."""
        return struct in self.layouts.names() and self.layouts[struct].has(field)

    def depot_lists(self, cache, which: str) -> list:
        """v2's per-CPU depot of a cache: the cache_depot_ncpus magazine lists of its
        `which` array ('cache_depot_full' or 'cache_depot_empty'); [] before v2."""
        if not self._has("umem_cache", which):
            return []
        n, base = cache.cache_depot_ncpus, getattr(cache, which)
        if not base or n <= 0:
            return []
        if n > MAX_CPUS:
            damage(self.session).report(cache.addr, cache.addr + 8, f"cache 0x{cache.addr:x}:"
                                        f" {n} per-CPU depot lists is unreasonable")
            return []
        return self.array("umem_maglist", base, n)

    def rseq_ncpus(self) -> int:
        """Entries of each cache_rseq array: umem_rseq_ncpus (a static), else umem_max_ncpus,
        which libumem rounds up from the same CPU count."""
        n = self.readvar("umem_rseq_ncpus", default=0) if self.sym("umem_rseq_ncpus") else 0
        return min(n if n > 0 else self.ncpus, MAX_CPUS)

    def rseq_caches(self, cache) -> list:
        """v2's per-CPU rseq caches of a cache (its cache_rseq array); [] when it has none."""
        if not self._has("umem_cache", "cache_rseq") or not cache.cache_rseq:
            return []
        return self.array("umem_rseq_cache", cache.cache_rseq, self.rseq_ncpus())

    def loaded_magazines(self, cache) -> list[tuple[int, int, str]]:
        """(magazine, rounds, whose) of every magazine loaded in a CPU layer: each CPU cache's
        loaded and previously loaded magazine, and v2's rseq caches' (their rounds are free
        buffers; the rest of each magazine is stale)."""
        out = []
        for cc in self.cpu_caches(cache):
            out += [(cc.cc_loaded, cc.cc_rounds, f"CPU cache 0x{cc.addr:x}"),
                    (cc.cc_ploaded, cc.cc_prounds, f"CPU cache 0x{cc.addr:x}")]
        for rc in self.rseq_caches(cache):
            out += [(rc.loaded_mag, rc.rounds, f"rseq cache 0x{rc.addr:x}"),
                    (rc.previous_mag, rc.prounds, f"rseq cache 0x{rc.addr:x}")]
        return [(m, n, who) for m, n, who in out if m and n > 0]

    def magazine_rounds(self, cache):
        """Buffers held in the magazine layer (an array): the full magazines of the depot (and of
        v2's per-CPU depot lists) and the rounds of every loaded magazine (CPU caches, v2's rseq
        caches). They are free as far as users are concerned, though their slabs count them
        allocated. Read once per session state."""
        key = ("umem_rounds", cache.addr)
        got = self.session.cache.get(key)
        if got is None:
            got = self.session.cache[key] = self._magazine_rounds(cache)
        return got

    def _magazine_rounds(self, cache):
        import numpy as np

        what = f"cache 0x{cache.addr:x}"
        none = np.zeros(0, np.uint64)
        try:
            magsize = self.magsize(cache)
            loaded = self.loaded_magazines(cache)
            depots = [(f"{what} depot", cache.cache_full)] + [
                (f"{what} CPU {i} depot", ml)
                for i, ml in enumerate(self.depot_lists(cache, "cache_depot_full"))]
        except ReadError as e:
            damage(self.session).report(cache.addr, cache.addr + 8,
                                        f"{what}: CPU caches or depot unreadable ({e})")
            return none
        if magsize <= 0:
            return none
        if magsize > MAX_MAGSIZE:
            damage(self.session).report(cache.addr, cache.addr + 8, f"{what} magazines: "
                                        f"magazine size {magsize} is unreasonable")
            return none
        round0 = self.layouts["umem_magazine"].offset("mag_round")
        mags = []
        for label, ml in depots:
            limit = min(max(ml.ml_total, 0), MAX_SLABS) + 2 * self.ncpus + 100
            mags.append((np.array(chain_addrs(self, label, ml.ml_list, "umem_magazine",
                                              "mag_next", limit, "magazine"), np.uint64),
                         magsize, "depot"))
        mags += [(np.array([mag], np.uint64), min(n, magsize), who) for mag, n, who in loaded]
        return self._rounds(what, mags, round0)

    def _rounds(self, what: str, mags: list, round0: int):
        """The first n rounds of each group (magazine addresses, n, whose) as one array, read
        together through the Gather (one read per round count, tens of thousands of depot
        magazines at once); an unreadable magazine is reported and gives none."""
        import numpy as np

        addrs = np.concatenate([a for a, _n, _w in mags] + [np.zeros(0, np.uint64)])
        ns = np.concatenate([np.full(len(a), n) for a, n, _w in mags] + [np.zeros(0, int)])
        group = np.concatenate([np.full(len(a), k) for k, (a, _n, _w) in enumerate(mags)] +
                               [np.zeros(0, int)])
        rounds = [np.zeros(0, np.uint64)]
        g = session_gather(self.session)
        for n in np.unique(ns).tolist():
            sel = np.flatnonzero(ns == n)
            words, ok = g.read(addrs[sel] + np.uint64(round0), 8 * n, "<u8")
            rounds.append(words.reshape(len(sel), n)[ok].ravel())
            for mag, k in zip(addrs[sel[~ok]].tolist(), group[sel[~ok]].tolist()):
                damage(self.session).report(mag, mag + 8, f"{what} {mags[k][2]}: unreadable "
                                            f"magazine 0x{mag:x}")
        return np.concatenate(rounds)

    def private_maps(self) -> list[tuple[int, int]]:
        """The memory v2 libumem maps for itself outside its vmem arenas, page-rounded: each
        cache's per-CPU depot arrays and rseq cache array, and the CPU-to-node table it maps
        when there are more CPUs than its static one holds. Arrays of known length, read from
        the fields and globals the library has (none before v2)."""
        out = []
        ml = self.layouts["umem_maglist"].size
        for c in self.caches():
            try:
                n = c.cache_depot_ncpus if self._has("umem_cache", "cache_depot_ncpus") else 0
                for which in ("cache_depot_full", "cache_depot_empty"):
                    if 0 < n <= MAX_CPUS and self._has("umem_cache", which) and getattr(c, which):
                        out.append((getattr(c, which), n * ml))
                if self._has("umem_cache", "cache_rseq") and c.cache_rseq:
                    out.append((c.cache_rseq,
                                self.rseq_ncpus() * self.layouts["umem_rseq_cache"].size))
            except ReadError:
                continue
        static = self.sym("umem_cpu_node_static")
        if static is not None and self.sym("umem_cpu_node") is not None:
            table = self.mem.read_ptr(self.addr_of("umem_cpu_node"))
            n = min(self.readvar("umem_cpu_node_ncpus", default=0), 1 << 20)
            if table and table != static.addr and n > 0:
                out.append((table, 4 * n))
        page = self.readvar("pagesize", default=PAGE) if self.sym("pagesize") else PAGE
        return [(a - a % page, -(-(a + size) // page) * page) for a, size in out]

    def slab_addrs(self, cache) -> list[int]:
        """The cache's slabs, from cache_nullslab (a damaged list is reported and recovered
        from its other end)."""
        return self.slab_walk(cache)[0]

    def slab_walk(self, cache):
        """(slabs, {slab_base, slab_chunks, slab_head: arrays}, ok) of the cache's slab list,
        the fields read by the walk (cached per session state)."""
        key = ("umem_slabs", cache.addr)
        out = self.session.cache.get(key)
        if out is None:
            out = walk_ring(self, f"cache 0x{cache.addr:x} slab list",
                            cache.addr_of("cache_nullslab"), "umem_slab", "slab_next",
                            "slab_prev", MAX_SLABS, "slab", ("slab_cache", cache.addr),
                            ("slab_base", "slab_chunks", "slab_head"))
            self.session.cache[key] = out
        return out

    def slabs(self, cache, partial: bool = False) -> list:
        """Views of the cache's slabs; partial: from cache_freelist on (or the last slab when
        no slab is partial, as mdb's umem_slab_partial does)."""
        out = self.slab_addrs(cache)
        if partial:
            first = cache.cache_freelist
            if first == cache.addr_of("cache_nullslab"):
                out = out[-1:]
            elif first in out:
                out = out[out.index(first):]
            else:
                damage(self.session).report(cache.addr, cache.addr + 8,
                                            f"cache 0x{cache.addr:x}: cache_freelist "
                                            f"0x{first:x} is not one of its slabs")
                out = []
        return [self.view("umem_slab", a) for a in out]

    # -- audit records ----------------------------------------------------------------------
    def bufctl(self, addr: int):
        """A umem_bufctl_audit_t view (with its stack slots read)."""
        b = self.layouts["umem_bufctl_audit"]
        return b.from_bytes(self.mem.read(addr, L.audit_size(self.stack_depth)), addr, self.mem)

    def stack(self, bc) -> tuple[int, ...]:
        """The recorded pcs of an audit record (at most umem_stack_depth)."""
        depth = max(min(bc.bc_depth, self.stack_depth), 0)
        return self.words(bc.addr_of("bc_stack"), depth)

    def words(self, addr: int, n: int) -> tuple[int, ...]:
        """n pointer-sized words at addr (arrays C declares with one element)."""
        return tuple(self.mem.words(addr, n).tolist()) if n else ()

    def in_allocator(self, pc: int) -> bool:
        """True for a frame of a stored stack (a return address, so named by its call, at
        pc-1: SymbolTable.locate) inside libumem (libumem.so*, libumem_malloc.so*), or,
        linked statically, inside one of its functions: umem_*, vmem_* (and the _umem_*,
        __umem_* forms of its internal entry points), and the malloc family that
        libumem_malloc.a gives the executable."""
        o, hit = self.session.symbols.locate(pc, ret=True)
        if o is None:
            return False
        if o.name.startswith("libumem"):
            return True
        if o is not self.obj or hit is None:
            return False
        name = hit.name.split(".", 1)[0]  # umem_malloc.part.0 is umem_malloc's
        return name.lstrip("_").startswith(("umem_", "vmem_")) or name in STATIC_MALLOC

    def cache_name(self, addr: int) -> str:
        try:
            return self.cache(addr).cstr("cache_name")
        except ReadError:
            return self.session.format_addr(addr)

    # -- vmem -------------------------------------------------------------------------------
    def arenas(self) -> list:
        """Every vmem arena, in vmem_list order."""
        got = self.session.cache.get("umem_arenas")
        if got is not None:
            return got
        out = walk_chain(self, "vmem_list", self.first_arena(), "vmem", "vm_next", MAX_ARENAS,
                         "arena")
        self.session.cache["umem_arenas"] = out
        return out

    def first_arena(self) -> int:
        """The head of vmem_list. A stripped library has no vmem_list (a static symbol), but
        libumem creates its heap's top arena (mmap_top or sbrk_top) before any other, so the
        root of a cache's arena ancestry (cache_arena, then vm_source up) is that head, and
        every arena follows it on vm_next."""
        if self.sym("vmem_list") is not None:
            return self.mem.read_ptr(self.addr_of("vmem_list"))
        caches = self.cache_addrs()
        top = self.cache(caches[0]).cache_arena if caches else 0
        seen: set[int] = set()
        try:
            while top and top not in seen and len(seen) < MAX_DEPTH:
                seen.add(top)
                src = self.view("vmem", top).vm_source
                if not src:
                    return top
                top = src
        except ReadError:
            pass
        return self.addr_of("vmem_list")  # no sound root: the stripped-library message

    def arena(self, addr: int):
        for v in self.arenas():
            if v.addr == addr:
                return v
        return self.view("vmem", addr)

    def arena_named(self, name: str):
        for v in self.arenas():
            if v.cstr("vm_name") == name:
                return v
        return None

    def depth(self, arena) -> int:
        """Number of ancestors (vm_source links) of an arena, through the arenas of
        vmem_list only (a wild vm_source ends the count)."""
        known = {v.addr: v for v in self.arenas()}
        n, cur, seen = 0, arena.vm_source, set()
        while cur in known and cur not in seen and n < MAX_DEPTH:
            seen.add(cur)
            n += 1
            cur = known[cur].vm_source
        return n

    def arenas_prefix(self, postfix: bool = False) -> list:
        """Arenas as a tree walk: parents before children (children in vmem_list order), or
        children before parents with postfix."""
        arenas = self.arenas()
        children: dict[int, list] = {}
        known = {v.addr for v in arenas}
        roots = []
        for v in arenas:
            if v.vm_source and v.vm_source in known:
                children.setdefault(v.vm_source, []).append(v)
            else:
                roots.append(v)
        out: list = []

        def visit(v, depth):
            if depth > MAX_DEPTH:
                return
            if not postfix:
                out.append(v)
            for c in children.get(v.addr, []):
                visit(c, depth + 1)
            if postfix:
                out.append(v)

        for r in roots:
            visit(r, 0)
        return out

    def seg_addrs(self, arena_addr: int) -> list[int]:
        """The arena's segments in address order: its vs_anext ring without the vm_seg0
        anchor (mdb skips it too), recovered from the other end when damaged."""
        return self._seg_walk(arena_addr)[0]

    def _seg_walk(self, arena_addr: int):
        """seg_addrs with vs_start, vs_end and vs_type read by the walk (cached)."""
        key = ("umem_segs", arena_addr)
        out = self.session.cache.get(key)
        if out is None:
            out = walk_ring(self, f"arena 0x{arena_addr:x} segment list",
                            arena_addr + self.layouts["vmem"].offset("vm_seg0"), "vmem_seg",
                            "vs_anext", "vs_aprev", MAX_SEGS, "segment", None,
                            ("vs_start", "vs_end", "vs_type"))
            self.session.cache[key] = out
        return out

    def seg_columns(self, arena_addr: int, types: tuple[int, ...] = ()) -> dict:
        """addr, vs_start, vs_end and vs_type of the arena's segments (of the given types
        only, if any) as numpy arrays (a heap arena has tens of thousands)."""
        import numpy as np

        seg = self.layouts["vmem_seg"]
        nodes, got, read = self._seg_walk(arena_addr)
        addrs = np.array(nodes, np.uint64)
        for a in addrs[~read].tolist():  # its links were read: the rest of it straddles a hole
            damage(self.session).report(a, a + seg.size, f"arena 0x{arena_addr:x} segment "
                                        f"0x{a:x}: unreadable")
        cols = {n: v[read] for n, v in got.items()}
        cols["addr"] = addrs[read]
        if types:
            sel = np.isin(cols["vs_type"], types)
            cols = {n: v[sel] for n, v in cols.items()}
        return cols

    def segs(self, arena_addr: int, types: tuple[int, ...] = ()) -> list:
        """Views of the arena's segments (of the given types only, if any)."""
        addrs = self.seg_columns(arena_addr, types)["addr"] if types else \
            self.seg_addrs(arena_addr)
        return [self.view("vmem_seg", int(a)) for a in addrs]

    def seg_stack(self, seg) -> tuple[int, ...]:
        depth = seg.vs_depth
        if seg.vs_type != L.VMEM_ALLOC or not 0 < depth <= L.VMEM_STACK_DEPTH:
            return ()
        return seg.vs_stack[:depth]


def missing(session) -> str | None:
    """The dcmds' enabled() predicate: None when libumem is usable, else why not."""
    try:
        Umem.get(session)
    except MdbError as e:
        return str(e)
    return None
