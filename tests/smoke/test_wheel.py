"""The wheel is the same whether or not the clone has symlinks (Windows clones have none).

core/, gui/ and resources/ install as morag_worker.core, .gui and .resources through pyproject's
package-dir mapping. A clone made with ``core.symlinks=false`` once built a 7.8 KB wheel without
them; this builds the wheel from such a clone and from a plain one and compares their contents.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.smoke

needs_git = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a git checkout"
)


def _can_build_wheels() -> bool:
    """setuptools builds wheels itself from 70.1 on (the lock has it); older ones need ``wheel``."""
    import importlib.util

    import setuptools

    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _wheel_files(clone_args: tuple[str, ...], tmp: Path, name: str) -> dict[str, int]:
    clone = tmp / name
    subprocess.run(["git", *clone_args, "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    out = tmp / f"{name}-dist"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*build, "-w", str(out), "."],
        cwd=clone,
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = out.glob("morag_worker-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return {i.filename: i.file_size for i in zf.infolist() if ".dist-info/" not in i.filename}


@needs_git
def test_the_repository_tracks_no_symlinks() -> None:
    listing = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True)
    links = [line.split("\t", 1)[1] for line in listing.stdout.splitlines() if line.startswith("120000")]
    assert links == []


@needs_git
@pytest.mark.skipif(not _can_build_wheels(), reason="setuptools < 70.1 without wheel: run scripts/setup.sh")
def test_a_clone_without_symlinks_builds_the_same_wheel(tmp_path: Path) -> None:
    plain = _wheel_files((), tmp_path, "plain")
    windows_like = _wheel_files(("-c", "core.symlinks=false"), tmp_path, "nosymlinks")
    assert windows_like == plain
    for expected in (
        "morag_worker/__main__.py",
        "morag_worker/core/worker.py",
        "morag_worker/core/routing.py",
        "morag_worker/core/auth.py",
        "morag_worker/core/supervisor/supervisor.py",
        "morag_worker/core/server/hub/app.py",
        "morag_worker/gui/controller.py",
        "morag_worker/resources/samples/sample.docx",
        "morag_worker/resources/icons/",
    ):
        assert any(name.startswith(expected) for name in plain), expected
    assert not any(name.startswith(("core/", "gui/", "resources/", "tests/")) for name in plain)
