"""dcmds over libumem's audit records (umem_bufctl_audit_t): ::bufctl, ::bufctl_audit,
::allocdby, ::freedby, ::umalog, ::umem_log and ::umausers.

Their columns are mdb's: a THREAD in ::bufctl (and ::bufctl -v, findleaks -d, ::whatis) is
mdb's `%d` of the pthread_t, its low 32 bits as a signed number, while ::umem_log and
::umausers -f print the whole value (`%p`) that `-t` and `::allocdby` take. Where mdb's Linux
port prints less than the truth, these print the truth: ::umalog's times are real elapsed time
(libumem's gethrtime() is seconds << 32 | a sub-second count, microseconds before v2 and
nanoseconds from v2 on, not a count of nanoseconds); stacks are symbolized whenever a record
has frames, with a note on stderr when the records shown have none (portable libumem before v2
records none: its getpcstack() is a stub).
"""

from __future__ import annotations

from mdbpy.dcmd import NUM, STR, Flag, Operand, Opt, dcmd
from mdbpy.errors import MdbError, UsageError
from mdbpy.output import radix_str
from mdbpy.symbols.table import named_at

from mdbpy_commands.umem import layouts as L
from mdbpy_commands.umem.state import Umem, missing
from mdbpy_commands.umem.walkers import buffers, by_thread, log_records, walk_bufctl_history

NO_STACKS = ("note: these records hold no stack traces (bc_depth 0): portable libumem's "
             "getpcstack() records none")


def note_stacks(session, records) -> None:
    """The no-stacks note (once per session state), when every record shown has depth 0."""
    recs = list(records)
    if recs and all(r.bc_depth <= 0 for r in recs) and not session.cache.get("umem_noted"):
        session.cache["umem_noted"] = True
        session.warn(NO_STACKS)


def caller(session, stack) -> int | None:
    """The first frame outside libumem (mdb: the first not in umem_* / vmem_*)."""
    umem = Umem.get(session)
    for pc in stack:
        if not umem.in_allocator(pc):
            return pc
    return None


def number(session, word) -> int:
    """An option value: a number in the current radix, or a symbol's address (so that
    `-c leak_some` names a function)."""
    from mdbpy.dcmd import to_number

    try:
        return to_number(word, session.radix)
    except UsageError:
        s = session.symbols.lookup(str(word))
        if s is None:
            raise UsageError(f"invalid number or symbol '{word}'") from None
        return s.addr


def matches_caller(session, stack, want: int) -> bool:
    """-c: a pc in [want, want+8) (mdb's test), or a frame of the function that starts exactly
    at want: one whose call is in it, as the stacks name their frames (named_at: a return
    address past the end of a function that ends in a noreturn call is that function's)."""
    hit = session.symbols.lookup_addr(want)
    if hit is not None and hit[1] == 0:
        lo, hi = hit[0].addr, hit[0].addr + max(hit[0].size, 1)
        return any(lo <= named_at(pc) < hi for pc in stack)
    return any(want <= pc < want + 8 for pc in stack)


def piped(inv, addr: int) -> None:
    inv.out.write(radix_str(addr, inv.session.radix, prefix=True) + "\n")


def thread_id(thread: int) -> int:
    """A thread as mdb's `%d` prints a pthread_t: its low 32 bits, signed."""
    low = thread & 0xFFFFFFFF
    return low - (1 << 32) if low & 0x80000000 else low


VERBOSE_HEAD = [f"{'ADDR':>16s} {'BUFADDR':>16s} {'TIMESTAMP':>16s} {'THREAD':>16s}",
                f"{'':16s} {'CACHE':>16s} {'LASTLOG':>16s} {'CONTENTS':>16s}"]


def verbose_lines(session, addr: int, bc, stack) -> list[str]:
    """One record as `::bufctl -v` prints it (after its header): two value lines, the stack
    indented 17 columns, a blank line."""
    lines = [f"{addr:16x} {bc.bc_addr:16x} {bc.bc_timestamp:16x} {thread_id(bc.bc_thread):16d}",
             f"{'':16s} {bc.bc_cache:16x} {bc.bc_lastlog:16x} {bc.bc_contents:16x}"]
    return lines + [" " * 17 + session.format_addr(pc, ret=True) for pc in stack] + [""]


# the record filters ::bufctl and ::vmem_seg share (-c is a pc or a function: number())
CALLER = Opt("c", "caller", STR, "only records with this pc or function in their stack")
EARLIEST = Opt("e", "earliest", NUM, "only records from this raw timestamp on")
LATEST = Opt("l", "latest", NUM, "only records up to this raw timestamp")
THREAD = Opt("t", "thread", NUM, "only records of this thread")


def _bufctl_one(inv, addr: int, opts, header: bool) -> bool:
    """Print one bufctl (or pass it on); False when a filter drops it."""
    s = inv.session
    umem = Umem.get(s)
    bc = umem.bufctl(addr)
    stack = umem.stack(bc)
    if opts.caller is not None and not matches_caller(s, stack, opts.caller):
        return False
    if opts.thread is not None and bc.bc_thread != opts.thread:
        return False
    if opts.earliest and bc.bc_timestamp < opts.earliest:
        return False
    if opts.latest and bc.bc_timestamp > opts.latest:
        return False
    if opts.addr and bc.bc_addr != opts.addr:
        return False
    if inv.piped_out:
        piped(inv, addr)
        return True
    if header:
        if opts.verbose:
            inv.out.write("\n".join(VERBOSE_HEAD) + "\n")
        else:
            inv.out.write(f"{'ADDR':<16s} {'BUFADDR':<16s} {'TIMESTAMP':<12s} {'THRD':>5s} "
                          "CALLER\n")
    if opts.verbose:
        inv.out.write("\n".join(verbose_lines(s, addr, bc, stack)) + "\n")
    else:
        pc = caller(s, stack)
        who = f" {s.format_addr(pc, ret=True)}" if pc is not None else ""
        inv.out.write(f"{addr:016x} {bc.bc_addr:016x} {bc.bc_timestamp:12x} "
                      f"{thread_id(bc.bc_thread):5d}{who}\n")
    return True


@dcmd("bufctl", "print or filter a bufctl", enabled=missing, addr=":", opts=[
    Flag("v", "verbose", "every field and the whole stack"),
    Flag("h", "history", "also the record's history from the transaction log"),
    Opt("a", "addr", NUM, "only records of this buffer"), CALLER, EARLIEST, LATEST, THREAD],
      example="::walk bufctl | ::bufctl -v", help="""\
Print the audit record (umem_bufctl_audit_t) at addr: buffer, timestamp, thread and caller (the
first frame outside umem_*). The filters drop the records that do not match. Piped, only the
addresses of the records kept are passed on.""")
def bufctl(inv):
    if not inv.has_addr:
        raise UsageError("::bufctl needs a bufctl address")
    inv.no_operands()
    opts = inv.opts
    if opts.caller is not None:
        opts.caller = number(inv.session, opts.caller)
    umem = Umem.get(inv.session)
    if opts.history:
        shown = []
        first = True
        for a in walk_bufctl_history(inv.session, inv.addr):
            if _bufctl_one(inv, a, opts, first and not inv.piped_out):
                first = False
                shown.append(umem.bufctl(a))
        if not inv.piped_out:
            inv.out.write("\n")
        note_stacks(inv.session, shown)
        return 0
    if _bufctl_one(inv, inv.addr, opts, inv.header and not inv.piped_out) and opts.verbose \
            and not inv.piped_out and inv.header:
        note_stacks(inv.session, [umem.bufctl(inv.addr)])
    return 0


@dcmd("bufctl_audit", "print a bufctl_audit", addr=":", enabled=missing,
      example="addr::bufctl_audit", help="The same as `addr::bufctl -v`.")
def bufctl_audit(inv):
    if not inv.has_addr or inv.args:
        raise UsageError("usage: addr::bufctl_audit")
    inv.args = ["-v"]
    return bufctl(inv)


def _by_thread(inv, which: str):
    if not inv.has_addr or inv.args:
        raise UsageError(f"usage: thread::{inv.name}")
    rows = by_thread(inv.session, inv.addr, which)
    if inv.piped_out:
        for b, _r in rows:
            piped(inv, b)
        return 0
    umem = Umem.get(inv.session)
    if inv.header:
        inv.out.write(f"{'BUFCTL':<16s} {'TIMESTAMP':>12s} CALLER\n")
    for b, rec in rows:
        pc = caller(inv.session, umem.stack(rec))
        who = inv.session.format_addr(pc, ret=True) if pc is not None else ""
        inv.out.write(f"{b:016x} {rec.bc_timestamp:12x} {who}".rstrip() + "\n")
    note_stacks(inv.session, [r for _b, r in rows])
    return 0


@dcmd("allocdby", "given a thread, print its allocated buffers", addr=":", enabled=missing,
      example="<thread>::allocdby", help="""\
The bufctls of buffers the thread (a pthread_t, as ::umem_log shows it) allocated and that are
still allocated, newest first, with timestamp and caller.""")
def allocdby(inv):
    return _by_thread(inv, "ctl")


@dcmd("freedby", "given a thread, print its freed buffers", addr=":", enabled=missing,
      example="<thread>::freedby", help="""\
The bufctls of free buffers the thread freed last, newest first, with timestamp and
caller.""")
def freedby(inv):
    return _by_thread(inv, "freectl")


def elapsed(newest: int, ts: int, ticks: int = 1_000_000) -> str:
    """`T-sec.nsec` between two gethrtime() values of portable libumem (sec << 32 | a count of
    1/ticks seconds: layouts.hrtime_ticks)."""
    def nsec(t):
        return (t >> 32) * 1_000_000_000 + (t & 0xFFFFFFFF) * (1_000_000_000 // ticks)

    d = max(nsec(newest) - nsec(ts), 0)
    return f"T-{d // 1_000_000_000}.{d % 1_000_000_000:09d}"


@dcmd("umalog", "display umem transaction log and stack traces",
      operands=[Operand("fail|slab", "the failure or the slab log instead", optional=True)],
      enabled=missing, example="::umalog", help="""\
The transaction log (or the failure or slab log), newest first: for each record the time
before the newest one (real elapsed time: portable libumem stamps records with seconds << 32 |
microseconds, or nanoseconds from v2 on), the buffer and its cache, then the record's
stack.""")
def umalog(inv):
    if inv.has_addr or len(inv.args) > 1:
        raise UsageError("usage: ::umalog [ fail | slab ]")
    name = "umem_transaction_log"
    if inv.args:
        name = {"fail": "umem_failure_log", "slab": "umem_slab_log"}.get(inv.args[0])
        if name is None:
            raise UsageError(f"unknown log '{inv.args[0]}'")
    umem = Umem.get(inv.session)
    header = umem.readvar(name)
    if not header:
        raise MdbError(f"{name} is disabled (UMEM_LOGGING does not name it)")
    recs = log_records(umem, header)
    newest = recs[0][1].bc_timestamp if recs else 0
    for _a, bc in recs:
        inv.out.write(f"\n{elapsed(newest, bc.bc_timestamp, L.hrtime_ticks(umem.version))}"
                      f"  addr={bc.bc_addr:x}  "
                      f"{umem.cache_name(bc.bc_cache)}\n")
        for pc in umem.stack(bc):
            inv.out.write(f"\t {inv.session.format_addr(pc, ret=True)}\n")
    note_stacks(inv.session, [r for _a, r in recs])
    return 0


@dcmd("umem_log", "dump umem transaction log", addr="?", enabled=missing,
      example="::umem_log", help="""\
Every record of the transaction log, newest first (slots never written are left out): the CPU
whose current chunk holds it (blank otherwise), its address, the buffer, the raw timestamp and
the thread. With an address, that record only.""")
def umem_log(inv):
    umem = Umem.get(inv.session)
    header = umem.readvar("umem_transaction_log")
    if not header:
        raise MdbError("no umem transaction log")
    lh = umem.view("umem_log_header", header)
    clh = umem.layouts["umem_cpu_log_header"]
    cpus = []
    for i in range(umem.ncpus):
        c = clh.view(umem.mem, lh.addr_of("lh_cpu") + i * clh.size)
        cpus.append((lh.lh_base + c.clh_chunk * lh.lh_chunksize, c.clh_current))
    if inv.header:
        inv.out.write(f"{'CPU':>3s} {'ADDR':<16s} {'BUFADDR':<16s} {'TIMESTAMP':>16s} THREAD\n")
    rows = [(inv.addr, umem.bufctl(inv.addr))] if inv.has_addr else log_records(umem, header)
    for a, bc in rows:
        cpu = next((f"{i:3d}" for i, (lo, hi) in enumerate(cpus) if lo <= a < hi), "   ")
        inv.out.write(f"{cpu} {a:016x} {bc.bc_addr:016x} {bc.bc_timestamp:16x} "
                      f"{bc.bc_thread:016x}\n")
    return 0


@dcmd("umausers", "display current medium and large users of the umem allocator",
      opts=[Flag("e", "all", "also the groups under 8192 bytes and under 100 allocations"),
            Flag("f", "full", "also print every buffer (its size, bufctl, thread and cache, "
                 "and its stack)")],
      operands=[Operand("cache", "only these caches", optional=True, repeat=True)],
      enabled=missing, example="::umausers -e", help="""\
Allocated buffers of UMF_AUDIT caches grouped by allocation stack and size, largest total
first.""")
def umausers(inv):
    if inv.has_addr:
        raise UsageError("::umausers takes no address")
    opts, names = inv.opts, inv.operands
    s = inv.session
    umem = Umem.get(s)
    if names:
        caches = []
        for n in names:
            c = umem.cache_named(str(n))
            if c is None:
                raise MdbError(f"unknown umem cache: {n}")
            caches.append(c)
    else:
        caches = umem.caches()
    owners: dict[tuple, list[int]] = {}  # (size, stack) -> [total, count]
    audited = 0
    shown = []
    for c in caches:
        if not c.cache_flags & L.UMF_AUDIT:
            if names:
                s.warn(f"UMF_AUDIT is not enabled for {c.cstr('cache_name')}")
            continue
        audited += 1
        size = c.cache_bufsize
        for b in buffers(s, c.addr, "ctl"):
            rec = umem.bufctl(b)
            stack = umem.stack(rec)
            shown.append(rec)
            if opts.full:
                inv.out.write(f"size {size}, addr {b:x}, thread {rec.bc_thread:x}, "
                              f"cache {c.cstr('cache_name')}\n")
                inv.out.write("".join(f"\t {s.format_addr(pc, ret=True)}\n" for pc in stack))
            o = owners.setdefault((size, stack), [0, 0])
            o[0] += size
            o[1] += 1
    if not audited and not names:
        raise MdbError("UMF_AUDIT is not enabled for any caches")
    low = not opts.all
    for (size, stack), (total, count) in sorted(owners.items(), key=lambda kv: -kv[1][0]):
        if low and total < 8192 and count < 100:
            continue
        inv.out.write(f"{total} bytes for {count} allocations with data size {size}:\n")
        inv.out.write("".join(f"\t {s.format_addr(pc, ret=True)}\n" for pc in stack))
    note_stacks(s, shown)
    return 0
