"""The language engine on a synthetic target: statements, dot and counts, pipelines, walks,
macro files, shell escapes, error recovery and exit status (reference §1.1-1.10)."""

import io
from pathlib import Path

import pytest

from mdbpy.dcmd import ADDRSPEC, LOOP, LOOPFIRST, PIPE, PIPE_OUT, Dcmd, Dmod, Operand, Walker
from mdbpy.errors import CommandAbort, MdbError, QuitSession, UsageError
from mdbpy.lang.engine import Engine
from mdbpy.session import Session
from mdbpy.symbols.base import Symbol
from mdbpy.target.synthetic import SyntheticTarget

MACROS = Path(__file__).resolve().parent / "macros"


def _list_memory() -> bytes:
    """A linked list at 0x1000: nodes {next, value} at 0x1000 -> 0x1020 -> 0x1040."""
    mem = bytearray(0x100)
    for off, nxt, val in ((0x00, 0x1020, 1), (0x20, 0x1040, 2), (0x40, 0, 3)):
        mem[off:off + 16] = nxt.to_bytes(8, "little") + val.to_bytes(8, "little")
    mem[0x80:0x86] = b"hello\0"
    return bytes(mem)


class Harness:
    """A session over the list memory, an engine, captured output, and a test dmod with a
    recording dcmd (::rec), a pipe_all recorder (::recall), failing dcmds and walkers."""

    def __init__(self, **options):
        self.out, self.err = io.StringIO(), io.StringIO()
        target = SyntheticTarget([(0x1000, _list_memory())])
        self.session = Session(target, out=self.out, err=self.err, options=options)
        self.session.macro_path = [str(MACROS)]
        self.engine = Engine(self.session)
        self.session.symbols.add_symbols("a.out", [
            Symbol("main", 0x1000, 0x10), Symbol("add", 0x1080, 8, "object"),
            Symbol("dup", 0x1010, 8)], is_exe=True)
        self.session.symbols.add_symbols("libc.so.6", [Symbol("dup", 0x2010, 8)])
        self.calls = []
        self._test_module()

    def _test_module(self):
        reg = self.session.registry
        reg.dmods["test"] = Dmod("test", "")

        def rec(inv):
            self.calls.append((inv.addr, inv.flags, list(inv.args), inv.pipe))
            if inv.piped_out:
                inv.out.write(f"{inv.addr + 1:#x}\n")

        def boom(inv):
            raise ValueError("bad")

        def fail(inv):
            if "abort" in inv.args:
                raise CommandAbort("stop here")
            if "usage" in inv.args:
                raise UsageError("wrong")
            raise MdbError("it failed")

        def walk_list(session, addr):
            addr = 0x1000 if addr is None else addr
            for _ in range(100):
                if not addr:
                    return
                yield addr
                addr = session.mem.read_ptr(addr)

        def walk_broken(session, addr):
            yield 0x1000
            raise MdbError("list is corrupt")

        for d in (Dcmd("rec", rec, "record calls", addr="?",
                       operands=(Operand("args", optional=True),)),
                  Dcmd("recall", rec, "record calls", pipe_all=True),
                  Dcmd("boom", boom, "crash"),
                  Dcmd("fail", fail, "fail", addr=":",
                       operands=(Operand("abort|usage", optional=True),)),
                  Dcmd("gone", rec, "disabled", enabled=lambda s: "libgone not found")):
            reg.add_dcmd(d, "test")
        for w in (Walker("tlist", walk_list, "walk the list"),
                  Walker("empty", lambda s, a: iter(()), "walk nothing"),
                  Walker("broken", walk_broken, "walk and fail"),
                  Walker("local", walk_list, "needs an address", needs_addr=True)):
            reg.add_walker(w, "test")

    def run(self, text: str) -> str:
        self.status = self.engine.run_string(text)
        return self.take()

    def stream(self, text: str) -> str:
        self.status = self.engine.run_stream(io.StringIO(text))
        return self.take()

    def take(self) -> str:
        return _drain(self.out)

    def errors(self) -> str:
        return _drain(self.err)


def _drain(buf: io.StringIO) -> str:
    text = buf.getvalue()
    buf.seek(0)
    buf.truncate()
    return text


@pytest.fixture
def h():
    return Harness()


# -- expressions -------------------------------------------------------------------------

VALUES = [
    ("10", 0x10), ("0t10", 10), ("0t1.5", 0x3FF8000000000000), ("'ab'", 0x6162),
    ("1|1^1", 1), ("1^1&0", 1), ("1&2==2", 1), ("4==1<<2", 1), ("1<<1+1", 4), ("1+2*3", 7),
    ("2*7%%4", 6), ("8%2*2", 8), ("10-4-2", 0xA), ("5#4*2", 0x10), ("1!=2", 1), ("10>>4", 1),
    ("-1", (1 << 64) - 1), ("~0", (1 << 64) - 1), ("#0", 1), ("#5", 0), ("-1+2", 1),
    ("0-7%2", (1 << 64) - 3), ("ffffffffffffffff+2", 1), ("-8%3", (1 << 64) - 2),
    ("main", 0x1000), ("add", 0x1080), ("abc", 0xABC), ("dup", 0x1010),
    ("libc.so.6`dup", 0x2010), ("a.out`dup", 0x1010),
    ("*main", 0x1020), ("*main+8", 0x1028), ("*(main+8)", 1), ("**main", 0x1040),
    ("*/c/main", 0x20), ("*/1/main", 0x20), ("*/s/main", 0x1020), ("*/2/main", 0x1020),
    ("*/i/(main+20)", 0x1040), ("*/4/main", 0x1020), ("*/l/main", 0x1020),
    ("*/8/main", 0x1020), ("*/i/add", 0x6C6C6568), ("*/c/(add+4)", ord("o")),
]


@pytest.mark.parametrize("text,value", VALUES)
def test_expression_values(h, text, value):
    assert h.engine.eval_expr(text) == value


EXPR_ERRORS = [
    ("1%0", "attempted to divide by zero"), ("1%%0", "attempted to divide by zero"),
    ("1#0", "attempted to divide by zero"),
    ("8000000000000000%ffffffffffffffff", "divide overflow"),
    ("<nope", "variable 'nope' is not defined"),
    ("nosuch", "failed to dereference symbol: unknown symbol name 'nosuch'"),
    ("libc.so.6`main", "failed to dereference symbol"),
    ("*5000", "failed to read 8 bytes at 0x5000"),
]


@pytest.mark.parametrize("text,message", EXPR_ERRORS)
def test_expression_errors(h, text, message):
    with pytest.raises(MdbError) as e:
        h.engine.eval_expr(text)
    assert message in str(e.value)


def test_object_file_read_is_a_one_line_error(h):
    with pytest.raises(MdbError) as e:
        h.engine.eval_expr("%main")
    assert "\n" not in str(e.value)


def test_dot_words_and_variables(h):
    s = h.session
    s.dot, s.incr, s.last_dot = 0x1000, 8, 0x40
    assert [h.engine.eval_expr(w) for w in (".", "+", "^", "&", "<.")] == \
        [0x1000, 0x1008, 0xFF8, 0x40, 0x1000]
    s.dot = 0x7FFFFFFFFFFFFFFC
    with pytest.raises(MdbError, match="'\\+' would cause '.' to overflow"):
        h.engine.eval_expr("+")
    s.dot, s.incr = 4, 8
    with pytest.raises(MdbError, match="underflow"):
        h.engine.eval_expr("^")
    s.vars["x"] = 0x42
    assert h.engine.eval_expr("<x+1") == 0x43
    s.register_vars = lambda: {"rip": 0x401000}
    assert h.engine.eval_expr("<rip") == 0x401000
    assert h.engine.eval_expr("<9") == 0  # built-in variables exist from the start


def test_hex_word_follows_symbols_and_radix(h):
    assert h.run("0t10$d") == "radix = 10 base ten\n"
    assert h.engine.eval_expr("10") == 10
    assert h.engine.eval_expr("add") == 0x1080
    assert h.run("::echo $[10] $[0x10]") == "10 16 \n"
    h.run("0x10$d")
    assert h.run("1$d") == ""
    assert "expected radix from 2 to 16" in h.errors()


# -- statements: dot, counts, increment --------------------------------------------------

def test_address_and_flags(h):
    h.run("::rec a")
    h.run("1234::rec")
    h.run("1000,3::rec")
    assert h.calls == [(0, 0, ["a"], None), (0x1234, ADDRSPEC, [], None),
                       (0x1000, ADDRSPEC | LOOP | LOOPFIRST, [], None),
                       (0x1000, ADDRSPEC | LOOP, [], None), (0x1000, ADDRSPEC | LOOP, [], None)]
    assert h.session.dot == 0x1000


def test_count_advances_dot_by_the_increment(h):
    h.session.incr = 8
    h.run("1000,3::rec")
    assert [c[0] for c in h.calls] == [0x1000, 0x1008, 0x1010]
    h.calls.clear()
    h.run(",2::rec")
    assert h.calls == [(0x1010, LOOP | LOOPFIRST, [], None), (0x1018, LOOP, [], None)]
    h.calls.clear()
    h.run("1000,0::rec")
    assert h.calls == [] and h.session.dot == 0x1000


def test_count_stops_at_first_failure(h):
    h.run("1000,5::fail")
    assert h.errors() == "mdbpy: it failed\n"
    assert h.status == 1


def test_bare_expression_in_string_only_sets_dot(h):
    h.session.incr = 4
    h.run("1000::rec; 2000")
    assert len(h.calls) == 1
    assert h.session.dot == 0x2000 and h.session.incr == 0


def test_bare_expression_in_stream_reruns_previous(h):
    h.stream("1000::rec x\n2000\n3000,2\n")
    assert h.calls == [(0x1000, ADDRSPEC, ["x"], None), (0x2000, ADDRSPEC, ["x"], None),
                       (0x3000, ADDRSPEC | LOOP | LOOPFIRST, ["x"], None),
                       (0x3000, ADDRSPEC | LOOP, ["x"], None)]
    h.calls.clear()
    h.session.incr = 0x10
    h.stream(",2\n")
    assert [c[:2] for c in h.calls] == [(0x3010, LOOP | LOOPFIRST), (0x3020, LOOP)]


def test_previous_command_keeps_its_evaluated_arguments(h):
    h.session.vars["v"] = 1
    h.stream("1::rec $[<v]\n2>v\n")
    h.calls.clear()
    h.engine.run_line("5")
    # the previous command is now `>v`; rerunning it at 5 assigns 5
    assert h.session.vars["v"] == 5


def test_empty_line_repeats_only_with_repeatlast(h):
    h.stream("1000::rec\n\n")
    assert len(h.calls) == 1
    h2 = Harness(repeatlast=True)
    h2.session.incr = 8
    h2.stream("1000::rec\n\n")
    assert h2.calls == [(0x1000, ADDRSPEC, [], None), (0x1008, 0, [], None)]
    h2.calls.clear()
    h2.engine.run_line("")
    assert h2.calls == [(0x1010, 0, [], None)]
    h2.calls.clear()
    h2.run("")
    assert h2.calls == []


def test_last_dot_is_where_the_last_dcmd_ran(h):
    assert h.run("1000::rec; 2>x; ::echo $[&] $[<x]") == "2 2 \n"
    assert h.run("1234::rec; ::echo $[&]") == "1234 \n"


def test_assignment_and_casts(h):
    h.run("12345678>a; 12345678>/c/b; 12345678>/s/c; 12345678>/i/d; 12345678>/l/e")
    v = h.session.vars
    assert (v["a"], v["b"], v["c"], v["d"], v["e"]) == (0x12345678, 0x78, 0x5678,
                                                          0x12345678, 0x12345678)
    assert h.run("1>/x/f") == ""
    assert h.errors() == "mdbpy: x is not a valid // modifier\n"
    h.run("1>a-b")
    assert h.errors() == "mdbpy: '-' may not be used in a variable name\n"


# -- pipelines and walks -----------------------------------------------------------------

def test_walk_prints_addresses(h):
    assert h.run("::walk tlist") == "0x1000\n0x1020\n0x1040\n"
    assert h.run("1020::walk tlist") == "0x1020\n0x1040\n"
    assert h.run("1020::walk local") == "0x1020\n0x1040\n"
    assert h.run("::walk local") == ""
    assert h.errors() == ("mdbpy: walker 'local' needs an address to start from\n"
                          "Usage: [address]::walk name [variable]\n"
                          "mdbpy: try '::help walk' for more information\n")


def test_walk_failures(h):
    assert h.run("::walk nosuch") == ""
    assert h.errors() == "mdbpy: failed to perform walk: walker 'nosuch' not found " \
                         "(see ::walkers)\n"
    assert h.status == 1
    assert h.run("::walk broken") == "0x1000\n"
    assert h.errors() == "mdbpy: failed to perform walk: list is corrupt\n"


def test_pipeline_flags_and_addresses(h):
    h.run("::walk tlist | ::rec")
    assert h.calls == [(0x1000, ADDRSPEC | LOOP | PIPE | LOOPFIRST, [], None),
                       (0x1020, ADDRSPEC | LOOP | PIPE, [], None),
                       (0x1040, ADDRSPEC | LOOP | PIPE, [], None)]
    h.calls.clear()
    h.run("1000::rec | ::rec")
    assert h.calls == [(0x1000, ADDRSPEC | PIPE_OUT, [], None),
                       (0x1001, ADDRSPEC | LOOP | PIPE | LOOPFIRST, [], None)]


def test_pipe_all_gets_the_whole_list(h):
    h.run("::walk tlist | ::recall")
    assert h.calls == [(0x1000, ADDRSPEC | LOOP | PIPE | LOOPFIRST, [],
                        [0x1000, 0x1020, 0x1040])]


def test_empty_pipe_does_not_run_the_right_side(h):
    h.run("::walk empty | ::rec")
    assert h.calls == [] and h.status == 0


def test_walk_variable_follows_each_element(h):
    out = h.run("::walk tlist n | ::map *. | ::eval '::echo $[<n] $[.]'")
    assert out == "1000 1020 \n1020 1040 \n1040 0 \n"
    assert h.errors() == ""
    assert h.run("::walk tlist n") == "0x1000\n0x1020\n0x1040\n"
    assert h.session.vars["n"] == 0x1040


def test_map_grep_head(h):
    assert h.run("::walk tlist | ::map *(.+8)") == "1\n2\n3\n"
    assert h.run("::walk tlist | ::grep *(.+8)==2") == "1020\n"
    # `!` in arguments starts a shell pipe, so this operator must be quoted
    assert h.run("::walk tlist | ::grep '*(.+8)!=2' | ::map .+1") == "1001\n1041\n"
    assert h.run("::walk tlist | ::head -2") == "1000\n1020\n"
    assert h.run("::walk tlist | ::head -n 1 | ::rec") == ""
    assert [c[0] for c in h.calls] == [0x1000]
    assert h.run("::walk tlist | ::head") == "1000\n1020\n1040\n"
    assert h.run("::walk tlist | ::head -x") == ""
    assert "Usage: ::head [-n num]" in h.errors()


def test_eval_sets_and_carries_dot(h):
    assert h.run("1000::eval '::echo $[.]'") == "1000 \n"
    h.run("::eval 2345")
    assert h.session.dot == 0x2345
    assert h.session.evaluate("main+1", 0) == 0 and h.session.dot == 0x1001


def test_pipe_input_must_be_expressions(h):
    h.run("::echo not-an-expression | ::rec")
    assert h.calls == []
    assert h.errors().startswith("mdbpy: failed to dereference symbol")
    assert h.status == 1
    h.run("::echo '1;2' | ::rec")
    assert h.calls == [] and "syntax error" in h.errors()


def test_pipeline_stops_on_usage_and_abort(h):
    h.run("::walk tlist | ::fail usage | ::rec")
    assert h.calls == []
    assert h.errors().count("Usage: address::fail [abort|usage]") == 1
    h.run("::walk tlist | ::fail abort")
    assert h.errors() == "mdbpy: stop here\n"
    h.run("::walk tlist | ::fail")  # plain failures are per address (mdb's DCMD_ERR)
    assert h.errors() == "mdbpy: it failed\n" * 3
    assert h.status == 1


def test_dcmd_errors_are_one_line(h):
    assert h.run("::boom") == ""
    assert h.errors() == "mdbpy: internal error in ::boom: ValueError: bad\n"
    assert h.run("::gone") == ""
    assert h.errors() == "mdbpy: libgone not found\n"
    assert h.run("::nosuch") == ""
    assert h.errors() == "mdbpy: invalid command '::nosuch'\n"
    assert h.run("1234::echo") == ""
    assert h.errors() == ("Usage: ::echo args ...\n"
                          "mdbpy: try '::help echo' for more information\n")


# -- shell --------------------------------------------------------------------------------

def test_shell_escapes(h):
    assert h.run("::echo 1 2 ! wc -w").strip() == "2"
    assert h.run("!echo hi; ::echo after") == "hi\nafter \n"
    assert h.run("::walk tlist ! sort -r") == "0x1040\n0x1020\n0x1000\n"
    assert h.run("::walk tlist | ::map .+1 ! tr a-f A-F") == "1001\n1021\n1041\n"
    h.run("!exit 3")
    assert h.status == 1


# -- macro files --------------------------------------------------------------------------

def test_source_macro(h):
    assert h.run("$<< simple.mdb") == "in macro \n"
    assert h.session.vars["m"] == 0x1234
    assert h.run("$<< outer.mdb; ::echo back") == "in macro \nafter simple \nback \n"


def test_exec_macro_replaces_the_macro_being_read(h):
    # at the top level $< sources; inside replace.mdb it replaces the rest of that file
    assert h.run("$< replace.mdb; ::echo top") == "before \nin macro \ntop \n"


def test_exec_without_file_stops_the_macro(h):
    assert h.run("$<< abort.mdb; ::echo top") == "one \ntop \n"
    assert h.run("$<") == ""
    assert h.errors() == "mdbpy: input stack is empty\n"


def test_exec_count_is_variable_9(h):
    assert h.run("0,5$< count.mdb") == "count 5 \n"
    assert h.run("0,0$< count.mdb") == ""


def test_missing_macro(h):
    assert h.run("$<< nosuch") == ""
    assert h.errors() == "mdbpy: failed to open nosuch (see ::help '$<')\n"
    assert h.status == 1


def test_recursive_macro_is_bounded(h):
    h.run("$<< loop.mdb")
    assert "input nested too deeply" in h.errors()


def test_macro_syntax_error_names_the_line(h):
    assert h.run("$<< broken.mdb") == "recovered \nsame line \n"
    assert h.errors() == 'mdbpy: syntax error on line 2 of broken.mdb at end of command\n'


def test_macro_path_with_directory_name(h):
    assert h.run(f"$<< {MACROS}/simple.mdb") == "in macro \n"


# -- input handling and status ------------------------------------------------------------

def test_stream_recovers_after_syntax_error(h):
    out = h.stream("::echo $[(\n::echo ok\n::echo 'x ; ::echo y\n1 2; ::echo z\n")
    assert out == "ok \nz \n"
    assert h.errors().count("syntax error") == 3
    assert h.status == 0


def test_stream_is_read_line_by_line():
    h = Harness()
    lines = iter(["::echo a\n", "::echo b\n", ""])
    seen = []

    class Stream:
        def readline(self, limit=-1):
            seen.append(h.out.getvalue())
            return next(lines)

    h.engine.run_stream(Stream())
    assert seen == ["", "a \n", "a \nb \n"]


def test_exit_status_is_the_last_commands(h):
    assert h.run("::echo a") == "a \n" and h.status == 0
    h.run("::nosuch")
    assert h.status == 1
    h.run("::nosuch; ::echo a")
    assert h.status == 0
    h.run("::echo a; ::walk nosuch")
    assert h.status == 1
    h.run("::echo a; 1234")
    assert h.status == 0
    h.stream("::echo a\n::fail\n// trailing comment\n\n")
    assert h.status == 1
    h.run("nosuch")
    assert h.status == 1


def test_quit_leaves_the_engine(h):
    for q in ("$q", "$Q", "::quit", "$%"):
        with pytest.raises(QuitSession):
            h.run(f"::echo before; {q}; ::echo after")
    assert h.take() == "before \n" * 4


def test_overlong_line_is_refused(h, monkeypatch):
    import mdbpy.lang.engine as eng

    monkeypatch.setattr(eng, "MAX_LINE", 16)
    out = h.stream("::echo " + "x" * 40 + "\n::echo ok\n")
    assert out == "ok \n"
    assert "is too long" in h.errors()


def test_format_verbs_take_counts_dot_and_pipes(h):
    out = h.run("main,3/J")
    assert [line.split() for line in out.splitlines()] == [["main:"], ["main:", "1020"], ["1"],
                                                           ["0"]]
    assert (h.session.dot, h.session.incr) == (0x1010, 8)
    h.run("main/J")
    assert h.run("+/J").split() == ["main+0x8:", "1"]
    assert h.run("::walk tlist | ::map *(.+8) | =D").split() == ["1", "2", "3"]
    assert h.run("main/K ! wc -l").strip() == "2"
