"""Table-driven tests of the mdb statement parser and expression syntax (reference §1.2-1.4)."""

import pytest

from mdbpy.errors import ParseError
from mdbpy.lang.expr import Binary, Deref, DotWord, Num, Sym, Unary, Var, parse_expression
from mdbpy.lang.lexer import unescape
from mdbpy.lang.parser import Stage, Statement, parse_all, parse_statement

STATEMENTS = [
    ("::walk foo bar", Statement(stages=[Stage("walk", ["foo", "bar"])])),
    ("main,4/X", Statement(Sym("main"), Num(4), [Stage("/", fmt="X")])),
    ("::echo 'a b' \"c\\td\" x'y z'w", Statement(stages=[Stage("echo", ["a b", "c\td", "xy zw"])])),
    ("::echo $[1+2] a", Statement(stages=[Stage("echo", [Binary("+", Num(1), Num(2)), "a"])])),
    ("::echo a$[1]", Statement(stages=[Stage("echo", ["a", Num(1)])])),
    (">/c/foo", Statement(stages=[Stage(">", ["/c/", "foo"])])),
    ("1234>foo", Statement(Num(0x1234), None, [Stage(">", ["foo"])])),
    ("$<< file.mdb", Statement(stages=[Stage("$<<", ["file.mdb"])])),
    ("$<file", Statement(stages=[Stage("$<", ["file"])])),
    ("0,3$<", Statement(Num(0), Num(3), [Stage("$<")])),
    ("$c", Statement(stages=[Stage("$c")])),
    (":c", Statement(stages=[Stage(":c")])),
    ("0t10$d", Statement(Num(10), None, [Stage("$d")])),
    ("$q", Statement(stages=[Stage("$q")])),
    ("::walk x | ::head -2 | ::echo",
     Statement(stages=[Stage("walk", ["x"]), Stage("head", ["-2"]), Stage("echo")])),
    ("::walk x ! wc -l", Statement(stages=[Stage("walk", ["x"])], shell="wc -l")),
    ("!ls -l", Statement(shell="ls -l")),
    ("// only a comment", Statement()),
    ("", Statement()),
    ("::echo a // comment ; not a statement", Statement(stages=[Stage("echo", ["a"])])),
    ("1==1=X", Statement(Binary("==", Num(1), Num(1)), None, [Stage("=", fmt="X")])),
    ("1!=2", Statement(Binary("!=", Num(1), Num(2)))),
    ("main/W 0t10", Statement(Sym("main"), None, [Stage("/", fmt="W 0t10")])),
    ('10/"a|b;c"X | ::rec',
     Statement(Num(0x10), None, [Stage("/", fmt='"a|b;c"X'), Stage("rec")])),
    ("10/$[ 1 | 2 ]X", Statement(Num(0x10), None, [Stage("/", fmt="$[ 1 | 2 ]X")])),
    ("main?  2X  ", Statement(Sym("main"), None, [Stage("?", fmt="2X")])),
    (",5::rec", Statement(None, Num(5), [Stage("rec")])),
    ("1000,5", Statement(Num(0x1000), Num(5))),
    (",5", Statement(None, Num(5))),
    ("1000", Statement(Num(0x1000))),
    ("+/X", Statement(DotWord("+"), None, [Stage("/", fmt="X")])),
    ("-1=D", Statement(Unary("-", Num(1)), None, [Stage("=", fmt="D")])),
    ("::libumem`umem_cache", Statement(stages=[Stage("libumem`umem_cache")])),
    ("1,2 ! cat", Statement(Num(1), Num(2), shell="cat")),
    ("::echo x|::echo y", Statement(stages=[Stage("echo", ["x"]), Stage("echo", ["y"])])),
]


@pytest.mark.parametrize("text,expected", STATEMENTS)
def test_statement(text, expected):
    st, end = parse_statement(text)
    assert st == expected
    assert end == len(text)


def test_statements_end_at_terminators():
    text = "1;::echo a ; ::echo 'x;y'\n!echo hi; 2\n"
    sts = parse_all(text)
    assert [s.addr for s in sts] == [Num(1), None, None, None, Num(2)]
    assert sts[2].stages == [Stage("echo", ["x;y"])]
    assert sts[3].shell == "echo hi"
    st, end = parse_statement("::echo a; ::echo b")
    assert end == 9 and st.stages == [Stage("echo", ["a"])]


BAD_STATEMENTS = [
    ("::", 'syntax error near "::"'),
    ("1 2", 'syntax error near "2"'),
    ("::echo 'abc", "syntax error: ' unmatched"),
    ('::echo "abc', 'syntax error: " unmatched'),
    ("::walk x |", "syntax error"),
    ("::walk x | 12", 'syntax error near "12"'),
    ("$[1]", "syntax error"),
    ("1 ! ls", 'syntax error near "!"'),
    ("::echo $[1", "$[ unmatched"),
    ("10/$[1;X", "$[ unmatched"),
    ("(1", "syntax error"),
    ("*/x/main", "invalid cast -- */x/"),
    ("'abcdefghi'", "character constant may not exceed 8 bytes"),
    ("1+", "syntax error"),
]


@pytest.mark.parametrize("text,message", BAD_STATEMENTS)
def test_syntax_errors(text, message):
    with pytest.raises(ParseError) as e:
        parse_statement(text)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


EXPRESSIONS = [
    ("10", Num(0x10)), ("0x10", Num(16)), ("0X1f", Num(31)), ("0t10", Num(10)),
    ("0T9", Num(9)), ("0o17", Num(15)), ("0i101", Num(5)),
    ("0t1.5", Num(0x3FF8000000000000)), ("0t0.25", Num(0x3FD0000000000000)),
    ("'a'", Num(0x61)), ("'ab'", Num(0x6162)), ("''", Num(0)), ("'\\n'", Num(10)),
    ("'abcdefgh'", Num(0x6162636465666768)),
    ("add", Sym("add", 0xADD)), ("main", Sym("main")), ("f", Sym("f", 0xF)),
    ("libc.so.1`malloc", Sym("libc.so.1`malloc")), ("_x.y", Sym("_x.y")),
    (".", DotWord(".")), ("&", DotWord("&")), ("+", DotWord("+")), ("^", DotWord("^")),
    ("<x", Var("x")), ("<9", Var("9")), ("<rip", Var("rip")),
    ("1<<2", Binary("<<", Num(1), Num(2))), ("8>>1", Binary(">>", Num(8), Num(1))),
    ("*main", Deref("mem", 8, Sym("main"))), ("*/c/main", Deref("mem", 1, Sym("main"))),
    ("*/s/main", Deref("mem", 2, Sym("main"))), ("*/i/main", Deref("mem", 4, Sym("main"))),
    ("*/l/main", Deref("mem", 8, Sym("main"))), ("*/2/main", Deref("mem", 2, Sym("main"))),
    ("%main", Deref("obj", 8, Sym("main"))), ("%/4/main", Deref("obj", 4, Sym("main"))),
    ("10%3", Binary("%", Num(0x10), Num(3))), ("10%%3", Binary("%%", Num(0x10), Num(3))),
    ("5#4", Binary("#", Num(5), Num(4))), ("#5", Unary("#", Num(5))),
    ("~-1", Unary("~", Unary("-", Num(1)))),
    ("*main+8", Binary("+", Deref("mem", 8, Sym("main")), Num(8))),
    ("-(1+2)", Unary("-", Binary("+", Num(1), Num(2)))),
    # left associativity
    ("10-4-2", Binary("-", Binary("-", Num(0x10), Num(4)), Num(2))),
    ("8%2*2", Binary("*", Binary("%", Num(8), Num(2)), Num(2))),
    # each precedence level against the next one up
    ("1|1^1", Binary("|", Num(1), Binary("^", Num(1), Num(1)))),
    ("1^1&0", Binary("^", Num(1), Binary("&", Num(1), Num(0)))),
    ("1&2==2", Binary("&", Num(1), Binary("==", Num(2), Num(2)))),
    ("4==1<<2", Binary("==", Num(4), Binary("<<", Num(1), Num(2)))),
    ("1<<1+1", Binary("<<", Num(1), Binary("+", Num(1), Num(1)))),
    ("1+2*3", Binary("+", Num(1), Binary("*", Num(2), Num(3)))),
    ("2*7%%4", Binary("*", Num(2), Binary("%%", Num(7), Num(4)))),
    ("#1|1", Binary("|", Unary("#", Num(1)), Num(1))),
]


@pytest.mark.parametrize("text,expected", EXPRESSIONS)
def test_expression_syntax(text, expected):
    assert parse_expression(text) == expected


def test_radix_changes_bare_numbers():
    assert parse_expression("10", radix=10) == Num(10)
    assert parse_expression("ff", radix=10) == Sym("ff", None)
    assert parse_expression("0x10", radix=10) == Num(16)
    with pytest.raises(ParseError, match="invalid number '1f' in radix 10"):
        parse_expression("1f", radix=10)


def test_unescape():
    assert unescape(r"a\tb\n\\\"\101\x41\q") == 'a\tb\n\\"AAq'
