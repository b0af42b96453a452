"""Spawn a fresh Python process for work that must not run in the API process.

Torch, and any archive whose loading runs code (.pt2), only ever live in such a child.
A fresh interpreter (not fork) means no torch thread pools are inherited and nothing a model ran can
touch the parent. Resource limits make a hostile or runaway model die instead of the server, the
environment is an allowlist (no database URL, no Redis URL, no other secret of the server), and when
a `Sandbox` is given the child runs inside it (service.jobs.sandbox).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.jobs.sandbox import Sandbox


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


# What a child may inherit: locale, thread pools, accelerators. Never BITPLAN_* (the database URL with its
# password, the Redis URL) nor anything else the server was given: the child needs none of it.
_INHERITED = ("PATH", "LANG", "LANGUAGE", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF",
              "MALLOC_ARENA_MAX")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _INHERITED or k.startswith("LC_")}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    # Nothing persistent to write to, nothing to download: transformers and torch stay offline.
    env.update(HOME="/tmp", TMPDIR="/tmp", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    # The child imports this very copy of the project, installed or run from a checkout.
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env.update(extra or {})
    # One BLAS/OpenMP thread pool per job process; several jobs share the machine's cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1))))
    # glibc gives each thread that allocates its own arena, 64 MiB of address space apiece, which the
    # job's RLIMIT_AS counts: a streamed analysis had 126-180 MiB reserved that way (2-8 threads)
    env.setdefault("MALLOC_ARENA_MAX", "2")
    return env


def start_child(args: Sequence[str], *, limits: Limits, env: Mapping[str, str] | None = None,
                sandbox: Sandbox | None = None) -> subprocess.Popen:
    """Start `python -m service.jobs.child ARGS...` with limits (inside `sandbox` when given); caller waits."""
    argv = [sys.executable, "-m", "service.jobs.child", *args]
    environment = child_env(env)
    if sandbox is not None:
        argv = sandbox.command(argv, environment)
        environment = {"PATH": environment["PATH"]}  # bwrap's own; the child's is set inside (--clearenv)
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
        preexec_fn=_apply_limits(limits, os.getpid()),
        text=True,
    )


def run_child(args: Sequence[str], *, stdin: str, limits: Limits, env: Mapping[str, str] | None = None,
              sandbox: Sandbox | None = None) -> tuple[int, str, str]:
    """Run a child to completion, killing it at the wall-clock limit. Returns (rc, stdout, stderr)."""
    proc = start_child(args, limits=limits, env=env, sandbox=sandbox)
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
