"""Spawn a fresh Python process for work that must not run in the API process.

Torch, and any archive whose loading runs code (pickle inside .pt2), only ever live in such a child.
A fresh interpreter (not fork) means no torch thread pools are inherited and nothing a model ran can
touch the parent. Resource limits make a hostile or runaway model die instead of the server.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu_s: int
    wall_s: float | None = None


def _die_with_parent() -> None:
    """Linux: the child is killed when the thread that started it dies. A worker killed with -9 must not
    leave its job running (and heartbeating) as an orphan; the reaper then sees it silent and requeues."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _apply_limits(limits: Limits, parent: int):
    def apply() -> None:
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5))
        os.setsid()  # its own process group, so a cancel can kill everything it started
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before the death signal was armed
            os._exit(1)

    return apply


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    # One BLAS/OpenMP thread pool per job process; several jobs share the machine's cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1))))
    return env


def start_child(args: Sequence[str], *, limits: Limits, env: Mapping[str, str]) -> subprocess.Popen:
    """Start `python -m service.jobs.child ARGS...` with limits; caller waits on it."""
    return subprocess.Popen(
        [sys.executable, "-m", "service.jobs.child", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(env),
        preexec_fn=_apply_limits(limits, os.getpid()),
        text=True,
    )


def run_child(args: Sequence[str], *, stdin: str, limits: Limits, env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run a child to completion, killing it at the wall-clock limit. Returns (rc, stdout, stderr)."""
    proc = start_child(args, limits=limits, env=env)
    try:
        out, err = proc.communicate(stdin, timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate()
        return -9, out, (err or "") + f"\nkilled after {limits.wall_s} s"
    return proc.returncode, out, err


def kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
