"""The pygments lexer that colours what the user is typing: the language's own parse of the
line (mdbpy/lang/spans.py), each span given a token type. The colours cannot drift from what
the engine will do with the line: the same parser reads both.
"""

from __future__ import annotations

from pygments.lexer import Lexer
from pygments.token import (Comment, Keyword, Name, Number, Operator, Punctuation, String,
                            Text, Whitespace)

from mdbpy.lang.spans import spans

TOKENS = {
    "hex": Number.Hex, "decimal": Number.Integer, "float": Number.Float, "octal": Number.Oct,
    "binary": Number.Bin, "number": Number, "count": Number.Integer,
    "name": Name, "variable": Name.Variable, "dcmd": Name.Function, "verb": Keyword,
    "option": Name.Attribute, "format": Name.Builtin,
    "op": Operator, "pipe": Punctuation, "end": Punctuation, "bracket": Punctuation,
    "punct": Punctuation, "string": String.Double, "shell": String.Backtick,
    "comment": Comment.Single, "space": Whitespace, "text": Text,
}


class MdbLexer(Lexer):
    """Tokens of the mdb command language, from the language's parser."""

    name = "mdb"
    aliases = ["mdb"]
    filenames: list[str] = []

    def get_tokens_unprocessed(self, text):
        merged: list[list] = []
        for a, b, kind in spans(text):
            token = TOKENS[kind]
            if kind == "variable" and merged and merged[-1][1] is token \
                    and merged[-1][0] + len(merged[-1][2]) == a:
                merged[-1][2] += text[a:b]  # `/l/` and `y` of `>/l/y`: one variable
            else:
                merged.append([a, token, text[a:b]])
        for a, token, value in merged:
            yield a, token, value
