"""Who holds the pointers to reported leaks: a plain scan of a live process's memory, with no
mdbpy in it, to explain a ::findleaks result that has buffers it should not.

Every readable mapping of /proc/PID/maps is read through /proc/PID/mem (the process must be
quiescent) and each aligned word that points into one of the given buffers is a holder (a
word pointing at a buffer's last 8 bytes is not: with malloc that is the next chunk's header,
which bins and free chunks point to). A
holder inside another given buffer is followed upwards, so each buffer is explained by the
memory that holds the first pointer of its chain from outside the given set: which mapping
(a thread's stack above or below its stack pointer, an object's data or bss, a malloc heap,
or an anonymous mapping no allocator claims) and, in an anonymous mapping, whether it looks
like one of CPython's obmalloc pools (and the type of the object in the block).

    python holders.py PID JSON [SAMPLE]

JSON: the output of `mdbpy --json -p PID -e '::findleaks -d; ::malloc_chunks'` (the chunks
name the malloc memory that holds a pointer: a free chunk's stale word, or a live chunk).
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections import Counter

import numpy as np

POOL = 16 << 10  # CPython 3.11's obmalloc pools (USE_LARGE_POOLS) ...
POOL_OVERHEAD = 48  # ... and their header, rounded to 16
READ_BLOCK = 16 << 20
SKIP = ("[vvar]", "[vvar_vclock]", "[vsyscall]")


def maps(pid: int) -> list[tuple[int, int, str, str]]:
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            a, b = (int(x, 16) for x in parts[0].split("-"))
            out.append((a, b, parts[1], parts[5].strip() if len(parts) > 5 else ""))
    return out


def stack_pointers(pid: int) -> dict[int, int]:
    """The stack pointer of each thread blocked in a system call (/proc/PID/task/TID/syscall
    ends with sp and pc)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                words = f.read().split()
        except OSError:
            continue
        if len(words) >= 3 and words[0] not in ("running", "-1"):
            out[int(tid)] = int(words[-2], 16)
    return out


class Memory:
    def __init__(self, pid: int):
        self.pid = pid
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        self.maps = maps(pid)
        self.sps = stack_pointers(pid)

    def close(self) -> None:
        os.close(self.fd)

    def read(self, addr: int, n: int) -> bytes:
        if not 0 < addr < 1 << 47:
            return b""
        try:
            return os.pread(self.fd, n, addr)
        except OSError:
            return b""

    def word(self, addr: int) -> int | None:
        b = self.read(addr, 8)
        return struct.unpack("<Q", b)[0] if len(b) == 8 else None

    def readable(self):
        for a, b, perms, path in self.maps:
            if perms[0] == "r" and path not in SKIP:
                yield a, b, perms, path

    def mapping_of(self, addr: int):
        for k, (a, b, perms, path) in enumerate(self.maps):
            if a <= addr < b:
                return k
        return None

    # -- what an address is --------------------------------------------------------------
    def cstring(self, addr: int, n: int = 64) -> str | None:
        b = self.read(addr, n)
        if not b or b"\0" not in b:
            return None
        s = b.split(b"\0", 1)[0]
        if not s or not all(32 < c < 127 for c in s):
            return None
        return s.decode()

    def is_type(self, tp: int) -> bool:
        """tp is a PyTypeObject: its type's type's ... type is `type`, whose type is itself."""
        for _ in range(4):
            meta = self.word(tp + 8)
            if not meta or meta & 7:
                return False
            if meta == tp:
                return True
            tp = meta
        return False

    def type_name(self, obj: int) -> str | None:
        """tp_name of the object at obj, if obj looks like a PyObject."""
        tp = self.word(obj + 8)
        if not tp or tp & 7 or not self.is_type(tp):
            return None
        name = self.word(tp + 24)
        return self.cstring(name) if name else None

    def obmalloc(self, addr: int) -> str | None:
        """'obmalloc pool, N-byte block, <type> object' when addr lies in what looks like a
        CPython obmalloc pool."""
        pool = addr & ~(POOL - 1)
        h = self.read(pool, POOL_OVERHEAD)
        if len(h) < POOL_OVERHEAD:
            return None
        _count, _free, _next, _prev, _arena, szidx, nextoff, maxnext = \
            struct.unpack("<IxxxxQQQIIII", h)
        size = (szidx + 1) * 16
        if szidx >= 32 or maxnext != POOL - size or addr < pool + POOL_OVERHEAD:
            return None
        block = pool + POOL_OVERHEAD + (addr - pool - POOL_OVERHEAD) // size * size
        # a GC object has a 16-byte PyGC_Head before it, and one with a managed __dict__
        # two more words before that
        for obj in (block, block + 16, block + 32):
            what = self.type_name(obj)
            if what and addr >= obj:
                return f"obmalloc pool, {size}-byte block: {what} object +{addr - obj:#x}"
        return f"obmalloc pool, {size}-byte block +{addr - block:#x} (no object header)"

    def describe(self, addr: int, chunks=None) -> str:
        """A short name for the memory at addr; chunks: (addr, size, state) arrays of every
        malloc chunk (::malloc_chunks), sorted by address, when known."""
        if chunks is not None:
            ca, cs, st = chunks
            i = int(np.searchsorted(ca, addr, side="right")) - 1
            if i >= 0 and addr < ca[i] + cs[i]:
                return f"malloc chunk ({st[i]})"
        k = self.mapping_of(addr)
        if k is None:
            return "unmapped"
        a, b, perms, path = self.maps[k]
        for tid, sp in self.sps.items():
            if a <= sp < b:
                side = "above" if addr >= sp else "BELOW"
                return f"thread {tid} stack, {side} sp"
        if path == "[heap]":
            return "malloc [heap]"
        if path.startswith("["):
            return path
        if path:
            return f"{os.path.basename(path)} {perms}"
        if a % (64 << 20) == 0 and k + 1 < len(self.maps) and self.maps[k + 1][0] == b and \
                self.maps[k + 1][2] == "---p":
            return "malloc thread-arena heap"
        if k > 0 and self.maps[k - 1][1] == a and self.maps[k - 1][3] and \
                not self.maps[k - 1][3].startswith("["):
            return f"{os.path.basename(self.maps[k - 1][3])} bss"
        ob = self.obmalloc(addr)
        if ob:
            return ob
        return f"anonymous {perms} {a:x}-{b:x}"

    # -- the scan ------------------------------------------------------------------------
    def holders(self, bases, sizes):
        """(holder addresses, index of the buffer each points into), over all readable
        memory."""
        order = np.argsort(bases)
        starts = np.asarray(bases, np.uint64)[order]
        ends = starts + np.asarray(sizes, np.uint64)[order]
        hs, ts = [], []
        for a, b, _perms, _path in self.readable():
            for at in range(a, b, READ_BLOCK):
                data = self.read(at, min(READ_BLOCK, b - at))
                if len(data) < 8:
                    continue
                w = np.frombuffer(data[:len(data) & ~7], np.uint64)
                i = np.searchsorted(starts, w, side="right") - 1
                ok = (i >= 0)
                # a pointer to a buffer's last word is one to the next malloc chunk's header
                # (a bin's, last_remainder's, a free chunk's link), which overlaps it
                ok[ok] &= w[ok] < ends[i[ok]] - 8
                where = np.nonzero(ok)[0]
                hs.append(at + where.astype(np.uint64) * 8)
                ts.append(order[i[where]])
        return np.concatenate(hs) if hs else np.zeros(0, np.uint64), \
            np.concatenate(ts) if ts else np.zeros(0, np.int64)


def chunk_arrays(doc):
    """(addr, size, state) arrays, sorted, of a `::malloc_chunks` JSON document."""
    rows = sorted((c["addr"], c["size"], c["state"]) for c in doc["chunks"])
    return (np.array([r[0] for r in rows], np.uint64), np.array([r[1] for r in rows], np.uint64),
            [r[2] for r in rows])


def explain(pid: int, bases, sizes, chunks=None, sample: int = 0):
    """For each buffer (bases[k], sizes[k]): the name of the memory holding the first pointer
    of its chain from outside the buffers, or 'nothing'. Holders outside malloc's memory are
    preferred; a buffer reached only from malloc chunks that are not in the set (free chunks'
    stale words, or live ones) or from a stack below its stack pointer is named by them.
    Returns (Counter of those names, list of (buffer, chain) for the first `sample` buffers):
    a chain is the holder addresses from the buffer up, each with what it is."""
    mem = Memory(pid)
    try:
        bases = [int(x) for x in bases]
        sizes = [int(x) for x in sizes]
        hold, into = mem.holders(bases, sizes)
        order = np.argsort(bases)
        sb = np.asarray(bases, np.uint64)[order]
        se = sb + np.asarray(sizes, np.uint64)[order]
        j = np.searchsorted(sb, hold, side="right") - 1
        inside = (j >= 0) & (hold < se[np.maximum(j, 0)])
        from_buf = np.where(inside, order[np.maximum(j, 0)], -1)
        n = len(bases)
        label: list = [None] * n
        parent: list = [None] * n  # (holder address, the buffer holding it or None)
        names: dict[int, str] = {}
        outside = [(h, t) for h, t, f in zip(hold.tolist(), into.tolist(), from_buf.tolist())
                   if f < 0]
        for h, _t in outside:
            if h not in names:
                names[h] = mem.describe(h, chunks)
        succ: dict[int, list] = {}
        for h, t, f in zip(hold.tolist(), into.tolist(), from_buf.tolist()):
            if f >= 0 and f != t:
                succ.setdefault(f, []).append((h, t))
        def dead(name: str) -> bool:  # a stale word, or malloc's memory outside the set
            return name.startswith("malloc") or "BELOW sp" in name

        for second in (False, True):
            frontier = []
            for h, t in outside:
                if label[t] is None and dead(names[h]) == second:
                    label[t], parent[t] = names[h], (h, None)
                    frontier.append(t)
            while frontier:
                nxt = []
                for f in frontier:
                    for h, t in succ.get(f, ()):
                        if label[t] is None:
                            label[t] = "via leaked buffers from " + \
                                label[f].removeprefix("via leaked buffers from ")
                            parent[t] = (h, f)
                            nxt.append(t)
                frontier = nxt
        counts = Counter(x or "nothing" for x in label)
        chains = []
        for t in range(min(sample, n)):
            chain, cur, seen = [], t, set()
            while cur is not None and parent[cur] is not None and cur not in seen:
                seen.add(cur)
                h, up = parent[cur]
                chain.append((h, names.get(h) or mem.describe(h, chunks)))
                cur = up
            chains.append((bases[t], chain))
        return counts, chains
    finally:
        mem.close()


def summary(counts: Counter, chains) -> str:
    """A few lines for an assertion message."""
    lines = [f"{c:7d}  {name}" for name, c in counts.most_common(12)]
    lines += [f"  {b:x} <- " + " <- ".join(f"{h:x} ({what})" for h, what in chain)
              for b, chain in chains]
    return "\n".join(lines)


def main() -> None:
    pid = int(sys.argv[1])
    docs = {d["command"]: d for d in (json.loads(line) for line in open(sys.argv[2])
                                      if line.startswith("{"))}
    bases, sizes = [], []
    for g in docs["findleaks"]["leaks"]:
        bases += g["members"]
        sizes += g["member_sizes"]
    chunks = chunk_arrays(docs["malloc_chunks"]) if "malloc_chunks" in docs else None
    sample = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    counts, chains = explain(pid, bases, sizes, chunks, sample)
    for name, c in counts.most_common():
        print(f"{c:7d}  {name}")
    for b, chain in chains:
        print(f"{b:x}: " + " <- ".join(f"{h:x} ({what})" for h, what in chain))


if __name__ == "__main__":
    main()
