"""A pygments lexer for one line of mdb input, used to colour what the user is typing.

It follows mdb_lex.l's states only as far as colouring needs: the initial/argument state
(numbers with their radix prefixes, `::dcmd`, `$x` and `:x` verbs, variables, options, strings,
`|`, `;`, `//` comments) and the format state entered after a formatting verb (`/ \\ ? = @`),
where every character is a format letter and digit runs are repeat counts. `!` hands the rest
of the line to the shell. Every character gets a token: the lexer never rejects a half-typed
line, because it runs on each keystroke.
"""

from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, default
from pygments.token import (Comment, Keyword, Name, Number, Operator, Punctuation, String,
                            Text, Whitespace)

# The one-character verb class of `$X` and `:X` (mdb_lex.l).
_VERB_CHARS = r"[?%@A-Z^_`a-z]"


class MdbLexer(RegexLexer):
    """Tokens of the mdb command language (see the module docstring for the states)."""

    name = "mdb"
    aliases = ["mdb"]
    filenames: list[str] = []

    tokens = {
        "root": [
            (r"\s+", Whitespace),
            (r"//.*$", Comment.Single),
            (r'"(\\.|[^"\\])*"?', String.Double),
            (r"'(\\.|[^'\\])*'?", String.Char),
            (r"0[xX][0-9a-fA-F]+", Number.Hex),
            (r"0[tT][0-9]+\.[0-9]+", Number.Float),
            (r"0[tT][0-9]+", Number.Integer),
            (r"0[oO][0-7]+", Number.Oct),
            (r"0[iI][01]+", Number.Bin),
            (r"[0-9][0-9a-fA-F]*", Number),  # the current radix (16 by default)
            (r"::[A-Za-z_$][\w$`.]*|::", Name.Function),
            (r"\$\[|\]", Punctuation),
            (r"\$(<<|<|>)", Keyword),
            (r"[$:]" + _VERB_CHARS, Keyword),
            (r"<<|>>|==|!=", Operator),
            (r"<([A-Za-z_][\w]*|[0-9])", Name.Variable),
            (r"(>)((?:/[csil]/)?[A-Za-z_][\w]*)", bygroups(Operator, Name.Variable)),
            (r"[/\\?=@]", Operator, "format"),
            (r"(!)(.*)$", bygroups(Operator, String.Backtick)),
            (r"\|", Punctuation),
            (r";", Punctuation),
            (r"(?<=\s)[-+][A-Za-z][\w]*", Name.Attribute),
            (r"[A-Za-z_.][\w.`]*", Name),
            (r"[-+*%&^~#(),.]", Operator),
            (r".", Text),
        ],
        # After a formatting verb: repeat counts, format letters and quoted literals, up to the
        # end of the word.
        "format": [
            (r'"[^"]*"?', String.Double),
            (r"\$\[[^\]]*\]?", Punctuation),
            (r"[0-9]+", Number.Integer),
            (r"[^\s;|!]", Name.Builtin),
            default("#pop"),
        ],
    }
