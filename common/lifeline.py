"""A child process that must not outlive its supervisor, even when the supervisor is SIGKILLed.

Two independent ways, because either alone has a gap:

- ``PR_SET_PDEATHSIG`` (Linux): the kernel sends the child a signal when its parent dies. It is
  set after the child started, so a parent that died in between is caught by comparing
  ``getppid()`` with the supervisor's pid.
- A lifeline pipe: the supervisor keeps the write end and never writes; the child watches the
  read end. The kernel closes the write end however the supervisor ends, so the child reads EOF.
  This works where prctl does not (another OS, a sandbox that filters it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits; False where the
    call is not available (the lifeline pipe still covers it)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def parent_alive(parent_pid: int) -> bool:
    """False once this process has been re-parented (its supervisor is gone)."""
    return os.getppid() == parent_pid


def lifeline_cut(fd: int) -> bool:
    """True when the lifeline's read end is at EOF or broken (the supervisor is gone). Call it
    when the fd is readable: the supervisor never writes, so readable means closed."""
    try:
        return os.read(fd, 1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
