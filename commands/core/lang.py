"""The language dcmds (mdb_cmds.c, mdb_help.c): walks, ::eval/::map/::grep, ::head, ::echo,
variables, macro files, the radix, quitting, the registry listings and ::help, modules, and
::set.

They reach the language engine only through the session (session.evaluate, session.engine),
so this module imports nothing above the dcmd layer.
"""

from __future__ import annotations

import re

from mdbpy.dcmd import PIPE, STR, Flag, Invocation, Operand, Opt, dcmd
from mdbpy.errors import CommandAbort, MdbError, QuitSession, UsageError
from mdbpy.lang.lexer import VARNAME
from mdbpy.output import radix_str
from mdbpy.session import valued_option

from .walkers import capped, walk_limit

MASK64 = (1 << 64) - 1
CASTS = {"c": 0xFF, "s": 0xFFFF, "i": 0xFFFFFFFF, "l": MASK64}
# characters mdb's strbadid() refuses in variable names
BAD_ID_CHARS = "#%^&*-+=,:$/\\?<>;|!`'\"[]\n\t() {}"
BUILTIN_MODULE = "mdb"  # commands/core's DMOD_NAME: never unloaded


def _check_var_name(name: str) -> None:
    if name == "thread":
        raise CommandAbort("variable 'thread' is read-only (select a thread with tid::thread)")
    for c in name:
        if c in BAD_ID_CHARS:
            raise CommandAbort(f"'{c}' may not be used in a variable name")
    if not VARNAME.fullmatch(name):  # e.g. 1abc: `<1abc` would read the number 1
        raise CommandAbort(f"'{name}' is not a variable name: a letter, '_' or '.' first, "
                           "or a single digit")


def _strings(inv: Invocation, lo: int, hi: int) -> list[str]:
    """The arguments, which must be lo..hi words (not $[...] numbers), else a usage error."""
    if not lo <= len(inv.args) <= hi or not all(isinstance(a, str) for a in inv.args):
        raise UsageError("")
    return list(inv.args)


def bind_var(inv: Invocation, var: str) -> None:
    """Create `var` and have every address this stage passes down the pipe carry it (mdb's
    VCB): for ::walk, ::list and ::array's variable argument. The dcmd sets it as it goes."""
    _check_var_name(var)
    inv.session.vars.setdefault(var, 0)
    bind = getattr(inv.out, "bind_var", None)
    if bind is not None:
        bind(var)


# -- walks --------------------------------------------------------------------------------

@dcmd("walk", "walk data structure", addr="?",
      operands=[Operand("name"), Operand("variable", optional=True)],
      help="Run the walker `name` and print the address of each element, one per line (with a "
           "0x prefix in radix 16), so the output can be piped into another dcmd. With an "
           "address the walk is local and starts there; without, it is global. With "
           "`variable`, the variable is set to each element as it travels down the pipeline, "
           "so later stages can read it as <variable.",
      example="::walk umem_cache c | ::print -t umem_cache_t cache_name")
def walk(inv: Invocation):
    args = _strings(inv, 1, 2)
    s = inv.session
    try:
        w = s.find_walker(args[0])
    except MdbError as e:
        raise MdbError(f"failed to perform walk: {e}") from None
    reason = w.enabled(s) if w.enabled is not None else None
    if reason:
        raise MdbError(f"failed to perform walk: {reason}")
    if w.needs_addr and not inv.has_addr:
        raise UsageError(f"walker '{w.name}' needs an address to start from")
    var = args[1] if len(args) == 2 else None
    if var is not None:
        bind_var(inv, var)
    try:
        for addr in capped(s, w.func(s, inv.addr if inv.has_addr else None)):
            if var is not None:
                s.vars[var] = addr
            inv.out.write(radix_str(addr, s.radix, prefix=True) + "\n")
    except MdbError as e:
        s.warn(f"failed to perform walk: {e}")
        return 1
    return 0


# -- evaluation ---------------------------------------------------------------------------

@dcmd("eval", "evaluate the given commands", operands=[Operand("command")],
      help="Run the string as mdb input, with dot set to the address. Changes to dot made by "
           "the commands carry back. Quote the command so that it is one argument.",
      example="::walk thread t | ::eval '<t::print struct thread'")
def eval_(inv: Invocation):
    text = _strings(inv, 1, 1)[0]
    return inv.session.evaluate(text, inv.addr)


@dcmd("map", "map the input address through an expression", addr="?",
      operands=[Operand("expr")],
      help="Evaluate the expression with dot set to the input address and print the result "
           "(in the current radix, no prefix). Used to transform addresses in a pipeline.",
      example="::walk list | ::map *.")
def map_(inv: Invocation):
    text = _strings(inv, 1, 1)[0]
    s = inv.session
    if s.evaluate(text, inv.addr):
        return 1
    inv.out.write(radix_str(s.dot, s.radix) + "\n")
    return 0


@dcmd("grep", "print the address if the expression is non-zero", addr="?",
      operands=[Operand("expr")],
      help="Evaluate the expression with dot set to the input address; if the result is "
           "non-zero, print the input address (no prefix), else print nothing. Used to filter "
           "the addresses of a pipeline.",
      example="::walk list | ::grep '*.==0'")
def grep(inv: Invocation):
    text = _strings(inv, 1, 1)[0]
    s = inv.session
    if s.evaluate(text, inv.addr):
        return 1
    if s.dot != 0:
        inv.out.write(radix_str(inv.addr, s.radix) + "\n")
    return 0


@dcmd("head", "limit number of elements in pipe", pipe_all=True, getopt=False,
      opts=[Opt("n", "num", STR, "pass on the first num addresses (default 10; decimal); "
                "-num is the same")],
      help="Pass on only the first `num` addresses of the pipe. As the last stage it prints "
           "them in hex.",
      example="::walk umem_alloc_32 | ::head -5")
def head(inv: Invocation):
    if not inv.flags & PIPE:
        raise UsageError("::head reads the addresses of a pipe")
    args = inv.args
    if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("-"):
        num = args[0][1:]
    elif len(args) == 2 and args[0] == "-n":
        num = args[1] if isinstance(args[1], str) else str(args[1])
    elif not args:
        num = "10"
    else:
        raise UsageError("")
    if not num.isdigit():
        raise UsageError(f"'{num}' is not a decimal number")
    for addr in (inv.pipe or [])[:int(num)]:
        if inv.piped_out:
            inv.out.write(radix_str(addr, inv.session.radix, prefix=True) + "\n")
        else:
            inv.out.write(f"{addr:x}\n")
    return 0


@dcmd("echo", "echo arguments", operands=[Operand("args", repeat=True)],
      help="Print each argument followed by a space, then a newline. $[expr] arguments print "
           "as numbers in the current radix.",
      example="::echo dot is $[.]")
def echo(inv: Invocation):
    if inv.has_addr:
        raise UsageError("")
    words = [a if isinstance(a, str) else radix_str(a, inv.session.radix) for a in inv.args]
    inv.out.write("".join(w + " " for w in words) + "\n")
    return 0


# -- variables ----------------------------------------------------------------------------

def _print_vars(inv: Invocation, nonzero: bool, tagged: bool, as_commands: bool) -> None:
    s = inv.session
    values = dict(s.vars)
    values["."] = s.dot
    t = s.current_thread()
    values["thread"] = t.tid if t is not None else 0
    for name in sorted(values):
        v = values[name]
        if (tagged and name not in s.var_tags) or (nonzero and v == 0):
            continue
        if as_commands:
            inv.out.write(f"{radix_str(v, s.radix, prefix=True)}>{name}\n")
        else:
            inv.out.write(f"{name} = {radix_str(v, s.radix)}\n")


@dcmd("vars", "print listing of variables",
      opts=[Flag("n", "nonzero", "only variables whose value is non-zero"),
            Flag("p", "commands", "print as commands that recreate them (`value>name`)"),
            Flag("t", "tagged", "only tagged variables (see ::typeset)")],
      help="List the variables as `name = value`.",
      example="::vars -n")
def vars_(inv: Invocation):
    if inv.operands:
        raise UsageError("")
    o = inv.opts
    _print_vars(inv, o.nonzero, o.tagged, o.commands)
    return 0


@dcmd("$v", "print non-zero variables",
      help="List the variables whose value is non-zero, as `name = value`.", example="$v")
def nzvars(inv: Invocation):
    if inv.args:
        raise UsageError("")
    _print_vars(inv, True, False, False)
    return 0


@dcmd("typeset", "set variable attributes", getopt=False,
      opts=[Flag("t", "tag", "-t tags the variables, +t removes the tag", plus=True)],
      operands=[Operand("var", repeat=True)],
      help="Create the variables (value 0, or the address when one is given). With no "
           "arguments, list the variables like ::vars.",
      example="0t42::typeset -t answer")
def typeset(inv: Invocation):
    if not all(isinstance(a, str) for a in inv.args):  # $[...] is a number, not a name
        raise UsageError("")
    args = list(inv.args)
    s = inv.session
    if not args:
        _print_vars(inv, False, False, False)
        return 0
    tag = None
    if args[0][:1] in "+-":
        if args[0][1:] != "t":
            raise UsageError("")
        tag = args.pop(0)[0] == "-"
    for name in args:
        if name[:1] in "+-":
            s.warn(f"ignored bad option -- {name}")
            continue
        _check_var_name(name)
        if name not in s.vars or inv.has_addr:
            s.vars[name] = inv.addr if inv.has_addr else 0
        if tag is True:
            s.var_tags.add(name)
        elif tag is False:
            s.var_tags.discard(name)
    return 0


@dcmd("unset", "unset variables", operands=[Operand("name", optional=True, repeat=True)],
      help="Delete the named variables.", example="::unset answer")
def unset(inv: Invocation):
    if not all(isinstance(a, str) for a in inv.args):
        raise UsageError("arguments must be variable names")
    s = inv.session
    status = 0
    for name in inv.args:
        if name in s.vars:
            del s.vars[name]
            s.var_tags.discard(name)
        else:
            s.warn(f"variable '{name}' not defined")
            status = 1
    return status


@dcmd(">", "assign variable", operands=[Operand("[/c/|/s/|/i/|/l/]variable")],
      help="`expr>name` stores the value of expr (dot) in the variable. The cast forms "
           ">/c/name, >/s/name, >/i/name and >/l/name first truncate it to 1, 2, 4 or 8 "
           "bytes.",
      example="main>start")
def assign(inv: Invocation):
    args = list(inv.args)
    value = inv.addr
    s = inv.session
    if len(args) == 2 and isinstance(args[0], str) and re.fullmatch(r"/./", args[0]):
        mask = CASTS.get(args[0][1])
        if mask is None:
            raise MdbError(f"{args[0][1]} is not a valid // modifier")
        value &= mask
        args.pop(0)
    if len(args) != 1 or not isinstance(args[0], str) or not args[0]:
        raise MdbError("expected single variable name following '>'")
    name = args[0]
    _check_var_name(name)
    if name == ".":
        s.dot = value
    else:
        s.vars[name] = value
    s.incr = 0
    return 0


# -- macro files, radix, quitting ---------------------------------------------------------

_MACRO_HELP = ("Macro files hold mdb commands. `$<< file` runs the file's commands and returns "
               "to the caller. `$< file` replaces the macro file being read (at the top level "
               "and in pipes it behaves like $<<); `$<` with no file stops the macro being "
               "read. Files are searched on the macro path (-I, ::set -I); a name no file has "
               "may be a built-in macro alias ($M lists them), run with the address given. "
               "`addr,cnt$<` sets variable 9 to cnt.")


def _macro(inv: Invocation, replace: bool):
    if len(inv.args) > 1 or not all(isinstance(a, str) for a in inv.args):
        raise UsageError("")
    if not inv.args and not replace:
        raise UsageError("")
    engine = inv.session.engine
    if engine is None:
        raise MdbError("macro files need the language engine")
    return engine.run_macro(inv.args[0] if inv.args else None, replace, inv.flags,
                            inv.addr if inv.has_addr else None)


@dcmd("$<", "replace input with macro", addr="?",
      operands=[Operand("filename", optional=True)], help=_MACRO_HELP,
      example="$< mymacro")
def exec_file(inv: Invocation):
    return _macro(inv, True)


@dcmd("$<<", "source macro", addr="?", operands=[Operand("filename", optional=True)],
      help=_MACRO_HELP, example="$<< mymacro")
def src_file(inv: Invocation):
    return _macro(inv, False)


@dcmd("$M", "list macro aliases",
      help="The built-in macro aliases of the loaded modules: `$< name` runs the command when "
           "no macro file is called name (`addr$<bufctl_audit` is `addr::bufctl -v`).",
      example="$M")
def macro_aliases(inv: Invocation):
    if inv.args or inv.has_addr:
        raise UsageError("")
    for dm in inv.session.registry.dmods.values():
        for name, cmd in sorted(dm.macros.items()):
            inv.out.write(f"{name:<24} - {cmd}\n")
    return 0


@dcmd("$d", "get/set default output radix", addr="?",
      help="With an address, set the radix used to read bare numbers and to print values "
           "(2 to 16). Always print the radix, in decimal.",
      example="0t10$d")
def radix(inv: Invocation):
    if inv.args:
        raise UsageError("")
    s = inv.session
    if inv.has_addr:
        if not 2 <= inv.addr <= 16:
            raise MdbError("expected radix from 2 to 16")
        s.radix = inv.addr
    inv.out.write(f"radix = {s.radix} base ten\n")
    return 0


@dcmd("quit", "quit the debugger", aliases=("$q", "$Q", "$%"),
      help="Leave mdbpy. A live process is resumed and detached on the way out.",
      example="$q")
def quit_(inv: Invocation):
    raise QuitSession(0)


# -- listings and help --------------------------------------------------------------------

_FILTER = dict(opts=[Flag("n", "names", "match the pattern against the names only")],
               operands=[Operand("pattern", optional=True)])


def _filter(inv: Invocation):
    """The [-n] pattern of ::dcmds / ::walkers: a predicate over (name, description)."""
    rest = inv.operands
    if inv.has_addr or len(rest) > 1 or not all(isinstance(a, str) for a in rest):
        raise UsageError("")
    if not rest:
        return lambda name, descr: True
    try:
        rx = re.compile(rest[0])
    except re.error as e:
        raise MdbError(f"invalid pattern '{rest[0]}': {e}") from None
    if inv.opts.names:
        return lambda name, descr: rx.search(name) is not None
    return lambda name, descr: rx.search(name) is not None or rx.search(descr) is not None


@dcmd("dcmds", "list available debugger commands", **_FILTER,
      help="List every available dcmd as `name - description`, sorted. A pattern (an "
           "extended regular expression) keeps the dcmds whose name or description matches.",
      example="::dcmds umem")
def dcmds(inv: Invocation):
    keep = _filter(inv)
    s = inv.session
    s.autoload()  # list the dcmds of the allocators in this target too
    for name in sorted(s.registry.dcmds):
        d = s.registry.dcmds[name]
        if (d.enabled is None or d.enabled(s) is None) and keep(name, d.descr):
            inv.out.write(f"{name:<24} - {d.descr}\n")
    return 0


@dcmd("walkers", "list available walkers", **_FILTER,
      help="List every available walker as `name - description`, sorted. A pattern (an "
           "extended regular expression) keeps the walkers whose name or description "
           "matches.",
      example="::walkers cache")
def walkers(inv: Invocation):
    keep = _filter(inv)
    inv.session.autoload()
    for w in inv.session.registry.visible_walkers(inv.session):
        if keep(w.name, w.descr):
            inv.out.write(f"{w.name:<24} - {w.descr}\n")
    return 0


OVERVIEW = """
Each debugger command in mdbpy is structured as follows:

      [ address [, count]] verb [ arguments ... ]
             ^       ^      ^      ^
 the start --+       |      |      +-- arguments are strings which can be
 address can be an   |      |          quoted using "" or '' or
 expression          |      |          expressions enclosed in $[ ]
                     |      |
 the repeat count  --+      +--------- the verb is a name which begins
 is also an expression                 with either $, :, or ::.  it can also
                                       be a format specifier (/ \\ ? or =)

For information on debugger commands (dcmds) and walkers, type:

      ::help cmdname ... for more detailed information on a command
      ::dcmds        ... for a list of dcmds and their descriptions
      ::walkers      ... for a list of walkers and their descriptions
      ::dmods -l     ... for a list of modules and their dcmds and walkers
      ::formats      ... for a list of format characters for / \\ ? and =

For information on command-line options, type:

      $ mdbpy --help ... in your shell for a complete list of options

"""


def help_width(out) -> int:
    """The columns help is wrapped to: the terminal's when `out` is one, else 80."""
    import os

    try:
        if out.isatty():
            return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):
        pass
    return 80


_OPTION = re.compile(r"(\s+\S.*?\s\s+)(\S.*)")  # `  -o file   text`: a term, 2+ spaces, its text


def wrapped(text: str, width: int) -> str:
    """Help text indented by two and wrapped once, to `width` columns. Help is written with
    line breaks at the source's width, not the reader's, so the lines of a paragraph are
    joined and filled again; an indented line is an option or a table row and starts a line
    of its own, and the lines indented under its text (`  -o file   write ...` and then
    `            or a PNG`) continue that text, wrapped under it."""
    import textwrap

    out: list[str] = []
    lines = text.strip("\n").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            out.append("")
            continue
        option = _OPTION.fullmatch(line) if line[0].isspace() else None
        if option is None:
            lead = "  " + line[:len(line) - len(line.lstrip())]
            body = [line.strip()]
            while not line[0].isspace() and i < len(lines) and lines[i][:1].strip():
                body.append(lines[i].strip())  # the next line of a paragraph
                i += 1
            first, rest = lead, lead
        else:
            hang = len(option[1])
            body = [option[2]]
            while i < len(lines) and lines[i].strip() and \
                    len(lines[i]) - len(lines[i].lstrip()) == hang:
                body.append(lines[i].strip())
                i += 1
            first, rest = "  " + option[1], " " * (hang + 2)
        out.extend(textwrap.wrap(" ".join(body), width, initial_indent=first,
                                 subsequent_indent=rest, break_on_hyphens=False) or [""])
    return "".join(line + "\n" for line in out)


def _declared(reg, key: str):
    """(dcmd, walker) named `key` in a registry (a dcmd also as module`name), either None."""
    d = reg.dcmds.get(key)
    if d is None and "`" in key:
        d = reg.dcmds.get(key.rsplit("`", 1)[1])
    return d, reg.walkers.get(key)


@dcmd("help", "list commands/command help", operands=[Operand("command", optional=True)],
      help="With no argument, print an overview of the command syntax. With a dcmd name "
           "(with or without the leading ::), print its NAME, SYNOPSIS, DESCRIPTION, "
           "OPTIONS and ATTRIBUTES; a walker name prints the walker's description. Every "
           "dcmd and walker "
           "of the installed modules is known, also before its module is loaded (the "
           "ATTRIBUTES say so). The text is wrapped to the terminal's width.",
      example="::help walk")
def help_(inv: Invocation):
    from mdbpy.dcmd import declared_registry

    if inv.has_addr or len(inv.args) > 1:
        raise UsageError("")
    if not inv.args:
        inv.out.write(OVERVIEW)
        return 0
    name = inv.args[0]
    if not isinstance(name, str):
        raise UsageError("expected string argument")
    s = inv.session
    key = name[2:] if name.startswith("::") else name
    d, w = _declared(s.registry, key)
    if d is None and w is None and s.autoload():  # the target's allocator modules
        d, w = _declared(s.registry, key)
    loaded = d is not None or w is not None
    if not loaded:
        d, w = _declared(declared_registry(warn=s.warn), key)
    if d is None and w is None:
        raise MdbError(f"unknown command: {name}")
    module = (d or w).module
    if not loaded:
        module += f" (not loaded in this session: ::load {module})"
    width = help_width(inv.out)
    out = inv.out
    if d is None:
        out.write("\nNAME\n" + wrapped(f"{w.name} - {w.descr} (walker)", width) + "\n")
        if w.help:
            out.write("DESCRIPTION\n" + wrapped(w.help, width) + "\n")
        out.write(f"ATTRIBUTES\n\n  Module: {module}\n\n")
        return 0
    out.write("\nNAME\n" + wrapped(f"{d.name} - {d.descr}", width) + "\n")
    out.write("SYNOPSIS\n" + wrapped(d.synopsis(), width) + "\n")
    if d.help:
        out.write("DESCRIPTION\n" + wrapped(d.help, width) + "\n")
    rows = d.options_help()
    if rows:
        col = max(len(term) for term, _ in rows) + 2
        out.write("OPTIONS\n" + wrapped("\n".join(f"  {term:<{col}}{text}" for term, text in rows),
                                        width) + "\n")
    if d.example:
        out.write("EXAMPLE\n" + wrapped(d.example, width) + "\n")
    stability = "Evolving" if d.module == BUILTIN_MODULE else "Unstable"
    out.write(f"ATTRIBUTES\n\n  Target: {s.target.kind}\n  Module: {module}\n"
              f"  Interface Stability: {stability}\n\n")
    return 0


# -- modules ------------------------------------------------------------------------------

def _print_dmod(inv: Invocation, name: str, long: bool) -> None:
    out = inv.out
    if not long:
        out.write(name + "\n")
        return
    reg = inv.session.registry
    dm = reg.dmods[name]
    out.write(f"\n{name:<70}\n")
    for n in sorted(dm.dcmds):
        d = reg.dcmds.get(n)
        if d is not None:
            for alias in sorted((d.name, *d.aliases)):
                out.write(f"  dcmd {alias:<20} - {d.descr}\n")
    for n in sorted(dm.walkers):
        w = reg.walkers.get(n)
        if w is not None:
            out.write(f"  walk {n:<20} - {w.descr}\n")


@dcmd("dmods", "list loaded debugger modules",
      opts=[Flag("l", "long", "also each module's dcmds and walkers")],
      operands=[Operand("mod", optional=True)],
      help="List the loaded modules, after loading those of the allocators in the target "
           "(as ::dcmds does). With a module name, only that module.",
      example="::dmods -l mdb")
def dmods(inv: Invocation):
    rest = inv.operands
    if inv.has_addr or len(rest) > 1:
        raise UsageError("")
    inv.session.autoload()
    names = sorted(inv.session.registry.dmods)
    if rest:
        if rest[0] not in inv.session.registry.dmods:
            raise MdbError(f"{rest[0]} module not loaded")
        names = [rest[0]]
    for name in names:
        _print_dmod(inv, name, inv.opts.long)
    return 0


@dcmd("load", "load debugger module",
      opts=[Flag("f", "force", "accepted for mdb compatibility"),
            Flag("g", "global", "accepted for mdb compatibility"),
            Flag("s", "silent", "load silently")],
      operands=[Operand("module")],
      help="Load a dmod: an installed module by name (mdbpy's own, such as umem, or one "
           "another package declares in the entry-point group mdbpy.modules), never from the "
           "current directory; or a Python file or "
           "package directory by its path, written with a slash or ending in .py "
           "(./mine.py, /abs/mine.py). Its dcmds and walkers become available at once. A "
           "failure is one line naming the file and why, and loads nothing.",
      example="::load ./mywalkers.py")
def load(inv: Invocation):
    rest = inv.operands
    if inv.has_addr or len(rest) != 1 or not isinstance(rest[0], str) or rest[0][:1] in "+-":
        raise UsageError("")
    inv.session.load_dmod(rest[0])
    return 0


@dcmd("unload", "unload debugger module", operands=[Operand("module")],
      help="Remove a loaded dmod and its dcmds and walkers. The built-in module cannot be "
           "unloaded.",
      example="::unload mywalkers")
def unload(inv: Invocation):
    if len(inv.args) != 1 or not isinstance(inv.args[0], str):
        raise UsageError("")
    name = inv.args[0]
    if name == BUILTIN_MODULE:
        raise MdbError(f"failed to unload {name}: it is the built-in module")
    inv.session.registry.unload_module(name)
    return 0


# -- settings -----------------------------------------------------------------------------

def _print_settings(inv: Invocation) -> None:
    s = inv.session
    on = [name for name, value in sorted(s.options.items()) if value]
    rows = (("macro path:", ":".join(s.macro_path)),
            ("command prompt:", f'"{s.prompt}"'),
            ("debugger options:", ", ".join(on) if on else "none"),
            ("walk limit:", walk_limit(s) or "none"),
            ("output radix:", f"{s.radix} base ten"))
    inv.out.write("\n" + "".join(f"{label:>18} {value}\n" for label, value in rows))


@dcmd("set", "get/set debugger properties", getopt=False,
      opts=[Opt("o", "option", STR, "-o turns a debugger option on, +o turns it off (nostop, "
                "pager, repeatlast, ignoreeof, color, json, demangle; several may be given separated by "
                "commas; -o walklimit=N caps every walk at N addresses, with a note when it "
                "cuts one, 0 for no limit; -o follow_fork_mode=child makes ::run stop in a "
                "forked child instead of the parent)", metavar="opt", plus=True),
            Opt("I", "path", STR, "set the macro path (colon-separated)"),
            Opt("P", "prompt", STR, "set the prompt")],
      help="Change debugger settings. With no arguments, print the current settings.",
      example="::set -o repeatlast")
def set_(inv: Invocation):
    s = inv.session
    args = list(inv.args)
    if inv.has_addr or not all(isinstance(a, str) for a in args):
        raise UsageError("")
    if not args:
        _print_settings(inv)
        return 0
    changes: list = []
    i = 0
    while i < len(args):
        flag = args[i]
        if flag in ("-o", "+o", "-I", "-P"):
            if i + 1 >= len(args):
                raise UsageError(f"option requires an argument -- {flag[1]}")
            value, i = args[i + 1], i + 2
        elif flag[:2] in ("-o", "-I", "-P") and len(flag) > 2:
            flag, value, i = flag[:2], flag[2:], i + 1
        else:
            raise UsageError(f"illegal option -- {flag}")
        if flag in ("-o", "+o"):
            for opt in value.split(","):
                if "=" in opt:
                    changes.append(("=", *valued_option(opt, flag == "-o")))
                    continue
                if opt not in s.options:
                    raise MdbError(f"unknown option '{opt}' (known: "
                                   f"{', '.join(sorted(s.options))})")
                changes.append(("o", opt, flag == "-o"))
        else:
            changes.append((flag[1], value, None))
    for kind, value, on in changes:
        if kind == "o":
            s.options[value] = on
        elif kind == "=":
            s.settings[value] = on
        elif kind == "I":
            s.macro_path = value.split(":")
        else:
            s.prompt = value
    return 0

