#!/usr/bin/env bash
# Drift check: install the NEWEST versions that pyproject.toml allows (no lock) into .venv-latest,
# report which packages differ from requirements/dev.lock, and run the tests there. A failure here
# means the next `scripts/lock.sh --upgrade` would break something (or a library user who installs
# today hits it): fix it or exclude the version in pyproject.toml, then refresh the lock.
# Not part of CI; it never touches .venv. Arguments go to pytest, e.g. scripts/check-latest.sh -m unit
# Exit status: pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "check-latest: run ./scripts/setup.sh first (system packages, and the lock to compare with)" >&2
  exit 1
fi
rm -rf .venv-latest
"$PYTHON" -m venv .venv-latest
.venv-latest/bin/python -m pip install -q --upgrade pip setuptools
PYTHONWARNINGS=ignore::UserWarning \
  .venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev]'

echo "check-latest: newest allowed versions against requirements/dev.lock:"
.venv-latest/bin/python - <<'PY'
import importlib.metadata as md
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

locked = {}
for line in open("requirements/dev.lock", encoding="utf-8"):
    if not line[:1].isalnum():
        continue
    req = Requirement(line.rstrip(" \\\n"))
    if req.marker is None or req.marker.evaluate():
        locked[canonicalize_name(req.name)] = next(iter(req.specifier)).version
installed = {
    canonicalize_name(d.metadata["Name"]): d.version
    for d in md.distributions()
    if canonicalize_name(d.metadata["Name"]) not in {"morag-worker", "pip"}
}
rows = []
for name in sorted(locked.keys() | installed.keys()):
    old, new = locked.get(name, "-"), installed.get(name, "-")
    if old != new:
        rows.append((name, old, new))
if rows:
    width = max(len(r[0]) for r in rows)
    print(f"  {'package':<{width}}  {'lock':<14} latest")
    for name, old, new in rows:
        print(f"  {name:<{width}}  {old:<14} {new}")
    print(f"  {len(rows)} of {len(locked.keys() | installed.keys())} differ")
else:
    print("  no difference: the lock is the newest allowed set")
PY

echo "check-latest: running the tests with the newest versions (.venv-latest)" >&2
set +e
.venv-latest/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 0 ]; then
  echo "check-latest: the tests pass with the newest allowed versions" >&2
else
  echo "check-latest: the tests FAIL with the newest allowed versions (pytest exit $rc); the lock still works" >&2
fi
exit "$rc"
