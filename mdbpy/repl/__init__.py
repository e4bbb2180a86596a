"""The interactive front end: a prompt_toolkit line editor over the language engine.

app.py runs the read-eval loop (history, Ctrl-C/Ctrl-D handling, error containment), complete.py
completes dcmd, walker, variable and symbol names from the session, lexer.py colours the input
line, and pager.py pages long command output the way mdb's `>> More` prompt does. Only the CLI
imports this package, and only when stdin is a terminal, so batch runs never load prompt_toolkit.
"""
