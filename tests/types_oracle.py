"""gdb as the oracle for mdbpy's ::print: gdb's values of expressions as JSON (through gdb's
Python API, walking gdb.Value the way `print` shows it), ::print's text parsed back into values,
and an exact comparison of the two; and what the types tests share (the C++ fixture's build, a
session that runs commands).

Values, on both sides: a struct is a dict by member name (anonymous members merged into their
parent, base classes as `<Base>`, static members as `static name`), an array a list (a flexible
array None), an integer, enum, char or bitfield an int, a pointer the address it holds, a
float its text. gdb gives signed integers and mdb's hex shows the bits, so integers are
compared modulo their width; floats are compared at the precision ::print shows them (8
significant digits, 17 for long double).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from decimal import Decimal
from pathlib import Path

from support import FIXTURES

from mdbpy.lang.engine import Engine
from mdbpy.session import Session

GDB_DUMP = r'''
import gdb, json, os

def dump(v):
    t = v.type.strip_typedefs()
    c = t.code
    if c in (gdb.TYPE_CODE_STRUCT, gdb.TYPE_CODE_UNION):
        out = {}
        for f in t.fields():
            if f.is_base_class:
                out["<%s>" % f.type.strip_typedefs().name] = dump(v[f])
            elif not hasattr(f, "bitpos"):
                try:
                    out["static " + f.name] = dump(v[f.name])
                except gdb.error:
                    out["static " + f.name] = "optimized out"
            elif not f.name:
                out.update(dump(v[f]))
            else:
                d = dump(v[f.name])
                if isinstance(d, dict) and "$int" in d and f.bitsize:
                    d["$bits"] = f.bitsize
                out[f.name] = d
        return out
    if c == gdb.TYPE_CODE_ARRAY:
        lo, hi = t.range()
        if hi < lo or t.sizeof == 0:  # a flexible array member
            return None
        return [dump(v[i]) for i in range(lo, hi + 1)]
    if c == gdb.TYPE_CODE_FLT:
        return {"$float": str(v) if t.sizeof > 8 else repr(float(v))}
    if c == gdb.TYPE_CODE_PTR:
        return {"$ptr": int(v)}
    if c in (gdb.TYPE_CODE_REF, gdb.TYPE_CODE_RVALUE_REF):
        return {"$ptr": int(v.referenced_value().address)}
    return {"$int": int(v), "$bits": 8 * t.sizeof}

def layout(name):
    """sizeof and {member: bit offset}, anonymous members' members included."""
    t = gdb.lookup_type(name).strip_typedefs()
    fields = {}
    def walk(t, base):
        for f in t.fields():
            if f.is_base_class or not hasattr(f, "bitpos"):
                continue
            if not f.name:
                walk(f.type.strip_typedefs(), base + f.bitpos)
            else:
                fields[f.name] = base + f.bitpos
    walk(t, 0)
    return {"size": t.sizeof, "fields": fields}

'''

GDB_MAIN = r'''
exprs = json.load(open(os.environ["TYPES_EXPRS"]))
mode = layout if os.environ.get("TYPES_MODE") == "layout" else \
    (lambda e: dump(gdb.parse_and_eval(e)))
out = {}
for e in exprs:
    try:
        out[e] = mode(e)
    except gdb.error as err:
        out[e] = {"$error": str(err)}
json.dump(out, open(os.environ["TYPES_OUT"], "w"))
'''
GDB_SCRIPT = GDB_DUMP + GDB_MAIN


def gdb_values(target_args: list[str], exprs: list[str], tmp: Path, mode: str = "values",
               language: str = "auto") -> dict:
    """{expression: value} as gdb sees them; target_args: ['-p', pid] or [exe, core]. With
    mode 'layout' the expressions are type names and the values {size, fields: bit offsets}."""
    (tmp / "exprs.json").write_text(json.dumps(exprs))
    return run_gdb_script(target_args, GDB_SCRIPT, tmp, language,
                          TYPES_EXPRS=str(tmp / "exprs.json"), TYPES_MODE=mode)


def run_gdb_script(target_args: list[str], script_text: str, tmp: Path, language: str = "auto",
                   **env) -> object:
    """Run a gdb Python script (GDB_DUMP's helpers and more) on a target in batch mode; the
    script writes JSON to $TYPES_OUT, which is returned."""
    script = tmp / "dump_values.py"
    script.write_text(script_text)
    out = tmp / "values.json"
    env = {"TYPES_OUT": str(out), "PATH": "/usr/bin:/bin", "HOME": str(tmp), **env}
    subprocess.run(["gdb", "-nx", "-batch", "-ex", "set debuginfod enabled off", *target_args,
                    "-ex", f"set language {language}", "-x", str(script)],
                   check=True, capture_output=True, timeout=300, env=env)
    return json.loads(out.read_text())


# -- ::print's text -> values ---------------------------------------------------------------------

class PrintParser:
    """::print output (without -a or -t) parsed into values. `address_of(name)` turns a
    symbolic pointer (`obj`sym+0x10`) into its address."""

    def __init__(self, address_of):
        self.address_of = address_of

    def parse(self, text: str, label: str | None = None):
        self.lines = [line.strip() for line in text.splitlines()]
        self.pos = 0
        self.label = label
        first = self.lines[0]
        if label is not None:
            name, _, rest = first.partition(" = ")
            assert name == label, (name, label)
            first = rest
        self.pos = 1
        return self._value_or_block(first)

    def _value_or_block(self, text: str):
        if text == "{":
            return self._struct()
        if text == "[":
            return self._array()
        return self.scalar(text)

    def _key(self, name: str) -> str:
        if self.label is not None:
            for joint in (".", "->"):
                if name.startswith(self.label + joint):
                    return name[len(self.label) + len(joint):]
        return name

    def _struct(self) -> dict:
        out: dict = {}
        while True:
            line = self.lines[self.pos]
            self.pos += 1
            if line in ("}", "},"):
                return out
            if line == "{":  # an anonymous member
                out.update(self._struct())
                continue
            name, _, rest = line.partition(" = ")
            out[self._key(name)] = self._value_or_block(rest)

    def _array(self) -> list:
        out = []
        while True:
            line = self.lines[self.pos]
            self.pos += 1
            if line == "]":
                return out
            assert line != "... ]", "a truncated array: print with -L"
            out.append(self._value_or_block(line))

    def scalar(self, text: str):
        if text.startswith("[ "):
            inner = text[2:-2]
            if inner == "...":
                return None
            if inner.startswith('"'):
                return {"$string": _unquote(inner)}
            items = _split(inner)
            assert items[-1] != "...", "a truncated array: print with -L"
            return [self.scalar(i) for i in items]
        if text.startswith("'"):
            return _unquote(text).encode("latin-1")[0]
        if text == "<optimized out>":
            return text
        if re.match(r"[+-]\d\.\d+e[+-]\d+$", text):
            return FloatText(text)
        token = text.split(" ", 1)[0]
        if re.match(r"-?(0x[0-9a-f]+|0t\d+|\d+)$", token):
            return _number(token)
        return self.address_of(token)


class FloatText(str):
    """A float as ::print wrote it (`+1.5000000e+00`)."""

    def same(self, value: Decimal) -> bool:
        """value, rounded to as many digits as the text shows, is the text."""
        mant, _, exp = self.partition("e")
        digits = len(mant.partition(".")[2])
        g_mant, _, g_exp = format(value, f"+.{digits}e").partition("e")
        return g_mant == mant and int(g_exp) == int(exp)


def _number(token: str) -> int:
    neg = token.startswith("-")
    body = token.lstrip("-")
    v = int(body[2:], 16) if body.startswith("0x") else int(body[2:]) if body.startswith("0t") \
        else int(body)
    return -v if neg else v


def _split(text: str) -> list[str]:
    """Array elements split at `, ` outside quotes and parentheses."""
    items, cur, quote, depth, i = [], "", None, 0, 0
    while i < len(text):
        c = text[i]
        if quote:
            cur += c
            if c == "\\":
                cur += text[i + 1]
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            cur += c
        elif c == "(":
            depth += 1
            cur += c
        elif c == ")":
            depth -= 1
            cur += c
        elif text.startswith(", ", i) and depth == 0:
            items.append(cur)
            cur = ""
            i += 1
        else:
            cur += c
        i += 1
    items.append(cur)
    return items


def _unquote(text: str) -> str:
    """The text between the quotes, C escapes (\\ooo, \\n, ...) undone."""
    body = text[1:text.rindex(text[0])]
    out, i = [], 0
    simple = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
              "0": "\0", "\\": "\\", '"': '"', "'": "'"}
    while i < len(body):
        c = body[i]
        if c == "\\":
            m = re.match(r"[0-7]{3}", body[i + 1:])
            if m:
                out.append(chr(int(m.group(0), 8)))
                i += 4
                continue
            out.append(simple[body[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


# -- comparison -----------------------------------------------------------------------------------

def compare(mdb, gdb, path: str = "") -> list[str]:
    """Where the two values differ, as `path: mdb vs gdb` lines (empty: they agree)."""
    if isinstance(gdb, dict) and "$int" in gdb:
        mask = (1 << gdb["$bits"]) - 1
        ok = isinstance(mdb, int) and (mdb & mask) == (gdb["$int"] & mask)
        return [] if ok else [f"{path}: {mdb!r} vs {gdb['$int']}"]
    if isinstance(gdb, dict) and "$ptr" in gdb:
        return [] if mdb == gdb["$ptr"] else [f"{path}: {mdb!r} vs 0x{gdb['$ptr']:x}"]
    if isinstance(gdb, dict) and "$float" in gdb:
        text = gdb["$float"]
        g = Decimal(text) if len(text) > 18 else Decimal(float(text))  # a double exactly
        if not isinstance(mdb, FloatText):
            return [f"{path}: {mdb!r} vs {g}"]
        return [] if mdb.same(g) else [f"{path}: {mdb} vs {g}"]
    if isinstance(gdb, dict) and "$error" in gdb:
        return [f"{path}: gdb failed: {gdb['$error']}"]
    if gdb == "optimized out":
        return [] if mdb == "<optimized out>" else [f"{path}: {mdb!r} vs optimized out"]
    if isinstance(gdb, list):
        if isinstance(mdb, dict) and "$string" in mdb:
            raw = bytes(g["$int"] & 0xFF for g in gdb)
            s = raw.split(b"\0", 1)[0].decode("latin-1")
            return [] if s == mdb["$string"] else [f"{path}: {mdb['$string']!r} vs {s!r}"]
        if not isinstance(mdb, list) or len(mdb) != len(gdb):
            return [f"{path}: {mdb!r} vs {len(gdb)} elements"]
        return [d for i, (m, g) in enumerate(zip(mdb, gdb)) for d in compare(m, g, f"{path}[{i}]")]
    if gdb is None:
        return [] if mdb is None else [f"{path}: {mdb!r} vs a flexible array"]
    if isinstance(gdb, dict):
        if not isinstance(mdb, dict) or set(mdb) != set(gdb):
            keys = set(mdb) if isinstance(mdb, dict) else mdb
            return [f"{path}: members {keys} vs {set(gdb)}"]
        return [d for k in gdb for d in compare(mdb[k], gdb[k], f"{path}.{k}")]
    return [f"{path}: cannot compare {mdb!r} with {gdb!r}"]


def count_leaves(v) -> int:
    """How many scalar values a gdb value holds (to assert a comparison covered something)."""
    if isinstance(v, list):
        return sum(count_leaves(x) for x in v)
    if isinstance(v, dict) and not ({"$int", "$ptr", "$float"} & set(v)):
        return sum(count_leaves(x) for x in v.values())
    return 1


# -- what the types tests share ---------------------------------------------------------------------

def compile_cpp(out_dir) -> Path:
    """fixtures/types_cpp.cc built with g++ -g -O0 (once per directory)."""
    exe = Path(out_dir) / "types_cpp"
    if not exe.exists():
        subprocess.run(["g++", "-g", "-O0", "-o", str(exe), str(FIXTURES / "types_cpp.cc")],
                       check=True, capture_output=True, text=True)
    return exe


class Commands:
    """A session over a target, running command lines as a user types them: run() returns
    what one line printed and what it warned; `status` is the line's status."""

    def __init__(self, target):
        self.out, self.err = io.StringIO(), io.StringIO()
        self.session = Session(target, out=self.out, err=self.err)
        self.engine = Engine(self.session)
        self.status = 0

    def __call__(self, command: str) -> tuple[str, str]:
        for b in (self.out, self.err):
            b.seek(0)
            b.truncate()
        self.status = self.engine.run_line(command)
        return self.out.getvalue(), self.err.getvalue()

    def run(self, command: str) -> str:
        """What the line printed; it must not warn or fail."""
        out, err = self(command)
        assert not err, f"{command}: {err}"
        return out

    def address_of(self, token: str) -> int:
        """obj`sym+0xoff as ::print wrote it, back to an address."""
        name, _, off = token.partition("+")
        obj, _, sym = name.rpartition("`")
        s = self.session.symbols.lookup(sym, obj or None)
        assert s is not None, token
        return s.addr + (int(off, 16) if off else 0)

    def close(self) -> None:
        self.session.target.close()
