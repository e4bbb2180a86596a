"""::whereis: the source file and line of an address, from the DWARF line tables
(mdbpy/symbols/lines.py). mdb has no such dcmd; gdb's `info line *addr` and binutils'
`addr2line -e file addr` answer the same question."""

from __future__ import annotations

from mdbpy.dcmd import Invocation, dcmd
from mdbpy.errors import MdbError, UsageError
from mdbpy.output import radix_str


@dcmd("whereis", "print the source file:line of an address", addr=":",
      help="Print `file:line` for the address: the row of the DWARF line table that covers "
           "it, read from the object file or its separate debug file (libc6-dbg's for libc), "
           "as addr2line prints it. For the return address of a frame, ask for the address "
           "before it (`addr-1::whereis`): that is the line of the call. Piped, addresses "
           "with a known line are passed on. $c -l, $C -l, ::stacks -l and ::dis -l add the "
           "same file:line to each frame or instruction.",
      example="main::whereis")
def whereis(inv: Invocation):
    if inv.args:
        raise UsageError("::whereis takes no arguments")
    if not inv.has_addr:
        raise UsageError("::whereis needs an address")
    from mdbpy.symbols.lines import source_line

    s = inv.session
    try:
        path, line = source_line(s, inv.addr)
    except MdbError as e:
        s.warn(str(e))
        return 1
    if inv.piped_out:
        inv.print(radix_str(inv.addr, s.radix, prefix=True))
    else:
        inv.print(f"{path}:{line}")
