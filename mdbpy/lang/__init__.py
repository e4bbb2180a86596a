"""The mdb command language: lexing (lexer), statements and expressions as syntax trees
(parser, expr), and their execution against a Session (engine).

The parser is pure (text in, trees out) so it can be tested table-driven without a target; only
the engine and the expression evaluator touch the session.
"""
