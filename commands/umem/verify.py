"""libumem's integrity checks, as mdb's ::umem_verify makes them, over whole caches at once.

Allocated buffers of a redzone cache must carry either the redzone pattern in the buftag, or a
valid size encoding (UMEM_SIZE_ENCODE in the high half of the redzone word) pointing at a 0xbb
byte just past the bytes in use; and a buftag whose bxstat is bufctl ^ UMEM_BUFTAG_ALLOC. Free
buffers of a DEADBEEF cache must hold 0xdeadbeefdeadbeef over cache_verify bytes, the redzone
pattern (hash caches: others keep their free-list link there), and bufctl ^ UMEM_BUFTAG_FREE.
The buftag words of every buffer are gathered in one pass and checked with numpy. A buffer
whose words cannot be read is not called corrupt: the cache's unreadable buffers are named in
one damage line instead (mdb warns that it could not read them).
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy_commands.umem import layouts as L
from mdbpy_commands.umem.contents import cache_contents
from mdbpy_commands.umem.damage import damage

LOW32 = 0xFFFFFFFF


@dataclass
class Corruption:
    buf: int
    state: str  # 'allocated' or 'free'
    what: str  # mdb's message after "buffer %p (state) "
    at: int | None = None  # the first bad word (free pattern)

    def message(self) -> str:
        if self.at is not None:
            return f"buffer {self.buf:x} ({self.state}) seems corrupted, at {self.at:x}"
        return f"buffer {self.buf:x} ({self.state}) {self.what}"


def verifiable(cache) -> bool:
    return bool(cache.cache_flags & L.UMF_REDZONE)


def verify_cache(umem, cache) -> list[Corruption]:
    """Every corrupt buffer of a redzone cache, allocated ones first, in address order."""
    import numpy as np

    from mdbpy.heap.gather import PAGE, session_gather

    if not verifiable(cache):
        return []
    tagsize = umem.layouts["umem_buftag"].size
    if not (cache.cache_verify <= cache.cache_buftag and
            cache.cache_buftag + tagsize <= cache.cache_chunksize):
        damage(umem.session).report(
            cache.addr, cache.addr + 8, f"cache 0x{cache.addr:x}: buftag at {cache.cache_buftag:#x}"
            f" and {cache.cache_verify:#x} bytes to verify do not fit a chunk of "
            f"{cache.cache_chunksize:#x}; not verified")
        return []
    ct = cache_contents(umem, cache)
    g = session_gather(umem.session)  # the operation's one page store, not one per cache
    tag = np.uint64(cache.cache_buftag)
    out: list[Corruption] = []
    unread: list[int] = []

    def words(addrs):
        """The redzone, bufctl and bxstat words of each buftag, and which were read."""
        w, ok = g.read(addrs + tag, 24, "<u8")
        w = w.reshape(-1, 3)
        return w[:, 0], w[:, 1], w[:, 2], ok

    def read_words(addrs, n):
        """n words from each address: (an (len, n) array, which rows were read), in pieces
        of at most a page (what one Gather read takes)."""
        step = PAGE // 8
        parts = [g.read(addrs + np.uint64(8 * k), 8 * min(step, n - k), "<u8")
                 for k in range(0, n, step)]
        w = np.concatenate([p.reshape(len(addrs), -1) for p, _ok in parts], axis=1)
        return w, np.logical_and.reduce([ok for _p, ok in parts])

    bufs = ct.bufs[ct.alloc]
    redzone, bufctl, bxstat, read = words(bufs)
    hi = redzone >> np.uint64(32)
    pattern_ok = redzone == np.uint64(L.UMEM_REDZONE_PATTERN)
    valid = L.size_valid(hi)
    where = np.minimum(L.size_decode(hi), tag + np.uint64(7))
    byte, byte_read = g.read(bufs + where, 1, "u1")
    byte_ok = byte == L.UMEM_REDZONE_BYTE
    read &= byte_read | pattern_ok  # the 0xbb byte is read only for a size encoding
    size_bad = read & ~pattern_ok & ~(valid & byte_ok &
                                      (L.size_decode(hi) < tag + np.uint64(8)))
    tag_bad = read & (bxstat != (bufctl ^ np.uint64(L.UMEM_BUFTAG_ALLOC)))
    unread += bufs[~read].tolist()
    for i in np.nonzero(size_bad | tag_bad)[0].tolist():
        what = "has a corrupt redzone size encoding" if size_bad[i] else "has a corrupt buftag"
        out.append(Corruption(int(bufs[i]), "allocated", what))

    if cache.cache_flags & L.UMF_DEADBEEF:
        bufs = ct.bufs[~ct.alloc]
        nwords = int(cache.cache_verify) // 8
        first_bad = np.full(len(bufs), -1, np.int64)
        read = np.ones(len(bufs), bool)
        if nwords and len(bufs):
            for lo in range(0, len(bufs), 4096):  # bounded memory for big caches
                part = bufs[lo:lo + 4096]
                w, ok = read_words(part, nwords)
                bad = w != np.uint64(L.UMEM_FREE_PATTERN)
                anyb = bad.any(axis=1)
                first_bad[lo:lo + 4096][anyb] = bad[anyb].argmax(axis=1)
                read[lo:lo + 4096] = ok
        redzone, bufctl, bxstat, tag_read = words(bufs)
        read &= tag_read
        rz_bad = read & (redzone != np.uint64(L.UMEM_REDZONE_PATTERN)) & bool(
            cache.cache_flags & L.UMF_HASH)
        tag_bad = read & (bxstat != (bufctl ^ np.uint64(L.UMEM_BUFTAG_FREE)))
        first_bad[~read] = -1
        unread += bufs[~read].tolist()
        for i in np.nonzero((first_bad >= 0) | rz_bad | tag_bad)[0].tolist():
            b = int(bufs[i])
            if first_bad[i] >= 0:
                out.append(Corruption(b, "free", "", b + 8 * int(first_bad[i])))
            elif rz_bad[i]:
                out.append(Corruption(b, "free", "seems to have a corrupt redzone pattern"))
            else:
                out.append(Corruption(b, "free", "has a corrupt buftag"))
    if unread:
        first = min(unread)
        damage(umem.session).report(first, first + cache.cache_chunksize, (
            f"cache 0x{cache.addr:x}: {len(unread)} buffer{'s' if len(unread) > 1 else ''} "
            f"could not be read (first 0x{first:x}), not verified"))
    return out
