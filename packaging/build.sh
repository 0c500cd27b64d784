#!/usr/bin/env bash
# Build MoRAG Worker's installable artefacts into dist/:
#
#   packaging/build.sh bundle             # dist/morag-worker/: PyInstaller one-folder bundle (GUI + headless)
#   packaging/build.sh deb                # dist/morag-worker_<version>_amd64.deb (builds the bundle first if absent)
#   packaging/build.sh windows-installer  # dist/morag-worker-<version>-setup.exe from the NSIS script
#
# The bundle is built from the installed wheel: a build environment in build/packaging/venv gets
# exactly requirements/bundle.lock (hash-checked; reused while the lock's hash is unchanged), then
# the wheel of this checkout. On Linux the build tools come from apt when missing (binutils,
# libpython3.X, dpkg-dev, desktop-file-utils, appstream, systemd, nsis). The Windows installer needs a Windows bundle in
# dist/morag-worker/ (morag-worker.exe, built on Windows: .github/workflows/windows.yml); here,
# without one, it compiles against stand-in files and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=build/packaging
VENV=$WORK/venv
PYTHON=${PYTHON:-python3}
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' morag_worker/__init__.py)
APP=morag-worker
APP_ID=io.github.mattes337.MoRAGWorker

say() { echo "build: $*" >&2; }

need_tools() {  # command=package ...
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || missing+=("${pair#*=}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
}

# PyInstaller bundles the interpreter's shared library; Debian's python3 has it in a package of its own.
need_libpython() {
  "$PYTHON" - <<'PY' && return 0
import os, sys, sysconfig
name = sysconfig.get_config_var("INSTSONAME") or f"libpython{sysconfig.get_python_version()}.so.1.0"
dirs = [sysconfig.get_config_var("LIBDIR") or "", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
sys.exit(0 if any(os.path.exists(os.path.join(d, name)) for d in dirs) else 1)
PY
  local version
  version=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_python_version())')
  need_tools "/nonexistent-libpython$version=libpython$version"
}

build_env() {
  local stamp=$VENV/.bundle-lock.sha256 want
  need_libpython
  want=$(sha256sum requirements/bundle.lock | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "build environment from requirements/bundle.lock"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --require-hashes --only-binary :all: -r requirements/bundle.lock
    echo "$want" >"$stamp"
  fi
  say "wheel of this checkout"
  rm -rf "$WORK/wheel"
  PYTHONWARNINGS=ignore::UserWarning "$VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation \
    -w "$WORK/wheel" .
  rm -rf build/lib build/bdist.* ./*.egg-info
  "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$WORK"/wheel/morag_worker-*.whl
}

icons() {
  rm -rf "$WORK/icons"
  QT_QPA_PLATFORM=offscreen "$VENV/bin/python" packaging/icons.py "$WORK/icons"
}

bundle() {
  local began=$SECONDS
  need_tools objdump=binutils  # PyInstaller reads the binaries' dependencies with it
  build_env
  icons
  say "PyInstaller one-folder bundle"
  rm -rf "dist/$APP"
  "$VENV/bin/pyinstaller" --noconfirm --log-level WARN --distpath dist --workpath "$WORK/pyinstaller" \
    packaging/morag-worker.spec
  "dist/$APP/$APP" --version >/dev/null
  say "dist/$APP: $(du -sm "dist/$APP" | cut -f1) MB, $((SECONDS - began)) s"
}

deb() {
  local began=$SECONDS
  [ -x "dist/$APP/$APP" ] || bundle
  [ -d "$WORK/icons/hicolor" ] || { build_env; icons; }
  need_tools dpkg-deb=dpkg-dev desktop-file-validate=desktop-file-utils appstreamcli=appstream \
    systemd-analyze=systemd
  local stage=$WORK/deb/root
  rm -rf "$WORK/deb"
  mkdir -p "$stage/opt" "$stage/usr/bin" "$stage/usr/share/applications" "$stage/usr/share/metainfo" \
    "$stage/usr/lib/systemd/user" "$stage/usr/share/doc/$APP" "$stage/usr/share/icons" "$stage/DEBIAN"
  cp -a "dist/$APP" "$stage/opt/$APP"
  ln -s "/opt/$APP/$APP" "$stage/usr/bin/$APP"
  cp resources/$APP.desktop "$stage/usr/share/applications/$APP.desktop"
  cp -r "$WORK/icons/hicolor" "$stage/usr/share/icons/hicolor"
  sed "s/@VERSION@/$VERSION/; s/@DATE@/$(date -u +%F)/" packaging/linux/$APP_ID.metainfo.xml \
    >"$stage/usr/share/metainfo/$APP_ID.metainfo.xml"
  # The same user unit as packaging/systemd/, started from the installed command.
  sed "s|^ExecStart=%h/.local/bin/$APP |ExecStart=/usr/bin/$APP |" packaging/systemd/$APP.service \
    >"$stage/usr/lib/systemd/user/$APP.service"
  cp packaging/linux/copyright "$stage/usr/share/doc/$APP/copyright"
  local size
  size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
  sed "s/@VERSION@/$VERSION/; s/@SIZE@/$size/" packaging/linux/control >"$stage/DEBIAN/control"
  (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | xargs -0 md5sum >DEBIAN/md5sums)
  find "$stage" -type d -exec chmod 0755 {} +

  say "checking the desktop entry, the metainfo and the user unit"
  desktop-file-validate "$stage/usr/share/applications/$APP.desktop"
  appstreamcli validate --no-net --explain "$stage/usr/share/metainfo/$APP_ID.metainfo.xml" >&2
  local runtime
  runtime=$(mktemp -d)
  # systemd-analyze resolves ExecStart on this machine: point it at the staged command.
  sed "s|^ExecStart=/usr/bin/$APP |ExecStart=$ROOT/$stage/opt/$APP/$APP |" \
    "$stage/usr/lib/systemd/user/$APP.service" >"$runtime/$APP.service"
  XDG_RUNTIME_DIR=$runtime systemd-analyze verify --user "$runtime/$APP.service"
  rm -rf "$runtime"

  say "dpkg-deb"
  rm -f dist/${APP}_*.deb
  dpkg-deb --root-owner-group -Zxz --build "$stage" "dist/${APP}_${VERSION}_amd64.deb" >/dev/null
  rm -rf "$WORK/deb"
  say "dist/${APP}_${VERSION}_amd64.deb: $(du -m "dist/${APP}_${VERSION}_amd64.deb" | cut -f1) MB, $((SECONDS - began)) s"
}

windows_installer() {
  local began=$SECONDS src="dist/$APP"
  need_tools makensis=nsis
  if [ ! -f "$src/$APP.exe" ]; then
    # No Windows bundle here: the installer is compiled against stand-ins of its files, so the
    # script is checked (paths, sections, version resources) but the result cannot be run.
    src=$WORK/windows-standin/$APP
    say "no Windows bundle in dist/$APP; compiling against stand-in files in $src (not installable)"
    rm -rf "$src"
    mkdir -p "$src/_internal"
    printf 'stand-in\n' >"$src/$APP.exe"
    printf 'stand-in\n' >"$src/_internal/base_library.zip"
    printf 'stand-in\n' >"$src/_internal/python311.dll"
  fi
  local icon=()
  if [ -f "$WORK/icons/$APP.ico" ]; then
    icon=(-DICON="$ROOT/$WORK/icons/$APP.ico")
  else
    say "no rendered icon yet (build.sh bundle renders it): NSIS's default icon"
  fi
  mkdir -p dist
  makensis -V2 -INPUTCHARSET UTF8 -DVERSION="$VERSION" -DSRCDIR="$ROOT/$src" "${icon[@]}" \
    -DOUTFILE="$ROOT/dist/$APP-$VERSION-setup.exe" packaging/windows/morag-worker.nsi
  say "dist/$APP-$VERSION-setup.exe: $(du -k "dist/$APP-$VERSION-setup.exe" | cut -f1) KB, $((SECONDS - began)) s"
}

case "${1:-}" in
bundle) bundle ;;
deb) deb ;;
windows-installer) windows_installer ;;
*)
  echo "usage: packaging/build.sh bundle | deb | windows-installer" >&2
  exit 2
  ;;
esac
