#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine (or a developer checkout) for MoRAG Worker:
# the system packages the tests and the demo use, then a virtual environment in .venv with the
# project installed in editable mode: exactly the versions in requirements/dev.lock (hash-checked).
# Safe to run again: it brings an existing .venv back to the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package that provides it
declare -A NEEDED=(
  [redis-server]=redis-server           # broker and result backend (tests start their own)
  [gnome-keyring-daemon]=gnome-keyring  # a real Secret Service for the keychain tests
  [dbus-daemon]=dbus-daemon             # the private session bus those tests start
  [secret-tool]=libsecret-tools         # checks what the keychain holds
  [curl]=curl                           # the download benchmark's baseline
  [openssl]=openssl                     # certificates for the TLS tests
)
missing=()
for cmd in "${!NEEDED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEEDED[$cmd]}")
done
# Libraries Qt needs to run offscreen (the tray app's tests).
for lib in libEGL.so.1 libxkbcommon.so.0 libfontconfig.so.1 libGL.so.1 libdbus-1.so.3; do
  ldconfig -p 2>/dev/null | grep -q "$lib" || missing+=("qtlibs")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: please install: ${missing[*]} (no apt-get here)" >&2
    exit 1
  fi
  packages=()
  for p in "${missing[@]}"; do
    if [ "$p" = qtlibs ]; then
      packages+=(libegl1 libxkbcommon0 libfontconfig1 libgl1 libdbus-1-3 libglib2.0-0)
    else
      packages+=("$p")
    fi
  done
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${packages[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    # Debian's python3 ships venv/ensurepip separately.
    rm -rf .venv
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$PYTHON" -m venv .venv
  fi
fi
# Every dependency from the lock, hash-checked, wheels only (nothing is compiled here); then the
# project itself, built by the locked setuptools, without looking at its ranges again (quiet about
# setuptools' generic note on editable installs).
.venv/bin/python -m pip install -q --require-hashes --only-binary :all: -r requirements/dev.lock
PYTHONWARNINGS=ignore::UserWarning .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
echo "setup: ready (.venv)" >&2
