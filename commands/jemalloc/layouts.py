"""jemalloc 5.3's and 5.2's structures and constants (LP64, 4 KiB pages, 48-bit virtual
addresses, the configuration of Debian's builds and of a default ./configure), described once;
FACTS says what differs between the two releases.

Sources, jemalloc 5.3.0: include/jemalloc/internal/edata.h (edata_s and its e_bits fields),
rtree.h (the emap's radix tree and its compact leaf elements), slab_data.h and bitmap.h (a
slab's region bitmap: a set bit is a FREE region), cache_bin.h, tcache_structs.h,
bin_info.h, base.h and arena_structs.h.

jemalloc 5.2.1 (Debian bullseye's libjemalloc2): extent_structs.h (extent_s, which 5.3 renamed
edata_s: the same name is used here for both), rtree.h (leaf elements: pointer | szind << 48 |
slab), cache_bin.h (a stack below `avail`), tcache_structs.h (tcache_s, linked in its arena's
ring itself), base_structs.h and arena.c (resident counts muzzy pages too).

edata_s has anonymous unions, which DWARF describes as unnamed members: its layout here is the
builtin one, checked against DWARF's size and named members when DWARF is present (state.py).
arena_s and base_s are too large and configuration dependent to describe: DWARF places their
fields, or heuristic.py finds the five offsets the walk needs, each verified. tsd_s (a thread's
state, holding its tcache) likewise, from DWARF only: without it, tcaches are found through
their arenas' rings alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.layout.desc import (I32, PTR, SIZE_T, U8, U16, U32, U64, UINT, ULONG, Array,
                               Derived, DescriptorSet, Field, Ref, Struct)

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
ADDR_MASK = ((1 << LG_VADDR) - 1) & ~(EDATA_ALIGNMENT - 1)  # a compact leaf's edata_t pointer bits
ADDR_MASK_52 = ((1 << LG_VADDR) - 1) & ~1  # 5.2: only the slab flag below the pointer
CACHELINE = 64  # base_alloc's alignment of a base_t and of an arena_t



@dataclass(frozen=True)
class EBits:
    """Where e_bits keeps each field: (shift, width)."""

    arena: tuple[int, int]
    slab: tuple[int, int]
    state: tuple[int, int]
    szind: tuple[int, int]
    nfree: tuple[int, int]


# edata.h e_bits: arena_ind 12 (MALLOCX_ARENA_BITS), slab 1, committed 1, pai 1, zeroed 1,
# guarded 1, state 3, szind 8 (LG_CEIL(SC_NSIZES)), nfree 10 (SC_LG_SLAB_MAXREGS + 1),
# bin_shard 6, is_head 1
E_BITS_53 = EBits(arena=(0, 12), slab=(12, 1), state=(17, 3), szind=(20, 8), nfree=(28, 10))
# 5.2.1 extent_structs.h: arena_ind 12, slab 1, committed 1, dumpable 1, zeroed 1, state 2,
# szind 8, nfree 10 (LG_SLAB_MAXREGS + 1), bin_shard 6, is_head 1, sn
E_BITS_52 = EBits(arena=(0, 12), slab=(12, 1), state=(16, 2), szind=(18, 8), nfree=(26, 10))
STATE_NAMES = ("active", "dirty", "muzzy", "retained", "transition", "merging")
STATE_ACTIVE = 0

BITMAP_GROUPS_MAX = 8  # 512 regions at most per slab (SC_LG_SLAB_MAXREGS 9), 64 per word
SC_NBINS = 36  # small size classes (up to 14 KiB); the symbol sizes say it when present
SC_NSIZES = 232  # every size class: size_classes() below
TCACHE_NBINS_MAX = 73  # SC_NBINS + 4 * (23 - 14) + 1: small bins and large up to 8 MiB
CACHE_BIN_NCACHED_MAX = (1 << 16) // 8 - 1
MALLOCX_ARENA_LIMIT = 4095
# sc.h/sc.c: LG_QUANTUM 4 (x86-64), a tiny class of 8 (SC_LG_TINY_MIN 3), then groups of
# SC_NGROUP 4 classes: 16..64 by 16 (the pseudo group), then 2^g + k * 2^(g-2), k = 1..4,
# for g = 6..62, but the last (2^63): SC_NSIZES 232 classes, SC_NBINS of them small
LG_QUANTUM = 4
SC_NGROUP = 4
SC_LG_BASE_MAX = 62


def size_classes() -> list[int]:
    """sz_index2size_tab as sz_boot() fills it for this configuration: every size class."""
    out = [1 << (LG_QUANTUM - 1)]
    out += [(k + 1) << LG_QUANTUM for k in range(SC_NGROUP)]
    for g in range(LG_QUANTUM + 2, SC_LG_BASE_MAX + 1):
        out += [(1 << g) + k * (1 << (g - 2)) for k in range(1, SC_NGROUP + 1)]
    return out[:-1]


def _bits(v: int, at: tuple[int, int]) -> int:
    return (v >> at[0]) & ((1 << at[1]) - 1)


def _e_bits_fields(b: EBits) -> list[Derived]:
    """The fields e_bits packs, as derived values of a view (for ::layout and views)."""
    def d(name: str, at: tuple[int, int]) -> Derived:
        return Derived(name, lambda v: _bits(v.e_bits, at),
                       f"e_bits >> {at[0]} & 0x{(1 << at[1]) - 1:x}")

    return [d("arena_ind", b.arena), d("slab", b.slab), d("state", b.state),
            d("szind", b.szind), d("nfree", b.nfree),
            Derived("size", lambda v: v.e_size_esn & ~(PAGE - 1), "e_size_esn & ~PAGE_MASK")]


EDATA = Struct("edata_s", source=SOURCE, fields=[
    Field("e_bits", U64),
    Field("e_addr", PTR),
    Field("e_size_esn", SIZE_T, aliases=("e_bsize",)),  # union with e_bsize
    Field("e_ps", PTR),
    Field("e_sn", U64),
    Field("ql_link_active", Array(PTR, 3)),  # union with the pairing-heap links (3 pointers)
    Field("e_slab_data", Array(ULONG, BITMAP_GROUPS_MAX)),  # union: slab bitmap, prof info
    *_e_bits_fields(E_BITS_53),
])

BASE_BLOCK = Struct("base_block_s", source=SOURCE, fields=[
    Field("size", SIZE_T),
    Field("next", PTR),
    Field("edata", Ref("edata_s"), aliases=("extent",)),  # 5.2.1's base_structs.h: extent
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

# only DWARF places these fields (without it, heuristic.py finds the offsets the walk needs);
# 5.2.1's arena_structs.h and base_structs.h have the same names
ARENA = Struct("arena_s", source="jemalloc 5.3.0 and 5.2.1 include/jemalloc/internal/"
               "arena_structs.h (offsets from DWARF only)", fields=[
    Field("tcache_ql", PTR),  # ql_head(tcache_slow_t): the first tcache of the ring
    Field("ind", UINT),
    Field("base", PTR),
])

BASE = Struct("base_s", source="jemalloc 5.3.0 include/jemalloc/internal/base.h, 5.2.1 "
              "base_structs.h (offsets from DWARF only)", fields=[
    Field("blocks", PTR),
    Field("allocated", SIZE_T),
    Field("resident", SIZE_T),
    Field("mapped", SIZE_T),
])

# tsd.h's TSD_MANGLE: the name DWARF gives each member of tsd_s
TSD_MANGLE = "cant_access_tsd_items_directly_use_a_getter_or_setter_"
TSD = Struct("tsd_s", source="jemalloc 5.3.0 include/jemalloc/internal/tsd.h (offsets from "
             "DWARF only; tcache_slow and tcache are embedded, only their offsets are used)",
             fields=[
    Field("tsd_link", Array(PTR, 2), aliases=(TSD_MANGLE + "tsd_link",)),  # tsd_nominal_tsds
    Field("tcache_slow", PTR, aliases=(TSD_MANGLE + "tcache_slow",)),
    Field("tcache", PTR, aliases=(TSD_MANGLE + "tcache",)),
])

LAYOUTS = DescriptorSet("jemalloc").add(EDATA, BASE_BLOCK, BIN_INFO, CACHE_BIN,
                                       BIN_ARRAY_DESCRIPTOR, TCACHE_SLOW, TCACHE, ARENA, BASE,
                                       TSD)
# without DWARF: only the structs whose builtin layout is trusted (::layout shows no guess)
LAYOUTS_BUILTIN = DescriptorSet("jemalloc").add(EDATA, BASE_BLOCK, BIN_INFO, CACHE_BIN,
                                               BIN_ARRAY_DESCRIPTOR, TCACHE_SLOW, TCACHE)


# -- jemalloc 5.2 -------------------------------------------------------------------------------
SOURCE_52 = ("jemalloc 5.2.1 include/jemalloc/internal/{extent_structs,cache_bin,tcache_structs,"
             "base_structs}.h")
TCACHE_NBINS_LARGE_52 = SC_NSIZES - SC_NBINS  # bins_large[]: the first nhbins - SC_NBINS used

EXTENT_52 = Struct("edata_s", source=SOURCE_52 + " (extent_s)", fields=[
    Field("e_bits", U64),
    Field("e_addr", PTR),
    Field("e_size_esn", SIZE_T, aliases=("e_bsize",)),  # union with e_bsize
    Field("ql_link", Array(PTR, 2)),
    Field("ph_link", Array(PTR, 3)),
    Field("e_slab_data", Array(ULONG, BITMAP_GROUPS_MAX)),  # union: slab bitmap, prof info
    *_e_bits_fields(E_BITS_52),
])

CACHE_BIN_52 = Struct("cache_bin_s", source=SOURCE_52, fields=[
    Field("low_water", I32),
    Field("ncached", I32),
    Field("tstats", U64),  # cache_bin_stats_t: nrequests
    Field("avail", PTR),  # cached pointers sit at avail[-ncached .. -1]
])

BIN_ARRAY_DESCRIPTOR_52 = Struct("cache_bin_array_descriptor_s", source=SOURCE_52, fields=[
    Field("link", Array(PTR, 2)),
    Field("bins_small", PTR),
    Field("bins_large", PTR),
])

TCACHE_52 = Struct("tcache_s", source=SOURCE_52, fields=[
    Field("prof_accumbytes", U64),
    Field("gc_ticker", Array(I32, 2)),  # ticker_t: tick, nticks
    Field("bins_small", Array(Ref("cache_bin_s"), SC_NBINS)),
    Field("link", Array(PTR, 2)),  # ql_elm: qre_next, qre_prev (arena->tcache_ql's ring)
    Field("tsd_link", Array(PTR, 2)),
    Field("in_hook", U8),
    Field("cache_bin_array_descriptor", Ref("cache_bin_array_descriptor_s")),
    Field("arena", PTR),
    Field("next_gc_bin", UINT),
    Field("lg_fill_div", Array(U8, SC_NBINS)),
    Field("bins_large", Array(Ref("cache_bin_s"), TCACHE_NBINS_LARGE_52)),
])

# without DWARF, no arena_s, base_s: heuristic.py finds the offsets the walk needs
LAYOUTS_52_BUILTIN = DescriptorSet("jemalloc 5.2").add(EXTENT_52, BASE_BLOCK, BIN_INFO,
                                                      CACHE_BIN_52, BIN_ARRAY_DESCRIPTOR_52,
                                                      TCACHE_52)
LAYOUTS_52 = DescriptorSet("jemalloc 5.2").add(EXTENT_52, BASE_BLOCK, BIN_INFO, CACHE_BIN_52,
                                              BIN_ARRAY_DESCRIPTOR_52, TCACHE_52, ARENA, BASE)


@dataclass(frozen=True)
class Facts:
    """What the walk needs to know of one release beside its layouts."""

    layouts: DescriptorSet  # the structs trusted without DWARF
    full: DescriptorSet  # those and the ones only DWARF places (arena_s, base_s, ...)
    emap: str  # the internal name of the global whose end is the rtree's root array
    dwarf_names: dict  # descriptor name -> the struct's name in this release's DWARF
    counters_after_blocks: int  # base_t.allocated - base_t.blocks (see below)
    bits: EBits
    addr_mask: int  # a compact rtree leaf element's edata_t pointer bits
    ring: str  # the struct arena->tcache_ql links: tcache_slow_s (5.3), tcache_s (5.2)
    bin_arrays: tuple  # (tcache_s array of cache_bin_s, szind of its first bin)
    ncached_max: int  # more cached pointers in one bin is garbage
    resident_muzzy: bool  # stats.resident counts muzzy pages (5.2's arena.c) or not (5.3)


# base_t's counters (allocated, resident, mapped) follow `blocks` after avail[SC_NSIZES]: in
# 5.3.0's base.h, edata_heap_t (16 bytes) each; in 5.2.1's base_structs.h, extent_heap_t (8
# bytes) each. The fields are there whether stats are configured or not (only their updates
# are under config_stats).
FACTS = {
    (5, 3): Facts(LAYOUTS_BUILTIN, LAYOUTS, "arena_emap_global", {"edata_s": "edata_s"},
                  8 + SC_NSIZES * 16, E_BITS_53, ADDR_MASK, "tcache_slow_s", (("bins", 0),),
                  CACHE_BIN_NCACHED_MAX, False),
    (5, 2): Facts(LAYOUTS_52_BUILTIN, LAYOUTS_52, "extents_rtree", {"edata_s": "extent_s"},
                  8 + SC_NSIZES * 8, E_BITS_52, ADDR_MASK_52, "tcache_s",
                  (("bins_small", 0), ("bins_large", SC_NBINS)),
                  200, True),  # TCACHE_NSLOTS_SMALL_MAX (tcache_types.h)
}
