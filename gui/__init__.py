"""The PySide6 tray app: the only package that imports Qt.

It reaches the worker only through ``controller.WorkerController``, which wraps the core
supervisor; everything blocking runs through ``background.BackgroundRunner``. Every object here
lives on the GUI thread unless its docstring says otherwise.
"""
