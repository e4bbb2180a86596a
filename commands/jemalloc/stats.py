"""jemalloc's statistics as malloc_stats_print() totals them, derived from the walk.

jemalloc 5.3 (src/ctl.c, src/arena.c) defines, over every arena (5.2 alike but for resident):
  allocated  bytes of small regions out of their slabs (curregs * reg_size) plus the usable size
             of large extents in use: tcache-held regions count, they are out of their slabs
  active     pages of the extents in use (pactive)
  resident   the bases' resident bytes plus the pages of extents in use and dirty ones (5.2's
             arena.c adds the muzzy ones)
  mapped     the bases' mapped bytes plus the extents in use, dirty and muzzy (retained extents
             are purged and not counted)
  tcache     bytes the thread caches hold
Everything but the bases' own counters (base_t.resident, .mapped, .allocated, read from each
arena's base at the offsets DWARF gave or heuristic.py found) is counted from the extents and
regions walked, so the totals are a check of the walk against jemalloc's own counters, not a
copy of them. A jemalloc built without stats (tikv-jemalloc-sys' default) keeps no base
counters (base.c updates them only under config_stats): all of them 0 while the bases have
blocks says so (bases_counted), and ::je_stats then says that in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.errors import ReadError

from .extents import extents
from .layouts import STATE_NAMES
from .regions import regions
from .state import State
from .tcache import cached


@dataclass
class Totals:
    allocated: int
    active: int
    base: int  # bytes the bases allocated (stats.metadata adds internal regions to it)
    resident: int
    mapped: int
    retained: int
    tcache: int
    bins: list  # (szind, reg_size, curregs, curslabs, tcache-held) per small class in use
    bases_counted: bool  # False: the bases' counters are all 0 (jemalloc built without stats)


def totals(session, st: State) -> Totals:
    import numpy as np

    ex = extents(session, st)
    r = regions(st, ex)
    held = np.isin(r.base, cached(session, st).ptr)
    by = {name: int(ex.size[ex.state == k].sum()) for k, name in enumerate(STATE_NAMES)}
    base = {"allocated": 0, "resident": 0, "mapped": 0}
    for b in sorted(set(st.bases.values()) - {0}):
        try:
            got = {k: session.mem.read_u64(b + st.offsets[f"base.{k}"]) for k in base}
        except ReadError:
            st.warnings.append(f"base 0x{b:x} unreadable: its counters are missing")
            continue
        for k in base:
            base[k] += got[k]
    small = r.out & (r.szind < st.nbins)
    live = (ex.state == 0) & ex.slab
    bins = []
    for k in np.unique(r.szind[small]).tolist():
        sel = small & (r.szind == k)
        bins.append((k, st.bins[k][0], int(sel.sum()), int((live & (ex.szind == k)).sum()),
                     int((held & (r.szind == k)).sum())))
    return Totals(int(r.size[r.out].sum()), by["active"], base["allocated"],
                  base["resident"] + by["active"] + by["dirty"]
                  + (by["muzzy"] if st.facts.resident_muzzy else 0),
                  base["mapped"] + by["active"] + by["dirty"] + by["muzzy"], by["retained"],
                  int(r.size[held].sum()), bins, not st.bases or any(base.values()))
