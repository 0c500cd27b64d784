"""Type-check the project with mypy: core/, gui/ and resources/ as morag_worker.core, ... .

mypy finds modules by path and ignores import hooks (the editable install's finder), so it cannot
see that core/ installs as morag_worker.core. This script hands mypy every source file with its
installed module name; errors name the real files (core/naming.py). Settings come from
pyproject.toml [tool.mypy]. Usage: python tools/typecheck.py [extra mypy options]
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from mypy import build
from mypy.errors import CompileError
from mypy.fscache import FileSystemCache
from mypy.main import process_options
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parent.parent
# {"morag_worker": "morag_worker", "morag_worker.core": "core", ...}: where each package's files are.
PACKAGE_DIR: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
    "package-dir"
]


def sources() -> list[BuildSource]:
    found: list[BuildSource] = []
    for package, folder in PACKAGE_DIR.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            module = ".".join([package, *parts])
            found.append(BuildSource(str(path.relative_to(ROOT)), module))
    return found


def main(argv: list[str]) -> int:
    os.chdir(ROOT)  # errors name files relative to the repository root: core/naming.py
    fscache = FileSystemCache()
    # Options (and the [tool.mypy] config) as the mypy command line reads them; the target list is ours.
    _, options = process_options(
        ["--config-file", str(ROOT / "pyproject.toml"), *argv, "morag_worker/__init__.py"], fscache=fscache
    )
    srcs = sources()
    try:
        result = build.build(srcs, options, fscache=fscache)
        messages = result.errors
    except CompileError as exc:
        messages = exc.messages
    for line in messages:
        print(line)
    n_err = sum(": error:" in m for m in messages)
    if n_err:
        print(f"Found {n_err} errors (checked {len(srcs)} source files)")
        return 1
    print(f"Success: no issues found in {len(srcs)} source files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
