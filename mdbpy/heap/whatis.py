"""::whatis, as mdb_whatis.c runs it: sources in priority order, each reporting the addresses
of interest it explains, sorted; an address explained by one source is not offered to the next
unless -a asks for all; whatever nothing explained is `unknown`.

Sources: every allocator found in the target (`<module>`<module>`, mdb's umem priority), then
the mappings (`mdb`mappings`, with the symbol containing the address when there is one).
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.heap.model import FREE
from mdbpy.heap.report import record_lines
from mdbpy.symbols.demangle import readable
from mdbpy.types.graph import known_type


@dataclass
class WhatisOptions:
    all: bool = False  # -a: every source that matches
    quiet: bool = False  # -q: no multi-line reports
    verbose: bool = False  # -v: `Searching <source>...`


def prefix(addr: int, base: int) -> str:
    """`<addr> is ` at a base, `<addr> is <base>+<off>, ` inside (all %p)."""
    return f"{addr:x} is " if addr == base else f"{addr:x} is {base:x}+{addr - base:x}, "


def _allocator_source(session, alloc, addr: int, opts: WhatisOptions) -> list[str] | None:
    b = alloc.whatis(addr)
    if b is None:
        return None
    verb = "freed from" if b.state == FREE else "allocated from"
    typed = known_type(session, addr) if b.state != FREE else None  # after ::typegraph
    note = f", {typed.phrase()}" if typed is not None else ""
    rec = b.record
    if rec is not None and not opts.quiet:
        return ([f"{prefix(addr, b.base)}{verb} {b.group}{note}:"]
                + record_lines(session, alloc, rec, b.base, b.group_addr, b.kind))
    ctl = f"{alloc.record_name} {rec.addr:x} " if rec is not None and rec.addr else ""
    return [f"{prefix(addr, b.base)}{ctl}{verb} {b.group}{note}"]


def _mapping_source(session, addr: int, map_name) -> list[str] | None:
    m = session.mem.mapping_at(addr)
    if m is None:
        return None
    sym = ""
    hit = session.symbols.lookup_addr(addr)
    if hit is not None and hit[1] < hit[0].size:
        sym = readable(session.format_addr(addr)) + ", "
    return [f"{addr:x} is {sym}in {map_name(m)} [{m.start:x},{m.end:x})"]


def whatis(session, addrs: list[int], opts: WhatisOptions, map_name=str) -> list[str]:
    """The lines of ::whatis for these addresses (already in the order to report them)."""
    sources = [(f"{a.name}`{a.name}", lambda x, a=a: _allocator_source(session, a, x, opts))
               for a in session.allocators()]
    sources.append(("mdb`mappings", lambda x: _mapping_source(session, x, map_name)))
    found: set[int] = set()
    lines: list[str] = []
    for name, source in sources:
        if opts.verbose:
            lines.append(f"Searching {name}...")
        for a in addrs:
            if a in found and not opts.all:
                continue
            out = source(a)
            if out:
                found.add(a)
                lines += out
        if len(found) == len(set(addrs)) and not opts.all:
            break
    lines += [f"{a:x} is unknown" for a in addrs if a not in found]
    return lines
