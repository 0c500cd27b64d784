"""Run ``celery worker`` for our app without the rest of Celery's command line: the child's entry.

``python -m morag_worker.core.execution.worker_main -Q ... -P prefork ...`` takes exactly the options
of ``celery -A morag_worker.core.worker worker`` and runs Celery's own ``worker`` command with them.
It skips the ``celery`` umbrella group, whose import pulls in every sub-command (``amqp`` brings
``click_repl`` and ``prompt_toolkit``, ``shell``, ``multi``...): about 100 ms of a ~500 ms start to
ready on the 2-core development machine, for nothing a worker uses. Runs on the main thread of the
worker child (and, on Windows, inside the ``winworker`` wrapper).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main", "run_worker"]

PROG_NAME = "celery worker"


def run_worker(args: Sequence[str]) -> int:
    """Celery's ``worker`` command with ``args`` (its options, without ``worker``); the exit status.

    A usage error is printed the way ``celery`` prints it, with status 2.
    """
    from celery import maybe_patch_concurrency

    maybe_patch_concurrency([PROG_NAME, *args])  # -P eventlet/gevent patch before anything else
    import click
    from celery.bin.base import CLIContext
    from celery.bin.worker import worker

    from morag_worker.core.worker import celery_app

    # What the ``celery`` group's callback does for ``-A``: the app, and its extra worker options.
    context = CLIContext(app=celery_app, no_color=False, workdir=None, quiet=False)
    for option in celery_app.user_options.get("worker", ()):
        if option not in worker.params:
            worker.params.append(option)
    try:
        code = worker.main(
            args=list(args),
            prog_name=PROG_NAME,
            obj=context,
            auto_envvar_prefix="CELERY_WORKER",  # as under the ``celery`` group (CELERY + _WORKER)
            standalone_mode=False,
        )
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        return 1
    return code if isinstance(code, int) else 0


def main() -> int:
    return run_worker(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
