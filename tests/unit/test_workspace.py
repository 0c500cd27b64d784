"""Per-task workspaces: private, removed whatever happens, swept at start-up; display names."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from morag_worker.core.transfer.workspace import (
    TaskWorkspace,
    pid_alive,
    release_spare_workspaces,
    safe_display_name,
    sweep_orphaned_workspaces,
    sweep_stale_workspaces,
)

pytestmark = pytest.mark.unit

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _no_spares_left() -> Iterator[None]:
    yield
    release_spare_workspaces()


@posix_only
def test_workspace_is_private_under_a_private_root(tmp_path: Path) -> None:
    root = tmp_path / "work"
    with TaskWorkspace(root, "task-123") as ws:
        assert ws.path.parent == root
        assert (mode(root), mode(ws.path)) == (0o700, 0o700)
        (ws.path / "input.bin").write_bytes(b"someone's document")
    (spare,) = root.iterdir()  # emptied, and out of the task- names, for the next task
    assert spare.name.startswith(f".spare-{os.getpid()}-") and mode(spare) == 0o700
    assert [p.name for p in spare.iterdir()] == [".owner"]
    release_spare_workspaces()
    assert list(root.iterdir()) == []


def test_the_next_task_reuses_the_emptied_workspace_under_its_own_name(tmp_path: Path) -> None:
    with TaskWorkspace(tmp_path, "first") as first:
        (first.path / "input.bin").write_bytes(b"x")
        inode = first.path.stat().st_ino
    with TaskWorkspace(tmp_path, "second") as second:
        assert second.path.name.startswith("task-second-") and second.path.stat().st_ino == inode
        assert [p.name for p in second.path.iterdir()] == [".owner"]
        assert (second.path / ".owner").read_text().split()[0] == str(os.getpid())


def test_a_forked_process_never_takes_its_parents_spare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TaskWorkspace(tmp_path, "parent") as parent:
        inode = parent.path.stat().st_ino
    monkeypatch.setattr(os, "getpid", lambda: -7)  # as a pool process forked from this one sees it
    with TaskWorkspace(tmp_path, "child") as child:
        assert child.path.stat().st_ino != inode


def test_a_spare_swept_away_meanwhile_is_replaced_by_a_new_workspace(tmp_path: Path) -> None:
    with TaskWorkspace(tmp_path, "first"):
        pass
    (spare,) = tmp_path.iterdir()
    assert sweep_stale_workspaces(tmp_path, older_than_s=0) == 0  # another worker's start-up sweep
    assert not spare.exists()  # removed, but not counted: it held no one's download
    with TaskWorkspace(tmp_path, "second") as ws:
        assert ws.path.is_dir() and not spare.exists()


@posix_only
def test_a_loose_root_is_tightened(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    with TaskWorkspace(root, "t"):
        assert mode(root) == 0o700


def test_workspace_is_removed_when_the_task_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), TaskWorkspace(tmp_path, "t") as ws:
        (ws.path / "input.bin").write_bytes(b"partial")
        (ws.path / "sub").mkdir()
        (ws.path / "sub" / "out.md").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("task_id", ["../../etc", "/abs/path", "a/../../b", "x\x00y", "..", "", "é" * 300])
def test_task_id_never_becomes_a_path(tmp_path: Path, task_id: str) -> None:
    root = tmp_path / "work"
    with TaskWorkspace(root, task_id) as ws:
        assert ws.path.parent == root
        assert ws.path.name.startswith("task-") and len(ws.path.name) < 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_same_task_id_twice_gets_two_directories(tmp_path: Path) -> None:
    with TaskWorkspace(tmp_path, "dup") as first, TaskWorkspace(tmp_path, "dup") as second:
        assert first.path != second.path


def test_path_is_only_available_inside_the_block(tmp_path: Path) -> None:
    ws = TaskWorkspace(tmp_path, "t")
    with pytest.raises(RuntimeError):
        _ = ws.path


def test_sweep_removes_only_stale_task_directories(tmp_path: Path) -> None:
    now = time.time()
    stale = tmp_path / "task-old-abc"
    (stale / "deep").mkdir(parents=True)
    (stale / "input.bin").write_bytes(b"x")
    busy = tmp_path / "task-busy-def"  # old directory, but its download is still being written
    busy.mkdir()
    (busy / "input.bin").write_bytes(b"x")
    fresh = tmp_path / "task-new-ghi"
    fresh.mkdir()
    other = tmp_path / "not-ours"
    other.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    (tmp_path / "task-link").symlink_to(target, target_is_directory=True)
    old = now - 7200
    for path in (stale / "deep", stale / "input.bin", stale, busy, other, target, target / "keep.txt"):
        os.utime(path, (old, old))

    assert sweep_stale_workspaces(tmp_path, older_than_s=3600, now=now) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "elsewhere",
        "not-ours",
        "task-busy-def",
        "task-link",
        "task-new-ghi",
    ]
    assert (target / "keep.txt").read_text() == "keep"


def _owned_by(root: Path, pid: int, host: str | None = None) -> Path:
    path = root / f"task-{pid}-x"
    path.mkdir(parents=True)
    (path / "input.bin").write_bytes(b"partial download")
    (path / ".owner").write_text(f"{pid} {host or socket.gethostname()}\n")
    return path


def test_orphan_sweep_removes_only_workspaces_whose_owner_died_on_this_host(tmp_path: Path) -> None:
    with TaskWorkspace(tmp_path, "mine") as ws:  # this process owns it: never an orphan
        dead, live = _owned_by(tmp_path, 999_001), _owned_by(tmp_path, 999_002)
        dead_spare = tmp_path / ".spare-999001-x"  # an emptied one: removed, not counted
        dead_spare.mkdir()
        (dead_spare / ".owner").write_text(f"999001 {socket.gethostname()}\n")
        elsewhere = _owned_by(tmp_path, 999_003, host="another-host")
        unowned = tmp_path / "task-unowned-x"
        unowned.mkdir()
        removed = sweep_orphaned_workspaces(tmp_path, alive=lambda pid: pid != 999_001)
        assert removed == 1 and not dead.exists() and not dead_spare.exists()
        assert live.exists() and elsewhere.exists() and unowned.exists() and ws.path.exists()
        assert (ws.path / ".owner").read_text().split()[0] == str(os.getpid())
        assert stat.S_IMODE((ws.path / ".owner").stat().st_mode) == 0o600


def test_pid_alive_tells_a_live_process_from_a_gone_one() -> None:
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert pid_alive(os.getpid())
    assert not pid_alive(gone.pid)


def test_sweep_of_a_missing_root_is_a_no_op(tmp_path: Path) -> None:
    assert sweep_stale_workspaces(tmp_path / "missing", older_than_s=0) == 0


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("report.pdf", "report.pdf"),
        ("../../x", "x"),
        ("..\\..\\windows\\system32\\evil.dll", "evil.dll"),
        ("/etc/passwd", "passwd"),
        ("a\x00b.txt", "ab.txt"),
        ("new\nline\r.md", "newline.md"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ("zero\u200bwidth.txt", "zerowidth.txt"),
        ('what?<>:"|*.doc', "what.doc"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("Com1.tar.gz", "_Com1.tar.gz"),
        ("LPT9", "_LPT9"),
        ("console.txt", "console.txt"),
        ("  . hidden . ", "hidden"),
        ("..", None),
        ("", None),
        (None, None),
        ("/", None),
        ("x" * 1000, "x" * 120),
        ("y" * 1000 + ".docx", "y" * 115 + ".docx"),
    ],
)
def test_safe_display_name(raw: str | None, shown: str | None) -> None:
    assert safe_display_name(raw) == shown


@posix_only
def test_a_workspace_swapped_for_a_symlink_never_empties_the_links_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    root = tmp_path / "work"
    with TaskWorkspace(root, "t") as ws:
        path = ws.path
        os.rename(path, tmp_path / "moved-away")
        path.symlink_to(victim, target_is_directory=True)
    assert (victim / "precious.txt").read_text() == "keep"


@posix_only
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_a_root_that_another_user_made_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "work"
    with TaskWorkspace(root, "t"):
        pass
    release_spare_workspaces()
    os.chown(root, 65534, 65534)  # removed by a cleaner and made again by someone else
    with pytest.raises(PermissionError, match="another user"), TaskWorkspace(root, "t"):
        pass


def test_a_reused_workspace_is_fresh_to_a_stale_sweep(tmp_path: Path) -> None:
    with TaskWorkspace(tmp_path, "first"):
        pass
    (spare,) = tmp_path.iterdir()
    old = time.time() - 7200
    os.utime(spare, (old, old))
    os.utime(spare / ".owner", (old, old))
    with TaskWorkspace(tmp_path, "second") as ws:
        assert sweep_stale_workspaces(tmp_path, older_than_s=3600) == 0
        assert ws.path.exists()
