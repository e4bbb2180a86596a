"""The language dcmds: variables, ::echo, the registry listings and ::help, modules, ::set."""

import textwrap

import pytest
from test_lang_engine import Harness


@pytest.fixture
def h():
    return Harness()


def test_echo(h):
    assert h.run("::echo a 'b c' $[0t10] \"tab\\there\"") == "a b c a tab\there \n"
    assert h.run("::echo") == "\n"


def test_vars_listing(h):
    h.run("42>x; 7>y; 1000,0::rec")
    out = h.run("::vars")
    assert ". = 1000\n" in out and "x = 42\n" in out and "9 = 0\n" in out
    assert h.run("::vars -n") == ". = 1000\nx = 42\ny = 7\n"
    assert h.run("::vars -np") == "0x1000>.\n0x42>x\n7>y\n"
    assert h.run("$v") == ". = 1000\nx = 42\ny = 7\n"
    assert h.run("::vars -z") == ""
    assert "illegal option -- z" in h.errors()


def test_typeset_and_unset(h):
    h.run("::typeset -t a b; 1234::typeset c; 5>a")
    assert h.run("::vars -t") == "a = 5\nb = 0\n"
    assert h.session.vars["c"] == 0x1234
    h.run("::typeset b")  # no address: an existing value stays
    h.run("99::typeset b; ::typeset +t a")
    assert h.run("::vars -t") == "b = 99\n"
    h.run("::unset a b")
    assert "a" not in h.session.vars and "b" not in h.session.vars
    assert h.run("::unset a") == ""
    assert h.errors() == "mdbpy: variable 'a' not defined\n"
    h.run("::typeset x|y")
    assert "syntax error" in h.errors()
    h.run("::typeset 'x,y'")
    assert h.errors() == "mdbpy: ',' may not be used in a variable name\n"
    h.run("::typeset -t 1abc")  # `<1abc` could never read it back
    assert h.errors() == ("mdbpy: '1abc' is not a variable name: a letter, '_' or '.' "
                          "first, or a single digit\n")
    h.run("::typeset -t $[1]")
    assert h.errors().startswith("Usage: ::typeset [+/-t] var ...\n")
    assert h.run("::vars -t") == "" and "1abc" not in h.session.vars
    h.run("::typeset -t _a.b 7")
    assert h.run("::vars -t") == "7 = 0\n_a.b = 0\n"
    assert h.run("::typeset").startswith(". = ")


def test_dcmds_and_walkers_listings(h):
    assert h.run("::dcmds -n ^rec") == "rec                      - record calls\n" \
                                   "recall                   - record calls\n"
    out = h.run("::dcmds")
    assert "walk                     - walk data structure\n" in out
    assert "$q                       - quit the debugger\n" in out
    assert "gone" not in out  # disabled dcmds are hidden
    assert h.run("::dcmds -n calls") == ""
    assert h.run("::walkers -n tlist") == ("tlist                    - walk the list\n")
    assert h.run("::walkers -n address") == ""
    assert h.run("::walkers address") == "local                    - needs an address\n"
    assert h.run("::walkers '('") == ""
    assert h.errors().startswith("mdbpy: invalid pattern '('")


def test_help(h):
    out = h.run("::help walk")
    assert out.startswith("\nNAME\n  walk - walk data structure\n\nSYNOPSIS\n"
                          "  [ addr ] ::walk name [variable]\n\nDESCRIPTION\n  Run the walker")
    assert out.endswith("ATTRIBUTES\n\n  Target: synthetic\n  Module: mdb\n"
                        "  Interface Stability: Evolving\n\n")
    assert h.run("::help ::walk") == out
    assert "NAME\n  $< - replace input with macro\n" in h.run("::help '$<'")
    assert "Interface Stability: Unstable" in h.run("::help rec")
    assert h.run("::help tlist").startswith("\nNAME\n  tlist - walk the list (walker)\n")
    overview = h.run("::help")
    assert "[ address [, count]] verb [ arguments ... ]" in overview
    assert "::dcmds" in overview and "::walkers" in overview and "::formats" in overview
    assert h.run("::help nosuch") == ""
    assert h.errors() == "mdbpy: unknown command: nosuch\n"


def test_every_language_dcmd_has_help_and_example(h):
    for name in ("walk", "eval", "map", "grep", "head", "echo", "vars", "$v", "typeset",
                 "unset", ">", "$<", "$<<", "$d", "quit", "dcmds", "walkers", "help",
                 "dmods", "load", "unload", "set"):
        d = h.session.registry.dcmd(name)
        assert d.descr and d.help and d.example and d.module == "mdb", name


def test_dmods_load_unload(h, tmp_path):
    mod = tmp_path / "extwalk.py"
    mod.write_text(textwrap.dedent('''
        """A test dmod."""
        from mdbpy.dcmd import dcmd, walker

        @walker("ext_nums", "three numbers")
        def nums(session, addr):
            yield from (1, 2, 3)

        @dcmd("ext_hello", "say hello")
        def hello(inv):
            inv.print("hello")
    '''))
    assert h.run(f"::load {mod}") == ""
    assert "extwalk\n" in h.run("::dmods")
    assert h.run("::dmods -l extwalk") == ("\n" + "extwalk".ljust(70) + "\n"
                                           "  dcmd ext_hello            - say hello\n"
                                           "  walk ext_nums             - three numbers\n")
    assert h.run("::walk ext_nums | ::map .*2") == "2\n4\n6\n"
    assert h.run("::ext_hello") == "hello\n"
    h.run("::unload extwalk")
    assert h.run("::ext_hello") == ""
    assert h.errors() == "mdbpy: invalid command '::ext_hello'\n"
    h.run("::unload mdb")
    assert h.errors() == "mdbpy: failed to unload mdb: it is the built-in module\n"
    h.run("::dmods nosuch")
    assert h.errors() == "mdbpy: nosuch module not loaded\n"
    h.run("::load")
    assert "Usage: ::load [-fgs] module" in h.errors()


def test_set(h):
    out = h.run("::set")
    assert 'command prompt: "> "' in out and "macro path: " in out
    h.run("::set -o repeatlast -P 'mdb> ' -I /a:/b")
    assert h.session.options["repeatlast"] is True
    assert h.session.prompt == "mdb> " and h.session.macro_path == ["/a", "/b"]
    h.run("::set +o repeatlast,pager")
    assert not h.session.options["repeatlast"] and not h.session.options["pager"]
    h.run("::set -o nosuchopt")
    assert h.errors().startswith("mdbpy: unknown option 'nosuchopt'")
    h.run("::set -q")
    assert "illegal option -- -q" in h.errors()
