"""``ctprof attach PID``: profile a process that is already running."""
from __future__ import annotations

import argparse

from . import Command, register
from .capture import WARN_HZ, add_off_cpu_option, add_output_options, check_metric, check_run_options, finish_capture, parse_hz, say
from ..errors import UsageError


def parse_pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise UsageError(f"PID must be a process id (a positive integer), not {text!r}") from None
    if pid <= 0:
        raise UsageError(f"PID must be a positive integer, not {text}")
    return pid


def parse_duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--duration must be a number of seconds, not {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise UsageError(f"--duration must be a positive number of seconds, not {text}")
    return value


@register
class AttachCommand(Command):
    name = "attach"
    help = "sample a running process (every thread) for a while, then detach and save its profile"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pid", metavar="PID", help="process id of the running program")
        parser.add_argument("--duration", metavar="S",
                            help="seconds to sample (default: until Ctrl-C or the process exits)")
        parser.add_argument("--hz", default="99", help="samples per CPU-second per thread (default 99)")
        parser.add_argument("--max-depth", type=int, default=128, metavar="N",
                            help="frames kept per sample, leaf end first (default 128)")
        parser.add_argument("--stack-kb", type=int, default=32, metavar="KB",
                            help="KiB of user stack copied per sample for unwinding (default 32, max 63)")
        add_off_cpu_option(parser)
        add_output_options(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ..capture.attach import AttachOptions, attach_process  # not imported by the other commands
        pid = parse_pid(args.pid)
        hz = parse_hz(args.hz)
        duration = parse_duration(args.duration) if args.duration is not None else None
        check_metric(args.metric, memory=False, off_cpu=args.off_cpu)
        check_run_options(args)
        if hz > WARN_HZ:
            say(f"warning: {hz:g} Hz is above {WARN_HZ:g} Hz; ctprof may fall behind and the kernel drop samples")
        opts = AttachOptions(hz=hz, duration=duration, max_depth=args.max_depth, stack_kb=args.stack_kb,
                             off_cpu=args.off_cpu)

        def started(threads: int) -> None:
            if not args.quiet:
                say(f"attached to process {pid} ({threads} thread{'s' if threads != 1 else ''}), sampling "
                    + (f"for {duration:g} s" if duration else "until it exits; Ctrl-C detaches"))

        session = attach_process(pid, opts, on_start=started)
        if getattr(session, "exited", False):
            say(f"process {pid} exited during the attach; keeping what was sampled")
        finish_capture(session, args)
        return 0
