"""glibc malloc's structures (malloc/malloc.c, malloc/arena.c), described once for 2.27 onward.

Offsets are never written down: binding computes them for the detected version and ABI, and
DWARF from libc's debug file replaces them when present. The history that matters here:

- 2.27: `have_fastchunks` in malloc_state (this module's baseline; 2.26's tcache is older).
- 2.29: tcache_entry gains `key` (double-free detection; a pointer to the owning tcache).
- 2.30: tcache counts widen from char to uint16_t.
- 2.32: safe-linking: tcache `next` and fastbin `fd` are stored as (slot address >> 12) ^ ptr.
- 2.34: the tcache `key` becomes a random uintptr_t (libc's `tcache_key`), not the tcache.
- 2.35: heap_info gains `pagesize`; malloc_par gains the huge-page fields.
- 2.42: tcache counts become `num_slots` (free slots left, counting down from tcache_count)
  and 12 large-chunk bins join the 64 small ones.
"""

from __future__ import annotations

from mdbpy.layout.desc import (INT, PTR, SIZE_T, U8, U16, UINT, ULONG, Array, Derived,
                               DescriptorSet, Field, Struct)

SOURCE = "glibc malloc/malloc.c, malloc/arena.c (2.27 .. 2.42)"

PREV_INUSE = 0x1
IS_MMAPPED = 0x2
NON_MAIN_ARENA = 0x4
SIZE_BITS = 0x7

NFASTBINS = 10  # fastbin_index(request2size(MAX_FAST_SIZE)) + 1 on LP64
NBINS = 128
NSMALLBINS = 64
BINMAPSIZE = 4
TCACHE_SMALL_BINS = 64
TCACHE_LARGE_BINS = 12  # from 2.42
HEAP_MAX_SIZE = 64 << 20  # 2 * DEFAULT_MMAP_THRESHOLD_MAX on LP64

V_TCACHE_KEY = (2, 29)
V_U16_COUNTS = (2, 30)
V_SAFE_LINKING = (2, 32)
V_RANDOM_KEY = (2, 34)
V_HUGEPAGES = (2, 35)
V_NUM_SLOTS = (2, 42)


def tcache_bins(version) -> int:
    """TCACHE_MAX_BINS of a release."""
    return TCACHE_SMALL_BINS + (TCACHE_LARGE_BINS if version >= V_NUM_SLOTS else 0)


MALLOC_CHUNK = Struct("malloc_chunk", source=SOURCE, fields=[
    Field("mchunk_prev_size", SIZE_T, aliases=("prev_size",)),
    Field("mchunk_size", SIZE_T, aliases=("size",)),
    Field("fd", PTR),
    Field("bk", PTR),
    Field("fd_nextsize", PTR),  # large bins only
    Field("bk_nextsize", PTR),
    Derived("chunksize", lambda v: v.mchunk_size & ~SIZE_BITS, "mchunk_size & ~7"),
    Derived("prev_inuse", lambda v: v.mchunk_size & PREV_INUSE, "mchunk_size & PREV_INUSE"),
    Derived("is_mmapped", lambda v: v.mchunk_size & IS_MMAPPED, "mchunk_size & IS_MMAPPED"),
    Derived("non_main_arena", lambda v: v.mchunk_size & NON_MAIN_ARENA,
            "mchunk_size & NON_MAIN_ARENA"),
])

MALLOC_STATE = Struct("malloc_state", source=SOURCE, fields=[
    Field("mutex", INT),
    Field("flags", INT),
    Field("have_fastchunks", INT, since=(2, 27)),
    Field("fastbinsY", Array(PTR, NFASTBINS)),
    Field("top", PTR),
    Field("last_remainder", PTR),
    Field("bins", Array(PTR, NBINS * 2 - 2)),
    Field("binmap", Array(UINT, BINMAPSIZE)),
    Field("next", PTR),
    Field("next_free", PTR),
    Field("attached_threads", SIZE_T),
    Field("system_mem", SIZE_T),
    Field("max_system_mem", SIZE_T),
])

HEAP_INFO = Struct("_heap_info", source=SOURCE, fields=[
    Field("ar_ptr", PTR),
    Field("prev", PTR),
    Field("size", SIZE_T),
    Field("mprotect_size", SIZE_T),
    Field("pagesize", SIZE_T, since=V_HUGEPAGES),
    # pad keeps sizeof(heap_info) + 2 * SIZE_SZ a multiple of MALLOC_ALIGNMENT
    Field("pad", Array(U8, 8), since=V_HUGEPAGES),
])

MALLOC_PAR = Struct("malloc_par", source=SOURCE, fields=[
    Field("trim_threshold", ULONG),
    Field("top_pad", SIZE_T),
    Field("mmap_threshold", SIZE_T),
    Field("arena_test", SIZE_T),
    Field("arena_max", SIZE_T),
    Field("thp_pagesize", SIZE_T, since=V_HUGEPAGES),
    Field("hp_pagesize", SIZE_T, since=V_HUGEPAGES),
    Field("hp_flags", INT, since=V_HUGEPAGES),
    Field("n_mmaps", INT),
    Field("n_mmaps_max", INT),
    Field("max_n_mmaps", INT),
    Field("no_dyn_threshold", INT),
    Field("mmapped_mem", SIZE_T),
    Field("max_mmapped_mem", SIZE_T),
    Field("sbrk_base", PTR),
    Field("tcache_bins", SIZE_T),
    Field("tcache_max_bytes", SIZE_T),
    Field("tcache_count", SIZE_T),
    Field("tcache_unsorted_limit", SIZE_T),
])

TCACHE_PERTHREAD = Struct("tcache_perthread_struct", source=SOURCE, fields=[
    Field("counts", Array(U8, TCACHE_SMALL_BINS), until=V_U16_COUNTS),
    Field("counts", Array(U16, TCACHE_SMALL_BINS), since=V_U16_COUNTS, until=V_NUM_SLOTS),
    Field("num_slots", Array(U16, TCACHE_SMALL_BINS + TCACHE_LARGE_BINS), since=V_NUM_SLOTS),
    Field("entries", Array(PTR, TCACHE_SMALL_BINS), until=V_NUM_SLOTS),
    Field("entries", Array(PTR, TCACHE_SMALL_BINS + TCACHE_LARGE_BINS), since=V_NUM_SLOTS),
])

TCACHE_ENTRY = Struct("tcache_entry", source=SOURCE, fields=[
    Field("next", PTR),
    Field("key", PTR, since=V_TCACHE_KEY),
])

PTMALLOC_LAYOUTS = DescriptorSet("ptmalloc").add(
    MALLOC_CHUNK, MALLOC_STATE, HEAP_INFO, MALLOC_PAR, TCACHE_PERTHREAD, TCACHE_ENTRY)

# where DWARF describes each struct (glibc names heap_info through a typedef of _heap_info)
DWARF_CU_HINT = "malloc.c"

# chunk roles in the chunk table's state column, beyond ALLOC / FREE, for listings
ROLE_TOP = 3
ROLE_TCACHE_STRUCT = 4
