"""libumem's structures and constants, described once in the layout language.

Source: portable libumem (gburd/libumem), `umem_impl.h` and `sys/vmem_impl_user.h`, as built on
x86_64 Linux. Its releases are named as versions:

- CLASSIC (5cc22b9, 2010): the tree the Linux mdb port's headers come from; UMEM_MAXBUF 16384.
- ILLUMOS_2016 (53f5df3, 2016): adds UMF_PTC and UMF_CHECKNULL and raises UMEM_MAXBUF to 131072.
- V2_0 (v2.0.0, 2026-05) and V2_1 (v2.1.0 to v2.4.0, 2026-07..08, whose umem_impl.h are
  identical): cache-line aligned CPU caches and magazine lists (each list with its own lock),
  counters reordered in umem_cpu_cache, slab reclaim state, and per cache a per-CPU depot
  (cache_depot_full/empty: arrays of cache_depot_ncpus lists, each array its own mmap) and a
  per-CPU rseq cache array (cache_rseq, an mmap too); malloc's per-thread caches (umem_ptc_t,
  reached from the TLS pointer thread_ptc). V2_1 adds slab_reclaim_next.

CLASSIC and ILLUMOS_2016 have identical structures (checked with gdb `ptype /o` on both); the
v2 fields carry version predicates (checked against v2.4.0's DWARF). Which release a library is
comes from the symbols it defines (`release`), never from its file name. configure finds that
pthread_mutex_t (40 bytes) is larger than 24, so UMEM_CPU_CACHE_SIZE is 128 and umem_cpu_cache
gets a 48-byte pad. Trailing one-element arrays (cache_cpu[1], bc_stack[1], mag_round[1], lh_cpu[1]) are
declared as C declares them, so the bound sizes equal the compiler's; the code indexes past
them by address.
"""

from __future__ import annotations

from mdbpy.layout.desc import (CHAR, INT, LONG, PTR, SIZE_T, SSIZE_T, U8, U16, U32, U64,
                               UINT, UINTPTR, ULONG, Array, DescriptorSet, Field, Opaque, Ref,
                               Struct)

SOURCE = ("portable libumem (gburd/libumem 5cc22b9 / 53f5df3 / v2.0.0..v2.4.0) umem_impl.h, "
          "vmem_impl_user.h")

CLASSIC = (2010, 6)  # 5cc22b9
ILLUMOS_2016 = (2016, 11)  # 53f5df3
V2_0 = (2026, 5)  # v2.0.0
V2_1 = (2026, 7)  # v2.1.0 .. v2.4.0

# a symbol each release defines and the ones before it do not, newest first: the release is
# told by what the library contains (a stripped library keeps these: they are all global)
RELEASE_MARKS = ((V2_1, "umem_depot_steal_max"), (V2_0, "umem_reclaim_enabled"),
                 (ILLUMOS_2016, "umem_ptc_size"))
CACHE_LINE = 64  # UMEM_CACHE_LINE_SIZE: v2 aligns CPU caches, magazine lists and rseq caches


def release(defines) -> tuple:
    """The release of a libumem, from `defines(name)`: whether it defines that symbol."""
    for version, mark in RELEASE_MARKS:
        if defines(mark):
            return version
    return CLASSIC

MUTEX = Opaque("pthread_mutex_t")
COND = Opaque("pthread_cond_t")

# umem_cache_t.cache_flags (UMF_*)
UMF_AUDIT = 0x1
UMF_DEADBEEF = 0x2
UMF_REDZONE = 0x4
UMF_CONTENTS = 0x8
UMF_CHECKSIGNAL = 0x10
UMF_NOMAGAZINE = 0x20
UMF_FIREWALL = 0x40
UMF_LITE = 0x100
UMF_HASH = 0x200
UMF_RANDOMIZE = 0x400
UMF_PTC = 0x800  # ILLUMOS_2016 only
UMF_CHECKNULL = 0x1000  # ILLUMOS_2016 only
UMF_BUFTAG = UMF_DEADBEEF | UMF_REDZONE

# umem_cache_t.cache_cflags (UMC_*)
UMC_NOTOUCH = 0x10000
UMC_NODEBUG = 0x20000
UMC_NOMAGAZINE = 0x40000
UMC_NOHASH = 0x80000
UMC_QCACHE = 0x100000
UMC_INTERNAL = 0x80000000

# debug patterns and buftag states
UMEM_FREE_PATTERN = 0xDEADBEEFDEADBEEF
UMEM_UNINITIALIZED_PATTERN = 0xBADDCAFEBADDCAFE
UMEM_REDZONE_PATTERN = 0xFEEDFACEFEEDFACE
UMEM_REDZONE_BYTE = 0xBB
UMEM_BUFTAG_ALLOC = 0xA110C8ED
UMEM_BUFTAG_FREE = 0xF4EEF4EE

# malloc's hidden header (struct malloc_data {uint32 size; uint32 stat}) and its magics
MALLOC_MAGIC = 0x3A10C000
MEMALIGN_MAGIC = 0x3E3A1000
MALLOC_SECOND_MAGIC = 0x16BA7000
MALLOC_OVERSIZE_MAGIC = 0x06E47000
MALLOC_DATA_SIZE = 8
UMEM_SECOND_ALIGN = 16

# umem_ready
UMEM_READY_INIT_FAILED = -1
UMEM_READY_STARTUP = 1
UMEM_READY_INITING = 2
UMEM_READY = 3

# vmem_seg_t.vs_type
VMEM_ALLOC = 0x01
VMEM_FREE = 0x02
VMEM_SPAN = 0x10
VMEM_ROTOR = 0x20
VMEM_WALKER = 0x40
VMEM_STACK_DEPTH = 20
VMEM_SEG_TYPES = {VMEM_ALLOC: "ALLC", VMEM_FREE: "FREE", VMEM_SPAN: "SPAN",
                  VMEM_ROTOR: "ROTR", VMEM_WALKER: "WLKR"}

UMEM_CACHE_NAMELEN = 31
VMEM_NAMELEN = 30


def size_encode(n: int) -> int:
    """UMEM_SIZE_ENCODE: how the redzone word of a umem_alloc'd buffer records its size.
    This and the two below are the one statement of the encoding; they take ints or numpy
    uint64 arrays alike (::umem_verify decodes every buffer's at once)."""
    return 251 * n + 1


def size_valid(x):
    return x % 251 == 1


def size_decode(x):
    return x // 251


def maxbuf(version) -> int:
    """UMEM_MAXBUF: the largest umem_alloc served by the umem_alloc_* caches."""
    return 131072 if version is not None and version >= ILLUMOS_2016 else 16384


def hrtime_ticks(version) -> int:
    """Units per second of the low word of libumem's gethrtime() (seconds << 32 | that):
    gettimeofday's microseconds before v2, clock_gettime's nanoseconds from v2 on."""
    return 1_000_000_000 if version is not None and version >= V2_0 else 1_000_000


def audit_size(depth: int) -> int:
    """UMEM_BUFCTL_AUDIT_SIZE_DEPTH: bytes of an audit record with `depth` stack slots."""
    return 72 + 8 * depth


UMEM_CPU_CACHE = Struct("umem_cpu_cache", source=SOURCE, fields=[
    Field("cc_lock", MUTEX, until=V2_0),
    Field("cc_alloc", UINT, until=V2_0),
    Field("cc_free", UINT, until=V2_0),
    Field("cc_lock", MUTEX, since=V2_0, align=CACHE_LINE),  # v2 reorders the counters
    Field("cc_rounds", INT, since=V2_0),
    Field("cc_prounds", INT, since=V2_0),
    Field("cc_loaded", PTR),
    Field("cc_ploaded", PTR),
    Field("cc_rounds", INT, until=V2_0),
    Field("cc_prounds", INT, until=V2_0),
    Field("cc_magsize", INT),
    Field("cc_flags", INT),
    Field("cc_alloc", UINT, since=V2_0),
    Field("cc_free", UINT, since=V2_0),
    Field("cc_pad", Array(CHAR, 48)),  # UMEM_CPU_PAD with UMEM_PTHREAD_MUTEX_TOO_BIG
])

UMEM_SLAB = Struct("umem_slab", source=SOURCE, fields=[
    Field("slab_cache", PTR),
    Field("slab_base", PTR),  # the first buffer (slab memory + colour)
    Field("slab_next", PTR),
    Field("slab_prev", PTR),
    Field("slab_head", PTR),  # the first free bufctl
    Field("slab_refcnt", LONG),  # buffers handed out of this slab
    Field("slab_chunks", LONG),
    Field("slab_state", U32, since=V2_0),  # SLAB_ACTIVE / DIRTY / CLEAN / RECLAIMING
    Field("slab_idle_time", U32, since=V2_0),
    Field("slab_reclaim_next", PTR, since=V2_1),
])

UMEM_MAGLIST = Struct("umem_maglist", source=SOURCE, fields=[
    Field("ml_lock", MUTEX, since=V2_0, align=CACHE_LINE),  # v2: a lock per list
    Field("ml_list", PTR),
    Field("ml_total", LONG),
    Field("ml_min", LONG),
    Field("ml_reaplimit", LONG),
    Field("ml_alloc", U64),
])

UMEM_CACHE = Struct("umem_cache", source=SOURCE, fields=[
    Field("cache_slab_create", U64),
    Field("cache_slab_destroy", U64),
    Field("cache_slab_alloc", U64),
    Field("cache_slab_free", U64),
    Field("cache_alloc_fail", U64),
    Field("cache_buftotal", U64),
    Field("cache_bufmax", U64),
    Field("cache_rescale", U64),
    Field("cache_lookup_depth", U64),
    Field("cache_depot_contention", U64),
    Field("cache_depot_contention_prev", U64),
    Field("cache_mag_reloads", U64, since=V2_0),
    Field("cache_mag_reloads_prev", U64, since=V2_0),
    Field("cache_alloc_ops", U64, since=V2_0),
    Field("cache_alloc_ops_prev", U64, since=V2_0),
    Field("cache_name", Array(CHAR, UMEM_CACHE_NAMELEN + 1)),
    Field("cache_bufsize", SIZE_T),
    Field("cache_align", SIZE_T),
    Field("cache_constructor", PTR),
    Field("cache_destructor", PTR),
    Field("cache_reclaim", PTR),
    Field("cache_private", PTR),
    Field("cache_arena", PTR),
    Field("cache_cflags", INT),
    Field("cache_flags", INT),
    Field("cache_uflags", INT),
    Field("cache_mtbf", U32),
    Field("cache_next", PTR),
    Field("cache_prev", PTR),
    Field("cache_unext", PTR),
    Field("cache_uprev", PTR),
    Field("cache_cpu_mask", U32),
    Field("cache_lock", MUTEX),
    Field("cache_chunksize", SIZE_T),
    Field("cache_slabsize", SIZE_T),
    Field("cache_bufctl", SIZE_T),  # buffer offset of the bufctl (non-hash caches)
    Field("cache_buftag", SIZE_T),  # buffer offset of the buftag
    Field("cache_verify", SIZE_T),  # bytes checked for the free pattern
    Field("cache_contents", SIZE_T),
    Field("cache_color", SIZE_T),
    Field("cache_mincolor", SIZE_T),
    Field("cache_maxcolor", SIZE_T),
    Field("cache_hash_shift", SIZE_T),
    Field("cache_hash_mask", SIZE_T),
    Field("cache_freelist", PTR),  # the first slab with free buffers
    Field("cache_nullslab", Ref("umem_slab")),  # the slab list's anchor
    Field("cache_bufctl_cache", PTR),
    Field("cache_hash_table", PTR),
    Field("cache_depot_lock", MUTEX, until=V2_0),
    Field("cache_magtype", PTR),
    Field("cache_full", Ref("umem_maglist")),
    Field("cache_empty", Ref("umem_maglist")),
    # v2's per-CPU depot: two mmap'd arrays of cache_depot_ncpus magazine lists
    Field("cache_depot_ncpus", INT, since=V2_0),
    Field("cache_depot_full", PTR, since=V2_0),
    Field("cache_depot_empty", PTR, since=V2_0),
    Field("cache_depot_local", U64, since=V2_0),
    Field("cache_depot_remote", U64, since=V2_0),
    Field("cache_depot_cross_node", U64, since=V2_0),
    Field("cache_mag_total", U64, since=V2_0),
    # an mmap'd array of umem_rseq_ncpus rseq caches (built with linux/rseq.h, as on any
    # current Linux; a build with libnuma would add cache_numa_info: DWARF says so)
    Field("cache_rseq", PTR, since=V2_0),
    Field("cache_cpu", Array(Ref("umem_cpu_cache"), 1)),  # really [umem_max_ncpus]
])

UMEM_BUFCTL = Struct("umem_bufctl", source=SOURCE, fields=[
    Field("bc_next", PTR),
    Field("bc_addr", PTR),
    Field("bc_slab", PTR),
])

UMEM_BUFCTL_AUDIT = Struct("umem_bufctl_audit", source=SOURCE, fields=[
    Field("bc_next", PTR),
    Field("bc_addr", PTR),
    Field("bc_slab", PTR),
    Field("bc_cache", PTR),
    Field("bc_timestamp", U64),  # gethrtime(): (seconds << 32) | microseconds on Linux
    Field("bc_thread", ULONG),  # pthread_self()
    Field("bc_lastlog", PTR),
    Field("bc_contents", PTR),
    Field("bc_depth", INT),
    Field("bc_stack", Array(UINTPTR, 1)),  # really [umem_stack_depth]
])

UMEM_BUFTAG = Struct("umem_buftag", source=SOURCE, fields=[
    Field("bt_redzone", U64),
    Field("bt_bufctl", PTR),
    Field("bt_bxstat", U64),  # intptr_t: bt_bufctl ^ UMEM_BUFTAG_ALLOC / UMEM_BUFTAG_FREE
])

UMEM_CPU_LOG_HEADER = Struct("umem_cpu_log_header", source=SOURCE, fields=[
    Field("clh_lock", MUTEX),
    Field("clh_current", PTR),
    Field("clh_avail", SIZE_T),
    Field("clh_chunk", INT),
    Field("clh_hits", INT),
    Field("clh_pad", Array(CHAR, 64)),
])

UMEM_LOG_HEADER = Struct("umem_log_header", source=SOURCE, fields=[
    Field("lh_lock", MUTEX),
    Field("lh_base", PTR),
    Field("lh_free", PTR),
    Field("lh_chunksize", SIZE_T),
    Field("lh_nchunks", INT),
    Field("lh_head", INT),
    Field("lh_tail", INT),
    Field("lh_hits", INT),
    Field("lh_cpu", Array(Ref("umem_cpu_log_header"), 1)),  # really [umem_max_ncpus]
])

UMEM_MAGAZINE = Struct("umem_magazine", source=SOURCE, fields=[
    Field("mag_next", PTR),
    Field("mag_round", Array(PTR, 1)),  # really [magsize]
])

UMEM_MAGTYPE = Struct("umem_magtype", source=SOURCE, fields=[
    Field("mt_magsize", INT),
    Field("mt_align", INT),
    Field("mt_minbuf", SIZE_T),
    Field("mt_maxbuf", SIZE_T),
    Field("mt_cache", PTR),
])

UMEM_CPU = Struct("umem_cpu", source=SOURCE, fields=[
    Field("cpu_cache_offset", U32),
    Field("cpu_number", U32),
])

VMEM_SEG = Struct("vmem_seg", source=SOURCE, fields=[
    Field("vs_start", UINTPTR),
    Field("vs_end", UINTPTR),
    Field("vs_knext", PTR),
    Field("vs_kprev", PTR),
    Field("vs_anext", PTR),  # the arena's segment list, in address order
    Field("vs_aprev", PTR),
    Field("vs_type", U8),
    Field("vs_import", U8),
    Field("vs_depth", U8),
    Field("vs_thread", ULONG),
    Field("vs_timestamp", U64),
    Field("vs_stack", Array(UINTPTR, VMEM_STACK_DEPTH)),
])

VMEM_FREELIST = Struct("vmem_freelist", source=SOURCE, fields=[
    Field("vs_start", UINTPTR),
    Field("vs_end", UINTPTR),
    Field("vs_knext", PTR),
    Field("vs_kprev", PTR),
])

VMEM_KSTAT = Struct("vmem_kstat", source=SOURCE, fields=[
    Field("vk_mem_inuse", U64),
    Field("vk_mem_import", U64),
    Field("vk_mem_total", U64),
    Field("vk_source_id", U32),
    Field("vk_alloc", U64),
    Field("vk_free", U64),
    Field("vk_wait", U64),
    Field("vk_fail", U64),
    Field("vk_lookup", U64),
    Field("vk_search", U64),
    Field("vk_populate_wait", U64),
    Field("vk_populate_fail", U64),
    Field("vk_contains", U64),
    Field("vk_contains_search", U64),
])

VMEM = Struct("vmem", source=SOURCE, fields=[
    Field("vm_name", Array(CHAR, VMEM_NAMELEN)),
    Field("vm_cv", COND),
    Field("vm_lock", MUTEX),
    Field("vm_id", U32),
    Field("vm_mtbf", U32),
    Field("vm_cflags", INT),
    Field("vm_qshift", INT),
    Field("vm_quantum", SIZE_T),
    Field("vm_qcache_max", SIZE_T),
    Field("vm_source_alloc", PTR),
    Field("vm_source_free", PTR),
    Field("vm_source", PTR),  # the parent arena
    Field("vm_next", PTR),  # vmem_list order
    Field("vm_nsegfree", SSIZE_T),
    Field("vm_segfree", PTR),
    Field("vm_hash_table", PTR),
    Field("vm_hash_mask", SIZE_T),
    Field("vm_hash_shift", SIZE_T),
    Field("vm_freemap", ULONG),
    Field("vm_seg0", Ref("vmem_seg")),  # the segment list's anchor
    Field("vm_rotor", Ref("vmem_seg")),
    Field("vm_hash0", Array(PTR, 16)),
    Field("vm_qcache", Array(PTR, 16)),
    Field("vm_freelist", Array(Ref("vmem_freelist"), 65)),
    Field("vm_kstat", Ref("vmem_kstat")),
])

MALLOC_DATA = Struct("malloc_data", source="portable libumem malloc.c", fields=[
    Field("malloc_size", U32),
    Field("malloc_stat", U32),  # UMEM_MALLOC_ENCODE(magic, size) = magic - size
])

# -- v2 only: the per-CPU rseq caches and malloc's per-thread caches ------------------------
UMEM_RSEQ_CACHE = Struct("umem_rseq_cache", source="portable libumem v2 umem_rseq.h", fields=[
    Field("loaded_mag", PTR, align=CACHE_LINE),
    Field("previous_mag", PTR),
    Field("rounds", INT),  # rounds in the loaded magazine
    Field("prounds", INT),  # rounds in the previous one
    Field("alloc_count", U64),
    Field("free_count", U64),
    Field("restart_count", U64),
    Field("migration_count", U64),
    Field("magsize", INT),
    Field("pad", Array(CHAR, 4)),
])

PTC_NBINS = 28  # size classes of a per-thread cache (8 .. 2048 bytes)
PTC_NSLOTS = 128  # slots of a bin (small bins use all, medium 64, large 32)

UMEM_PTC_BIN = Struct("umem_ptc_bin", source="portable libumem v2 umem_ptc.h", fields=[
    Field("slots", Array(PTR, PTC_NSLOTS), align=CACHE_LINE),
    Field("count", U16),  # slots[0 .. count) hold free buffers
    Field("low_water", U16),
])

UMEM_PTC_MAG = Struct("umem_ptc_mag", source="portable libumem v2 umem_ptc.h", fields=[
    Field("loaded", PTR),
    Field("previous", PTR),
    Field("rounds", INT),
    Field("prounds", INT),
    Field("magsize", INT),
    Field("cache", PTR),  # the owning cache, set on first use
])

UMEM_PTC = Struct("umem_ptc", source="portable libumem v2 umem_ptc.h", fields=[
    Field("bins", Array(Ref("umem_ptc_bin"), PTC_NBINS)),
    Field("mags", Array(Ref("umem_ptc_mag"), PTC_NBINS)),
    Field("alloc_count", U64),
    Field("free_count", U64),
    Field("hits", U64),
    Field("misses", U64),
])

V2_STRUCTS = (UMEM_RSEQ_CACHE, UMEM_PTC_BIN, UMEM_PTC_MAG, UMEM_PTC)


def descriptors(version) -> DescriptorSet:
    """The structs of a release: the classic set, and from v2 on the rseq and per-thread cache
    structs (so ::layout lists only what the library has)."""
    dset = DescriptorSet("umem").add(
        UMEM_CPU_CACHE, UMEM_SLAB, UMEM_MAGLIST, UMEM_CACHE, UMEM_BUFCTL, UMEM_BUFCTL_AUDIT,
        UMEM_BUFTAG, UMEM_CPU_LOG_HEADER, UMEM_LOG_HEADER, UMEM_MAGAZINE, UMEM_MAGTYPE,
        UMEM_CPU, VMEM_SEG, VMEM_FREELIST, VMEM_KSTAT, VMEM, MALLOC_DATA)
    if version is not None and version >= V2_0:
        dset.add(*V2_STRUCTS)
    return dset


UMEM_LAYOUTS = descriptors(CLASSIC)

# DWARF names the structs by these tags too; libumem's typedefs (umem_cache_t, vmem_t, ...) are
# of these tagged structs, so a debug build's DWARF replaces every builtin layout.
STRUCT_NAMES = tuple(UMEM_LAYOUTS.structs)
