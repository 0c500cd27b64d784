#!/usr/bin/env bash
# The packaging check that .ci/run runs after the tests, on a fresh Debian/Ubuntu machine (root or
# sudo): build the bundle and the .deb, compile the NSIS script, install the .deb with dpkg, install
# it again (the upgrade path), run the installed app (tests/packaging: --version, the demo against
# the system's redis-server, the tray app offscreen), then remove and purge it and check that none
# of its files is left. Needs .venv from scripts/setup.sh (for pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
APT=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300)
say() { echo "packaging-ci: $*" >&2; }

began=$SECONDS
packaging/build.sh bundle
bundle_s=$((SECONDS - began))
packaging/build.sh deb
deb_s=$((SECONDS - began - bundle_s))
packaging/build.sh windows-installer
deb=$(ls dist/morag-worker_*_amd64.deb)
say "bundle $(du -sm dist/morag-worker | cut -f1) MB in ${bundle_s} s; $deb $(du -m "$deb" | cut -f1) MB in ${deb_s} s"

purge() {
  $SUDO dpkg -P morag-worker >/dev/null 2>&1 || true
}
trap purge EXIT

# The libraries the package depends on come from the archive; the package itself goes in with dpkg.
"${APT[@]}" update -qq
"${APT[@]}" satisfy -y -qq --no-install-recommends "$(dpkg-deb -f "$deb" Depends)" >/dev/null
# The demo needs redis-server; Xvfb gives the tray app a real X display (Qt's xcb plugin).
"${APT[@]}" install -y -qq --no-install-recommends redis-server xvfb xauth >/dev/null
say "dpkg -i, twice (install, then the same version over it)"
$SUDO dpkg -i "$deb" >/dev/null
$SUDO dpkg -i "$deb" >/dev/null

.venv/bin/python -m pytest -p no:randomly -m packaging tests/packaging

files=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' | grep -v '/$')
say "dpkg -r"
$SUDO dpkg -r morag-worker >/dev/null
left=$(for f in $files; do [ -e "$f" ] || [ -L "$f" ] && echo "$f"; done || true)
if [ -n "$left" ] || [ -e /opt/morag-worker ]; then
  say "dpkg -r left files behind:"
  echo "$left" | head -20 >&2
  exit 1
fi
say "dpkg -P"
$SUDO dpkg -P morag-worker >/dev/null
if dpkg-query -W morag-worker >/dev/null 2>&1; then
  say "dpkg still knows morag-worker after the purge: $(dpkg-query -W -f '${Status}' morag-worker)"
  exit 1
fi
trap - EXIT
say "built, installed, ran, removed and purged cleanly in $((SECONDS - began)) s"
