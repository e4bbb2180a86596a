"""Driver for tests/test_real_programs.py and bench/python_findleaks.py: run by the system
python3 (a real Debian CPython 3.11), it puts its glibc heap into a known state and says so on
one READY line, then blocks forever without allocating.

    python3 pyheap.py idle|busy [THREADS]

What the heap holds:
  - planted leaks: four blocks from libc through ctypes whose pointers are dropped (strdup
    of texts, sizes 0x58, 0x3e8 and 0x2710, and a calloc of 256 KiB, which glibc mmaps),
    made first; their addresses are printed as hex text (leak0..leak3), so no word of the
    process holds them once the driver has scrubbed its stack (see plant_leaks());
  - blocks kept alive ONLY through Python objects, which live in obmalloc's arenas (anonymous
    mmaps that no malloc claims) or in PyMem_Malloc'd buffers reached only from there:
      * a list of ctypes.c_void_p objects (the pointer is inside the object, in an arena),
      * a ctypes array (c_void_p * 200) whose buffer is itself a malloc'd chunk (1600 bytes,
        above obmalloc's 512-byte limit) reached only from the array object in an arena,
      * a ctypes Structure of three pointers (its 24-byte buffer is an obmalloc block) heading
        a chain of malloc'd blocks linked through their first words (C-heap to C-heap);
    kept0 is one of the c_void_p blocks, kept1 the array's buffer, kept2 the chain's head;
  - ballast: 20,000 small Python objects made first, so that the holders above are in
    obmalloc arenas mmapped after it (see ballast());
  - busy: THREADS threads (default 6), each building a dict of str and bytes objects (some
    of them over glibc's mmap threshold) and a list of them in its own arena, then blocked on
    an Event.

Blocks held only by a Python int are not planted: CPython stores an int in 30-bit digits, so
no 8-byte word of the process holds such a pointer, and no conservative scan can see it.

The READY line also carries mallinfo2(3)'s ten fields, read after the last allocation: the
threads are parked in futex(2) first (checked through /proc/self/task/TID/syscall), and after
the reading the driver only formats and writes that line with os.write and sleeps.
"""

import ctypes
import os
import sys
import threading
import time

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.memset.restype = None  # the pointer memset returns is not wanted back as a Python int
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
libc.strdup.restype = ctypes.c_void_p  # no argtypes: a bytes object goes as its char *
libc.calloc.restype = ctypes.c_void_p
libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]


class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


libc.mallinfo2.restype = Mallinfo2
libc.mallinfo2.argtypes = []

PLANTED_SIZES = (0x58, 0x3E8, 0x2710)
# over glibc's mmap threshold at start-up (128 KiB; it grows only when a program frees an
# mmapped chunk, which start-up does not), so glibc mmaps it: checked through mallinfo2's hblks
PLANTED_MMAPPED = 256 << 10
SYS_FUTEX = 202


class Rec(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("data", ctypes.c_void_p), ("next", ctypes.c_void_p)]


def plant_leaks() -> list:
    """Allocate the planted blocks and drop them; their addresses as hex text only.

    No planted pointer may ever be a raw word in a Python object, or a scan of obmalloc's
    arenas would find it in a freed block: so they come back only as restype c_void_p values
    (a Python int, whose 30-bit digits never spell the pointer) and are never passed back to
    C through argtypes (ctypes' c_void_p.from_param would make a c_void_p object holding
    it). strdup fills a block from a bytes object; calloc returns the big one zeroed without
    touching its pages.
    """
    out = []
    for k, size in enumerate(PLANTED_SIZES):
        out.append("%x" % libc.strdup((b"planted leak %d " % k).ljust(size - 1, b".")))
    hblks = libc.mallinfo2().hblks
    out.append("%x" % libc.calloc(1, PLANTED_MMAPPED))
    if libc.mallinfo2().hblks != hblks + 1:
        raise SystemExit("the big planted leak was not mmapped (mmap threshold raised?)")
    return out


def ballast() -> list:
    """Python objects of the holders' sizes, enough to fill every obmalloc pool and arena
    that start-up left part-used: the holders made next are then in arenas mmapped now, below
    the other anonymous mappings, rather than in one that happens to follow a shared
    object's data (which a scan could take for its bss)."""
    return [(ctypes.c_void_p(), Rec(), [None] * 4) for _ in range(20000)]


def keep_blocks():
    """The blocks held only through Python objects; returns (holders, kept addresses as
    text)."""
    voids = [ctypes.c_void_p(libc.malloc(0x40 + 8 * (i % 8))) for i in range(64)]
    arr = (ctypes.c_void_p * 200)()
    for i in range(200):
        arr[i] = libc.malloc(0x20 + 0x10 * (i % 16))
    head = Rec()
    prev = None
    for i in range(30):  # a chain in the C heap: block i's first word points to block i+1
        b = libc.malloc(0x30)
        ctypes.memset(b, 0, 0x30)
        if prev is None:
            head.next = b
        else:
            ctypes.c_void_p.from_address(prev).value = b
        prev = b
    head.name = libc.malloc(0x18)
    head.data = libc.malloc(0x1000)
    kept = ["%x" % voids[5].value, "%x" % ctypes.cast(arr, ctypes.c_void_p).value,
            "%x" % head.next]
    return (voids, arr, head), kept


def scrub_stack(depth: int = 0):
    """Overwrite the C stack below this point (where ctypes' call frames left malloc's return
    values) with Python frames that call back from C: qsort calls a ctypes callback, which
    enters the interpreter again, a few levels deep."""
    cmp = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

    def compare(a, b):
        if depth < 6:
            scrub_stack(depth + 1)
        return 0

    buf = (ctypes.c_int * 4)()
    libc.qsort(buf, 4, 4, cmp(compare))


def worker(k: int, ready: threading.Event, stop: threading.Event, tids: list) -> None:
    tids[k] = threading.get_native_id()
    table = {}
    for i in range(3000):
        table["key-%d-%d" % (k, i)] = ("value %d " % i) * (1 + i % 40)
        table[i] = bytes([i & 0xFF]) * (16 + (i * 37) % 3000)
    big = [bytes(300_000 + 1000 * j) for j in range(3)] + ["x" * (200_000 + k)]
    rows = [table[i] for i in range(0, 3000, 3)]
    ready.set()
    stop.wait()
    print(len(table), len(big), len(rows))  # never reached while the test looks


def parked(tids: list, timeout: float = 30.0) -> None:
    """Until every thread of tids sits in futex(2)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = []
        for t in tids:
            with open("/proc/self/task/%d/syscall" % t) as f:
                states.append(f.read().split()[0])
        if all(s == str(SYS_FUTEX) for s in states):
            return
        time.sleep(0.01)
    raise SystemExit("threads did not park: %r" % states)


def main() -> None:
    mode = sys.argv[1]
    nthreads = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    # the leaks first: glibc's mmap threshold is still its start-up value, and the big one's
    # address space is fresh, not space a block freed earlier held (stale words point there)
    leaks = plant_leaks()
    scrub_stack()
    weight = ballast()
    holders, kept = keep_blocks()
    threads, stop, tids = [], threading.Event(), [0] * nthreads
    if mode == "busy":
        readies = [threading.Event() for _ in range(nthreads)]
        for k in range(nthreads):
            t = threading.Thread(target=worker, args=(k, readies[k], stop, tids), daemon=True)
            t.start()
            threads.append(t)
        for e in readies:
            e.wait(60)
    if threads:
        parked(tids)
    mi = libc.mallinfo2()  # warm up: the first call builds ctypes' ffi type for the struct
    fmt = ("READY mode=%s threads=%d leak0=%s leak1=%s leak2=%s leak3=%s kept0=%s kept1=%s "
           "kept2=%s " + " ".join("%s=%%d" % f for f, _ in Mallinfo2._fields_) + "\n")
    args = (mode, len(threads), *leaks, *kept)
    line = fmt % (args + tuple(getattr(mi, f) for f, _ in Mallinfo2._fields_))
    mi = libc.mallinfo2()
    line = fmt % (args + tuple(getattr(mi, f) for f, _ in Mallinfo2._fields_))
    os.write(1, line.encode())
    while True:
        time.sleep(3600)
    print(holders, weight)  # they stay referenced from this frame


if __name__ == "__main__":
    main()
