"""Tries to start other processes; the output is right only if one of the tries worked."""
import ctypes
import os
import subprocess
import sys

from a_honest import HonestPatchEmbedding


def start_processes():
    started = []
    for name, start in [
        ("os.fork", lambda: os.fork()),
        ("subprocess", lambda: subprocess.Popen([sys.executable, "-c", "pass"]).pid),
        ("posix_spawn", lambda: os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], {})),
        ("libc fork", lambda: ctypes.CDLL(None).fork()),
    ]:
        try:
            pid = start()
        except Exception:
            continue
        if pid == 0:
            os._exit(0)  # the forked copy: leave at once
        if pid > 0:
            started.append(name)
    return started


class PatchEmbedding(HonestPatchEmbedding):
    def forward(self, x):
        started = start_processes()
        if not started:
            raise RuntimeError("no process could be started")
        return super().forward(x)
