"""jemalloc 5.3's structures and constants (LP64, 4 KiB pages, 48-bit virtual addresses, the
configuration of Debian's build and of a default ./configure), described once.

Sources, jemalloc 5.3.0: include/jemalloc/internal/edata.h (edata_s and its e_bits fields),
rtree.h (the emap's radix tree and its compact leaf elements), slab_data.h and bitmap.h (a
slab's region bitmap: a set bit is a FREE region), cache_bin.h, tcache_structs.h,
bin_info.h, base.h and arena_structs.h.

edata_s has anonymous unions, which DWARF describes as unnamed members: its layout here is the
builtin one, checked against DWARF's size and named members when DWARF is present (state.py).
arena_s is too large and configuration dependent to describe: only DWARF places its fields.
"""

from __future__ import annotations

from mdbpy.layout.desc import (PTR, SIZE_T, U8, U16, U32, U64, UINT, ULONG, Array, Derived,
                               DescriptorSet, Field, Ref, Struct)

SOURCE = "jemalloc 5.3.0 include/jemalloc/internal/{edata,cache_bin,tcache_structs,base}.h"

LG_PAGE = 12
PAGE = 1 << LG_PAGE
LG_VADDR = 48
# rtree.h: RTREE_NHIB = 64 - LG_VADDR, RTREE_NSB = LG_VADDR - LG_PAGE (36): height 2, each
# level 18 key bits; leaves are compact (pointer | szind << 48 | state << 2 | head << 1 | slab)
RTREE_LEVEL_BITS = (18, 18)
RTREE_ROOT_ENTRIES = 1 << RTREE_LEVEL_BITS[0]
RTREE_LEAF_ENTRIES = 1 << RTREE_LEVEL_BITS[1]
EDATA_ALIGNMENT = 128

# edata.h e_bits: arena_ind 12 (MALLOCX_ARENA_BITS), slab 1, committed 1, pai 1, zeroed 1,
# guarded 1, state 3, szind 8 (LG_CEIL(SC_NSIZES)), nfree 10 (SC_LG_SLAB_MAXREGS + 1),
# bin_shard 6, is_head 1
ARENA_BITS = (0, 12)
SLAB_BIT = 12
STATE_BITS = (17, 3)
SZIND_BITS = (20, 8)
NFREE_BITS = (28, 10)
STATE_NAMES = ("active", "dirty", "muzzy", "retained", "transition", "merging")
STATE_ACTIVE = 0

BITMAP_GROUPS_MAX = 8  # 512 regions at most per slab (SC_LG_SLAB_MAXREGS 9), 64 per word
SC_NBINS = 36  # small size classes (up to 14 KiB); the symbol sizes say it when present
TCACHE_NBINS_MAX = 73  # SC_NBINS + 4 * (23 - 14) + 1: small bins and large up to 8 MiB
CACHE_BIN_NCACHED_MAX = (1 << 16) // 8 - 1
MALLOCX_ARENA_LIMIT = 4095


def _bits(v: int, at: tuple[int, int]) -> int:
    return (v >> at[0]) & ((1 << at[1]) - 1)


EDATA = Struct("edata_s", source=SOURCE, fields=[
    Field("e_bits", U64),
    Field("e_addr", PTR),
    Field("e_size_esn", SIZE_T, aliases=("e_bsize",)),  # union with e_bsize
    Field("e_ps", PTR),
    Field("e_sn", U64),
    Field("ql_link_active", Array(PTR, 3)),  # union with the pairing-heap links (3 pointers)
    Field("e_slab_data", Array(ULONG, BITMAP_GROUPS_MAX)),  # union: slab bitmap, prof info
    Derived("arena_ind", lambda v: _bits(v.e_bits, ARENA_BITS), "e_bits & 0xfff"),
    Derived("slab", lambda v: (v.e_bits >> SLAB_BIT) & 1, "e_bits >> 12 & 1"),
    Derived("state", lambda v: _bits(v.e_bits, STATE_BITS), "e_bits >> 17 & 7"),
    Derived("szind", lambda v: _bits(v.e_bits, SZIND_BITS), "e_bits >> 20 & 0xff"),
    Derived("nfree", lambda v: _bits(v.e_bits, NFREE_BITS), "e_bits >> 28 & 0x3ff"),
    Derived("size", lambda v: v.e_size_esn & ~(PAGE - 1), "e_size_esn & ~PAGE_MASK"),
])

BASE_BLOCK = Struct("base_block_s", source=SOURCE, fields=[
    Field("size", SIZE_T),
    Field("next", PTR),
    Field("edata", Ref("edata_s")),
])

BIN_INFO = Struct("bin_info_s", source=SOURCE, fields=[
    Field("reg_size", SIZE_T),
    Field("slab_size", SIZE_T),
    Field("nregs", U32),
    Field("n_shards", U32),
    Field("bitmap_info", Array(SIZE_T, 2)),  # nbits, ngroups (no tree: <= 512 bits)
])

CACHE_BIN = Struct("cache_bin_s", source=SOURCE, fields=[
    Field("stack_head", PTR),
    Field("tstats", U64),  # cache_bin_stats_t: nrequests
    Field("low_bits_low_water", U16),
    Field("low_bits_full", U16),
    Field("low_bits_empty", U16),
    # cached pointers sit at [stack_head, empty): the low 16 bits of the end are kept
    Derived("ncached", lambda v: ((v.low_bits_empty - v.stack_head) & 0xffff) // 8,
            "(low_bits_empty - (uint16_t)stack_head) / 8"),
])

BIN_ARRAY_DESCRIPTOR = Struct("cache_bin_array_descriptor_s", source=SOURCE, fields=[
    Field("link", Array(PTR, 2)),
    Field("bins", PTR),
])

TCACHE_SLOW = Struct("tcache_slow_s", source=SOURCE, fields=[
    Field("link", Array(PTR, 2)),  # ql_elm: qre_next, qre_prev (arena->tcache_ql's ring)
    Field("cache_bin_array_descriptor", Ref("cache_bin_array_descriptor_s")),
    Field("arena", PTR),
    Field("next_gc_bin", UINT),
    Field("lg_fill_div", Array(U8, SC_NBINS)),
    Field("bin_refilled", Array(U8, SC_NBINS)),
    Field("bin_flush_delay_items", Array(U8, SC_NBINS)),
    Field("dyn_alloc", PTR),
    Field("tcache", PTR),
])

TCACHE = Struct("tcache_s", source=SOURCE, fields=[
    Field("tcache_slow", PTR),
    Field("bins", Array(Ref("cache_bin_s"), TCACHE_NBINS_MAX)),
])

# only DWARF places these fields (state.py refuses an arena_s without it)
ARENA = Struct("arena_s", source="jemalloc 5.3.0 include/jemalloc/internal/arena_structs.h "
               "(offsets from DWARF only)", fields=[
    Field("tcache_ql", PTR),  # ql_head(tcache_slow_t): the first tcache of the ring
    Field("ind", UINT),
    Field("base", PTR),
])

BASE = Struct("base_s", source="jemalloc 5.3.0 include/jemalloc/internal/base.h "
              "(offsets from DWARF only)", fields=[
    Field("blocks", PTR),
    Field("allocated", SIZE_T),
    Field("resident", SIZE_T),
    Field("mapped", SIZE_T),
])

# the structs whose builtin layout is trusted without DWARF, and those that need it
BUILTIN = ("edata_s", "base_block_s", "bin_info_s", "cache_bin_s",
           "cache_bin_array_descriptor_s", "tcache_slow_s", "tcache_s")
DWARF_ONLY = ("arena_s", "base_s")

LAYOUTS = DescriptorSet("jemalloc").add(EDATA, BASE_BLOCK, BIN_INFO, CACHE_BIN,
                                       BIN_ARRAY_DESCRIPTOR, TCACHE_SLOW, TCACHE, ARENA, BASE)
