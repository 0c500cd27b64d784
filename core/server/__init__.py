"""The server side of the queue architecture: Redis ACL users, the stranded-task watchdog, the HTTP hub.

Runs with admin rights on the MoRAG server; imports nothing from the contributor's supervisor or GUI.
API keys themselves live in ``morag_worker.core.auth``, a path the wire contract fixes.
"""
