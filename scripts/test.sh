#!/usr/bin/env bash
# Quick start 2: install (project, test extras, the Debian servers the tests start), run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-packages.sh
bash scripts/setup.sh test,hf
export CI="${CI:-}"
set +e
# two processes for the two cores CI has, a test file per process (its servers and fixtures stay
# together); BITPLAN_TEST_PROCESSES=0 runs in one process
.venv/bin/python -m pytest -n "${BITPLAN_TEST_PROCESSES:-2}" --dist loadfile "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi
exit $rc
