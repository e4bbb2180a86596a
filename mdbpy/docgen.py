"""docs/reference.md from the registry: `python -m mdbpy.docgen > docs/reference.md`.

The registry is the documentation (docs/architecture.md): every dcmd and walker carries its own
description, declared arguments (mdbpy.dcmd.Opt, Operand: the usage line and the option list),
help and example, so the reference is generated from them rather than
written twice. Every module mdbpy itself declares (its entry points, mdbpy.dcmd.installed()) is
loaded, the allocator modules included, into a bare Registry: third-party modules installed
beside it are left out, so the page is the same wherever it is made; no target is needed, and walkers a module adds per target (the simulator's one walker
per cache) are left out because they depend on the target. tests/test_docs.py regenerates the
page and fails when the committed file differs.
"""

from __future__ import annotations

import sys

from mdbpy.dcmd import Dcmd, Registry, Walker, declared_registry

REFRESH = "python -m mdbpy.docgen > docs/reference.md"


def registry() -> Registry:
    """A Registry holding every bundled module's dcmds and walkers, in the order the page
    lists them (mdb's built-in module, then the allocators by name: dcmd.installed())."""
    return declared_registry(bundled_only=True)


def reference(reg: Registry | None = None) -> str:
    """The Markdown text of docs/reference.md."""
    reg = reg if reg is not None else registry()
    out = ["# dcmd and walker reference", "",
           f"Generated from the registry by `{REFRESH}`: do not edit by hand. Inside mdbpy, "
           "`::dcmds`, `::walkers` and `::help NAME` print the same text for the modules the "
           "target has loaded. The allocator modules load themselves when the target uses "
           "their allocator (or with `::load NAME`).", ""]
    out += [f"- [`{name}`](#module-{name}): {_first_line(reg.dmods[name].pymodule.__doc__)}"
            for name in reg.dmods]
    for name, dm in reg.dmods.items():
        out += ["", f"## Module {name}", ""]
        for d in sorted((reg.dcmds[n] for n in dm.dcmds), key=lambda d: d.name):
            out += _dcmd(d)
        walkers = sorted((reg.walkers[n] for n in dm.walkers), key=lambda w: w.name)
        if walkers:
            out += [f"### Walkers of {name}", ""]
            out += [_walker(w) for w in walkers]
    return "\n".join(out).rstrip() + "\n"


def _dcmd(d: Dcmd) -> list[str]:
    lines = [f"### `{shown(d.name)}`", "", f"`{d.synopsis()}`: {d.descr}", ""]
    if d.aliases:
        lines += ["Also: " + ", ".join(f"`{shown(a)}`" for a in d.aliases), ""]
    if d.help.strip():
        lines += [" ".join(d.help.split()), ""]
    options = d.options_help()
    if options:
        lines += [f"- `{term}`: {' '.join(text.split())}" for term, text in options] + [""]
    if d.example:
        lines += [f"Example: `{d.example}`", ""]
    return lines


def shown(name: str) -> str:
    """A dcmd's name as typed: `::name`, or `$c` / `:c` for the one-character commands."""
    return name if name.startswith(("$", ":")) else "::" + name


def _walker(w: Walker) -> str:
    start = " (needs a starting address)" if w.needs_addr else ""
    text = f"- `{w.name}`{start}: {w.descr}"
    if w.help.strip() and " ".join(w.help.split()) != w.descr:
        text += f". {' '.join(w.help.split())}"
    return text


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n\n")[0].replace("\n", " ")


if __name__ == "__main__":
    sys.stdout.write(reference())
