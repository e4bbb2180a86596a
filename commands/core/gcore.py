"""::gcore: write a core file of the live process being debugged."""

from __future__ import annotations

import re

from mdbpy.dcmd import STR, Opt, dcmd
from mdbpy.errors import MdbError, UsageError

UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """A byte count written as decimal digits with an optional k, m or g (binary units)."""
    found = re.fullmatch(r"(\d{1,15})([kmg]?)", text.strip().lower())
    if found is None:
        raise UsageError(f"::gcore: bad size '{text}' (decimal bytes, or with k, m or g)")
    return int(found.group(1)) * UNITS[found.group(2)]


@dcmd("gcore", "produce a core file for the attached process", opts=[
    Opt("o", "prefix", STR, "write the core to <prefix>.<pid>", default="core"),
    Opt("c", "content", STR, "the kinds of mapping written (see above)"),
    Opt("m", "size", STR, "the most bytes written of each anonymous mapping (see above)")],
      help="Write an ELF core file of the live process to <prefix>.<pid> (prefix defaults to\n"
           "'core') and print '<file> dumped'. The core holds every readable mapping, each\n"
           "thread's registers, the auxiliary vector and the mapped-file table, so mdbpy and\n"
           "gdb can open it later; all-zero memory is left as holes, so the file is sparse.\n"
           "-c chooses the kinds of mapping written, as illumos' core_content does: all,\n"
           "none or default (all), or a kind, then +kind or -kind (stack+heap,\n"
           "default-shfile). The kinds: stack, heap, anon, shanon (shared anonymous), text\n"
           "(executable), data (writable file), rodata (other file), shfile (shared file).\n"
           "A mapping left out keeps its place in the core, with no bytes.\n"
           "Anonymous mappings (heap, stacks, [ anon ]) are written up to -m bytes each\n"
           "(default 4g; k, m and g are binary units; -m 0 writes them whole); a mapping cut\n"
           "short is named in a note, and its rest reads as not in the core.\n"
           "Only live processes (-p PID) can be dumped.",
      example="::gcore -o /tmp/myprog -c stack+heap -m 512m")
def gcore(inv):
    opts = inv.opts
    if inv.operands or inv.has_addr:
        raise UsageError("usage: ::gcore [-o prefix] [-c content] [-m size]")
    target = inv.session.target
    if target.kind != "live":
        raise MdbError(f"::gcore: only a live process can be dumped (target is "
                       f"{target.describe()})")
    from mdbpy.target.gcore import ANON_LIMIT, CONTENT, parse_content, write_core

    limit = parse_size(opts.size) if opts.size is not None else ANON_LIMIT
    try:
        content = parse_content(opts.content) if opts.content is not None else frozenset(CONTENT)
    except ValueError as e:
        raise UsageError(f"::gcore: {e}") from None
    path = f"{opts.prefix}.{target.pid}"
    write_core(target, path, max_anon=limit, content=content,
               note=lambda msg: inv.session.warn(f"::gcore: {msg}; -m 0 writes it all"))
    inv.print(f"{path} dumped")
