"""::nm, ::mappings ($m), ::objects and ::status: what the target maps and which symbols it has.

Output follows mdb's mdb_nm.c and mdb_cmds.c: ::nm prints its header with spaces but separates
row fields with `|`, values as `0x%016llx` in hex mode; ::mappings and ::objects print
`BASE LIMIT SIZE NAME` with %?p columns. ::status is the start-up benchmark
(`mdbpy -p PID -e ::status`), so it reads no symbols and imports nothing heavy.
"""

from __future__ import annotations

from mdbpy.dcmd import STR, Flag, Invocation, Operand, Opt, dcmd
from mdbpy.errors import MdbError, UsageError
from mdbpy.output import ptrpad, radix_str
from mdbpy.symbols.base import Symbol
from mdbpy.symbols.demangle import demangle

# ::nm -f columns in mdb's print order, with their header text and width (None: unpadded)
NM_FIELDS = ("ndx", "obj", "val", "sz", "type", "bind", "oth", "shndx", "ctype", "name")
NM_DEFAULT = ("val", "sz", "type", "bind", "oth", "shndx", "name")
NM_TYPES = {"noty": "notype", "objt": "object", "func": "func", "sect": "section",
            "file": "file", "comm": "common", "tls": "tls"}
TYPE_STR = {"notype": "NOTY", "object": "OBJT", "func": "FUNC", "section": "SECT",
            "file": "FILE", "common": "COMM", "tls": "TLS"}
BIND_STR = {"local": "LOCL", "global": "GLOB", "weak": "WEAK"}
# radix -> (value format, `Other` format, header width), as mdb's nii_pfmt / nii_ofmt
NM_RADIX = {16: (lambda v: f"0x{v:016x}", lambda v: f"0x{v:<3x}", 18),
            10: (lambda v: f"{v:<20d}", lambda v: f"{v:<5d}", 20),
            8: (lambda v: f"{v:<22o}", lambda v: f"{v:<5o}", 22)}

NM_HELP = """\
Values are runtime addresses (the file's st_value plus the object's load bias). With an
address, ::nm prints the one symbol containing it. Without an object, every load object's
table is printed, the executable first. .symtab comes from the file or from its separate
debug file (found by build-id or .gnu_debuglink); an object without one falls back to .dynsym.
With C++ demangling on ($G), C++ names are printed demangled whole, as `nm -C` prints them
(-p keeps the symbols' own names: its ::nmadd commands are read back)."""


def _subopts(value: str, table, what: str) -> set[str]:
    words = {w for w in value.split(",") if w}
    bad = sorted(words - set(table))
    if bad or not words:
        raise UsageError(f"invalid {what} '{bad[0] if bad else value}' (one of: "
                         f"{', '.join(table)})")
    return words


def _nm_rows(inv: Invocation, opts, rest: list) -> list[tuple[int, str, Symbol]]:
    """(index, object name, symbol) for every symbol ::nm was asked about."""
    syms = inv.session.symbols
    if inv.has_addr:
        if rest:
            raise UsageError("an address and an object cannot be combined")
        hit = syms.lookup_addr(inv.addr)
        if hit is None:
            raise MdbError(f"{inv.addr:x}: no symbol corresponds to address")
        o = syms.object_for_addr(inv.addr)
        return [(0, o.path or o.name, hit[0])]
    if len(rest) > 1 or (rest and not isinstance(rest[0], str)):
        raise UsageError("::nm takes at most one object name")
    if opts.private:
        if rest:
            raise UsageError("-P/object options are mutually exclusive")
        objs = [o for o in syms.objects() if not o.path]
    elif rest:
        o = syms.object_named(rest[0])
        if o is None:
            raise MdbError(f"unknown object '{rest[0]}' (see ::objects)")
        objs = [o]
    else:
        objs = sorted(syms.objects(), key=lambda o: (not o.is_exe, o.base))
    which = "dynsym" if opts.dynsym else "symtab"
    rows = []
    for o in objs:
        rows += [(i, o.path or o.name, s) for i, s in enumerate(o.table(which))]
    return rows


def _nm_filter(rows, opts, types: set[str]):
    out = []
    for row in rows:
        s = row[2]
        if s.type not in types and not (s.type.startswith("stt") and "noty" in types):
            continue
        if opts.globals and s.bind != "global":
            continue
        if opts.undefined and s.shndx != "UNDEF":
            continue
        out.append(row)
    if opts.by_name or opts.by_value:
        if opts.by_name:
            out.sort(key=lambda r: r[2].name)
        else:
            out.sort(key=lambda r: r[2].addr)
    return out


@dcmd("nm", "print symbols", addr="?", opts=[
    Flag("D", "dynsym", "print .dynsym instead of .symtab"),
    Flag("P", "private", "print the private symbol table (symbols added by modules and tests)"),
    Flag("d", "dec", "print value and size in decimal"),
    Flag("g", "globals", "only print global symbols"),
    Flag("h", "no_header", "suppress header line"),
    Flag("n", "by_name", "sort symbols by name"),
    Flag("o", "octal", "print value and size in octal"),
    Flag("p", "commands", "print symbols as a series of ::nmadd commands"),
    Flag("u", "undefined", "only print undefined symbols"),
    Flag("v", "by_value", "sort symbols by value"),
    Flag("x", "hex", "print value and size in hexadecimal"),
    Opt("f", "format", STR, "use specified format: " + ", ".join(NM_FIELDS)),
    Opt("t", "types", STR, "display symbols with the specified types: " + ", ".join(NM_TYPES))],
      operands=[Operand("object", "specify object whose symbol table should be used",
                        optional=True)],
      help=NM_HELP, example="::nm -g a.out")
def nm(inv: Invocation):
    opts, rest = inv.opts, inv.operands
    radix_opts = [r for r, on in ((10, opts.dec), (8, opts.octal), (16, opts.hex)) if on]
    if len(radix_opts) > 1:
        raise UsageError("-d/-o/-x options are mutually exclusive")
    radix = radix_opts[0] if radix_opts else (inv.session.radix
                                              if inv.session.radix in (8, 10) else 16)
    if opts.private and inv.has_addr:
        raise UsageError("-P/address options are mutually exclusive")
    fields = (_subopts(opts.format, NM_FIELDS, "format") if opts.format is not None
              else set(NM_DEFAULT))
    types = {NM_TYPES[t] for t in _subopts(opts.types if opts.types is not None
                                            else ",".join(NM_TYPES), NM_TYPES, "type")}
    rows = _nm_filter(_nm_rows(inv, opts, rest), opts, types)
    if opts.commands:
        for _i, _obj, s in rows:
            kind = {"func": "-f ", "object": "-o "}.get(s.type, "")
            inv.print(f"{radix_str(s.addr, radix, True)}::nmadd {kind}-s "
                      f"{radix_str(s.size, radix, True)} {s.name}")
        return 0
    pfmt, ofmt, width = NM_RADIX[radix]
    cols = [f for f in NM_FIELDS if f in fields]
    if not opts.no_header and inv.header:
        head = {"ndx": "Index", "obj": f"{'Object':<15}", "val": f"{'Value':<{width}}",
                "sz": f"{'Size':<{width}}", "type": f"{'Type':<5}", "bind": f"{'Bind':<5}",
                "oth": f"{'Other':<5}", "shndx": f"{'Shndx':<8}", "ctype": f"{'C Type':<50}",
                "name": "Name"}
        inv.print(" ".join(head[c] for c in cols))
    readable_names = inv.session.options["demangle"]
    for i, obj, s in rows:
        cell = {"ndx": f"{i:5d}", "obj": f"{obj:<15}", "val": pfmt(s.addr),
                "sz": pfmt(s.size), "type": f"{TYPE_STR.get(s.type, '?'):<5}",
                "bind": f"{BIND_STR.get(s.bind, '?'):<5}", "oth": ofmt(s.other),
                "shndx": f"{s.shndx:<8}", "ctype": f"{'<unknown type>':<50}",
                "name": (demangle(s.name) or s.name) if readable_names else s.name}
        inv.print("|".join(cell[c] for c in cols))
    return 0


@dcmd("$G", "enable/disable C++ demangling support",
      help="Toggle C++ symbol demangling. On, C++ symbols are named demangled wherever an "
           "address is shown symbolically (/a, /p, ::dis, ::whatis, findleaks, the stacks) and "
           "::nm prints whole demangled names; off (the default), only the stack listings, "
           "::whatis and the leak reports demangle, and expressions take the names shown back. "
           "The state is the debugger option demangle (::set -o demangle).",
      example="$G")
def demangling(inv: Invocation):
    on = inv.session.options["demangle"] = not inv.session.options["demangle"]
    inv.print(f"C++ symbol demangling {'enabled' if on else 'disabled'}")
    return 0


# -- mappings and objects -----------------------------------------------------------------------
def map_name(m) -> str:
    """The NAME column: the file's path, or mdb's bracketed names for anonymous memory."""
    p = m.path
    if not p or p.startswith("[anon"):
        return "[ shmem ]" if m.shared else "[ anon ]"
    if p.startswith("[stack"):
        return "[ stack ]"
    if p.startswith("[") and p.endswith("]"):
        return f"[ {p[1:-1]} ]"
    return p


def _map_line(base: int, limit: int, name: str) -> str:
    return f"{ptrpad(base)} {ptrpad(limit)} {ptrpad(limit - base)} {name}"


MAP_HEADER = f"{'BASE':>16} {'LIMIT':>16} {'SIZE':>16} NAME"


def _named_mappings(inv: Invocation, name: str):
    """Mappings whose name, path or basename is `name`, or that belong to the load object
    `name` (a.out, libc, libc.so.6)."""
    o = inv.session.symbols.object_named(name)
    want = {name, o.path} if o is not None else {name}
    return [m for m in inv.session.mem.mappings()
            if {m.path, m.path.rsplit("/", 1)[-1], map_name(m)} & want]


@dcmd("mappings", "print address space mappings", addr="?",
      operands=[Operand("name", optional=True)], aliases=("$m",),
      help="One line per mapping: BASE LIMIT SIZE NAME, where NAME is the mapped file's path "
           "or [ heap ], [ stack ], [ anon ], [ shmem ], [ vdso ]. With an address (or a "
           "numeric argument), only the mapping containing it; with a name (a path, a file "
           "name, a load object such as a.out or libc), only that object's mappings. When "
           "piped, prints the base addresses.",
      example="::mappings libc.so.6")
def mappings(inv: Invocation):
    if len(inv.args) > 1 or (inv.args and inv.has_addr):
        raise UsageError("usage: [addr]::mappings [name]")
    mem = inv.session.mem
    if inv.has_addr or (inv.args and isinstance(inv.args[0], int)):
        addr = inv.addr if inv.has_addr else inv.args[0]
        m = mem.mapping_at(addr)
        if m is None:
            raise MdbError(f"failed to obtain mapping: no mapping contains {addr:x}")
        maps = [m]
    elif inv.args:
        maps = _named_mappings(inv, inv.args[0])
        if not maps:
            raise MdbError(f"failed to obtain mapping: no mapping named {inv.args[0]}")
    else:
        maps = mem.mappings()
    if inv.piped_out:
        for m in maps:
            inv.print(radix_str(m.start, inv.session.radix, True))
        return 0
    if inv.header:
        inv.print(MAP_HEADER)
    for m in maps:
        inv.print(_map_line(m.start, m.end, map_name(m)))
    return 0


@dcmd("objects", "print load objects information",
      opts=[Flag("v", "versions", "print NAME and VERSION instead, where the version is the "
                 "object's build-id (mdb printed a CTF label, which Linux objects lack)")],
      help="One line per load object (the executable and each mapped shared library): "
           "BASE LIMIT SIZE NAME, the range covering all its segments including bss, and "
           "the path it is mapped from.",
      example="::objects")
def objects(inv: Invocation):
    if inv.operands or inv.has_addr:
        raise UsageError("usage: ::objects [-v]")
    objs = inv.session.symbols.objects()
    if inv.opts.versions:
        inv.print(f"{'NAME':<28} VERSION")
        for o in objs:
            info = getattr(o, "info", None)
            inv.print(f"{o.path or o.name:<28} {(info and info.build_id) or 'Unknown'}")
        return 0
    inv.print(MAP_HEADER)
    for o in objs:
        inv.print(_map_line(o.base, o.end, o.path or o.name))
    return 0


@dcmd("status", "print summary of current target",
      help="What is being debugged: the target's own lines (process id or core file, the "
           "executable, initial arguments, threading model, why it stopped), then the "
           "session's settings that change what mdbpy reads (sysroot, debug directories).",
      example="::status")
def status(inv: Invocation):
    if inv.args:
        raise UsageError("::status takes no arguments")
    s = inv.session
    lines = s.target.status_lines() or [f"debugging {s.target.describe()} (64-bit)"]
    if s.sysroot:
        lines.append(f"sysroot: {s.sysroot}")
    if s.debug_dirs:
        lines.append(f"debug directories: {', '.join(s.debug_dirs)}")
    for line in lines:
        inv.print(line)
    return 0
