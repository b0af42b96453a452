#!/usr/bin/env bash
# Installs the Debian packages the test suite's real servers need, only when they are missing.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # dashboard browser tests
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)  # the job sandbox (service.jobs.sandbox)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
# Another apt/dpkg (unattended-upgrades, a parallel setup) may hold the locks: wait for them instead
# of failing. DPkg::Lock::Timeout covers the dpkg lock; apt-get update's lists lock is retried here.
LOCK_WAIT_S=${BITPLAN_APT_LOCK_WAIT_S:-600}
apt_get() {
  local deadline=$((SECONDS + LOCK_WAIT_S)) out rc
  while true; do
    rc=0; out=$($SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$LOCK_WAIT_S" "$@" 2>&1) || rc=$?
    if [ $rc -eq 0 ]; then return 0; fi
    if grep -qiE "could not get lock|unable to lock|is another process using it" <<<"$out" && [ $SECONDS -lt $deadline ]; then
      echo "system-packages: apt is locked by another process; waiting ..." >&2
      sleep 5
      continue
    fi
    echo "$out" >&2
    return $rc
  done
}
apt_get update -qq
apt_get install -y -qq "${need[@]}" >/dev/null
