"""Pure configuration: names, Celery settings per role, task arguments, the worker command."""

from __future__ import annotations

import pytest

from morag_worker.core.execution.celery_config import (
    base_config,
    broker_url_with_credentials,
    namespaced_config,
    remote_worker_config,
    strip_credentials,
    time_limits_from_env,
)
from morag_worker.core.execution.task_args import MalformedTask, bind_arguments, parse_task_request
from morag_worker.core.naming import namespace_prefix, queue_name, user_id_from_queue
from morag_worker.core.supervisor.worker_command import WorkerPlan, build_worker_command
from morag_worker.core.transfer.download_state import DownloadLimits

pytestmark = pytest.mark.unit

KEY = "k" * 20 + "3" * 23


def test_names() -> None:
    assert queue_name("u1") == "gpu-tasks-u1"
    assert queue_name("u1", "cpu") == "cpu-tasks-u1"
    assert namespace_prefix("u1") == "morag:ns:u1:"
    assert user_id_from_queue("gpu-tasks-u.1_x") == "u.1_x"
    assert user_id_from_queue("celery") is None
    assert user_id_from_queue("gpu-tasks-a*") is None


def test_base_config_is_json_only_and_reliable() -> None:
    conf = base_config({})
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["result_accept_content"] == ["json"]
    assert conf["task_default_queue"] == "celery" and conf["task_create_missing_queues"]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["worker_cancel_long_running_tasks_on_connection_loss"]
    vis = conf["broker_transport_options"]["visibility_timeout"]
    assert vis > conf["task_time_limit"] > conf["task_soft_time_limit"]
    assert conf["result_backend_transport_options"]["visibility_timeout"] == vis == conf["visibility_timeout"]


def test_time_limits_from_env() -> None:
    limits = time_limits_from_env(
        {"CELERY_SOFT_TIME_LIMIT": "10", "CELERY_TIME_LIMIT": "20", "CELERY_VISIBILITY_TIMEOUT": "5"}
    )
    assert (limits.soft, limits.hard, limits.visibility) == (10, 20, 5)
    with pytest.raises(ValueError, match="CELERY_TIME_LIMIT"):
        time_limits_from_env({"CELERY_SOFT_TIME_LIMIT": "10", "CELERY_TIME_LIMIT": "5"})
    with pytest.raises(ValueError, match="whole number"):
        time_limits_from_env({"CELERY_VISIBILITY_TIMEOUT": "soon"})


def test_download_limits_from_env_keep_production_defaults_unless_set() -> None:
    assert DownloadLimits.from_env({}) == DownloadLimits()
    limits = DownloadLimits.from_env(
        {
            "MORAG_MAX_INPUT_MB": "4",
            "MORAG_DOWNLOAD_DEADLINE_S": "2.5",
            "MORAG_DOWNLOAD_MIN_RATE": "2048",
            "MORAG_DOWNLOAD_MIN_RATE_WINDOW_S": "1",
            "MORAG_DOWNLOAD_ATTEMPTS": "2",
            "MORAG_UNRELATED": "x",
        }
    )
    assert limits.max_bytes == 4 * 1024 * 1024 and limits.deadline_s == 2.5
    assert (limits.min_rate_bps, limits.min_rate_window_s, limits.max_attempts) == (2048, 1, 2)
    assert limits.read_timeout == DownloadLimits().read_timeout
    assert DownloadLimits.from_env({"MORAG_MAX_INPUT_MB": "0.5"}).max_bytes == 512 * 1024
    for name, raw, message in [
        ("MORAG_MAX_INPUT_MB", "lots", "must be a number"),
        ("MORAG_DOWNLOAD_DEADLINE_S", "0", "positive"),
        ("MORAG_DOWNLOAD_MIN_RATE", "-1", "positive"),
        ("MORAG_DOWNLOAD_MIN_RATE", "nan", "positive"),
        ("MORAG_DOWNLOAD_ATTEMPTS", "2.5", "whole number"),
    ]:
        with pytest.raises(ValueError, match=name + ".*" + message):
            DownloadLimits.from_env({name: raw})


def test_namespaced_and_remote_config() -> None:
    env = {"REDIS_URL": "redis://h:6379/0", "MORAG_API_KEY": KEY}
    ns = namespaced_config(env, "u1")
    assert ns["broker_transport_options"]["global_keyprefix"] == "morag:ns:u1:"
    assert ns["result_backend_transport_options"]["global_keyprefix"] == "morag:ns:u1:"
    remote = remote_worker_config(env, "u1")
    assert remote["broker_url"] == f"redis://worker-u1:{KEY}@h:6379/0"
    assert remote["result_backend"] == remote["broker_url"]
    assert remote["worker_enable_remote_control"] is False
    assert remote["worker_send_task_events"] is False
    assert remote["worker_consumer"].endswith("RemoteConsumer")


def test_credentials_in_urls() -> None:
    assert strip_credentials("redis://u:p@h:1/0") == "redis://h:1/0"
    assert strip_credentials("rediss://h/0") == "rediss://h/0"
    assert (
        broker_url_with_credentials("redis://x:y@h:1/2", "worker-a", "p/q") == "redis://worker-a:p%2Fq@h:1/2"
    )


def test_remote_consumer_leaves_out_shared_channel_steps() -> None:
    from morag_worker.core.execution.consumer import RemoteConsumer

    steps = " ".join(map(str, RemoteConsumer.Blueprint.default_steps))
    for left_out in ("Mingle", "Gossip", "Heart", "Control"):
        assert left_out not in steps
    assert "tasks:Tasks" in steps and "connection:Connection" in steps


def test_parse_task_request() -> None:
    req = parse_task_request(
        "http://h/f",
        "u1",
        "application/pdf",
        {"sha256": "A" * 64, "size": 5, "filename": "a.pdf", "weird": 1},
    )
    assert req.user_id == "u1" and req.sha256 == "a" * 64 and req.size == 5
    assert req.ignored_options == ("weird",)
    for bad in [
        (5, "u1"),
        ("", "u1"),
        ("x" * 9000, "u1"),
        ("u", "a*"),
        ("u", "u1", 7),
        ("u", "u1", None, "not a dict"),
        ("u", "u1", None, {"size": "big"}),
        ("u", "u1", None, {"sha256": "zz"}),
        ("u", "u1", None, {"size": -1}),
    ]:
        with pytest.raises(MalformedTask):
            parse_task_request(*bad, require_user=True)


def test_bind_arguments() -> None:
    params = ("file_url", "user_id", "content_type", "task_options")
    assert bind_arguments(params, ("u",), {"user_id": "a"}) == ("u", "a")
    assert bind_arguments(params, (), {"task_options": {}, "file_url": "u"}) == ("u", None, None, {})
    with pytest.raises(MalformedTask, match="too many"):
        bind_arguments(params, (1, 2, 3, 4, 5), {})
    with pytest.raises(MalformedTask, match="unexpected"):
        bind_arguments(params, (), {"evil": 1})
    with pytest.raises(MalformedTask, match="twice"):
        bind_arguments(params, ("u",), {"file_url": "v"})


def test_worker_command_keeps_the_key_out_of_argv() -> None:
    plan = WorkerPlan(
        user_id="u1",
        hub_url="http://hub",
        broker_url="redis://x:y@h:1/0",
        api_key=KEY,
        platform="linux",
        python="/py",
    )
    cmd = build_worker_command(plan, {"MORAG_API_KEY": "stale", "PATH": "/bin", "REDIS_URL": "r"})
    assert KEY not in " ".join(cmd.argv) and KEY not in repr(cmd) and KEY not in repr(plan)
    assert cmd.env["MORAG_API_KEY"] == KEY and cmd.env["REDIS_URL"] == "redis://h:1/0"
    assert cmd.argv[:3] == ["/py", "-m", "morag_worker.core.execution.worker_main"]
    stock = cmd.stock_celery_argv()
    assert stock[:6] == ["/py", "-m", "celery", "-A", "morag_worker.core.worker", "worker"]
    assert stock[6:] == cmd.argv[3:]
    assert cmd.argv[cmd.argv.index("-Q") + 1] == "gpu-tasks-u1,cpu-tasks-u1"
    assert cmd.argv[cmd.argv.index("-P") + 1] == "prefork" and not cmd.uses_control_pipe
    for flag in ("--without-gossip", "--without-mingle", "--without-heartbeat"):
        assert flag in cmd.argv


def test_worker_command_on_windows_uses_threads_wrapper() -> None:
    plan = WorkerPlan(
        user_id="u1",
        hub_url="http://hub",
        broker_url="redis://h:1/0",
        api_key=KEY,
        platform="win32",
        python="C:/py.exe",
        cuda_visible_devices="1",
    )
    cmd = build_worker_command(plan, {})
    assert cmd.argv[:3] == ["C:/py.exe", "-m", "morag_worker.core.execution.windows_wrapper"]
    assert cmd.pool == "threads" and cmd.uses_control_pipe
    assert cmd.env["CUDA_VISIBLE_DEVICES"] == "1"


def test_read_task_is_the_one_check_of_a_messages_arguments() -> None:
    from morag_worker.core.execution.task_args import read_task

    remote = ("file_url", "user_id", "content_type", "task_options")
    request = read_task(
        remote,
        ("http://hub/f/1", "u1"),
        {"task_options": {"filename": "a.pdf"}},
        remote=True,
        own_user_id="u1",
    )
    assert (request.source, request.user_id, request.filename) == ("http://hub/f/1", "u1", "a.pdf")
    with pytest.raises(MalformedTask, match=r"missing arguments: expected \(file_url, user_id"):
        read_task(remote, ("http://hub/f/1",), {}, remote=True, own_user_id="u1")
    with pytest.raises(MalformedTask, match="serves user 'u1', not 'u2'"):
        read_task(remote, ("http://hub/f/1", "u2"), {}, remote=True, own_user_id="u1")
    with pytest.raises(MalformedTask, match="missing argument: file_path"):
        read_task(("file_path", "content_type", "task_options"), (), {}, remote=False, own_user_id=None)


def test_unknown_option_names_are_counted_but_only_a_few_short_ones_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import structlog

    from morag_worker.core.execution.pipeline import Pipeline
    from morag_worker.core.execution.progress_reporter import ProgressReporter
    from morag_worker.core.execution.task_args import MAX_IGNORED_LISTED, MAX_IGNORED_NAME
    from morag_worker.core.processing import ProcessorRegistry

    flood = {f"option-{i:06d}-" + "x" * 200: i for i in range(300_000)}
    req = parse_task_request(str(tmp_path / "in.txt"), None, "text/plain", {"filename": "in.txt", **flood})
    assert req.ignored_count == 300_000 and len(req.ignored_options) == MAX_IGNORED_LISTED
    assert all(len(name) <= MAX_IGNORED_NAME for name in req.ignored_options)
    assert req.ignored_options[0].startswith("option-000000-")
    (tmp_path / "in.txt").write_text("hello\n")
    pipeline = Pipeline(
        downloader_factory=lambda: None,  # type: ignore[arg-type,return-value]
        registry=ProcessorRegistry.default(),
        temp_root=tmp_path / "work",
    )
    with structlog.testing.capture_logs() as logs:
        result = pipeline.run_file(ProgressReporter("t1", []), req, remote=False, url_task=False)
    assert result.success, result.error_message
    assert result.metadata["ignored_options"] == list(req.ignored_options)
    assert result.metadata["ignored_options_count"] == 300_000
    [line] = [e for e in logs if e["event"] == "task.options_ignored"]
    assert line["count"] == 300_000 and len(line["options"]) == MAX_IGNORED_LISTED
    assert len(json.dumps(line)) < 4096 and len(json.dumps(result.metadata)) < 4096
