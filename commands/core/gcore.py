"""::gcore: write a core file of the live process being debugged."""

from __future__ import annotations

from mdbpy.dcmd import dcmd
from mdbpy.errors import MdbError, UsageError


@dcmd("gcore", "produce a core file for the attached process", usage="[-o prefix]",
      help="Write an ELF core file of the live process to <prefix>.<pid> (prefix defaults to\n"
           "'core') and print '<file> dumped'. The core holds every readable mapping, each\n"
           "thread's registers, the auxiliary vector and the mapped-file table, so mdbpy and\n"
           "gdb can open it later; all-zero memory is left as holes, so the file is sparse.\n"
           "Only live processes (-p PID) can be dumped.",
      example="::gcore -o /tmp/myprog")
def gcore(inv):
    opts, rest = inv.getopt("o:")
    if rest or inv.has_addr:
        raise UsageError("usage: ::gcore [-o prefix]")
    target = inv.session.target
    if target.kind != "live":
        raise MdbError(f"::gcore: only a live process can be dumped (target is "
                       f"{target.describe()})")
    from mdbpy.target.gcore import write_core

    path = f"{opts.get('o', 'core')}.{target.pid}"
    write_core(target, path)
    inv.print(f"{path} dumped")
