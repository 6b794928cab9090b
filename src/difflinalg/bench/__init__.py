"""Benchmarks of difflinalg against the functions it replaces: ``difflinalg bench``.

``cli.py`` is the command line; each module in ``suites/`` is one suite (registered in
``suites/__init__.py``); ``_timing.py`` measures (Timer, per-case processes with a
timeout), ``_memory.py`` reads peak resident memory, ``_report.py`` writes JSON, Markdown and
charts. See ``difflinalg bench --help``.
"""

from __future__ import annotations

__all__: list[str] = []
