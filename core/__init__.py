"""Qt-free core of MoRAG Worker: keys, queues, Celery tasks, transfer, processing, hub, CLI.

Nothing in this package imports PySide6, and importing any module has no side effects (no
directories created, no network, no Redis connection).
"""
