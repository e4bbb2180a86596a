"""libumem's cache-level dcmds: ::umem_status, ::umem_cache, ::umastat, ::umem_verify,
::umem_malloc_dist and ::umem_malloc_info, shaped as mdb's libumem module prints them."""

from __future__ import annotations

import io

from mdbpy.dcmd import NUM, Flag, Opt, dcmd
from mdbpy.errors import MdbError, UsageError
from mdbpy.jsonout import Table, cells, emit, wants_json
from mdbpy.output import human_size

from mdbpy_commands.umem import layouts as L
from mdbpy_commands.umem.contents import cache_contents, held_count
from mdbpy_commands.umem.state import Umem, missing
from mdbpy_commands.umem.verify import verifiable, verify_cache

READY_STATES = {L.UMEM_READY_INIT_FAILED: "initialization failed",
                L.UMEM_READY_STARTUP: "uninitialized",
                L.UMEM_READY_INITING: "initialization in process",
                L.UMEM_READY: "ready and active", 0: "not loaded into address space"}


def _log_size(umem, name: str, label: str) -> str:
    ptr = umem.readvar(name, default=0)
    if not ptr:
        return ""
    lh = umem.view("umem_log_header", ptr)
    size = lh.lh_chunksize * lh.lh_nchunks
    if size % (1 << 20) == 0:
        return f"{label}={size >> 20}m "
    if size % 1024 == 0:
        return f"{label}={size >> 10}k "
    return f"{label}={size} "


ERR_SIZE = 8192  # misc.c's ERR_SIZE: the ring's size when only DWARF locates it


def message_buffer(umem) -> str:
    """libumem's error ring (umem_error_buffer from umem_error_begin), oldest first. It is a
    static: found in .symtab, else in the library's DWARF, which also tells when the
    compiler dropped it (it is only ever written: gcc -O2 removes it and its stores)."""
    s = umem.sym("umem_error_buffer")
    if s is not None:
        addr, size = s.addr, s.size
    else:
        addr, size = umem.dwarf_variable("umem_error_buffer", "misc.c"), ERR_SIZE
        if addr == 0:
            raise MdbError(f"{umem.obj.name} keeps no message buffer: its compiler dropped "
                           "umem_error_buffer (only ever written), so libumem's messages "
                           "went to stderr only")
        if addr is None:
            raise MdbError("unable to look up umem_error_buffer")
    raw = umem.mem.read(addr, min(size, 1 << 20))
    begin = umem.readvar("umem_error_begin", default=0) % max(len(raw), 1)
    text = raw[begin:] + raw[:begin]
    return text.replace(b"\0", b"").decode("latin-1")


@dcmd("umem_debug", "toggle umem dcmd/walk debugging", enabled=missing,
      example="::umem_debug", help="""\
Switch the umem module's tracing on or off. While it is on, the walks say what they read as
lines starting with `umem debug: ` (each cache walked, its slabs and buffer total, how many
buffers its freelists, magazines and per-thread caches hold). The setting outlasts stops and
resumes.""")
def umem_debug(inv):
    if inv.args or inv.has_addr:
        raise UsageError("::umem_debug takes no address or arguments")
    s = inv.session
    on = s.settings.get("umem.debug") != "on"
    s.settings["umem.debug"] = "on" if on else "off"
    inv.out.write(f"umem: debugging is now {'on' if on else 'off'}\n")
    return 0


@dcmd("umem_status", "Print umem status and message buffer", enabled=missing,
      example="::umem_status", help="""\
The state of libumem (umem_ready), its concurrency (CPU caches per cache), the sizes of the
active logs (transaction, content, fail, slab; `(inactive)` when UMEM_LOGGING is off) and the
message buffer where libumem writes why it aborted.""")
def umem_status(inv):
    umem = Umem.get(inv.session)
    if inv.args or inv.has_addr:
        raise UsageError("::umem_status takes no address or arguments")
    out = inv.out
    out.write(f"Status:\t\t{READY_STATES.get(umem.ready, 'unknown (umem_ready invalid)')}\n")
    if umem.ready == 0:
        return 0
    out.write(f"Concurrency:\t{umem.ncpus}\n")
    logs = "".join(_log_size(umem, f"umem_{n}_log", label) for n, label in (
        ("transaction", "transaction"), ("content", "content"), ("failure", "fail"),
        ("slab", "slab")))
    if not umem.readvar("umem_logging", default=0):
        logs += "(inactive)"
    out.write(f"Logs:\t\t{logs}\n")
    out.write("Message buffer:\n")
    try:
        out.write(message_buffer(umem) + "\n")
    except MdbError as e:
        # libumem builds whose compiler dropped the unused ring have none: a note, as the
        # status itself was printed
        inv.session.warn(str(e))
    return 0


CACHE_ROW = "{addr:016x} {name:<25s} {flags:04x} {cflags:08x} {bufsize:8d} {buftotal:8d}"


@dcmd("umem_cache", "print a umem cache", addr="?", enabled=missing,
      example="::umem_cache", help="""\
One line per cache: address, name, flags (UMF_*), creation flags (UMC_*), buffer size and the
number of buffers its slabs hold. With an address, that cache only.""")
def umem_cache(inv):
    umem = Umem.get(inv.session)
    if inv.args:
        raise UsageError("::umem_cache takes no arguments")
    caches = [umem.cache(inv.addr)] if inv.has_addr else umem.caches()
    t = Table(CACHE_ROW, head=[f"{'ADDR':<16s} {'NAME':<25s} {'FLAG':>4s} {'CFLAG':>8s} "
                               f"{'BUFSIZE':>8s} {'BUFTOTL':>8s}"] if inv.header else [])
    for c in caches:
        t.add(addr=c.addr, name=c.cstr("cache_name"), flags=c.cache_flags & 0xFFFFFFFF,
              cflags=c.cache_cflags & 0xFFFFFFFF, bufsize=c.cache_bufsize,
              buftotal=c.cache_buftotal)
    t.show(inv, "umem_cache", "caches")
    return 0


def cache_available(umem, c) -> int:
    """Free buffers as umastat counts them: the rounds of the magazine layer (full depot
    magazines, v2's per-CPU depot lists, the CPU caches' and v2's rseq caches' loaded
    magazines) and the free chunks of partial slabs."""
    avail = len(umem.magazine_rounds(c))
    for s in umem.slabs(c, partial=True):
        avail += s.slab_chunks - s.slab_refcnt
    return avail


UMASTAT_CACHE_HDR = (
    "cache                        buf     buf     buf     buf  memory     alloc alloc\n"
    "name                        size  in use  in ptc   total  in use   succeed  fail\n")
CACHE_DASHES = "------------------------- ------ ------- ------- ------- ------- --------- -----"
UMASTAT_VMEM_HDR = (
    "vmem                         memory     memory    memory     alloc alloc \n"
    "name                         in use      total    import   succeed  fail \n")
VMEM_DASHES = "------------------------- --------- ---------- --------- --------- ----- "


@dcmd("umastat", "umem allocator stats", enabled=missing, example="::umastat", help="""\
Per cache: buffer size, buffers in use (total minus those free in magazines, partial slabs
and per-thread caches), buffers in per-thread caches ('-' where the cache has none: every
cache before v2, and debug caches), total buffers, memory
in use (live slabs times slab size), successful and failed allocations; a total per arena;
then every vmem arena (indented under its source) with its memory in use, total, imported,
and its allocation counts.""")
def umastat(inv):
    umem = Umem.get(inv.session)
    if inv.args:
        raise UsageError("::umastat takes no arguments")
    out = io.StringIO() if wants_json(inv) else inv.out
    out.write(UMASTAT_CACHE_HDR + CACHE_DASHES + "\n")
    t = Table("{name:<25s} {bufsize:6d} {inuse:7d} {ptc:>7s} {total:7d} {memory!H:>7s} "
              "{alloc:9d} {fail:5d}")
    per_arena: dict[int, list[int]] = {}
    for c in umem.caches():
        alloc = c.cache_slab_alloc + c.cache_full.ml_alloc
        for cc in umem.cpu_caches(c):
            alloc += cc.cc_alloc
        total = c.cache_buftotal
        held = held_count(umem, c)
        inuse = total - cache_available(umem, c) - (held or 0)
        mem = (c.cache_slab_create - c.cache_slab_destroy) * c.cache_slabsize
        ptc = "-" if held is None else str(held)
        kv = per_arena.setdefault(c.cache_arena, [0, 0, 0])
        kv[0] += mem
        kv[1] += alloc
        kv[2] += c.cache_alloc_fail
        out.write(cells(t.row, **t.add(
            name=c.cstr("cache_name"), addr=c.addr, bufsize=c.cache_bufsize, inuse=inuse,
            ptc=ptc, total=total, memory=mem, alloc=alloc, fail=c.cache_alloc_fail)) + "\n")
    out.write(CACHE_DASHES + "\n")
    arenas = umem.arenas_prefix()
    totals = []  # the Total [arena] lines: the caches' sums per arena they allocate from
    for v in arenas:
        kv = per_arena.get(v.addr)
        if kv is None or kv[1] == 0:
            continue
        r = dict(arena=v.cstr("vm_name"), addr=v.addr, memory=kv[0], alloc=kv[1], fail=kv[2])
        totals.append(r)
        out.write(f"Total [{r['arena']}]{'':{max(17 - len(r['arena']), 0)}s} {'':6s} {'':7s} "
                  f"{'':7s} {'':7s} {human_size(r['memory']):>7s} {r['alloc']:9d} "
                  f"{r['fail']:5d}\n")
    out.write(CACHE_DASHES + " \n\n")
    out.write(UMASTAT_VMEM_HDR + VMEM_DASHES + "\n")
    vmem = []
    for v in arenas:
        k = v.vm_kstat
        r = dict(name=v.cstr("vm_name"), addr=v.addr, depth=umem.depth(v),
                 inuse=k.vk_mem_inuse, total=k.vk_mem_total, imported=k.vk_mem_import,
                 alloc=k.vk_alloc, fail=k.vk_fail)
        vmem.append(r)
        ind = 4 * r["depth"]
        out.write(f"{'':{ind}s}{r['name']:<{max(25 - ind, 0)}s} "
                  f"{human_size(r['inuse']):>9s} {human_size(r['total']):>10s} "
                  f"{human_size(r['imported']):>9s} {r['alloc']:9d} {r['fail']:5d} \n")
    out.write(VMEM_DASHES + "\n")
    if out is not inv.out:  # JSON: the rows of the three tables
        emit(inv, "umastat", caches=t.rows, totals=totals, vmem=vmem)
    return 0


@dcmd("umem_verify", "check integrity of umem-managed memory", addr="?", enabled=missing,
      example="::umem_verify", help="""\
Without an address, one line per cache with redzone checking: clean, or how many buffers are
corrupt. With a cache address, each corrupt buffer is named: a free buffer whose free pattern
was overwritten (with the first bad word), or whose redzone or buftag is corrupt; an allocated
buffer whose redzone size encoding, redzone signature or buftag is corrupt.""")
def umem_verify(inv):
    umem = Umem.get(inv.session)
    if inv.args:
        raise UsageError("::umem_verify takes no arguments")
    out = inv.out
    if not inv.has_addr:
        out.write(f"{'Cache Name':<31s} {'Addr':<16s} {'Cache Integrity':<20s}\n")
        for c in umem.caches():
            if not verifiable(c):
                continue
            bad = verify_cache(umem, c)
            state = "clean" if not bad else \
                f"{len(bad)} corrupt buffer{'s' if len(bad) > 1 else ''}"
            out.write(f"{c.cstr('cache_name'):<31s} {c.addr:>16x} {state}\n")
        return 0
    c = umem.cache(inv.addr)
    if not verifiable(c):
        raise MdbError(f"cache {inv.addr:x} ({c.cstr('cache_name')}) does not have redzone "
                       "checking enabled")
    out.write(f"Summary for cache '{c.cstr('cache_name')}'\n")
    bad = verify_cache(umem, c)
    for b in bad:
        out.write(f"  {b.message()}\n")
    if not bad:
        out.write("  clean\n")
    return 0


# -- malloc ---------------------------------------------------------------------------------
# The tags libumem's malloc.c writes before the pointer it returns, each a malloc_data_t (the
# size given to umem_alloc: the request plus the tags; and the stat word
# UMEM_MALLOC_ENCODE(magic, size) = magic - size), as (magic of the tag at buf+0, magic of
# the tag at buf+8), None where that tag is not written: the one tag of a umem_alloc of at
# most UMEM_SECOND_ALIGN bytes; the tag 8 bytes in (the first 8 left alone) of a larger one,
# cached or oversize; an allocation over 4 GiB's two (the size's high half, then its low
# half); memalign's two (high half, low half). The object follows the last tag.
TAG_SMALL = (L.MALLOC_MAGIC, None)
TAG_SECOND = (None, L.MALLOC_SECOND_MAGIC)
TAG_HUGE = (L.MALLOC_MAGIC, L.MALLOC_OVERSIZE_MAGIC)
TAG_MEMALIGN = (L.MEMALIGN_MAGIC, L.MEMALIGN_MAGIC)


def cache_tags(c) -> tuple:
    """The tags malloc wrote in a buffer of umem_alloc cache c: umem_alloc serves a size from
    the smallest cache that holds it, so a cache of at most UMEM_SECOND_ALIGN bytes serves
    only the one-tag sizes, and every larger cache only larger ones."""
    return TAG_SECOND if c.cache_bufsize > L.UMEM_SECOND_ALIGN else TAG_SMALL


def malloc_sizes(umem, c):
    """The requested sizes of the malloc'd buffers of a umem_alloc_* cache (one whose header
    cannot be read is not counted) and the overhead each carries, as numpy arrays."""
    import numpy as np

    ok, size, head = malloc_headers(umem, cache_contents(umem, c).allocated(), cache_tags(c),
                                    either=True)
    mallocsz = size[ok] - np.uint64(head)
    overhead = np.uint64(head) + np.uint64(c.cache_chunksize) - size[ok]
    return mallocsz, overhead


MALLOC_MAGICS = (L.MALLOC_MAGIC, L.MALLOC_SECOND_MAGIC)


def malloc_headers(umem, bufs, tags, either: bool = False):
    """(which of bufs begin with the malloc header `tags` (TAG_*: each tag written decodes to
    its magic, as free() checks it, and the size recorded covers the header); the size the
    header records (umem_alloc's, the tags included); the header's length) of buffers of
    umem (numpy columns, the length an int). either: a one-tag header may hold either
    malloc magic, as mdb's ::umem_malloc_info counts them (um_umem_buffer_cb); the typegraph,
    which moves an object by what it decides, takes only the magic malloc.c writes there."""
    import numpy as np

    from mdbpy.heap.gather import session_gather

    g = session_gather(umem.session)
    ok = np.ones(len(bufs), bool)
    size = np.zeros(len(bufs), np.uint64)
    for k, magic in enumerate(tags):
        if magic is None:
            continue
        tag, read = g.read(bufs + np.uint64(k * L.MALLOC_DATA_SIZE), L.MALLOC_DATA_SIZE, "<u4")
        tag = tag.reshape(-1, 2).astype(np.uint64)
        decoded = (tag[:, 0] + tag[:, 1]) & np.uint64(0xFFFFFFFF)
        if either and magic in MALLOC_MAGICS:
            ok &= read & np.isin(decoded, np.array(MALLOC_MAGICS, np.uint64))
        else:
            ok &= read & (decoded == magic)
        size = (size << np.uint64(32)) | tag[:, 0]
    head = L.MALLOC_DATA_SIZE * len(tags) if tags[-1] is not None else L.MALLOC_DATA_SIZE
    return ok & (size >= np.uint64(head)), size, head


def max_bucket(umem) -> int:
    return umem.maxbuf - 2 * L.MALLOC_DATA_SIZE


def distribution(out, counts, lo: int, hi: int, maxbins: int, minbinsize: int,
                 geometric: bool) -> None:
    """mdb's dist.c histogram of counts[lo..hi] with its header."""
    import math

    nbucks = buckets = hi - lo + 1
    total = int(sum(counts[lo:hi + 1])) or 1
    if maxbins:
        buckets = min(buckets, maxbins)
    if minbinsize > 1:
        buckets = min(buckets, nbucks // minbinsize)
        if buckets == 0:
            buckets, minbinsize = 1, nbucks
    if geometric and buckets > 1:
        beg = lo or 1
        r = math.exp(math.log((hi + 1) / beg) / buckets)
        b, last = float(beg), 0 if lo == 0 else beg
        bounds = []
        step = max(minbinsize, 1)
        for _ in range(buckets):
            bounds.append(last)
            b *= r
            nxt = int(b)
            last = nxt if nxt > last + step - 1 else last + step
        bounds.append(hi + 1)
    else:
        bounds = [lo + (i * nbucks) // buckets for i in range(buckets)] + [hi + 1]
    dashes = "-" * 18
    out.write(f"{'malloc size':>11s}  {dashes} Distribution {dashes} count\n")
    for i in range(buckets):
        bb, be = bounds[i], bounds[i + 1] - 1
        n = int(sum(counts[bb:be + 1]))
        ats = 50 * n // total
        rng = str(bb) if bb == be else f"{bb}-{be}"
        out.write(f"{rng:>11s} |{'@' * ats}{' ' * (50 - ats)} {n}\n")


# the histogram options of ::umem_malloc_dist and ::umem_malloc_info
DIST_OPTS = [Flag("d", "raw", "print raw `size<TAB>count` lines"),
             Flag("g", "geometric", "use geometric bins"),
             Opt("b", "maxbins", NUM, "cap the number of bins"),
             Opt("B", "minbinsize", NUM, "the smallest bin width")]


def _distribution(inv, counts: list[int], lo: int, hi: int) -> None:
    """distribution() with the histogram options of the invocation."""
    o = inv.opts
    distribution(inv.out, counts, lo, hi, o.maxbins or 0, o.minbinsize or 0, o.geometric)


@dcmd("umem_malloc_dist", "report distribution of outstanding malloc()s", opts=DIST_OPTS,
      enabled=missing, example="::umem_malloc_dist -b 16", help="""\
A histogram of the sizes passed to malloc() of every outstanding malloc'd buffer in the
umem_alloc_* caches (oversized allocations are not included). Without -b or -B every size has
its own line.""")
def umem_malloc_dist(inv):
    import numpy as np

    umem = Umem.get(inv.session)
    if inv.has_addr:
        raise UsageError("::umem_malloc_dist takes no address")
    inv.no_operands()
    top = max_bucket(umem)
    counts = np.zeros(top + 1, np.int64)
    for c in umem.caches():
        if c.cstr("cache_name").startswith("umem_alloc_"):
            sizes, _ov = malloc_sizes(umem, c)
            sizes = sizes[sizes <= np.uint64(top)].astype(np.int64)
            counts += np.bincount(sizes, minlength=top + 1)[:top + 1]
    if inv.opts.raw:
        inv.out.write("".join(f"{i}\t{int(n)}\n" for i, n in enumerate(counts.tolist())))
        return 0
    _distribution(inv, counts.tolist(), 0, top)
    inv.out.write("\n")
    return 0


@dcmd("umem_malloc_info", "report information about malloc()s by cache", addr="?",
      opts=DIST_OPTS, enabled=missing,
      example="::umem_malloc_info", help="""\
Per umem_alloc_* cache: buffer size, the largest malloc it serves, how many of its buffers are
malloc'd, their average and total requested size, the overhead (malloc's tag, round-off, the
debug buftag and a per-slab share) and that overhead as a percentage of the requested bytes.
Any of -d, -g, -b, -B adds the cache's size histogram (see ::umem_malloc_dist).""")
def umem_malloc_info(inv):
    import numpy as np

    umem = Umem.get(inv.session)
    inv.no_operands()
    o = inv.opts
    verbose = o.raw or o.geometric or o.maxbins is not None or o.minbinsize is not None
    caches = [umem.cache(inv.addr)] if inv.has_addr else umem.caches()
    first = True
    for c in caches:
        name = c.cstr("cache_name")
        skip = not name.startswith("umem_alloc_")
        if skip and inv.has_addr:
            inv.session.warn(f'umem_malloc_info: cache "{name}" is not used by malloc()')
        if (not verbose and first and inv.header) or (verbose and not skip):
            inv.out.write(f"{'CACHE':<16s} {'BUFSZ':>6s} {'MAXMAL':>6s} {'BUFMALLC':>8s} "
                          f"{'AVG_MAL':>8s} {'MALLOCED':>10s} {'OVERHEAD':>10s} {'%OVER':>6s}\n")
        first = False
        if skip:
            continue
        maxmal = c.cache_bufsize - L.MALLOC_DATA_SIZE * (
            2 if c.cache_bufsize > L.UMEM_SECOND_ALIGN else 1)
        sizes, ov = malloc_sizes(umem, c)
        n = len(sizes)
        allocated = int(sizes.sum())
        overhead = int(ov.sum())
        avg = (allocated + (n - 1) // 2) // n if n else 0
        slabs = umem.slabs(c)
        if n and slabs:
            chunks = slabs[0].slab_chunks
            if chunks and c.cache_chunksize and chunks <= c.cache_slabsize // c.cache_chunksize:
                perslab = c.cache_slabsize - c.cache_chunksize * chunks
                if c.cache_flags & L.UMF_HASH:
                    perslab += umem.layouts["umem_slab"].size + chunks * (
                        umem.layouts["umem_bufctl_audit"].size if c.cache_flags & L.UMF_AUDIT
                        else umem.layouts["umem_bufctl"].size)
                overhead += perslab * n // chunks
        pct = 1000 * overhead // allocated if allocated else 0
        inv.out.write(f"{c.addr:016x} {c.cache_bufsize:6d} {maxmal:6d} {n:8d} {avg:8d} "
                      f"{allocated:10d} {overhead:10d} {pct // 10:3d}.{pct % 10}%\n")
        if not verbose:
            continue
        counts = np.bincount(sizes.astype(np.int64), minlength=maxmal + 1).tolist()
        lower = [s for s in umem_alloc_sizes(umem) if s < c.cache_bufsize]
        lo = 0
        if lower:
            lo = lower[-1] - L.MALLOC_DATA_SIZE * (2 if lower[-1] > L.UMEM_SECOND_ALIGN
                                                   else 1) + 1
        if o.raw:
            inv.out.write("".join(f"{i}\t{counts[i]}\n" for i in range(lo, maxmal + 1)) + "\n")
        else:
            inv.out.write("\n")
            _distribution(inv, counts, lo, maxmal)
            inv.out.write("\n")
    return 0


def umem_alloc_sizes(umem) -> list[int]:
    """umem_alloc_sizes[]: the umem_alloc_* buffer sizes (0-terminated); when a stripped
    library lacks that static table, the sizes of the umem_alloc_* caches made from it."""
    s = umem.sym("umem_alloc_sizes")
    if s is None:
        return sorted({c.cache_bufsize for c in umem.caches()
                       if c.cstr("cache_name").startswith("umem_alloc_")})
    raw = umem.mem.read(s.addr, min(s.size, 4096))
    out = []
    for i in range(0, len(raw) - 3, 4):
        v = int.from_bytes(raw[i:i + 4], "little")
        if not v:
            break
        out.append(v)
    return out
