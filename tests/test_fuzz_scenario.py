"""Fuzzing the simulator's scenario language (mdbpy/sim/scenario.py, run by mdbpy/sim/run.py):
statements built from the language's words, mutations of the bundled demo scenario, and random
text. Each either builds a heap (written as a program and core that mdbpy opens) or fails with
one ScenarioError naming its line; a scenario asking for more memory, threads or statements
than the simulator's budget is refused at the line that asks, before anything is built."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fuzz_support import (MAX_RSS_GROWTH_MIB, assert_message, fuzz_settings, max_rss_mib,
                          watchdog)
from hypothesis import given
from hypothesis import strategies as st

from mdbpy.errors import MdbError
from mdbpy.sim import scenario
from mdbpy.sim.build import build, write
from mdbpy.sim.scenario import ScenarioError
from mdbpy.target.core import open_file_target

DEMO = (Path(scenario.__file__).parent / "demo.scn").read_text()
LINE_ERROR = re.compile(r"scenario line (\d+): [^\n]+")


def check_scenario(text: str, workdir: Path) -> None:
    """Build the scenario; a built heap is written and opened as mdbpy would open it."""
    before = max_rss_mib()
    with watchdog():
        try:
            result = build(text)
        except ScenarioError as e:
            m = LINE_ERROR.fullmatch(str(e))
            assert m, f"not a scenario error with a line: {str(e)!r}"
            assert int(m.group(1)) <= text.count("\n") + 1 and e.line == int(m.group(1))
            return
        try:
            prog, core, _truth = write(result, str(workdir))
        except MdbError as e:
            assert_message(e)
            return
        open_file_target(core, exe=prog).close()
    grown = max_rss_mib() - before
    assert grown < MAX_RSS_GROWTH_MIB, f"peak memory grew by {grown:.0f} MiB"


# -- the language's words -------------------------------------------------------------------
NAMES = st.sampled_from(["main", "p", "q", "g", "buf", "session", "worker", "kmalloc",
                         "start_thread", "_start", "sim_allocator", "x-y", "9a", "a.b", "="])
NUMBERS = st.one_of(
    st.integers(0, 300).map(str),
    st.integers(0, 1 << 70).map(hex),
    st.sampled_from(["0", "1", "8", "16", "8192", "8193", "1048576", "1048577", "-1",
                     str(1 << 40), str(10 ** 9), "0x", "1_000", "0b101", "0o17", "1e3"]),
)
REFS = st.one_of(NAMES, st.tuples(NAMES, st.sampled_from("+-"), NUMBERS).map("".join),
                 NAMES.map(lambda n: "&" + n), st.just("null"), NUMBERS)
DESTS = st.one_of(REFS, NAMES.map(lambda n: "local " + n))
STRINGS = st.sampled_from(['"abc"', '"x\\x00"', '"\\q"', '"', '""', '"\u00e9"', '"a" "b"',
                           '"' + "A" * 300 + '"'])
STATEMENT = st.one_of(
    st.tuples(st.sampled_from(["pid", "cpus", "seed"]), NUMBERS),
    st.tuples(st.just("program"), NAMES),
    st.tuples(st.just("cache"), NAMES, NUMBERS),
    st.tuples(st.just("global"), NAMES, st.one_of(st.just(""), NUMBERS)),
    st.tuples(st.just("thread"), NAMES, st.sampled_from(["", "cpu 0", "cpu 1", "cpu 5000",
                                                         "cpu"])),
    st.tuples(st.just("call"), NAMES),
    st.just(("ret",)),
    st.tuples(NAMES, st.just("="), st.sampled_from(["kmalloc", "kzalloc", "alloc", "malloc"]),
              st.one_of(NUMBERS, NAMES)),
    st.tuples(st.just("free"), NAMES),
    st.tuples(st.just("store"), DESTS, st.just("="), REFS),
    st.tuples(st.just("write"), DESTS, st.one_of(
        STRINGS, st.tuples(st.sampled_from(["u8", "u16", "u32", "u64", "u128"]), NUMBERS).map(
            " ".join))),
    st.tuples(st.just("memset"), DESTS, NUMBERS, NUMBERS),
    st.tuples(st.just("damage"), NUMBERS, st.sampled_from(["", "seed 3", "seed", "nosuch"])),
    st.sampled_from([("# a comment",), ("",), ("bogus", "words")]),
).map(lambda words: " ".join(w for w in words if w))
SCENARIOS = st.lists(STATEMENT, max_size=30).map("\n".join)


@st.composite
def mutated_demo(draw) -> str:
    """The demo scenario with lines deleted, repeated, swapped, replaced by statements, or
    edited character by character."""
    lines = DEMO.splitlines()
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["delete", "repeat", "swap", "replace", "edit"]))
        if how == "delete" and len(lines) > 1:
            del lines[i]
        elif how == "repeat":
            lines[i:i] = [lines[i]] * draw(st.integers(1, 50))
        elif how == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif how == "replace":
            lines[i] = draw(STATEMENT)
        else:
            k = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:k] + draw(st.text(max_size=4)) + lines[i][k + 1:]
    return "\n".join(lines)


SOUP = st.text(alphabet=st.sampled_from(list("abcgkmlptz019=+-&\"\\x# \n")), max_size=80)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzzsim")


def targets(workdir: Path) -> dict:
    """name -> (strategy, check), for bench/fuzz.py."""

    def check(text: str) -> None:
        check_scenario(text, workdir)

    return {"scenario-grammar": (SCENARIOS, check), "scenario-demo": (mutated_demo(), check),
            "scenario-soup": (SOUP, check)}


@fuzz_settings(150)
@given(text=SCENARIOS)
def test_statement_grammar(workdir, text):
    check_scenario(text, workdir)


@fuzz_settings(100)
@given(text=mutated_demo())
def test_mutated_demo(workdir, text):
    check_scenario(text, workdir)


@fuzz_settings(150)
@given(text=SOUP)
def test_random_text(workdir, text):
    check_scenario(text, workdir)


@pytest.mark.parametrize("text,line,msg", [
    ("\n".join(f"global g{i} 1048576" for i in range(300)), 257,
     "the scenario asks for more than 256 MiB of memory"),
    ("cache big 8192\ncall main\n" + "\n".join(f"p{i} = alloc big" for i in range(40000)),
     32771, "the scenario asks for more than 256 MiB of memory"),
    ("\n".join(f"thread t{i}" for i in range(5000)), 4096, "more than 4096 threads"),
    ("pid 2147483647\nthread a", 2,
     "pid 2147483647 leaves no thread id for 2 threads (ids end at 2147483647)"),
])
def test_budget_refuses_at_the_line(text, line, msg):
    before = max_rss_mib()
    with pytest.raises(ScenarioError) as e:
        build(text)
    assert str(e.value) == f"scenario line {line}: {msg}"
    assert max_rss_mib() - before < 64


def test_statement_budget(monkeypatch):
    """10**9 objects would need 10**9 statements: refused at the first one over the limit."""
    monkeypatch.setattr(scenario, "MAX_STATEMENTS", 100)
    with pytest.raises(ScenarioError, match=r"^scenario line 101: more than 100 statements$"):
        scenario.parse("call main\n" * 200)
