"""::dis and PLT stub names against the real thing: capstone's text for the bytes of the ELF
file, objdump's `<name>` for every call, a live process and its gcore, and the `i` format.

The `calls` fixture (-O2 -fomit-frame-pointer -g) has a main that calls a local function
(`scaled`) and libc through the PLT (`malloc@plt`, `printf@plt`, ...), and a rip-relative load
of the global `greeting`.
"""

from __future__ import annotations

import io
import re
import subprocess

import pytest

from mdbpy.lang.engine import Engine
from mdbpy.session import Session
from mdbpy.symbols.plt import plt_columns
from mdbpy.target.core import open_file_target
from mdbpy.target.live import LiveTarget
from mdbpy.target.synthetic import SyntheticTarget

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
LINE = re.compile(r"^(\S+:)\s+(.*)$")


def objdump_plt(path) -> dict[int, str]:
    """{file address: name} of objdump's `<name@plt>:` labels."""
    out = subprocess.run(["objdump", "-d", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return {int(a, 16): n for a, n in re.findall(r"^([0-9a-f]+) <(\S+@plt)>:", out, re.M)}


def objdump_calls(path, func: str) -> dict[int, str]:
    """{file address of a call in func: objdump's name of its target}."""
    out = subprocess.run(["objdump", "-d", str(path)], capture_output=True, text=True,
                         check=True).stdout
    body = out.split(f"<{func}>:\n", 1)[1].split("\n\n", 1)[0]
    return {int(a, 16): n for a, n in re.findall(r"^\s*([0-9a-f]+):.*\tcall\s+[0-9a-f]+ <(.*)>$",
                                                  body, re.M)}


def file_symbol(path, name: str) -> tuple[int, int]:
    """(file address, size) of a function symbol, from the ELF file with pyelftools."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        sym = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]
        return sym["st_value"], sym["st_size"]


def file_bytes(path, vaddr: int, n: int) -> bytes:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        off = next(ELFFile(f).address_offsets(vaddr))
        f.seek(off)
        return f.read(n)


def capstone_text(data: bytes, addr: int) -> list[tuple[int, str]]:
    import capstone

    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return [(i.address, f"{i.mnemonic} {i.op_str}".rstrip()) for i in cs.disasm(data, addr)]


def run(s: Session, cmd: str) -> str:
    s.out = io.StringIO()
    s.err = io.StringIO()
    status = Engine(s).run_string(cmd)
    assert status == 0 and s.err.getvalue() == "", (cmd, s.err.getvalue())
    return s.out.getvalue()


def parse(text: str) -> list[tuple[str, str]]:
    """[(label, instruction)] of ::dis lines."""
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        assert m, line
        out.append((m.group(1), m.group(2)))
    return out


@pytest.fixture(scope="module")
def core_session(calls_parked):
    _, core = calls_parked
    with open_file_target(str(core)) as target:
        yield Session(target)


@pytest.fixture(scope="module")
def main_ref(calls_exe, core_session):
    """main's runtime address and capstone's (address, text) for its bytes in the file."""
    link, size = file_symbol(calls_exe, "main")
    bias = core_session.symbols.lookup("main").addr - link
    return bias, capstone_text(file_bytes(calls_exe, link, size), link + bias)


# -- PLT stub names --------------------------------------------------------------------------
def test_plt_names_equal_objdump(calls_exe, build_dir):
    from support import STACKS_FLAGS, compile_fixture

    ibt = compile_fixture("calls", build_dir, out_name="calls-ibt",
                          flags=(*STACKS_FLAGS, "-fcf-protection", "-Wl,-z,ibtplt"))
    for path, sections in ((calls_exe, {".plt", ".plt.got"}),
                           (ibt, {".plt.sec", ".plt.got"}), (LIBC, {".plt", ".plt.got"})):
        cols = plt_columns(str(path))
        ours = dict(zip(cols.value, cols.names))
        assert ours == objdump_plt(path), path
        assert set(cols.size) <= {8, 16}
        from elftools.elf.elffile import ELFFile

        with open(path, "rb") as f:
            names = {ELFFile(f).get_section(i).name for i in cols.shndx}
        assert names == sections, path
    assert {"malloc@plt", "printf@plt", "scaled"} & set(plt_columns(str(calls_exe)).names) == {
        "malloc@plt", "printf@plt"}
    assert any(n.startswith("*ABS*+0x") for n in plt_columns(LIBC).names)  # IRELATIVE slots


def test_plt_symbols_in_lookups(core_session, calls_exe):
    s = core_session
    bias = s.symbols.lookup("main").addr - file_symbol(calls_exe, "main")[0]
    for vaddr, name in objdump_plt(calls_exe).items():
        assert s.symbols.lookup_addr(bias + vaddr)[0].name == name
        assert s.format_addr(bias + vaddr + 6) == f"{name}+0x6"
    libc = s.symbols.object_named("libc.so.6")
    for vaddr, name in list(objdump_plt(LIBC).items())[:8]:
        assert s.format_addr(libc.bias + vaddr) == f"libc.so.6`{name}"
    # `malloc` is libc's function, never the executable's stub that jumps to it
    assert s.symbols.lookup("malloc").obj == "libc.so.6"
    assert s.symbols.lookup("malloc@plt").obj == "a.out"


# -- whole functions -----------------------------------------------------------------------
def check_main(s: Session, text: str, main_ref, calls_exe) -> None:
    bias, ref = main_ref
    lines = parse(text)
    assert [label for label, _ in lines] == [
        s.format_addr(a) + ":" for a, _ in ref]
    assert lines[0][0] == "main:" and all(re.fullmatch(r"main(\+0x[0-9a-f]+)?:", lb)
                                          for lb, _ in lines)
    # each line: `%-#32a` then the instruction
    for line in text.splitlines():
        assert len(line.split(":", 1)[0]) < 31 and line[32] != " " and line[31] == " "
    texts = [t for _, t in lines]
    assert [t.split(" <")[0] for t in texts] == [t for _, t in ref]
    calls = objdump_calls(calls_exe, "main")
    assert set(calls.values()) >= {"malloc@plt", "printf@plt", "scaled", "free@plt"}
    by_addr = dict(zip((a for a, _ in ref), texts))
    for vaddr, name in calls.items():
        assert by_addr[vaddr + bias].endswith(f" <{name}>"), by_addr[vaddr + bias]
    assert any(re.fullmatch(r"lea rsi, \[rip \+ 0x[0-9a-f]+\] <greeting>", t) for t in texts)


def test_main_on_core(core_session, main_ref, calls_exe):
    s = core_session
    text = run(s, "main::dis")
    check_main(s, text, main_ref, calls_exe)
    main = s.symbols.lookup("main")
    assert s.dot == main.addr + main.size  # just past the last instruction
    # the object file decodes alike, and a symbol name works as the argument
    assert run(s, "main::dis -f") == text
    assert run(s, "::dis main") == text


def test_main_live_equals_core(calls_parked, core_session, main_ref, calls_exe):
    r, _ = calls_parked
    with LiveTarget(r.pid) as target:
        s = Session(target)
        text = run(s, "main::dis")
        check_main(s, text, main_ref, calls_exe)
        assert text == run(core_session, "main::dis")
    r.assert_untouched()


# -- windows, counts, address styles --------------------------------------------------------
def test_window_in_the_middle(core_session, main_ref):
    s = core_session
    _, ref = main_ref
    addrs = [a for a, _ in ref]
    k = 12
    text = run(s, f"0x{addrs[k]:x}::dis -n 3")
    assert [lb for lb, _ in parse(text)] == [s.format_addr(a) + ":" for a in addrs[k - 3:k + 4]]
    assert s.dot == addrs[k + 4]
    # the default count is 10 either side
    assert len(parse(run(s, f"0x{addrs[k]:x}::dis"))) == 10 + 1 + 10
    # -w at a function start: the 10 instructions before it are found by decoding from
    # guesses (they are the PLT stubs before main), then main and 10 after it
    labels = [lb for lb, _ in parse(run(s, "main::dis -w"))]
    assert labels[10:] == [s.format_addr(a) + ":" for a in addrs[:11]]
    assert len(labels) == 21 and not any(lb.startswith("main") for lb in labels[:10])
    assert any("@plt" in lb for lb in labels[:10])


def test_count_at_a_function_and_dot(core_session, main_ref):
    s = core_session
    _, ref = main_ref
    text = run(s, "main::dis -n 4")
    assert [t.split(" <")[0] for _, t in parse(text)] == [t for _, t in ref[:5]]
    assert s.dot == ref[5][0]
    # a bare ::dis goes on from dot: the instruction there and 10 after
    assert parse(run(s, "::dis"))[0][0] == s.format_addr(ref[5][0]) + ":"
    assert s.dot == ref[16][0]


def test_raw_and_both_addresses(core_session, main_ref):
    s = core_session
    _, ref = main_ref
    raw = run(s, "main::dis -a -n 2").splitlines()
    plain = run(s, "main::dis -n 2").splitlines()
    assert [line[:32] for line in raw] == [f"0x{a:x}".ljust(32) for a, _ in ref[:3]]
    assert [line[32:] for line in raw] == [p[32:] for p in plain]
    both = run(s, "main::dis -b -n 2").splitlines()
    for line, p, (a, _) in zip(both, plain, ref):
        assert line[:18] == f"0x{a:x}".ljust(16) + "  "
        label = line[18:].split()[0]
        assert label == s.format_addr(a) + ":"
        assert line[18:].rstrip().endswith(p[32:])
        assert len(line) - len(p[32:]) == 56  # 16 + 2 + 32, then to the next multiple of 8


def test_guessed_window_without_symbols(calls_exe, main_ref):
    """No symbol covers the address: decoding starts from guesses before it and keeps the
    one that lands on it, so the instructions before are the real ones."""
    link, size = file_symbol(calls_exe, "main")
    code = file_bytes(calls_exe, link, size)
    base = 0x400000
    ref = capstone_text(code, base)
    s = Session(SyntheticTarget([(base - 0x100, b"\x00" * 0x100 + code, "r-xp")]))
    addrs = [a for a, _ in ref]
    for k in (5, 12, 20):
        text = run(s, f"0x{addrs[k]:x}::dis -n 4")
        assert [lb for lb, _ in parse(text)] == [f"0x{a:x}:" for a in addrs[k - 4:k + 5]]


# -- the i format agrees ---------------------------------------------------------------------
def test_i_format_agrees(core_session, main_ref):
    s = core_session
    dis = [t for _, t in parse(run(s, "main::dis -n 4"))]
    slash = run(s, "main/5i")
    # the label once (mdb labels only the first iteration), then one instruction a line
    assert [line[16:] for line in slash.splitlines()[1:]] == dis
    assert slash.splitlines()[:2] == ["main:", "main:".ljust(16) + dis[0]]
    assert run(s, "main,5/i") == slash


# -- errors and colour ---------------------------------------------------------------------
def test_errors_are_one_line(core_session):
    s = core_session
    for cmd, msg in (("0::dis", "mdbpy: failed to read instruction at 0x0\n"),
                     ("::dis nosuchsymbol", "mdbpy: failed to dereference symbol: unknown "
                                            "symbol name 'nosuchsymbol'\n")):
        s.out, s.err = io.StringIO(), io.StringIO()
        assert Engine(s).run_string(cmd) == 1
        assert s.err.getvalue() == msg and s.out.getvalue() == ""
    s.out, s.err = io.StringIO(), io.StringIO()
    assert Engine(s).run_string("main::dis -n 0t100000") == 1
    assert s.err.getvalue().splitlines()[0] == (
        "mdbpy: ::dis -n 0x186a0 is more than 0x10000 instructions")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal(core_session, main_ref, monkeypatch):
    s = core_session
    _, ref = main_ref
    mid = ref[12][0]
    plain = run(s, f"0x{mid:x}::dis -n 2")
    monkeypatch.delenv("NO_COLOR", raising=False)
    s.out, s.err = Terminal(), io.StringIO()
    Engine(s).run_string(f"0x{mid:x}::dis -n 2")
    coloured = s.out.getvalue()
    assert coloured != plain and "\x1b[" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain
    # the window's own line is bold
    assert coloured.splitlines()[2].startswith("\x1b[1m" + s.format_addr(mid))
    monkeypatch.setenv("NO_COLOR", "1")
    s.out = Terminal()
    Engine(s).run_string(f"0x{mid:x}::dis -n 2")
    lines = s.out.getvalue().splitlines()
    assert [line for i, line in enumerate(lines) if i != 2] == [
        line for i, line in enumerate(plain.splitlines()) if i != 2]
    assert lines[2] == "\x1b[1m" + plain.splitlines()[2][:32] + "\x1b[0m" + plain.splitlines()[
        2][32:]


def patched_copy(src, dst, section: str, field_at: int, value: bytes):
    """A copy of an ELF file with bytes at `field_at` of one section header replaced."""
    from elftools.elf.elffile import ELFFile

    data = bytearray(open(src, "rb").read())
    with open(src, "rb") as f:
        elf = ELFFile(f)
        index = next(i for i, sec in enumerate(elf.iter_sections()) if sec.name == section)
        at = elf["e_shoff"] + index * elf["e_shentsize"] + field_at
    data[at:at + len(value)] = value
    dst.write_bytes(bytes(data))
    return dst


def test_damaged_plt_relocations_cost_only_stub_names(calls_exe, tmp_path):
    from mdbpy.symbols.elf import parse_symbol_sections

    bad = patched_copy(calls_exe, tmp_path / "calls-bad", ".rela.plt", 40,
                       (0x7FFF).to_bytes(4, "little"))  # sh_link: no such section
    assert plt_columns(str(bad)).names == []
    tables, _ = parse_symbol_sections(str(bad))
    assert "main" in tables["symtab"].names
