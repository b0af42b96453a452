"""The sandbox every job child runs in: Linux namespaces via bubblewrap (`bwrap`), not a home-made check.

Why: an upload is an untrusted program (a .pt2's graph is code to torch, see workers.pt2), and the child
that loads it must not be able to reach anything worth having. Inside the sandbox the child has
- no network (its own empty network namespace: not even the API on loopback), no IPC, its own PIDs;
- no inherited secrets: the environment is cleared and only the variables in `child_env` are set;
- a read-only view of just the interpreter, the installed packages and the project's code, plus the
  input files of this one job bound read-only at their own paths; no database file, no blob store,
  no project directory (.env), no home directory; a small private /tmp; writable paths only where
  the caller names one (an export's output folder);
- an unprivileged uid in a user namespace with every capability dropped and no further namespaces;
- the address-space and CPU limits of service.jobs.process, and death with its parent.
Inputs come in on stdin and as those bound files; results go out on stdout. The child never talks
to the database.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Sandbox", "available", "sandbox_mode_for", "why_unavailable"]

TMP_BYTES = 512 * 1024 * 1024
_SYSTEM = ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/sbin")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "passwd", "group")


def _code_roots() -> list[str]:
    """What the child's interpreter needs: the Python installation, the environment, the project's packages."""
    import service
    import solver
    import workers

    roots = {sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))}
    for package in (service, solver, workers):
        roots.add(os.path.dirname(os.path.abspath(package.__file__)))
    return sorted(r for r in roots if not any(r != o and r.startswith(o + os.sep) for o in roots))


@dataclass(frozen=True)
class Sandbox:
    """One child's view: files it may read, folders it may write. Paths must exist."""

    read_only: Sequence[str | Path] = ()
    writable: Sequence[str | Path] = ()
    extra_devices: Sequence[str] = field(default_factory=lambda: tuple(_gpu_devices()))

    def command(self, argv: Sequence[str], env: dict[str, str]) -> list[str]:
        args = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534",
                "--cap-drop", "ALL", "--die-with-parent", "--clearenv"]
        for path in _SYSTEM:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        for name in _ETC:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        args += ["--proc", "/proc", "--dev", "/dev", "--ro-bind-try", "/sys", "/sys"]
        args += ["--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
        for root in _code_roots():
            args += ["--ro-bind", root, root]
        for device in self.extra_devices:
            args += ["--dev-bind", device, device]
        for path in self.read_only:
            real = os.path.realpath(path)
            args += ["--ro-bind", real, real]
        for path in self.writable:
            real = os.path.realpath(path)
            args += ["--bind", real, real]
        for key, value in env.items():
            args += ["--setenv", key, value]
        return [*args, "--chdir", "/tmp", "--", *argv]


def _gpu_devices() -> list[str]:
    return sorted(str(p) for p in Path("/dev").glob("nvidia*")) if Path("/dev").is_dir() else []


@functools.lru_cache(maxsize=1)
def why_unavailable() -> str | None:
    """None when bwrap can build the sandbox on this machine; else why not (checked once, by running it)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    probe = Sandbox(extra_devices=()).command([sys.executable, "-c", "print('ok')"], {"PATH": "/usr/bin:/bin"})
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not start ({exc})"
    if done.returncode != 0 or done.stdout.strip() != "ok":
        tail = " ".join(done.stderr.strip().splitlines()[-2:])
        return f"bwrap could not build the sandbox (user namespaces disabled?): {tail}"
    return None


def available() -> bool:
    return why_unavailable() is None


def sandbox_mode_for(mode: str) -> bool:
    """Whether children run sandboxed under settings.sandbox; ValueError when 'on' cannot be honoured."""
    if mode == "off":
        return False
    reason = why_unavailable()
    if mode == "on" and reason is not None:
        raise ValueError(f"sandbox: BITPLAN_SANDBOX=on but {reason}")
    return reason is None
