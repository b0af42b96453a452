"""scripts/system-packages.sh waits for the dpkg/apt lock another process holds instead of failing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "system-packages.sh"
FAKE_APT = """#!/bin/bash
echo "$*" >> "{log}"
n=$(cat "{count}" 2>/dev/null || echo 0); echo $((n + 1)) > "{count}"
if [ "$n" -lt {locked} ]; then
  echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)" >&2
  exit 100
fi
exit {final}
"""


def _run(tmp_path: Path, *, locked: int, final: int = 0, wait_s: int = 600) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The script with only bash's basics on PATH (so every package looks missing) and a fake
    apt-get that reports a held lock `locked` times; sudo and sleep are no-ops."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "ls", "grep", "cat", "env", "id"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    for name, body in (("sudo", '#!/bin/bash\nexec "$@"\n'), ("sleep", "#!/bin/bash\nexit 0\n"),
                       ("apt-get", FAKE_APT.format(log=tmp_path / "log", count=tmp_path / "count", locked=locked,
                                                   final=final))):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": str(bin_dir), "BITPLAN_APT_LOCK_WAIT_S": str(wait_s)}
    proc = subprocess.run([shutil.which("bash"), str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    log = (tmp_path / "log").read_text().splitlines() if (tmp_path / "log").exists() else []
    return proc, log


def test_waits_for_a_held_lock_then_installs(tmp_path):
    proc, calls = _run(tmp_path, locked=3)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("apt is locked by another process; waiting") == 3
    assert [c.split()[2] for c in calls] == ["update"] * 4 + ["install"]
    assert all(c.startswith("-o DPkg::Lock::Timeout=600 ") for c in calls)
    assert "chromium" in calls[-1].split()


def test_other_apt_failures_still_fail_with_apt_s_message(tmp_path):
    proc, calls = _run(tmp_path, locked=0, final=100)
    assert proc.returncode == 100 and len(calls) == 1


def test_gives_up_after_the_wait(tmp_path):
    proc, _ = _run(tmp_path, locked=10**6, wait_s=0)
    assert proc.returncode == 100 and "Could not get lock" in proc.stderr
