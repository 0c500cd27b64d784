#!/usr/bin/env bash
# Regenerate requirements/dev.lock (and requirements/bundle.lock, the packaging build's set): every package that scripts/setup.sh installs (the project's
# dependencies, its `dev` extra and the build backend that installs the project itself), each pinned
# with the hashes of its files on PyPI. One lock for Python 3.11 and newer on every platform
# (uv's universal resolution; markers pick the right pins). Only versions with wheels: setup.sh
# installs with --only-binary :all:, so nothing is compiled on a contributor's machine or in CI.
#
#   scripts/lock.sh                           # after editing pyproject.toml: keep every pin that still fits
#   scripts/lock.sh --upgrade                 # move everything to the newest allowed versions
#   scripts/lock.sh --upgrade-package lxml    # move one package
#
# Then run ./scripts/setup.sh and the tests, and commit requirements/dev.lock with pyproject.toml.
# uv comes from PATH, or is installed into .venv-tools on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

UV=${UV:-}
if [ -z "$UV" ]; then
  if command -v uv >/dev/null 2>&1; then
    UV=uv
  else
    if [ ! -x .venv-tools/bin/uv ]; then
      echo "lock: installing uv into .venv-tools" >&2
      "${PYTHON:-python3}" -m venv .venv-tools
      .venv-tools/bin/python -m pip install -q 'uv>=0.5'
    fi
    UV=.venv-tools/bin/uv
  fi
fi

# The build backend from [build-system] requires, so that setup.sh builds the project without
# fetching an unpinned setuptools (it installs with --no-build-isolation).
"${PYTHON:-python3}" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' |
  "$UV" pip compile pyproject.toml - --extra dev \
    --universal --python-version 3.11 \
    --generate-hashes --only-binary :all: \
    --custom-compile-command scripts/lock.sh \
    --quiet \
    --output-file requirements/dev.lock \
    "$@"
echo "lock: wrote requirements/dev.lock" >&2

# What packaging/build.sh installs into its build environment: the app with its gui extra and
# PyInstaller (the packaging extra), and the build backend that makes the wheel, at the same pins as
# dev.lock wherever the two overlap.
"${PYTHON:-python3}" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' |
  "$UV" pip compile pyproject.toml - --extra gui --extra packaging \
  --constraint requirements/dev.lock \
  --universal --python-version 3.11 \
  --generate-hashes --only-binary :all: \
  --custom-compile-command scripts/lock.sh \
  --quiet \
  --output-file requirements/bundle.lock \
  "$@"
echo "lock: wrote requirements/bundle.lock" >&2
