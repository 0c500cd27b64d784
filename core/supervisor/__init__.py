"""The contributor's worker supervisor (DESIGN §5): prepares, starts, watches and stops the Celery child.

Both front ends (tray and ``--no-gui``) use ``Supervisor``; ``events`` is the vocabulary they hear.
"""

from morag_worker.core.supervisor.options import SupervisorOptions
from morag_worker.core.supervisor.supervisor import Supervisor

__all__ = ["Supervisor", "SupervisorOptions"]
