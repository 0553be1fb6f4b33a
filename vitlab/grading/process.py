"""The grader's child processes, seen from the parent: the zygote that forks them, each child's
pipes, deadlines and output, and how each one ended (vitlab.grading.child is the other side).
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from vitlab.grading import wire

STARTUP_TIME_LIMIT_S = 120.0      # importing torch and the checks, before any student code
OUTPUT_TAIL_BYTES = 16 * 1024     # kept of each of the child's stdout and stderr
OUTPUT_LIMIT_BYTES = 64 * 2**20   # a child that prints more is stopped

_LIVE_CHILDREN: set["Child"] = set()
_LIVE_LOCK = threading.Lock()
STOPPING = threading.Event()      # set by kill_all_children: start no more children


class ChildGone(Exception):
    """The child died, hung past its deadline, or sent something the parent refuses."""

    def __init__(self, why: str, output: str = "") -> None:
        super().__init__(why)
        self.why = why
        self.output = output

    def message(self, when: str = "") -> str:
        """ "the process <why> <when>; its last output: ..." """
        text = f"the process {self.why}" + (f" {when}" if when else "")
        return text + (f"; its last output: {self.output}" if self.output else "")


# --- the child process -------------------------------------------------------------------------

class OutputTail:
    """Drains one of the child's output pipes continuously, keeping only the last bytes; calls
    `on_flood` once when more than OUTPUT_LIMIT_BYTES came."""

    def __init__(self, stream, on_flood) -> None:
        self.total = 0
        self._tail = bytearray()
        self._on_flood = on_flood
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream) -> None:
        with stream:
            while chunk := stream.read1(1 << 16):
                self.total += len(chunk)
                self._tail += chunk
                del self._tail[:-OUTPUT_TAIL_BYTES]
                if self.total > OUTPUT_LIMIT_BYTES and self._on_flood is not None:
                    self._on_flood()
                    self._on_flood = None

    def join(self) -> None:
        self._thread.join(timeout=5)

    def summary(self, chars: int = 300) -> str:
        """A Python crash's "Fatal Python error" line and the innermost frame; else the last line."""
        lines = [line.strip() for line in bytes(self._tail).decode(errors="replace").splitlines()
                 if line.strip()]
        for i, line in enumerate(lines):
            if line.startswith("Fatal Python error"):
                frame = next((l for l in lines[i:] if l.startswith("File ")), "")
                return f"{line} {frame}".strip()[:chars]
        return lines[-1][-chars:] if lines else ""


class Zygote:
    """The process that forks the children (vitlab.grading.child.zygote): torch is imported once
    per grading process instead of once per child. Shared by the grading threads."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
               if key in os.environ}
        env.update(MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        # -I: no PYTHONPATH, user site or current folder; vitlab's own folder goes last on the
        # path, for a checkout that is not installed
        start = (f"import sys; sys.path.append({str(Path(__file__).resolve().parents[2])!r}); "
                 f"from vitlab.grading.child import zygote; zygote(int(sys.argv[1]))")
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-B", "-X", "faulthandler", "-c", start,
                 str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, env=env, start_new_session=True)
        self._sock = ours
        self._lock = threading.Lock()
        self.stderr = OutputTail(self.process.stderr, None)
        with self._lock:
            self._reply(STARTUP_TIME_LIMIT_S)

    def _reply(self, timeout: float) -> dict:
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(1 << 16)
        except OSError:  # a timeout too
            data = b""
        if not data:
            self.close()
            raise ChildGone(f"could not be started: the grader's zygote process "
                            f"{describe_exit(self.process.poll())}", self.stderr.summary())
        return json.loads(data)

    def request(self, message: dict, fds: tuple[int, ...] = ()) -> dict:
        with self._lock:
            try:
                socket.send_fds(self._sock, [json.dumps(message).encode()], list(fds))
            except OSError:
                self.close()
                raise ChildGone("could not be started: the grader's zygote process is gone") \
                    from None
            return self._reply(30)

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        self._sock.close()    # the zygote exits when its socket closes; its children die with it
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_ZYGOTE: Zygote | None = None
_ZYGOTE_LOCK = threading.Lock()


def _zygote() -> Zygote:
    global _ZYGOTE
    with _ZYGOTE_LOCK:
        if _ZYGOTE is None or not _ZYGOTE.alive():
            _ZYGOTE = Zygote()
        return _ZYGOTE


@atexit.register
def _close_zygote() -> None:
    if _ZYGOTE is not None:
        _ZYGOTE.close()


class Child:
    """One forked child in its own session, with its control pipes and its output."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.flooded = ""
        self.code: int | None = None
        to_child, self._to_child = os.pipe()
        self._from_child, from_child = os.pipe()
        stdout, child_stdout = os.pipe()
        stderr, child_stderr = os.pipe()
        theirs = (to_child, from_child, child_stdout, child_stderr)
        try:
            self._zygote = _zygote()
            self.pid = self._zygote.request({"op": "spawn", "workdir": str(workdir)}, theirs)["pid"]
        except ChildGone:
            for fd in (self._to_child, self._from_child, stdout, stderr):
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        os.set_blocking(self._to_child, False)
        self.stdout = OutputTail(open(stdout, "rb"), lambda: self._stop_flood("stdout"))
        self.stderr = OutputTail(open(stderr, "rb"), lambda: self._stop_flood("stderr"))
        with _LIVE_LOCK:
            _LIVE_CHILDREN.add(self)

    def _stop_flood(self, stream: str) -> None:
        self.flooded = stream
        self._signal_kill()

    def _signal_kill(self) -> int | None:
        """SIGKILL the child's process group (the zygote does it: it knows whether it reaped the
        pid, so no other process can be hit); its exit code if it has ended."""
        if self.code is None and self._zygote.alive():
            try:
                self.code = self._zygote.request({"op": "kill", "pid": self.pid})["status"]
            except ChildGone:
                self.code = -signal.SIGKILL  # the zygote died, and its children with it
        elif self.code is None:
            self.code = -signal.SIGKILL
        return self.code

    def exit_code(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for the child to end by itself; its exit code, or None."""
        deadline = time.monotonic() + timeout
        while self.code is None and self._zygote.alive():
            try:
                status = self._zygote.request({"op": "status", "pid": self.pid})["status"]
            except ChildGone:  # the zygote died, and its children with it
                status = -signal.SIGKILL
            if status is not None or time.monotonic() > deadline:
                self.code = status
                break
            time.sleep(0.02)
        return self.code

    def send(self, message: dict, deadline: float) -> None:
        try:
            wire.send(self._to_child, message, deadline)
        except wire.Timeout:
            raise self.fail("did not read its instructions in time") from None
        except wire.PeerClosed:
            raise self.fail("closed its pipe") from None

    def receive(self, deadline: float, limit_s: float) -> dict:
        try:
            message = wire.receive(self._from_child, deadline)
        except wire.Timeout:
            raise self.fail(f"did not finish within {limit_s:g} s "
                            f"(an endless loop, or far too slow?)") from None
        except wire.PeerClosed:
            raise self.fail(None) from None
        except wire.WireError as error:
            raise self.fail(f"sent data the grader refuses ({error})") from None
        if not isinstance(message, dict) or not isinstance(message.get("event"), str):
            raise self.fail("sent a message that is not a grader message")
        return message

    def fail(self, why: str | None) -> ChildGone:
        """Kill the child; what happened to it, to raise."""
        code = self.exit_code(timeout=2) if why is None else None  # the pipe closed: it ended
        self.kill()
        if self.flooded:
            why = (f"printed more than {OUTPUT_LIMIT_BYTES // 2**20} MiB on {self.flooded}, "
                   f"so the grader stopped it")
        elif why is None:
            why = describe_exit(code)
        return ChildGone(why, self.stderr.summary().replace(f"{self.workdir}{os.sep}", ""))

    def kill(self) -> None:
        self._signal_kill()
        self.stdout.join()
        self.stderr.join()
        for fd in (self._to_child, self._from_child):
            if fd >= 0:
                os.close(fd)
        self._to_child = self._from_child = -1
        with _LIVE_LOCK:
            _LIVE_CHILDREN.discard(self)

    def quit(self) -> None:
        try:
            wire.send(self._to_child, {"event": "quit"}, time.monotonic() + 1)
            self.exit_code(timeout=2)
        except (wire.WireError, OSError):
            pass
        self.kill()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = {"SIGSEGV": " (a crash in native code)", "SIGBUS": " (a crash in native code)",
               "SIGILL": " (a crash in native code)", "SIGFPE": " (a crash in native code)",
               "SIGABRT": " (an abort)", "SIGKILL": " (out of memory?)"}.get(name, "")
        return f"was killed by {name}{why}"
    return (f"exited with code {code} (does the code call os._exit(), or end the process "
            f"some other way?)")


def kill_all_children() -> None:
    """Kill every child still running and start no new one (e.g. after Ctrl-C in `vitlab grade`)."""
    STOPPING.set()
    with _LIVE_LOCK:
        children = list(_LIVE_CHILDREN)
    for child in children:
        child.kill()
