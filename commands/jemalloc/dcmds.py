"""The jemalloc dcmds and walkers: what was found, and its extents, regions and arenas in mdb's
syntax (addresses only when piped, so `::walk je_region | ::whatis` works)."""

from __future__ import annotations

from mdbpy.dcmd import Flag, Invocation, dcmd, walker
from mdbpy.errors import MdbError

from .extents import extents
from .junk import junk_state
from .layouts import STATE_NAMES
from .state import locate, tcaches
from .version import require


@dcmd("jemalloc", "jemalloc: object, version, prefixes and how its structures were found",
      help="Print the object holding jemalloc and how it was recognised, the version (from "
           "the version string jemalloc embeds), the public and internal symbol prefixes, "
           "the method (symbols and DWARF; symbols with verified heuristics for the arena_t "
           "and base_t offsets; or, without internal symbols, verified heuristics for all of "
           "it), where each structure was found and where the layouts came from, the arenas, "
           "tcaches, extents and rtree leaves found, and whether jemalloc fills freed regions "
           "with 0x5a (opt.junk: from its opt_junk_free global, or without internal symbols "
           "from <PREFIX>MALLOC_CONF in the target's environment), which ::heap_verify then "
           "checks. A version mdbpy does not know, or a structure no candidate verifies for, "
           "is one line saying so.",
      example="::jemalloc")
def jemalloc(inv: Invocation):
    inv.no_operands()
    s = inv.session
    f = require(s)
    inv.print(f"jemalloc {f.version_text} in {f.obj.name}")
    inv.print(f"prefix      '{f.prefix}' (public), "
              + (f"'{f.private}' (internal)" if f.private is not None else
                 "no internal symbols"))
    st = locate(s)
    for k, v in st.how.items():
        inv.print(f"{k:11s} {v}")
    ex = extents(s, st)
    inv.print(f"arenas      {len(st.arenas)}")
    inv.print(f"tcaches     {len(tcaches(s, st))}")
    inv.print(f"extents     {len(ex)} in {len(ex.leaves)} rtree leaves")
    inv.print(f"junk        {junk_state(s, st).line}")
    for w in st.warnings:
        inv.print(f"warning: {w}")
    return 0


@dcmd("je_extents", "list jemalloc's extents (from the emap)",
      opts=[Flag("a", "all", "also the dirty, muzzy and retained ones (default: in use)")],
      help="One line per extent the emap registers: its edata_t, address, size, state, slab "
           "or large, size class and arena. Piped: the edata_t addresses.",
      example="::je_extents -a")
def je_extents(inv: Invocation):
    inv.no_operands()
    st = locate(inv.session)
    ex = extents(inv.session, st)
    if not inv.opts.all:
        ex = ex.select(ex.state == 0)
    if inv.piped_out:
        for e in ex.edata.tolist():
            inv.print(f"{e:x}")
        return 0
    inv.print(f"{'EDATA':16s} {'ADDR':16s} {'SIZE':>10s} {'STATE':8s} {'KIND':5s} "
              f"{'CLASS':>7s} ARENA")
    for k in range(len(ex)):
        sz = int(ex.szind[k])
        inv.print(f"{int(ex.edata[k]):016x} {int(ex.addr[k]):016x} {int(ex.size[k]):10d} "
                  f"{STATE_NAMES[int(ex.state[k])]:8s} {'slab' if ex.slab[k] else 'large':5s} "
                  f"{st.size_name(sz) if ex.state[k] == 0 else '-':>7s} {int(ex.arena[k])}")
    return 0


@walker("je_extent", "walk jemalloc's extents in use (edata_t addresses)")
def je_extent(session, addr):
    st = locate(session)
    ex = extents(session, st)
    yield from ex.edata[ex.state == 0].tolist()


@walker("je_arena", "walk jemalloc's arenas (arena_t addresses)")
def je_arena(session, addr):
    yield from (a for _i, a in locate(session).arenas)


@walker("je_region", "walk jemalloc's allocated regions (tcache-held ones are free)")
def je_region(session, addr):
    from mdbpy.heap.model import ALLOC

    a = _allocator(session)
    t = a.buffers()
    yield from t.base[t.state == ALLOC].tolist()


def _allocator(session):
    from .allocator import JemallocAllocator

    for a in session.allocators():
        if isinstance(a, JemallocAllocator):
            return a
    locate(session)  # the one-line reason, when there is one
    raise MdbError("jemalloc: not found in this target")


@dcmd("je_stats", "jemalloc's totals as malloc_stats_print() gives them, from the walk",
      opts=[Flag("b", "bins", "also one line per small size class: regions out of their "
                 "slabs (curregs), slabs in use (curslabs) and regions the tcaches hold")],
      help="allocated, active, resident, mapped and retained bytes over every arena, as "
           "jemalloc's stats.* mallctls define them, the bytes its bases (metadata) allocated "
           "and the bytes the thread caches hold. "
           "Counted from the extents and regions walked (only the bases' own counters are "
           "read), so they check the walk against malloc_stats_print()'s figures. A jemalloc "
           "built without stats (its bases' counters all 0) gets one line saying so.",
      example="::je_stats -b")
def je_stats(inv: Invocation):
    from .stats import totals

    inv.no_operands()
    t = totals(inv.session, locate(inv.session))
    if not t.bases_counted:
        # such a build answers no stats.* mallctl (ctl.c), and the bases cannot be counted:
        # what the walk counts is ::heap_stats'
        inv.print("jemalloc keeps no statistics in this build (configured without stats: its "
                  "bases' counters are all 0); ::heap_stats counts the regions")
        return 0
    for name in ("allocated", "active", "base", "resident", "mapped", "retained"):
        inv.print(f"{name:10s} {getattr(t, name):12d}")
    inv.print(f"{'tcache':10s} {t.tcache:12d}")
    if inv.opts.bins:
        inv.print(f"{'BIN':>4s} {'SIZE':>6s} {'CURREGS':>8s} {'CURSLABS':>8s} {'TCACHE':>7s}")
        for k, size, regs, slabs, held in t.bins:
            inv.print(f"{k:4d} {size:6d} {regs:8d} {slabs:8d} {held:7d}")
    return 0
