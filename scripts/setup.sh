#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine (or a developer checkout) for MoRAG Worker:
# the system packages the tests and the demo use, then a virtual environment in .venv with exactly
# the versions in requirements/dev.lock (hash-checked) and the project installed in editable mode.
# Safe to run again: it brings an existing .venv back to the lock. scripts/lock.sh refreshes the lock;
# scripts/check-latest.sh tries the newest allowed versions instead.
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
  # The real-desktop tier (pytest -m desktop): a virtual X server, a window manager, a system tray
  # host, a driver for clicks and keys, and screenshots of the live app.
  [Xvfb]=xvfb                           # also the idle and full-screen sensors' test
  [openbox]=openbox
  [trayer]=trayer
  [xdotool]=xdotool
  [import]=imagemagick
)
missing=()
for cmd in "${!NEEDED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEEDED[$cmd]}")
done
# Libraries Qt needs to run offscreen (the tray app's tests). The cache is read once: piped straight
# into `grep -q`, ldconfig can die of SIGPIPE when grep stops early, and pipefail reads that as missing.
ldcache=$(ldconfig -p 2>/dev/null || true)
for lib in libEGL.so.1 libxkbcommon.so.0 libfontconfig.so.1 libGL.so.1 libdbus-1.so.3; do
  grep -qF "$lib" <<<"$ldcache" || missing+=("qtlibs")
done
# The X screen saver extension's client library: the worker reads idle time through it.
grep -qF libXss.so.1 <<<"$ldcache" || missing+=("libxss1")
# Libraries Qt's xcb platform plugin needs on a real X display (the desktop tier).
for lib in libxcb-cursor.so.0 libxcb-icccm.so.4 libxcb-image.so.0 libxcb-keysyms.so.1 \
  libxcb-render-util.so.0 libxcb-xinerama.so.0 libxcb-xkb.so.1 libxkbcommon-x11.so.0 \
  libxcb-shape.so.0 libxcb-randr.so.0; do
  grep -qF "$lib" <<<"$ldcache" || missing+=("xcblibs")
done
# LibreOffice, headless: the format tests make office documents with `soffice --convert-to`. Each
# module is checked by the registry file that tells soffice it is there, which Debian's full
# (desktop) packages provide too: the -nogui packages conflict with those, so a desktop's
# LibreOffice is left alone.
soffice_registry=/usr/lib/libreoffice/share/registry
if command -v soffice >/dev/null 2>&1; then
  soffice_registry="$(dirname "$(readlink -f "$(command -v soffice)")")/../share/registry"
fi
for module in writer calc impress; do
  [ -e "$soffice_registry/$module.xcd" ] || missing+=("libreoffice-$module-nogui")
done
# Real public documents that the text-quality tests read; Debian ships them under /usr/share/doc.
declare -A DOCUMENTS=(
  [/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf]=shared-mime-info
  [/usr/share/doc/libtasn1-doc/libtasn1.pdf]=libtasn1-doc
  [/usr/share/doc/socat/socat.html]=socat
  [/usr/share/doc/zlib1g-dev/examples/zlib_how.html]=zlib1g-dev
)
for document in "${!DOCUMENTS[@]}"; do
  [ -e "$document" ] || missing+=("${DOCUMENTS[$document]}")
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# apt-get, waiting up to 5 minutes for another apt/dpkg (an unattended upgrade, a second setup) to
# let go of its locks instead of failing at once. /proc/locks shows who holds one without taking it;
# DPkg::Lock::Timeout covers a lock taken between that look and apt-get's own.
APT_LOCKS=(/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock)
apt_busy() {
  local lock inode
  for lock in "${APT_LOCKS[@]}"; do
    inode=$(stat -c %i "$lock" 2>/dev/null) || continue
    grep -q ":$inode " /proc/locks 2>/dev/null && return 0
  done
  return 1
}
apt_get() {
  if apt_busy; then
    echo "setup: waiting for another package manager to finish (up to 5 min)…" >&2
    local deadline=$((SECONDS + 300))
    while apt_busy; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "setup: another package manager still holds the apt/dpkg lock after 5 minutes; run setup again when it has finished" >&2
        exit 1
      fi
      sleep 1
    done
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"
}

if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: please install: ${missing[*]} (no apt-get here)" >&2
    exit 1
  fi
  packages=()
  for p in "${missing[@]}"; do
    if [ "$p" = qtlibs ]; then
      packages+=(libegl1 libxkbcommon0 libfontconfig1 libgl1 libdbus-1-3 libglib2.0-0)
    elif [ "$p" = xcblibs ]; then
      packages+=(libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0
        libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-shape0 libxcb-randr0)
    else
      packages+=("$p")
    fi
  done
  echo "setup: installing ${packages[*]}" >&2
  apt_get update -qq
  apt_get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    # Debian's python3 ships venv/ensurepip separately.
    rm -rf .venv
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends python3-venv >/dev/null
    "$PYTHON" -m venv .venv
  fi
fi
# Every dependency from the lock, hash-checked, wheels only (nothing is compiled here); then the
# project itself, built by the locked setuptools, without looking at its ranges again (quiet about
# setuptools' generic note on editable installs).
.venv/bin/python -m pip install -q --require-hashes --only-binary :all: -r requirements/dev.lock
PYTHONWARNINGS=ignore::UserWarning .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
echo "setup: ready (.venv)" >&2
