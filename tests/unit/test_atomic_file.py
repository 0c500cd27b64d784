"""write_atomically: the one way settings, history and the autostart entry reach the disk."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from morag_worker.core.config.atomic_file import write_atomically

pytestmark = pytest.mark.unit


def test_writes_replaces_and_sets_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "private" / "settings.json"
    write_atomically(target, "one\n", folder_mode=0o700)
    assert target.read_text() == "one\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    write_atomically(target, "two\n", mode=0o644)
    assert target.read_text() == "two\n" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["settings.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    blocked = tmp_path / "entry.desktop"
    blocked.mkdir()  # os.replace cannot put a file over a folder
    (blocked / "kept").write_text("old")
    with pytest.raises(OSError):
        write_atomically(blocked, "new")
    assert (blocked / "kept").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.desktop"]
