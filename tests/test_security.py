"""Security (issue 8): mdbpy never runs what a target or a core says, never gains privileges,
and reads commands only from where the user pointed it.

- An AST scan of mdbpy/ and commands/ fails on eval/exec/compile, pickle/marshal, os.system,
  os.exec*/spawn*, shell=True, privilege changes, and on any process start or module load
  outside an allow-list of the places that run what the user typed.
- A live process and its core whose library file name, symbol name and memory hold shell
  metacharacters and `!cmd` text: displayed, never executed (marker files stay absent).
- As `nobody`, mdbpy cannot attach to a process it does not own, and says why.
- `$<` reads macro files only from the macro path; a .mdbpyrc next to a core or in the
  current directory is not read.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support import ROOT, compile_fixture, mdbpy_cmd, one_line_stderr, run_mdbpy, start_fixture

SOURCES = [p for d in ("mdbpy", "commands") for p in sorted((ROOT / d).rglob("*.py"))]

# Calls that start processes or load code: allowed only at these places, each with its reason.
ALLOWED = {
    ("mdbpy/lang/engine.py", "Engine._shell"): "`!cmd` runs the command line the user typed",
    ("mdbpy/dcmd.py", "_import_path"): "::load imports the module file the user named",
    ("mdbpy/batch.py", "run_one"): "`mdbpy batch` runs mdbpy itself (this interpreter, no "
                                   "shell) over each core the user named",
    ("mdbpy/target/spawn.py", "_spawn"): "`mdbpy -- PROG` and ::run start the program the user "
                                         "named (no shell; a bare name from $PATH, never the "
                                         "current directory)",
}
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__", "breakpoint"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
RUNNERS = {("subprocess", n) for n in ("run", "Popen", "call", "check_call", "check_output",
                                       "getoutput", "getstatusoutput")} | \
          {("importlib.util", "spec_from_file_location"), ("importlib", "__import__")}
OS_FORBIDDEN_PREFIXES = ("system", "popen", "exec", "spawn", "posix_spawn", "fork")
PRIVILEGE_CALLS = {"setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid",
                   "setresuid", "setresgid", "setgroups", "initgroups", "capset", "setfsuid",
                   "setfsgid"}


class Scan(ast.NodeVisitor):
    """Findings in one file as (line, what, qualified name of the enclosing function)."""

    def __init__(self):
        self.scope: list[str] = []
        self.found: list[tuple[int, str, str]] = []

    def _hit(self, node, what: str) -> None:
        self.found.append((node.lineno, what, ".".join(self.scope)))

    def _scoped(self, node) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Import(self, node) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                self._hit(node, f"import {alias.name}")

    def visit_ImportFrom(self, node) -> None:
        if (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            self._hit(node, f"from {node.module} import")

    def visit_Constant(self, node) -> None:
        if isinstance(node.value, str) and node.value in PRIVILEGE_CALLS:
            self._hit(node, f"'{node.value}' (a privilege call by name, e.g. through ctypes)")

    def visit_Call(self, node) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_BUILTINS:
            self._hit(node, f"{func.id}()")
        name = _dotted(func)
        if name:
            owner, _, attr = name.rpartition(".")
            if (owner, attr) in RUNNERS or attr == "exec_module":
                self._hit(node, f"{name}() [runner]")
            if owner == "os" and attr.startswith(OS_FORBIDDEN_PREFIXES):
                self._hit(node, f"{name}()")
            if attr in PRIVILEGE_CALLS:
                self._hit(node, f"{name}()")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                self._hit(node, "shell=...")
        self.generic_visit(node)


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def scan_sources() -> dict[tuple[str, str], list[str]]:
    """{(file, function): [finding, ...]} over mdbpy/ and commands/."""
    out: dict[tuple[str, str], list[str]] = {}
    for path in SOURCES:
        rel = path.relative_to(ROOT).as_posix()
        s = Scan()
        s.visit(ast.parse(path.read_text(), rel))
        for line, what, where in s.found:
            out.setdefault((rel, where), []).append(f"{rel}:{line}: {what}")
    return out


def test_no_eval_pickle_shell_or_privilege_calls():
    found = scan_sources()
    runners_only = {k: v for k, v in found.items() if all("[runner]" in f for f in v)}
    bad = [f for k, v in found.items() if k not in ALLOWED or k not in runners_only for f in v]
    assert bad == []
    assert set(found) == set(ALLOWED), "an allow-listed place no longer exists: shrink ALLOWED"


def test_the_scan_catches_what_it_must():
    code = ("import pickle\nimport os, subprocess\n"
            "def f(x):\n    eval(x); os.system(x); subprocess.run(x, shell=True)\n"
            "    os.setuid(0); getattr(libc, 'capset'); os.execv(x, [x])\n")
    s = Scan()
    s.visit(ast.parse(code))
    assert [w for _, w, _ in s.found] == [
        "import pickle", "eval()", "os.system()", "subprocess.run() [runner]", "shell=...",
        "os.setuid()", "'capset' (a privilege call by name, e.g. through ctypes)", "os.execv()"]


# -- hostile strings from a target ----------------------------------------------------------

MARKS = [f"M{i}" for i in range(1, 10)]


@pytest.fixture(scope="module")
def hostile(build_dir, tmp_path_factory):
    """(Running, marker directory, library name, symbol name, core path): the hostile fixture
    with a library whose name, symbols and data hold shell commands creating M1..M9 in the
    marker directory, and an mdbpy core of it."""
    d = tmp_path_factory.mktemp("hostile")
    sym = f"sym$(touch {d}/M1);`touch {d}/M2`|!touch {d}/M3"
    text = f"!touch {d}/M4\\n$(touch {d}/M5);`touch M6`"
    asm = d / "evil.s"
    asm.write_text(
        f'\t.text\n\t.globl "{sym}"\n\t.type "{sym}", @function\n"{sym}":\n'
        f'\tret\n\t.size "{sym}", 1\n'
        f'\t.data\n\t.globl hostile_text\nhostile_text:\n\t.asciz "{text}"\n'
        f'\t.section .note.GNU-stack,"",@progbits\n')
    lib = "lib;touch M7;$(touch M8)!touch M9.so"  # relative commands: run with cwd = d
    subprocess.run(["gcc", "-shared", "-o", str(d / lib), str(asm)], check=True,
                   capture_output=True)
    exe = compile_fixture("hostile", build_dir, libs=("-ldl",))
    r = start_fixture(exe, d / lib, sym)
    try:
        core = d / "hostile-core"
        out = run_mdbpy("-S", "-p", r.pid, "-e", f"::gcore -o {core}")
        assert out.returncode == 0, out.stderr
        yield r, d, lib, sym, f"{core}.{r.pid}"
    finally:
        r.stop()


@pytest.mark.parametrize("live", [True, False], ids=["live", "core"])
def test_hostile_strings_are_displayed_not_run(hostile, live):
    r, d, lib, sym, core = hostile
    text, fn = r.addr("text"), r.addr("fn")
    target = ("-p", r.pid) if live else (core,)
    p = subprocess.run(mdbpy_cmd("-S", *target, "-e",
                                 f"::mappings; {text:x}/s; {fn:x}/i; {fn:x}=a; ::nm -g ! grep sym"),
                       capture_output=True, text=True, cwd=d, timeout=120)
    assert (p.returncode, one_line_stderr(p.stderr)) == (0, "")
    shown = p.stdout.replace("\n", "")  # long lines are wrapped at the terminal width
    assert f"{d}/{lib}" in shown  # the mapping, named as it is
    assert f"!touch {d}/M4$(touch {d}/M5);`touch M6`" in shown  # the string, shown
    assert shown.count(f"{lib}`{sym}:") == 3  # /i (twice: the symbol's label) and =a
    assert f"|{sym}\n" in p.stdout  # ::nm -g, through a shell pipe the user typed
    assert sorted(os.listdir(d)) == sorted(["evil.s", lib, os.path.basename(core)])


# -- privileges -----------------------------------------------------------------------------

def as_nobody(*args, cwd) -> subprocess.CompletedProcess:
    """mdbpy run as user nobody (setpriv drops every capability with the uid)."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv(1) to run mdbpy as another user")
    env = dict(os.environ, HOME=str(cwd), MDBPY_CACHE_DIR=str(cwd))
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           *mdbpy_cmd(*args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


@pytest.mark.parametrize("opts", [(), ("-o", "nostop"), ("-w",)], ids=["stop", "nostop", "w"])
def test_nobody_cannot_attach_to_a_process_it_does_not_own(hostile, tmp_path, opts):
    r = hostile[0]
    os.chmod(tmp_path, 0o777)
    p = as_nobody("-S", *opts, "-p", r.pid, "-e", "::status", cwd=tmp_path)
    assert p.returncode == 1
    assert one_line_stderr(p.stderr) == (
        f"mdbpy: permission denied to read the memory of process {r.pid}: run mdbpy as the "
        f"same user, check /proc/sys/kernel/yama/ptrace_scope (set 0) or grant CAP_SYS_PTRACE")
    assert p.stdout == ""
    assert r.proc_status()["TracerPid"] == "0"


# -- where commands come from ---------------------------------------------------------------

def test_macros_only_from_the_macro_path(basic_gcore, tmp_path):
    _, core = basic_gcore
    beside = Path(core).parent / "evilmacro"  # next to the core: not on the macro path
    beside.write_text("::echo RAN\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    try:
        p = subprocess.run(mdbpy_cmd("-S", core, "-e", "$< evilmacro"), capture_output=True,
                           text=True, cwd=elsewhere, timeout=120)
        assert p.stdout == ""
        assert one_line_stderr(p.stderr) == "mdbpy: failed to open evilmacro (see ::help '$<')"
        p = subprocess.run(mdbpy_cmd("-S", "-I", str(beside.parent), core, "-e", "$< evilmacro"),
                           capture_output=True, text=True, cwd=elsewhere, timeout=120)
        assert p.stdout == "RAN \n"  # named by the user: read
    finally:
        beside.unlink()


def test_rc_files_beside_the_core_or_in_cwd_are_not_read(basic_gcore, tmp_path):
    _, core = basic_gcore
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    (cwd / ".mdbpyrc").write_text(f"::echo CWD-RC\n!touch {tmp_path}/M-cwd\n")
    beside = Path(core).parent / ".mdbpyrc"
    beside.write_text(f"::echo CORE-RC\n!touch {tmp_path}/M-core\n")
    try:
        p = subprocess.run(mdbpy_cmd(core, "-e", "::echo done"), capture_output=True, text=True,
                           cwd=cwd, env=dict(os.environ, HOME=str(home)), timeout=120)
    finally:
        beside.unlink()
    assert (p.returncode, p.stdout) == (0, "done \n")
    assert sorted(os.listdir(tmp_path)) == ["cwd", "home"]
