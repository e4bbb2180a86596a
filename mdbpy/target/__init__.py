"""Targets: where the bytes and facts come from (live processes, core and object files,
synthetic segments). See base.py for the interface every layer above is written against."""
