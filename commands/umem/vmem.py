"""::vmem and ::vmem_seg: libumem's vmem arenas and their segments, as mdb prints them."""

from __future__ import annotations

from mdbpy.dcmd import NUM, STR, Flag, Opt, dcmd
from mdbpy.errors import MdbError, UsageError

from mdbpy_commands.umem import layouts as L
from mdbpy_commands.umem.audit import (CALLER, EARLIEST, LATEST, THREAD, caller, matches_caller,
                                       number, piped, thread_id)
from mdbpy_commands.umem.state import Umem, missing

NAME_WIDTH = 22  # mdb's VMEM_NAMEWIDTH: the indented name is cut to 21 characters
SEG_TYPES = {"ALLC": L.VMEM_ALLOC, "ALLOC": L.VMEM_ALLOC, "FREE": L.VMEM_FREE,
             "SPAN": L.VMEM_SPAN, "ROTR": L.VMEM_ROTOR, "ROTOR": L.VMEM_ROTOR,
             "WLKR": L.VMEM_WALKER, "WALKER": L.VMEM_WALKER}


SEG_VERBOSE_HEAD = [f"{'ADDR':>16s} {'TYPE':>4s} {'START':>16s} {'END':>16s} {'SIZE':>16s}",
                    f"{'':16s} {'':4s} {'THREAD':>16s} {'TIMESTAMP':>16s} {'':16s}"]


def seg_verbose_lines(session, seg, stack) -> list[str]:
    """One segment as `::vmem_seg -v` prints it (after its header): its type, start, end and
    size; with a recorded stack also its thread (mdb's `%d`), timestamp and the frames
    indented 17 columns, then a blank line."""
    kind = L.VMEM_SEG_TYPES.get(seg.vs_type, "????")
    size = (seg.vs_end - seg.vs_start) & ((1 << 64) - 1)
    lines = [f"{seg.addr:16x} {kind:>4s} {seg.vs_start:16x} {seg.vs_end:16x} {size:16d}"]
    if stack:
        lines.append(f"{'':16s} {'':4s} {thread_id(seg.vs_thread):16d} {seg.vs_timestamp:16x}")
        lines += [" " * 17 + session.format_addr(pc, ret=True) for pc in stack] + [""]
    return lines


@dcmd("vmem", "print a vmem_t", addr="?", enabled=missing, example="::vmem", help="""\
One line per arena (parents before children, names indented two spaces per ancestor): its
address, name, bytes in use, total bytes, and successful and failed allocations. With an
address, that arena only.""")
def vmem(inv):
    umem = Umem.get(inv.session)
    if inv.args:
        raise UsageError("::vmem takes no arguments")
    arenas = [umem.arena(inv.addr)] if inv.has_addr else umem.arenas_prefix()
    if inv.header:
        inv.out.write(f"{'ADDR':<16s} {'NAME':<{NAME_WIDTH}s} {'INUSE':>10s} {'TOTAL':>12s} "
                      f"{'SUCCEED':>9s} {'FAIL':>5s}\n")
    for v in arenas:
        name = (" " * (2 * umem.depth(v)) + v.cstr("vm_name"))[:NAME_WIDTH - 1]
        k = v.vm_kstat
        inv.out.write(f"{v.addr:016x} {name:<{NAME_WIDTH}s} {k.vk_mem_inuse:10d} "
                      f"{k.vk_mem_total:12d} {k.vk_alloc:9d} {k.vk_fail:5d}\n")
    return 0


@dcmd("vmem_seg", "print or filter a vmem_seg", enabled=missing, addr=":", opts=[
    Flag("s", "size", "print the size instead of the end"),
    Flag("v", "verbose", "add the size, thread, timestamp and the stack"), CALLER, EARLIEST,
    LATEST, Opt("m", "minsize", NUM, "only segments of at least this size"),
    Opt("M", "maxsize", NUM, "only segments of at most this size"), THREAD,
    Opt("T", "type", STR, "only segments of this type")],
      example="<arena>::walk vmem_alloc | ::vmem_seg -v", help="""\
Print the segment at addr: type (ALLC, FREE, SPAN, ROTR, WLKR), start, end and the first caller
outside vmem_*. The filters -c, -t, -e and -l only ALLOC segments with a recorded stack can
satisfy. Piped, the addresses kept pass on.""")
def vmem_seg(inv):
    if not inv.has_addr:
        raise UsageError("::vmem_seg needs a segment address")
    inv.no_operands()
    opts = inv.opts
    if opts.caller is not None:
        opts.caller = number(inv.session, opts.caller)
    s = inv.session
    umem = Umem.get(s)
    if inv.header and not inv.piped_out:
        if opts.verbose:
            inv.out.write("\n".join(SEG_VERBOSE_HEAD) + "\n")
        else:
            inv.out.write(f"{'ADDR':>16s} {'TYPE':>4s} {'START':>16s} "
                          f"{'SIZE' if opts.size else 'END':>16s} WHO\n")
    seg = umem.view("vmem_seg", inv.addr)
    if opts.type is not None:
        want = SEG_TYPES.get(str(opts.type))
        if want is None:
            raise MdbError(f'"{opts.type}" is not a recognized vmem_seg type')
        if seg.vs_type != want:
            return 0
    size = (seg.vs_end - seg.vs_start) & ((1 << 64) - 1)
    if opts.minsize and size < opts.minsize or opts.maxsize and size > opts.maxsize:
        return 0
    stack = umem.seg_stack(seg)
    if not stack:
        if opts.caller or opts.thread or opts.earliest or opts.latest:
            return 0
    else:
        if opts.caller and not matches_caller(s, stack, opts.caller):
            return 0
        if opts.thread and seg.vs_thread != opts.thread:
            return 0
        if opts.earliest and seg.vs_timestamp < opts.earliest:
            return 0
        if opts.latest and seg.vs_timestamp > opts.latest:
            return 0
    if inv.piped_out:
        piped(inv, inv.addr)
        return 0
    kind = L.VMEM_SEG_TYPES.get(seg.vs_type, "????")
    if opts.verbose:
        inv.out.write("\n".join(seg_verbose_lines(s, seg, stack)) + "\n")
        return 0
    end = size if opts.size else seg.vs_end
    who = ""
    if stack:
        pc = caller(s, stack)
        who = " " + s.format_addr(pc if pc is not None else stack[-1], ret=True)
    inv.out.write(f"{inv.addr:016x} {kind:>4s} {seg.vs_start:016x} {end:016x}{who}\n")
    return 0
