"""Name why a thread was off the CPU, for the ``[off-cpu: REASON]`` frame.

The kernel sampler records, at every switch-out, the thread's user stack
and whether it was preempted (runnable, waiting for a CPU) or blocked.  A
blocked thread is inside a system call (or a page fault) whose number the
user registers no longer hold (the kernel has replaced ``rax`` by then), so
the call is named from the function the thread was in: the C library's
wrapper (``__GI___clock_nanosleep``, ``__futex_abstimed_wait_common``,
``__libc_read`` ...), stripped of its decorations.
"""
from __future__ import annotations

import re
from typing import Optional

from ..profile import Frame

#: Raw-stack leaf markers written by :mod:`ctprof.capture.kernel`.
OFF_CPU_BLOCKED = 0xFFFF_FFFF_FFFF_F001
OFF_CPU_PREEMPTED = 0xFFFF_FFFF_FFFF_F002
MARKERS = (OFF_CPU_BLOCKED, OFF_CPU_PREEMPTED)

# Ordered: the first pattern found in the wrapper's name wins.
_CALLS = (
    ("futex", "futex"), ("lll_lock", "futex"), ("pthread_cond", "futex"), ("pthread_mutex", "futex"),
    ("pthread_join", "futex"), ("sem_", "futex"), ("pthread_rwlock", "futex"), ("pthread_barrier", "futex"),
    ("nanosleep", "nanosleep"), ("usleep", "nanosleep"), ("sleep", "nanosleep"),
    ("epoll_wait", "epoll_wait"), ("epoll_pwait", "epoll_wait"), ("ppoll", "poll"), ("poll", "poll"),
    ("pselect", "select"), ("select", "select"), ("accept", "accept"), ("connect", "connect"),
    ("recv", "recv"), ("send", "send"), ("pread", "read"), ("readv", "read"), ("read", "read"),
    ("pwrite", "write"), ("writev", "write"), ("write", "write"), ("wait4", "wait"), ("waitpid", "wait"),
    ("waitid", "wait"), ("sigtimedwait", "sigtimedwait"), ("sigwait", "sigtimedwait"),
    ("sigsuspend", "sigsuspend"), ("pause", "pause"), ("fdatasync", "fsync"), ("fsync", "fsync"),
    ("msync", "msync"), ("openat", "open"), ("open", "open"), ("close", "close"), ("flock", "flock"),
    ("fcntl", "fcntl"), ("ioctl", "ioctl"), ("msgrcv", "msgrcv"), ("semop", "semop"),
    ("syscall", "syscall"),
)
_DECORATION = re.compile(r"^(?:__GI_|__libc_|__|_)+|@.*$|\.(?:part|constprop|isra|cold)\..*$")


def call_of(function: str) -> Optional[str]:
    """The system call a wrapper function makes, or None."""
    name = _DECORATION.sub("", function).lower()
    for pattern, call in _CALLS:
        if pattern in name:
            return call
    return None


def off_cpu_frame(marker: int, leaf: Optional[Frame]) -> Frame:
    """The frame that ends an off-CPU stack."""
    if marker == OFF_CPU_PREEMPTED:
        reason = "preempted"
    else:
        call = call_of(leaf.name) if leaf is not None else None
        if call is None and leaf is not None and leaf.category in ("program", "python"):
            call = "page fault"           # blocked without being in a system call wrapper
        reason = call or "blocked"
    return Frame(f"[off-cpu: {reason}]", "[kernel]", "offcpu")
