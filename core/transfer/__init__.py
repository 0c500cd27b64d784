"""Downloading a task's input (DESIGN §6): the downloader, its per-download state, URL policy, scratch space.

Imports no Celery: a download knows nothing about the task it serves.
"""
