"""docs/types.md is tested: its mdb blocks run, in order, in one session on the executable of
fixtures/types.c opened alone, and print exactly what the page shows (tests/test_docs.py's block
convention); its pycon blocks run as doctests with `exe` set to that executable."""

from __future__ import annotations

import doctest
import io
import re
from pathlib import Path

import pytest
from support import compile_fixture
from test_docs import blocks

from mdbpy.lang.engine import Engine
from mdbpy.session import Session
from mdbpy.target.core import open_file_target

PAGE = Path(__file__).resolve().parents[1] / "docs" / "types.md"


@pytest.fixture(scope="module")
def types_exe(build_dir) -> Path:
    return compile_fixture("types", build_dir)


def test_page_examples_print_what_the_page_says(types_exe):
    buf = io.StringIO()
    target = open_file_target(str(types_exe))
    session = Session(target, out=buf, err=buf)
    engine = Engine(session)
    wrong, steps = [], 0
    try:
        for b in blocks(PAGE):
            if b.lang != "mdb":
                continue
            for line, command, expected in b.steps():
                buf.seek(0)
                buf.truncate()
                engine.run_line(command)
                got = [x.rstrip() for x in buf.getvalue().splitlines()]
                steps += 1
                if got != expected:
                    wrong.append(f"docs/types.md:{line}: > {command}\n  expected:\n"
                                 + "\n".join(expected) + "\n  got:\n" + "\n".join(got))
    finally:
        target.close()
    assert not wrong, "\n".join(wrong)
    assert steps >= 25


def test_python_examples_run(types_exe):
    text = PAGE.read_text()
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    globs = {"exe": str(types_exe)}
    for m in re.finditer(r"^```pycon\n(.*?)^```$", text, re.S | re.M):
        test = parser.get_doctest(m.group(1), globs, "docs/types.md", str(PAGE),
                                  text.count("\n", 0, m.start(1)))
        runner.run(test, out=report.append, clear_globs=False)
        globs.update(test.globs)
    assert runner.failures == 0, "".join(report)
    assert runner.tries >= 10
