"""Find the modules a bundle lacks by comparing what a real run imports with what the bundle holds.

Celery and kombu import parts of themselves from strings (loaders, pools, transports, consumer
steps), which PyInstaller's analysis cannot follow, and neither ships a PyInstaller hook. So:

    python packaging/hidden_imports.py record  [--python VENV/bin/python] [--out FILE]
    python packaging/hidden_imports.py compare [--bundle dist/morag-worker] [--seen FILE] [--write]

``record`` runs ``morag-worker demo`` (a private redis-server, the hub, a headless worker with
its prefork child, every sample converted) and ``--no-gui --help`` with ``modules_seen.py`` as
``sitecustomize``, and writes the union of ``sys.modules`` over every process. ``compare`` lists
the recorded modules of the packages that matter which the bundle does not hold; ``--write`` adds
the Celery and kombu ones to ``hidden-imports.txt``. Exit status 1 when something is missing.
Runs on the build machine only; not part of the app.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HIDDEN_FILE = HERE / "hidden-imports.txt"
DEFAULT_SEEN = ROOT / "build" / "modules-seen.txt"
# Packages whose modules must all be in the bundle; the rest (pytest, the editable finder,
# sitecustomize itself) belong to the recording run only.
CHECKED = (
    "celery",
    "kombu",
    "billiard",
    "amqp",
    "vine",
    "redis",
    "hiredis",
    "morag_worker",
    "keyring",
    "markitdown",
)
WRITTEN = ("celery", "kombu")


def record(python: str, out: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="morag-modules-") as tmp:
        site = Path(tmp) / "site"
        dump = Path(tmp) / "dump"
        site.mkdir()
        dump.mkdir()
        shutil.copy(HERE / "modules_seen.py", site / "sitecustomize.py")
        env = dict(os.environ, MODULES_SEEN_DIR=str(dump), PYTHONPATH=str(site))
        env.pop("MORAG_API_KEY", None)
        for args in (["--no-gui", "--help"], ["demo"]):
            done = subprocess.run([python, "-m", "morag_worker", *args], env=env, cwd=tmp, check=False)
            if done.returncode != 0:
                print(f"record: morag-worker {' '.join(args)} exited {done.returncode}", file=sys.stderr)
                return 1
        names: set[str] = set()
        for part in dump.glob("*.txt"):
            names.update(line for line in part.read_text().splitlines() if line)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(sorted(names)) + "\n")
    print(f"record: {len(names)} modules from the demo run into {out}", file=sys.stderr)
    return 0


def bundled_modules(bundle: Path) -> set[str]:
    """Module names in the bundle: its PYZ archive, base_library.zip and extension files."""
    from PyInstaller.archive.readers import CArchiveReader  # the build venv has PyInstaller

    exe = bundle / ("morag-worker.exe" if sys.platform == "win32" else "morag-worker")
    names: set[str] = set()
    pkg = CArchiveReader(str(exe))
    for entry in pkg.toc:
        if entry.endswith(".pyz") or entry == "PYZ.pyz":
            names.update(pkg.open_embedded_archive(entry).toc)
    internal = bundle / "_internal"
    import zipfile

    base = internal / "base_library.zip"
    if base.exists():
        with zipfile.ZipFile(base) as zf:
            for item in zf.namelist():
                if item.endswith(".pyc"):
                    name = item[: -len(".pyc")].replace("/", ".")
                    names.add(name.removesuffix(".__init__"))
    for ext in internal.rglob("*"):
        if ext.suffix in (".so", ".pyd") and ext.is_file():
            rel = ext.relative_to(internal)
            if rel.parts[0] == "lib-dynload":
                rel = Path(*rel.parts[1:])
            stem = rel.name.split(".")[0]
            names.add(".".join([*rel.parts[:-1], stem]))
    return names


def has_source(name: str) -> bool:
    """Whether ``name`` is a module with a file; Celery's compatibility modules (``celery.log``,
    ``celery.execute``...) exist only in ``sys.modules`` and need nothing in the bundle."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and (spec.has_location or bool(spec.submodule_search_locations))


def compare(bundle: Path, seen_file: Path, write: bool) -> int:
    seen = {line for line in seen_file.read_text().splitlines() if line}
    held = bundled_modules(bundle)
    missing = sorted(n for n in seen if n.split(".")[0] in CHECKED and n not in held and has_source(n))
    for name in missing:
        print(f"missing: {name}")
    if write:
        listed = set(HIDDEN_FILE.read_text().splitlines())
        new = [n for n in missing if n.split(".")[0] in WRITTEN and n not in listed]
        if new:
            with HIDDEN_FILE.open("a") as out:
                out.write("\n".join(new) + "\n")
            print(f"compare: added {len(new)} to {HIDDEN_FILE.name}; build the bundle again", file=sys.stderr)
    checked = sum(1 for n in seen if n.split(".")[0] in CHECKED)
    print(f"compare: {checked} modules checked, {len(missing)} missing from {bundle}", file=sys.stderr)
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run the demo and record every module it imports")
    rec.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    rec.add_argument("--out", type=Path, default=DEFAULT_SEEN)
    cmp_ = sub.add_parser("compare", help="list recorded modules the bundle lacks")
    cmp_.add_argument("--bundle", type=Path, default=ROOT / "dist" / "morag-worker")
    cmp_.add_argument("--seen", type=Path, default=DEFAULT_SEEN)
    cmp_.add_argument("--write", action="store_true", help="add missing celery/kombu modules to the list")
    args = parser.parse_args(argv)
    if args.command == "record":
        return record(args.python, args.out)
    return compare(args.bundle, args.seen, args.write)


if __name__ == "__main__":
    sys.exit(main())
