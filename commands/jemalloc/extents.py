"""Every extent jemalloc knows, from the emap's radix tree (5.2: extents_rtree), as numpy
columns.

jemalloc registers each extent it manages (active ones in use, and the dirty, muzzy and
retained ones it keeps for reuse) in the emap, an rtree keyed by page address: a slab's every
page, a large extent's first and last page. A leaf element holds the extent's edata_t address
with a copy of its szind and slab flag (5.3: and state); the release's Facts say which bits.
So reading the root (one array in the library's bss) and the leaves it points to (2 MiB each,
a handful in a process) gives every extent without following a single list, and the edata_t
of all of them are then read in one gather.

Nothing read is believed before it is checked: an edata must be readable, its state and size
class in range, a slab's size that of its bin and its free count that of its bitmap, its first
page registered to it, and no two extents may overlap. What fails is damage (reported once per
stop, and untrusted for ::findleaks), and the walk goes on without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdbpy.errors import ReadError
from mdbpy.heap.arrays import distinct
from mdbpy.heap.damage import DamageLog
from mdbpy.heap.gather import session_gather

from .layouts import (LG_PAGE, PAGE, RTREE_LEAF_ENTRIES, RTREE_LEVEL_BITS, RTREE_ROOT_ENTRIES,
                      STATE_ACTIVE, STATE_NAMES)
from .state import State


@dataclass
class Extents:
    """The extents, sorted by base: edata_t address, base (page aligned), size, e_addr (a large
    extent's user pointer: cache-oblivious placement moves it into the first page), state,
    slab flag, size class, arena index, free count and slab bitmap words (n, 8)."""

    edata: object
    base: object
    size: object
    addr: object
    state: object
    slab: object
    szind: object
    arena: object
    nfree: object
    bitmap: object
    leaves: list[int] = field(default_factory=list)  # the rtree leaves read

    def __len__(self) -> int:
        return len(self.edata)

    def select(self, mask) -> Extents:
        import numpy as np

        rows = np.flatnonzero(mask)
        return Extents(*(getattr(self, c)[rows] for c in COLUMNS), leaves=self.leaves)


COLUMNS = ("edata", "base", "size", "addr", "state", "slab", "szind", "arena", "nfree", "bitmap")


def extents(session, st: State) -> Extents:
    """The checked extents (cached per stop of the target)."""
    ex = session.cache.get("jemalloc.extents")
    if ex is None:
        ex = session.cache["jemalloc.extents"] = _walk(session, st, DamageLog.of(session,
                                                                                 "jemalloc"))
    return ex


def _leaf_entries(session, st: State, log: DamageLog):
    """(page address, element) of every non-empty element of every leaf, and the leaves."""
    import numpy as np

    mem = session.mem
    try:
        root = np.frombuffer(mem.read(st.root, RTREE_ROOT_ENTRIES * 8), "<u8")
    except ReadError:
        log.report(st.root, st.root + RTREE_ROOT_ENTRIES * 8, "unreadable emap rtree root "
                   f"0x{st.root:x}")
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64), []
    keys, elems, leaves = [], [], []
    shift0 = LG_PAGE + RTREE_LEVEL_BITS[1]
    for i in np.flatnonzero(root).tolist():
        leaf = int(root[i])
        if leaf % 8:
            log.report(st.root + 8 * i, st.root + 8 * i + 8,
                       f"rtree root[{i}]: misaligned leaf pointer 0x{leaf:x}")
            continue
        try:
            raw = np.frombuffer(mem.read(leaf, RTREE_LEAF_ENTRIES * 8), "<u8")
        except ReadError:
            log.report(leaf, leaf + RTREE_LEAF_ENTRIES * 8,
                       f"rtree root[{i}]: unreadable leaf 0x{leaf:x}")
            continue
        leaves.append(leaf)
        j = np.flatnonzero(raw)
        keys.append((np.uint64(i) << np.uint64(shift0)) | (j.astype(np.uint64)
                                                            << np.uint64(LG_PAGE)))
        elems.append(raw[j])
    if not keys:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64), leaves
    return np.concatenate(keys), np.concatenate(elems), leaves


def _field(bits, at):
    import numpy as np

    return ((bits >> np.uint64(at[0])) & np.uint64((1 << at[1]) - 1)).astype(np.int64)


def _walk(session, st: State, log: DamageLog) -> Extents:
    import numpy as np

    keys, elems, leaves = _leaf_entries(session, st, log)
    b = st.facts.bits
    ptr = elems & np.uint64(st.facts.addr_mask)
    edata = distinct(ptr[ptr != 0])
    es = st.binder["edata_s"]
    rows, ok = session_gather(session).rows(edata, es.size)
    for a in edata[~ok].tolist():
        log.report(a, a + es.size, f"unreadable edata_t 0x{a:x} (named by the emap)")
    edata, rows = edata[ok], rows[ok]
    v = rows.view(es.dtype()).reshape(-1)
    bits = v["e_bits"].astype(np.uint64)
    slab = _field(bits, b.slab).astype(bool)
    state, szind = _field(bits, b.state), _field(bits, b.szind)
    addr = v["e_addr"].astype(np.uint64)
    base = addr & ~np.uint64(PAGE - 1)
    size = v["e_size_esn"].astype(np.uint64) & ~np.uint64(PAGE - 1)
    bitmap = np.ascontiguousarray(v["e_slab_data"]).astype(np.uint64)
    nbins, nsizes = st.nbins, len(st.index2size)
    slab_size = np.array([b[1] for b in st.bins], np.uint64)
    nregs = np.array([b[2] for b in st.bins], np.int64)
    why = np.full(len(edata), "", object)

    def flag(mask, text):
        for k in np.flatnonzero(mask & (why == "")).tolist():
            why[k] = text(k)

    flag(state >= len(STATE_NAMES), lambda k: f"state {state[k]}")
    flag((size == 0) | (base + size < base), lambda k: f"size 0x{int(size[k]):x}")
    live = state == STATE_ACTIVE
    # an extent not in use has no size class (szind SC_NSIZES, "invalid")
    flag((szind > nsizes) | (live & (szind == nsizes)),
         lambda k: f"size class {szind[k]} (of {nsizes})")
    # an extent not in use keeps the slab flag it had: only slabs in use hold regions
    small = live & slab & (szind < nbins)
    flag(live & slab & ~small, lambda k: f"slab of size class {szind[k]}, not a small class")
    k_small = np.where(small, szind, 0)
    flag(small & ((addr != base) | (size != slab_size[k_small])),
         lambda k: f"slab 0x{int(addr[k]):x} of 0x{int(size[k]):x} bytes, not a "
                   f"{int(slab_size[szind[k]])}-byte slab of bin {szind[k]}")
    # a slab's free count is the number of set (free) bits among its regions: each word
    # masked to the regions it holds (region i is bit i % 64 of word i // 64), then counted,
    # a word at a time (bits unpacked to bytes were 100 MB on a million regions)
    held = np.where(small, nregs[k_small], 0)[:, None] - 64 * np.arange(bitmap.shape[1])
    held = np.clip(held, 0, 64).astype(np.uint64)
    mask = np.where(held == 64, np.uint64(2 ** 64 - 1),
                    (np.uint64(1) << (held & np.uint64(63))) - np.uint64(1))
    counted = np.bitwise_count(bitmap & mask).sum(axis=1, dtype=np.int64)
    nfree = _field(bits, b.nfree)
    flag(small & (counted != nfree), lambda k: f"slab 0x{int(addr[k]):x}: bitmap has "
                                               f"{counted[k]} free regions, nfree says {nfree[k]}")
    # the extent's first page must be registered to it
    order = np.argsort(keys)
    skeys, sptr = keys[order], ptr[order]
    at = np.minimum(np.searchsorted(skeys, base), max(len(skeys) - 1, 0))
    mine = (skeys[at] == base) & (sptr[at] == edata) if len(skeys) else np.zeros(0, bool)
    flag(~mine, lambda k: f"its first page 0x{int(base[k]):x} is not registered to it")
    for k in np.flatnonzero(why != "").tolist():
        a = int(edata[k])
        log.report(a, a + es.size, f"edata_t 0x{a:x}: {why[k]}")
    keep = why == ""
    _stray_pages(keys, ptr, edata[keep], base[keep], size[keep], log)
    out = Extents(edata[keep], base[keep], size[keep], addr[keep], state[keep], slab[keep],
                  szind[keep], _field(bits, b.arena)[keep], nfree[keep], bitmap[keep],
                  leaves)
    order = np.argsort(out.base, kind="stable")
    out = Extents(*(getattr(out, c)[order] for c in COLUMNS), leaves=leaves)
    return _drop_overlaps(out, log)


def _stray_pages(keys, ptr, edata, base, size, log: DamageLog) -> None:
    """A page registered to an extent that does not hold it is damage (a smashed leaf
    element): reported, the extent kept (its own pages say where it is)."""
    import numpy as np

    if not len(edata):
        return
    k = np.minimum(np.searchsorted(edata, ptr), len(edata) - 1)
    known = edata[k] == ptr
    stray = known & ((keys < base[k]) | (keys >= base[k] + size[k]))
    for key, e in zip(keys[stray].tolist(), ptr[stray].tolist()):
        log.report(key, key + PAGE, f"rtree: page 0x{key:x} is registered to edata_t 0x{e:x}, "
                                    "which does not hold it")


def _drop_overlaps(ex: Extents, log: DamageLog) -> Extents:
    """Extents that overlap the one before them are damage (two edata claiming one page):
    both are reported, the later one dropped."""
    import numpy as np

    if len(ex) < 2:
        return ex
    ends = ex.base + ex.size
    over = np.flatnonzero(ends[:-1] > ex.base[1:]) + 1
    if not len(over):
        return ex
    for k in over.tolist():
        a, b = int(ex.edata[k - 1]), int(ex.edata[k])
        log.report(int(ex.base[k]), int(ends[k]), f"edata_t 0x{b:x} overlaps edata_t 0x{a:x}")
    keep = np.ones(len(ex), bool)
    keep[over] = False
    return ex.select(keep)


def active(ex: Extents):
    """The mask of the extents in use (regions live there)."""
    return ex.state == STATE_ACTIVE
