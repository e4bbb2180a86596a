"""Arguments are data (issue 21 point 4): every dcmd declares its options and operands once, and
its usage line, ::help, parser and completion agree with that declaration; mdb's getopt rules
hold; bad input gives the one-line usage errors."""

from __future__ import annotations

import string

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from test_lang_engine import Harness

from mdbpy.dcmd import NUM, STR, Flag, Opt, parse_options
from mdbpy.docgen import registry
from mdbpy.errors import UsageError
from mdbpy.repl.complete import MdbCompleter


def _dcmds():
    """Every dcmd of every bundled module (what docs/reference.md is made from), once."""
    reg = registry()
    return list({id(d): d for d in reg.dcmds.values()}.values())


DCMDS = _dcmds()
PARSED = [d for d in DCMDS if d.getopt and d.opts]


@pytest.fixture(scope="module")
def h():
    return Harness()


def test_registry_has_the_bundled_dcmds():
    names = {d.name for d in DCMDS}
    assert {"list", "print", "findleaks", "malloc_chunks", "umem_cache", "kmem_cache"} <= names
    assert len(PARSED) >= 30


@pytest.mark.parametrize("d", DCMDS, ids=lambda d: d.name)
def test_declaration_is_well_formed(d):
    letters = [o.letter for o in d.opts]
    names = [o.name for o in d.opts]
    assert len(set(letters)) == len(letters) and len(set(names)) == len(names)
    for o in d.opts:
        assert len(o.letter) == 1 and o.name.isidentifier() and o.help.strip(), o
        assert o.type in (None, NUM, STR)
        assert f"[{o.term}]" in d.usage or (o.type is None and o.letter in d.usage), o
    assert d.addr in ("", "?", ":")
    assert all(a.term in d.usage for a in d.operands)


@pytest.mark.parametrize("d", DCMDS, ids=lambda d: d.name)
def test_help_documents_every_option(h, d):
    """::help prints the synopsis and an OPTIONS line per declared option, with its help."""
    out = h.run(f"::help {d.name}")
    assert h.errors() == ""
    assert " ".join(d.synopsis().split()) in " ".join(out.split())
    if not d.opts:
        assert ("\nOPTIONS\n" in out) == any(a.help for a in d.operands)
        return
    section = out.split("\nOPTIONS\n", 1)[1].split("\nATTRIBUTES\n", 1)[0]
    for o in d.opts:
        lines = [ln for ln in section.splitlines() if ln.split()[:1] == [o.term.split()[0]]]
        assert lines, (o, section)
        assert o.help.split()[0] in lines[0]


@pytest.mark.parametrize("d", PARSED, ids=lambda d: d.name)
def test_parser_accepts_exactly_the_declared_letters(d):
    declared = {o.letter: o for o in d.opts}
    for o in d.opts:
        words = [f"-{o.letter}"] + (["10"] if o.type is not None else [])
        opts, rest = d.parse(words, 16)
        assert rest == []
        assert getattr(opts, o.name) == {None: True, NUM: 0x10, STR: "10"}[o.type]
    for c in string.ascii_letters:
        if c not in declared:
            with pytest.raises(UsageError, match=f"^illegal option -- {c}$"):
                d.parse([f"-{c}"], 16)
    for c in string.digits:  # no dcmd has a digit option: -5 is a (negative) operand
        assert d.parse([f"-{c}"], 16)[1] == [f"-{c}"]


def test_unparsed_dcmds_take_their_words_as_given():
    """A dcmd without options sees `-x` as an operand (mdb: `::echo -n` prints -n); the hand-
    parsed ::set, ::typeset and ::head get their words untouched."""
    by = {d.name: d for d in DCMDS}
    for name, words in (("walk", ["-x", "v"]), ("echo", ["-n", "--"]),
                        ("set", ["+o", "pager"]), ("typeset", ["+t", "x"]), ("head", ["-5"])):
        opts, rest = by[name].parse(words, 16)
        assert rest == words
    assert by["set"].parse([], 16)[0].option is None


def _parse(name: str, *words, radix: int = 16):
    d = next(d for d in DCMDS if d.name == name)
    opts, rest = d.parse(list(words), radix)
    return vars(opts), rest


def test_round_trips():
    assert _parse("list", "-o", "0t16", "-n5", "struct", "node", "next") == (
        {"offset": 16, "max": 5}, ["struct", "node", "next"])
    assert _parse("list") == ({"offset": 0, "max": None}, [])
    opts, rest = _parse("print", "-at", "-c", "10", "struct", "node", "-l0x20", "value")
    assert rest == ["struct", "node", "value"]
    assert (opts["addrs"], opts["types"], opts["string_limit"], opts["array_limit"],
            opts["depth"], opts["hex"]) == (True, True, 0x10, 0x20, None, False)
    assert _parse("findleaks", "-dv") == ({"detail": True, "force": False, "verbose": True}, [])
    assert _parse("walk", "umem_cache", "c") == ({}, ["umem_cache", "c"])
    assert _parse("malloc_chunks", "-f") == ({"free": True, "inuse": False}, [])
    assert _parse("umem_malloc_dist", "-g", "-b", "10", "-B", "0t4", radix=10) == (
        {"raw": False, "geometric": True, "maxbins": 10, "minbinsize": 4}, [])
    assert _parse("nm", "-t", "func,objt", "-gn", "libc.so.6")[0]["types"] == "func,objt"
    assert _parse("dump", "-l", "0t32")[0] == {
        "endian": False, "file": False, "physical": False, "no_ascii": False,
        "relative": False, "squish": False, "trim": False, "unaligned": False, "full": False,
        "group": 4, "length": 32, "paragraphs": 1}


def test_mdb_getopt_rules():
    opts = (Flag("v", "verbose", "v"), Opt("n", "num", NUM, "n"), Opt("s", "text", STR, "s"))

    def parse(*words, radix=16):
        o, rest = parse_options(list(words), opts, radix)
        return vars(o), rest

    assert parse("-vn", "10") == ({"verbose": True, "num": 0x10, "text": None}, [])
    assert parse("-n10", "-n", "0t7") == ({"verbose": False, "num": 7, "text": None}, [])
    assert parse("a", "-v", "b") == ({"verbose": True, "num": None, "text": None}, ["a", "b"])
    assert parse("--", "-v") == ({"verbose": False, "num": None, "text": None}, ["-v"])
    assert parse("-5", "-") == ({"verbose": False, "num": None, "text": None}, ["-5", "-"])
    assert parse("-n", "17", radix=10)[0]["num"] == 17
    assert parse("-s", 0x20)[0]["text"] == 0x20  # a $[...] value stays a number
    assert parse(0x20, "-s0x20") == ({"verbose": False, "num": None, "text": "0x20"}, [0x20])


@pytest.mark.parametrize("line, first", [
    ("0x1000::list -z", "mdbpy: illegal option -- z"),
    ("0x1000::list -o", "mdbpy: option requires an argument -- o"),
    ("0x1000::list -o zz", "mdbpy: invalid number 'zz'"),
    ("::print -Q int", "mdbpy: illegal option -- Q"),
    ("::vars -z", "mdbpy: illegal option -- z"),
])
def test_bad_input_is_one_usage_error(h, line, first):
    h.run(line)
    name = line.split("::")[1].split()[0]
    d = h.session.registry.dcmd(name)
    prefix = {":": "address::", "?": "[address]::"}.get(d.addr, "::")
    assert h.errors() == (f"{first}\nUsage: {prefix}{name} {d.usage}\n"
                          f"mdbpy: try '::help {name}' for more information\n")


def test_completion_offers_the_declared_options(h):
    comp = MdbCompleter(h.session)

    def complete(text):
        return {(c.text, c.display_meta_text) for c in comp.get_completions(
            Document(text), CompleteEvent())}

    got = complete("::walk tlist | ::list -")
    assert got == {("-o", "the next pointer's byte offset (default 0)"),
                   ("-n", "at most this many elements (without it, ::set -o walklimit=N "
                          "caps the walk, with a note)")}
    assert {t for t, _ in complete("$C -")} == {"-l"}
    assert complete("::print -T") == {("-T", "show each member's type and its base type")}
    assert complete("::echo -") == set()
