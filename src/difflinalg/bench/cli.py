"""Command line: ``difflinalg bench list`` and ``difflinalg bench SUITE [options]``.

Installed as the ``difflinalg`` console script; also ``python -m difflinalg.bench.cli``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .suites import load_suites

__all__ = ["build_parser", "choice_list", "int_list", "main", "odd_int", "positive_float",
           "positive_int"]


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: ``"1,32"`` -> ``(1, 32)``, positive integers only."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 1,32, but got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, but got {text!r}")
    return values


def _positive(convert: type, what: str):
    """argparse type factory: ``convert(text)`` that must be > 0."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected {what}, but got {text!r}")
        return value

    parse.__name__ = f"positive_{convert.__name__}"
    return parse


positive_int = _positive(int, "a positive integer")
positive_float = _positive(float, "a positive number")


def odd_int(text: str) -> int:
    """argparse type: a positive odd integer (rounds whose median is one of them)."""
    value = positive_int(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"expected an odd number of rounds, but got {text!r}")
    return value


def choice_list(choices: tuple[str, ...], noun: str = "cases"):
    """argparse type factory: ``"a,c"`` -> the named choices, in the order of ``choices``."""

    def parse(text: str) -> tuple[str, ...]:
        picked = tuple(c.strip() for c in text.split(",") if c.strip())
        unknown = [c for c in picked if c not in choices]
        if unknown or not picked:
            raise argparse.ArgumentTypeError(
                f"expected {noun} among {', '.join(choices)}, but got {text!r}")
        return tuple(c for c in choices if c in picked)

    parse.__name__ = f"{noun}_list"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``difflinalg`` parser with one ``bench`` sub-command per registered suite."""
    parser = argparse.ArgumentParser(
        prog="difflinalg",
        description="difflinalg tools. `difflinalg bench --help` lists the benchmarks.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = commands.add_parser(
        "bench", help="run a benchmark suite",
        description="Benchmark difflinalg against the functions it replaces. Each suite "
                    "writes results.json, results.md and PNG charts into --out.")
    suites = bench.add_subparsers(dest="suite", metavar="SUITE", required=True)
    suites.add_parser("list", help="list the benchmark suites",
                      description="List the benchmark suites.")
    for name, module in load_suites().items():
        sub = suites.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.suite == "list":
        for name, module in load_suites().items():
            print(f"{name:<16} {module.DESCRIPTION}")
        return 0
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
