"""Symbols: names for addresses and addresses for names, per load object (see table.py)."""
