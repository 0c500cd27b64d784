"""Inside the Celery worker child: per-process context, the task pipeline, presence, liveness, transports.

What runs for each task (validate, download, convert, report) and what keeps a contributor's worker
inside its own namespace. The Windows threads-pool wrapper lives here too.
"""
