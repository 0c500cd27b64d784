"""The hub's file store on its own: folders only ever directly under the root, private sidecars."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from morag_worker.core.naming import InvalidUserId, user_id_from_queue, validate_user_id
from morag_worker.core.server.hub import storage
from morag_worker.core.server.hub.storage import FileStore, OutsideStorage

pytestmark = pytest.mark.unit

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits and symlinks")


@pytest.mark.parametrize("dots", [".", "..", "...", "." * 64])
def test_ids_made_only_of_dots_are_refused(dots: str) -> None:
    with pytest.raises(InvalidUserId, match="not only dots"):
        validate_user_id(dots)
    assert user_id_from_queue(f"gpu-tasks-{dots}") is None


@pytest.mark.parametrize("fine", ["user123", "a.b", ".hidden", "-dash", "a..b", "x.", "_", "u-1.2_3"])
def test_ids_with_some_dots_or_a_leading_dash_stay_valid(fine: str) -> None:
    assert validate_user_id(fine) == fine
    assert user_id_from_queue(f"cpu-tasks-{fine}") == fine


def test_the_store_refuses_dot_ids_before_touching_the_disk(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    store = FileStore(root, 1024)
    for bad in (".", ".."):
        with pytest.raises(ValueError):
            store.new_writer(bad)
        assert store.get(bad, "a" * 32) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("escape", [".", "..", "../x", "a/../..", "/etc", "a/b"])
def test_the_store_stays_inside_its_root_even_if_validation_let_an_id_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, escape: str
) -> None:
    monkeypatch.setattr(storage, "validate_user_id", lambda user_id: user_id)  # defence in depth
    root = tmp_path / "root" / "hub"
    root.mkdir(parents=True)
    store = FileStore(root, 1024)
    with pytest.raises(OutsideStorage):
        store.new_writer(escape)
    assert store.get(escape, "a" * 32) is None
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["hub"]
    assert list(root.iterdir()) == []


@posix_only
def test_a_user_folder_that_is_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    root.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "mallory").symlink_to(outside)
    store = FileStore(root, 1024)
    with pytest.raises(OutsideStorage):
        store.new_writer("mallory")
    assert list(outside.iterdir()) == []


@posix_only
def test_the_file_and_its_sidecar_are_private(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        store = FileStore(tmp_path / "hub", 1024)
        writer = store.new_writer("gina")
        writer.write(b"hello")
        stored = writer.commit("a.txt", "text/plain")
    finally:
        os.umask(old_umask)
    user_dir = tmp_path / "hub" / "gina"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in user_dir.iterdir()}
    assert modes == {stored.file_id: 0o600, f"{stored.file_id}.json": 0o600}
    assert json.loads((user_dir / f"{stored.file_id}.json").read_text())["user_id"] == "gina"
    assert store.get("gina", stored.file_id) is not None
