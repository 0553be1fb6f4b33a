"""The grader's child processes: each loads one submission and runs the stages' probes on it.

vitlab.grading.process starts one *zygote* per grading process (`zygote(socket_fd)` in a
``python -I`` process), which imports torch and the checks once (seconds) and then forks a
child per submission on request (milliseconds). The request carries the child's pipes
(SCM_RIGHTS); the zygote reaps its children and reports how each ended. The zygote never runs student code. A forked child starts a session of its own, dies with
the zygote, moves into its fresh work folder holding a copy of the submission, locks itself down
(vitlab.grading.sandbox) and only then runs student code. It talks to the parent in plain data
only (vitlab.grading.wire):

    parent -> child   {"event": "setup", ...}, then {"event": "stage", "stage", "inputs"}..., "quit"
    child -> parent   "ready", {"event": "cell", "index"} before each cell,
                      {"event": "loaded", "failures", "symbols", "tampered"},
                      {"event": "stage", "status": "ok" | "not_implemented" | "error", ...}

It never reports a verdict: the parent judges the probe's data itself.
"""
from __future__ import annotations

import functools
import json
import os
import select
import signal
import socket
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Any

MAX_TAMPERED_NAMES = 20


class TorchGuard:
    """A snapshot of the functions in torch, numpy and vitlab; finds and undoes replacements.

    `torch.allclose = lambda *a, **k: True` at import time is put back before any probe runs;
    a replacement made while a probe runs makes that stage's data untrusted.
    """

    PACKAGES = ("torch", "numpy", "vitlab")
    _TRACKED_TYPES = (property, staticmethod, classmethod, types.MemberDescriptorType,
                      types.GetSetDescriptorType)

    def __init__(self) -> None:
        import torch.nn.modules.module as module_module

        self._module_module = module_module
        self._namespaces: list[tuple[str, Any, dict[str, Any]]] = []
        for name, module in list(sys.modules.items()):
            if module is None or name.split(".")[0] not in self.PACKAGES:
                continue
            namespace = getattr(module, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            self._namespaces.append((name, None, self._tracked(namespace)))
            for value in list(namespace.values()):
                if issubclass(type(value), type):  # not isinstance: no __class__ lookups
                    class_dict = type.__dict__["__dict__"].__get__(value)
                    self._namespaces.append((f"{name}.{value.__name__}", value,
                                             self._tracked(class_dict)))
        self._namespaces = [(name, owner, snapshot) for name, owner, snapshot in self._namespaces
                            if snapshot]
        self._modules = {name: sys.modules[name] for name, owner, _ in self._namespaces
                         if owner is None}
        self._library_dirs = tuple(
            os.path.dirname(os.path.realpath(sys.modules[package].__file__)) + os.sep
            for package in self.PACKAGES)
        self._global_hooks = [name for name, value in vars(module_module).items()
                              if name.startswith("_global_") and isinstance(value, dict)
                              and not value]

    def _tracked(self, namespace: Any) -> dict[str, Any]:
        return {key: value for key, value in namespace.items() if self._is_function_like(value)}

    def _is_function_like(self, value: Any) -> bool:
        """Functions, classes, descriptors and modules: what a patch puts in place. Decided from
        the type alone, so that no attribute of a lazy object is touched."""
        kind = type(value)
        return (callable(value) or kind in self._TRACKED_TYPES
                or issubclass(kind, types.ModuleType))

    def restore(self) -> list[str]:
        """Put back every function that code from outside torch, numpy and vitlab replaced (torch
        replaces a few of its own lazily: those stay), reset torch's global state, and name what
        was put back."""
        import torch

        changed = []
        for name, owner, snapshot in self._namespaces:
            current = (self._modules[name].__dict__ if owner is None
                       else type.__dict__["__dict__"].__get__(owner))
            for key in snapshot.keys() | current.keys():  # new keys can shadow a base class's
                original, value = snapshot.get(key, _MISSING), current.get(key, _MISSING)
                if value is original:
                    continue
                if original is _MISSING and not self._is_function_like(value):
                    continue  # new plain data, e.g. a cache: not a function put in place
                if value is not _MISSING and self._library_made(value):
                    snapshot[key] = value
                    continue
                changed.append(f"{name}.{key}")
                self._put_back(current, owner, key, original)
        for name in self._global_hooks:
            hooks = getattr(self._module_module, name)
            if hooks:
                changed.append(f"torch.nn.modules.module.{name}")
                hooks.clear()
        while torch._C._len_torch_function_stack() > 0:
            changed.append("a torch function mode")
            torch._C._pop_torch_function_stack()
        while torch._C._len_torch_dispatch_stack() > 0:
            changed.append("a torch dispatch mode")
            torch._C._pop_torch_dispatch_stack()
        torch.set_default_dtype(torch.float32)
        torch.set_grad_enabled(True)
        return list(dict.fromkeys(changed))[:MAX_TAMPERED_NAMES]

    @staticmethod
    def _put_back(namespace: dict, owner: Any, key: str, original: Any) -> None:
        if owner is None and original is _MISSING:
            del namespace[key]
        elif owner is None:
            namespace[key] = original
        elif original is _MISSING:
            type.__delattr__(owner, key)
        else:
            type.__setattr__(owner, key, original)

    def _library_made(self, value: Any) -> bool:
        """Whether `value` was made by torch, numpy or vitlab themselves: a Python function whose
        code lives in their files, or one of their classes or modules. A built-in function put in
        another's place (e.g. `torch.testing.assert_close = print`) is not. Only types and
        slots are read, never an attribute that a lazy object could compute."""
        kind = type(value)
        if issubclass(kind, types.ModuleType):
            name = object.__getattribute__(value, "__dict__").get("__name__", "")
            return str(name).split(".")[0] in self.PACKAGES
        if issubclass(kind, type):
            return str(type.__dict__["__module__"].__get__(value)).split(".")[0] in self.PACKAGES
        if kind is property:
            value = value.fget
        elif kind in (staticmethod, classmethod, types.MethodType):
            value = value.__func__
        elif kind is functools.partial:
            value = value.func
        return (type(value) is types.FunctionType
                and os.path.realpath(value.__code__.co_filename).startswith(self._library_dirs))


_MISSING = object()


def _send(fd: int, message: dict) -> None:
    from vitlab.grading import wire

    wire.send(fd, message)


def _describe_stage_error(error: BaseException, student_files: dict[str, str],
                          memory_bytes: int) -> str:
    from vitlab.submission import describe_exception

    text = describe_exception(error, student_files)
    if isinstance(error, MemoryError) or "not enough memory" in text:
        text += f" (the grader allows {memory_bytes // 2**20} MiB of memory beyond torch's own)"
    return text


def serve(ctl_in: int, ctl_out: int, guard: TorchGuard) -> None:
    """Lock down, load the submission, then answer stage requests until told to quit."""
    import torch
    from vitlab.checks import STAGES
    from vitlab.grading import sandbox, wire
    from vitlab.submission import read_submission, run_cells

    setup = wire.receive(ctl_in)
    torch.set_num_threads(setup["threads"])
    workdir = Path(setup["workdir"])
    memory_bytes = setup["memory_bytes"]
    baseline = sandbox.data_bytes_in_use()
    sandbox.limit_resources(baseline + memory_bytes)
    seccomp = sandbox.forbid_new_processes()
    copy = Path(setup["submission"])
    own_package = copy.name if (copy / "__init__.py").is_file() else ""
    if own_package:  # a package's `from <package>.x import y` must find this copy
        sys.path.insert(0, str(copy.parent))
    sandbox.install_audit_hook(sandbox.PathRules(workdir, setup["deny"], setup["allow"]),
                               own_package)
    _send(ctl_out, {"event": "ready", "seccomp": seccomp})

    cells, _ = read_submission(copy)
    namespace, failures = run_cells(
        cells, skip=setup["skip"],
        before_cell=lambda position: _send(ctl_out, {"event": "cell", "index": position}))
    contract = {symbol for stage in STAGES.values()
                for symbol in stage.symbols + stage.optional_symbols}
    _send(ctl_out, {
        "event": "loaded",
        "failures": [{"index": f.position, "message": f.message,
                      "not_implemented": f.not_implemented} for f in failures],
        "symbols": sorted(name for name in contract if name in namespace),
        "tampered": guard.restore(),
    })

    student_files = {cell.filename: cell.where for cell in cells}
    while True:
        request = wire.receive(ctl_in)
        if request.get("event") != "stage":
            return
        stage = STAGES[request["stage"]]
        symbols = {name: namespace[name] for name in stage.symbols + stage.optional_symbols
                   if name in namespace}
        started = time.perf_counter()
        try:
            reply = {"status": "ok", "data": stage.probe(symbols, request["inputs"])}
        except NotImplementedError as error:
            reply = {"status": "not_implemented",
                     "message": _describe_stage_error(error, student_files, memory_bytes)}
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # SystemExit too: sys.exit() in a forward fails one stage
            reply = {"status": "error",
                     "message": _describe_stage_error(error, student_files, memory_bytes)}
        reply.update(event="stage", seconds=time.perf_counter() - started,
                     tampered=guard.restore(),
                     memory_used=(sandbox.data_bytes_in_use() - baseline) / memory_bytes)
        try:
            _send(ctl_out, reply)
        except wire.WireError as error:
            _send(ctl_out, {**reply, "status": "error", "data": None,
                            "message": f"the probe's data cannot be sent back: {error}"})


# --- the zygote --------------------------------------------------------------------------------

def _run_forked(workdir: str, fds: list[int], guard: TorchGuard) -> None:
    """In a freshly forked child: become a session of its own, with its own pipes, then serve."""
    from vitlab.grading import sandbox

    ctl_in, ctl_out, out, err = fds
    status = 0
    try:
        os.setsid()
        sandbox.die_with_parent()
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        os.chdir(workdir)
        os.environ["TMPDIR"] = os.path.join(workdir, ".tmp")
        tempfile.tempdir = None
        serve(ctl_in, ctl_out, guard)
    except BaseException:  # the parent reports the exit; the traceback goes to its stderr tail
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # no interpreter teardown: student threads and atexit hooks do not run


def zygote(sock_fd: int) -> None:
    """Preload torch and the checks, then fork a child per request until the parent goes away.

    Requests (one datagram each, JSON): {"op": "spawn", "workdir"} with four fds (the child's
    control in/out, stdout, stderr) -> {"pid"}; {"op": "status", "pid"} -> {"status": the exit
    code, minus the signal number, or None while it runs}; {"op": "kill", "pid"} -> the same,
    after SIGKILL to its process group.
    """
    # Preloaded, so that every child gets them for free; torchvision also needs ctypes (which
    # the sandbox refuses) to load its operators, and the lesson notebooks import all of these.
    import matplotlib.pyplot  # noqa: F401
    import numpy.testing  # noqa: F401  (imported lazily otherwise: the guard must see it)
    import torch
    import torchvision  # noqa: F401
    import vitlab.checks  # noqa: F401
    import vitlab.data  # noqa: F401
    import vitlab.grading.sandbox  # noqa: F401
    import vitlab.grading.wire  # noqa: F401
    import vitlab.submission  # noqa: F401

    # An optimizer's first step imports torch._dynamo (seconds): do it once, here.
    weight = torch.nn.Parameter(torch.zeros(1))
    weight.sum().backward()
    torch.optim.SGD([weight], lr=0.1).step()
    guard = TorchGuard()
    sock = socket.socket(fileno=sock_fd)
    sock.send(json.dumps({"ready": True}).encode())
    ended: dict[int, int] = {}
    while True:
        readable, _, _ = select.select([sock], [], [], 0.2)
        _reap(ended)
        if not readable:
            continue
        data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
        if not data:
            return  # the parent is gone
        request = json.loads(data)
        if request["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                sock.close()
                _run_forked(request["workdir"], fds, guard)
            for fd in fds:
                os.close(fd)
            reply = {"pid": pid}
        elif request["op"] == "kill":
            _reap(ended)
            if request["pid"] not in ended:  # not reaped yet, so the pid is still that child's
                for kill in (os.killpg, os.kill):
                    try:
                        kill(request["pid"], signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                _, status = os.waitpid(request["pid"], 0)
                ended[request["pid"]] = os.waitstatus_to_exitcode(status)
            reply = {"status": ended.get(request["pid"])}
        else:
            _reap(ended)
            reply = {"status": ended.get(request["pid"])}
        sock.send(json.dumps(reply).encode())


def _reap(ended: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        ended[pid] = os.waitstatus_to_exitcode(status)
