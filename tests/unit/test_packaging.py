"""pyproject's package list names every folder under the mapped top-level folders (core/, gui/, ...)."""

from __future__ import annotations

import tomllib

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.unit


def test_every_subfolder_of_a_mapped_folder_is_a_listed_package() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = set()
    for package, folder in setuptools["package-dir"].items():
        on_disk.add(package)
        for path in (ROOT / folder).rglob("*"):
            rel = path.relative_to(ROOT / folder)
            if path.is_dir() and "__pycache__" not in rel.parts and not rel.name.startswith("."):
                on_disk.add(".".join([package, *rel.parts]))
    assert sorted(setuptools["packages"]) == sorted(on_disk), (
        "[tool.setuptools] packages in pyproject.toml must list every folder under core/, gui/ and resources/"
    )
