"""opt.junk: whether jemalloc fills freed regions with 0x5a, and the freed regions whose fill
was written after free.

jemalloc 5.3 (src/jemalloc.c, ifree() and isfree()) fills the whole usable size of a region
with 0x5a (junk_free_byte) when the program frees it and opt_junk_free is on, before the region
goes to its thread's tcache or back to its slab. 5.2.1 fills in its tcache and arena paths
instead, with the same byte (util.h JEMALLOC_FREE_JUNK) over the same bytes: opt_junk_free makes
malloc_slow true (jemalloc.c malloc_slow_flag_init()), so no thread is ever in the fast state
(tsd.c tsd_state_compute()) and every free takes the slow path; tcache_dalloc_small()
(tcache_inlines.h) then fills the region's reg_size (arena.c arena_dalloc_junk_small(); a
small class's reg_size is its size, 5.x has no redzones) and tcache_dalloc_large() its usable
size (large.c large_dalloc_junk(ptr, sz_index2size(binind))); a free without a tcache fills in
arena_dalloc_bin_locked_impl(), which a tcache flush calls as "junked", without filling again.
5.2 also fills the old region of a realloc that moved and its own internal regions
(arena_ralloc() and large_ralloc() free with slow_path true, idalloctm() reaches
arena_dalloc_bin()), which 5.3 does not. In both, neither the tcache nor the slab keeps
anything inside a free region (a tcache's stack and a slab's bitmap are elsewhere), so the
fill stays until the region is handed out again. Not every free region was filled, though,
and those are not checked:
- regions never handed out since their slab was made (whatever the pages held before); a slab
  hands out its lowest free region first (bitmap_sfu, and 5.2's arena_slab_reg_alloc_batch()
  too), so a free region below the highest region out of its slab was handed out at least
  once, and one above it perhaps never;
- regions handed out only to a tcache (its fill takes them from their slab: 5.2's
  arena_tcache_fill_small() asks arena_alloc_junk_small() for a zeroed fill, which writes
  nothing) and held there, or flushed back unused, which the flush does not fill;
- in 5.3, regions jemalloc frees without the fill: the old region of a realloc that moved
  (arena_ralloc(), large_ralloc() call isdalloct() directly) and its own internal allocations
  (a thread's tcache stacks when the thread ends).
Such a region holds older bytes, not junk; so a region is reported only when most of its bytes
are junk (it was filled) and some are not (they were written after).

Whether the fill is on: the `<ns>opt_junk_free` global where internal symbols are (exact);
without them, the `junk` option of `<PREFIX>MALLOC_CONF` in the target's initial environment
(jemalloc reads it after the build's --with-malloc-conf, the program's malloc_conf and
/etc/malloc.conf, so its setting wins; only 5.3's malloc_conf_2_conf_harder, read last, could
undo it). jemalloc reads it with secure_getenv: an AT_SECURE process ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.errors import ReadError
from mdbpy.heap.gather import session_gather
from mdbpy.heap.model import Problem
from mdbpy.target.environ import AT_SECURE, initial_environ

JUNK_FREE = 0x5A  # jemalloc.c's junk_free_byte
FILL_RELEASES = ((5, 2), (5, 3))  # the releases whose free paths are described above


@dataclass
class Junk:
    """Whether freed regions are filled (None: cannot be told), and why, for ::jemalloc."""

    free: bool | None
    why: str

    @property
    def line(self) -> str:
        state = {True: "free fill on", False: "free fill off", None: "unknown"}[self.free]
        what = ("freed regions checked for 0x5a" if self.free else "freed regions not checked")
        return f"{state} ({self.why}): {what}"


def conf_junk(conf: str) -> str | None:
    """The value of the last `junk` option in a conf string (`key:value,...`), None if none."""
    value = None
    for pair in conf.split(","):
        k, sep, v = pair.partition(":")
        if sep and k == "junk":
            value = v
    return value


def junk_state(session, st) -> Junk:
    """opt_junk_free of this target (cached per stop)."""
    got = session.cache.get("jemalloc.junk")
    if got is None:
        got = session.cache["jemalloc.junk"] = _junk_state(session, st)
    return got


def _junk_state(session, st) -> Junk:
    found = st.found
    if found.version[:2] not in FILL_RELEASES:
        return Junk(None, f"mdbpy knows the free fill of "
                          f"{', '.join('.'.join(map(str, r)) for r in FILL_RELEASES)} only")
    if found.private is not None:
        name = found.private + "opt_junk_free"
        s = found.obj.lookup(name)
        if s is not None and s.addr:
            try:
                v = session.mem.read(s.addr, 1)[0]
            except ReadError:
                return Junk(None, f"{name} unreadable")
            return Junk(bool(v), f"{name} = {v}")
    env_name = found.prefix.upper() + "MALLOC_CONF"
    target = session.target
    if target.auxv().get(AT_SECURE):
        return Junk(None, f"no internal symbols; an AT_SECURE process ignores {env_name}")
    env = initial_environ(target)
    if env is None:
        return Junk(None, "no internal symbols; the initial environment cannot be read")
    # getenv() answers with the first entry of that name
    conf = next((e.split(b"=", 1)[1] for e in env if e.startswith(env_name.encode() + b"=")),
                None)
    value = conf_junk(conf.decode(errors="replace")) if conf is not None else None
    if value not in ("true", "false", "alloc", "free"):
        return Junk(None, f"no internal symbols; {env_name} in the environment does not set "
                          "junk")
    return Junk(value in ("true", "free"),
                f"{env_name} junk:{value} in the environment; no internal symbols")


def overwritten(alloc, r, cached) -> list[Problem]:
    """The freed regions that were filled with 0x5a and written after: the tcache-held ones
    (cached: per region of r, whether a tcache holds it, as verify() matched the tcaches'
    pointers to the regions) and those free in their slab below its highest region out of
    it."""
    import numpy as np

    s, st = alloc.session, alloc.state
    if not junk_state(s, st).free or not len(r.base):
        return []
    slab = r.szind < st.nbins
    groups, inv = np.unique(r.edata, return_inverse=True)
    hi = np.zeros(len(groups), np.uint64)
    np.maximum.at(hi, inv[r.out & slab], r.base[r.out & slab])
    in_slab = slab & ~r.out & (r.base < hi[inv])
    held = cached & r.out
    rows = np.flatnonzero(in_slab | held)
    sizes = r.size[rows]
    out = []
    g = session_gather(s)
    for size in np.unique(sizes).tolist():
        at = rows[sizes == size]
        data, ok = g.rows(r.base[at], int(size))
        bad = data != JUNK_FREE
        nbad = bad.sum(axis=1)
        for k in np.flatnonzero(ok & (nbad > 0) & (2 * nbad < size)).tolist():
            i = int(at[k])
            where = np.flatnonzero(bad[k])
            base = int(r.base[i])
            out.append(Problem(
                "Junk overwritten", "jemalloc", base, int(size), base + int(where[0]),
                base + int(where[-1]) + 1, int(data[k, where[0]]), JUNK_FREE,
                note=f"freed ({'held by a tcache' if held[i] else 'free in its slab'}); "
                     f"not junk: {int(nbad[k])} of {size} bytes"))
    return out
