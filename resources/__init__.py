"""Desktop metadata and artwork: tray icons per state, the app icon and the ``.desktop`` entry.

A package only so that ``importlib.resources.files("morag_worker.resources")`` finds these files
the same way from a checkout, a wheel and a PyInstaller bundle. No code lives here.
"""
