"""Command-line front end: a registry of subcommands.

Each subcommand is a :class:`Command` object with ``prepare_parser`` and
``run``; ``__main__`` builds argparse from the registry, so adding a command
never touches an if/elif chain.  Command modules register themselves by
being listed in :data:`COMMAND_MODULES`.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import sys
from typing import Dict, List, Optional

from ..errors import CtprofError, printable

COMMAND_MODULES = ("ctprof.cli.capture", "ctprof.cli.view", "ctprof.cli.attach")


class Command:
    """One subcommand.  Subclasses set ``name`` and ``help`` and implement
    ``prepare_parser(parser)`` and ``run(args) -> int`` (the exit status)."""

    name = ""
    help = ""

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:  # pragma: no cover
        pass

    def run(self, args: argparse.Namespace) -> int:  # pragma: no cover
        raise NotImplementedError


REGISTRY: Dict[str, Command] = {}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {printable(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def register(command_class):
    """Class decorator adding a command to the registry."""
    REGISTRY[command_class.name] = command_class()
    return command_class


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """The parser of every command; given the command line, only the
    options of the command it names are added (the others' subparsers only
    carry their help line): ``ctprof run`` starts the program sooner for not
    building, or importing what builds, every other command's options."""
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = ArgumentParser(prog="ctprof", description="Sampling CPU and heap profiler for native programs.")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"ctprof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = argv[0] if argv and argv[0] in REGISTRY else None
    for name, command in REGISTRY.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        if named is None or name == named:
            command.prepare_parser(p)
    return parser


def error(message: str) -> None:
    """Print one ``ctprof: error: ...`` line on stderr (control characters
    of names and paths in it escaped)."""
    print(f"ctprof: error: {printable(message)}", file=sys.stderr)


def suggest_command(argv: List[str]) -> Optional[str]:
    """For a mistyped command (``ctprof rn``), the line that names the
    closest one; None when the first word is fine or nothing is close."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None or first in REGISTRY:
        return None
    import difflib
    close = difflib.get_close_matches(first, list(REGISTRY), n=1, cutoff=0.5)
    if not close:
        return None
    return f"unknown command {first!r}: did you mean '{close[0]}'? (commands: {', '.join(REGISTRY)})"


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    hint = suggest_command(argv[:1])
    if hint:
        error(hint)
        return 2
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    try:
        return REGISTRY[args.command].run(args)
    except CtprofError as err:
        error(str(err))
        return err.exit_status
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except BrokenPipeError:
        return 1


def entry_point() -> int:
    """``python -m ctprof`` and the installed ``ctprof``: :func:`main`, for a
    process that exits next."""
    status = main()
    # Everything is written and closed.  The interpreter's exit would run
    # full passes of the cyclic collector over every object still alive
    # (25 ms after a g++ compile's ``ctprof run``) only to free memory the
    # kernel takes back anyway; frozen, they are skipped.
    gc.freeze()
    return status
