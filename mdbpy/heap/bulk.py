"""Reading many small fixed-size records scattered over the heap (allocation records, bufctls)
with few reads: a core file's records are cut straight out of its mapped image
(Target.read_rows); otherwise the addresses are sorted and clustered, each cluster is read in
one piece, and the records are cut out of it with one numpy gather.

findleaks asks for the record of every leaked buffer; one read and one struct decode per record
costs ~10 us each, which for ten thousand leaks was a quarter of the whole scan.
"""

from __future__ import annotations

from mdbpy.errors import ReadError

CLUSTER_GAP = 4 << 10  # records closer than this are read together (a read costs ~5 KiB)
MAX_CLUSTER = 1 << 20  # a cluster is split before it grows past this


def gather(mem, addrs, size: int):
    """(rows, ok): rows is an (n, size) uint8 array with the `size` bytes at each address (in
    the order given), ok a bool array saying which could be read (their rows are zero)."""
    import numpy as np

    addrs = np.asarray(addrs, dtype=np.uint64)
    n = len(addrs)
    if not n or size <= 0:
        return np.zeros((n, size), np.uint8), np.zeros(n, bool)
    fast = mem.read_rows(addrs, size)
    if fast is None:
        rows, ok = np.zeros((n, size), np.uint8), np.zeros(n, bool)
    else:
        rows, ok = fast
        if ok.all():
            return rows, ok
    rest = np.flatnonzero(~ok)
    rows[rest], ok[rest] = _clustered(mem, addrs[rest], size)
    return rows, ok


def _clustered(mem, addrs, size: int):
    """gather() through read(): the addresses sorted and clustered, each cluster read in one
    piece."""
    import numpy as np

    n = len(addrs)
    rows = np.zeros((n, size), np.uint8)
    ok = np.zeros(n, bool)
    order = np.argsort(addrs, kind="stable")
    s = addrs[order]
    # clusters: split at gaps, then every MAX_CLUSTER bytes from a cluster's first record
    cid = np.concatenate(([0], np.cumsum(np.diff(s) > np.uint64(CLUSTER_GAP))))
    first = s[np.searchsorted(cid, cid)]
    key = cid.astype(np.uint64) << np.uint64(24)
    key |= (s - first) // np.uint64(max(MAX_CLUSTER - size, 1))
    cuts = [0, *(np.flatnonzero(np.diff(key)) + 1).tolist(), n]
    sa = s.tolist()
    blocks, starts, pos = [], [], 0  # starts: each cluster's offset in blocks, -1 unread
    single = {}  # sorted record -> its offset, for records read one by one
    for a, b in zip(cuts, cuts[1:]):
        lo = sa[a]
        try:
            blocks.append(mem.read(lo, sa[b - 1] + size - lo))
        except ReadError:
            starts.append(-1)
            for k in range(a, b):  # one bad record must not hide its neighbours
                try:
                    blocks.append(mem.read(sa[k], size))
                except ReadError:
                    continue
                single[k], pos = pos, pos + size
            continue
        starts.append(pos)
        pos += len(blocks[-1])
    sizes = np.diff(cuts)
    cstart = np.repeat(np.array(starts, np.int64), sizes)
    at = cstart + (s - np.repeat(s[cuts[:-1]], sizes)).astype(np.int64)
    good = cstart >= 0
    for k, off in single.items():
        at[k], good[k] = off, True
    if not good.any():
        return rows, ok
    data = np.frombuffer(b"".join(blocks), np.uint8)
    ok[order[good]] = True
    # each record is a window of the blocks: index a strided view of them (a row copy per
    # record) rather than build an (n, size) array of byte indexes
    windows = np.lib.stride_tricks.sliding_window_view(data, size)
    rows[order[good]] = windows[at[good]]
    return rows, ok
