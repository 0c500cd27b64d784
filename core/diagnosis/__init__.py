"""Finding out what is wrong on a contributor's machine: the self-test and the diagnostics bundle.

``run_self_test`` checks the keychain, the hub, the broker login, a tiny conversion, a tiny
transcription and the GPU, each with an outcome and advice for a person; ``write_bundle`` puts
versions, settings, the last logs, self-test results and GPU facts in a zip with every secret
removed. Qt-free; everything here blocks and runs on the caller's thread.
"""
