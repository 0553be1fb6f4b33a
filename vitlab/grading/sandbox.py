"""What student code may not do in the grader's child process, set up before any of it runs.

Three layers, each installed by the child on itself (vitlab.grading.child):
- resource limits: memory (RLIMIT_DATA: every private writable mapping, so tensors count while
  torch's shared libraries do not), file size, no core dumps;
- a seccomp filter (Linux, x86_64 and aarch64): no new processes (fork, vfork, exec, clone
  without CLONE_THREAD), no signals to other processes, no ptrace or reading other processes'
  memory, no chroot, mount or namespaces. It holds even for code that reaches the C library
  directly;
- an audit hook (`sys.addaudithook`, which cannot be removed): no `import solutions`/`autograde`,
  no reading the hidden folders (the reference, the grader's tests, other submissions, other
  children's work folders, other processes' /proc entries), no writing or deleting outside the
  child's work folder, no ctypes, sockets, subprocesses, kill or setrlimit.
The parent decides every verdict from plain data anyway; these layers keep the child from
reading what it must not see and from harming the machine or the grader.
"""
from __future__ import annotations

import ctypes
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any, Iterable

BLOCKED_IMPORTS = frozenset({"solutions", "autograde"})
WORKDIR_PREFIX = "vitlab-grade-"        # every child's work folder; no child reads another's
HIDDEN_FOLDER = "solutions"  # the reference answer, wherever a vitlab checkout keeps it
MAX_FILE_BYTES = 256 * 2**20


class SandboxError(PermissionError):
    """An operation the grader does not allow in student code."""


# --- resource limits ----------------------------------------------------------------------------

def limit_resources(memory_bytes: int) -> None:
    """Cap memory (data segment + anonymous mappings), written file size and core dumps."""
    for limit, value in ((resource.RLIMIT_DATA, memory_bytes),
                         (resource.RLIMIT_FSIZE, MAX_FILE_BYTES),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))


def data_bytes_in_use() -> int:
    """VmData of this process: what RLIMIT_DATA counts."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    return 0


def die_with_parent() -> None:
    """Get SIGKILL when the parent (the zygote) dies, so that no child outlives the grader."""
    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL


# --- seccomp ------------------------------------------------------------------------------------

class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _EPERM, _ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
_CLONE_THREAD = 0x00010000
_X32_SYSCALL_BIT = 0x40000000

# audit arch, seccomp syscall, then the syscalls the filter looks at (None: not on that arch)
_ARCHES = {
    "x86_64": dict(audit_arch=0xC000003E, seccomp=317, clone=56, clone3=435, kill=62, tkill=200,
                   tgkill=234, denied=(57, 58, 59, 322, 101, 310, 311, 424,
                                       161, 165, 166, 155, 272, 308)),
    # fork, vfork, execve, execveat, ptrace, process_vm_readv/writev, pidfd_send_signal,
    # and what could move the file system under the audit hook's path rules: chroot, mount,
    # umount2, pivot_root, unshare, setns
    "aarch64": dict(audit_arch=0xC00000B7, seccomp=277, clone=220, clone3=435, kill=129, tkill=130,
                    tgkill=131, denied=(221, 281, 117, 270, 271, 424, 51, 40, 39, 41, 97, 268)),
    # the same (aarch64 has no fork or vfork syscall)
}


def _assemble(program: list) -> list[tuple[int, int, int, int]]:
    """Classic BPF with named forward jumps: strings are labels, jt/jf may name one."""
    positions, count = {}, 0
    for item in program:
        if isinstance(item, str):
            positions[item] = count
        else:
            count += 1
    out = []
    for item in program:
        if isinstance(item, str):
            continue
        code, jt, jf, k = item
        here = len(out)
        jt = positions[jt] - here - 1 if isinstance(jt, str) else jt
        jf = positions[jf] - here - 1 if isinstance(jf, str) else jf
        out.append((code, jt, jf, k))
    return out


def _seccomp_program(arch: dict, pid: int) -> list[tuple[int, int, int, int]]:
    program: list[Any] = [
        (_LD_W_ABS, 0, 0, 4), (_JEQ, 0, "deny", arch["audit_arch"]),      # seccomp_data.arch
        (_LD_W_ABS, 0, 0, 0), (_JGE, "deny", 0, _X32_SYSCALL_BIT),        # seccomp_data.nr
        (_JEQ, "no_clone3", 0, arch["clone3"]),    # its flags sit in memory: glibc falls back to clone
        (_JEQ, "clone", 0, arch["clone"]),
        (_JEQ, "kill", 0, arch["kill"]),
        (_JEQ, "kill", 0, arch["tgkill"]),
        (_JEQ, "deny", 0, arch["tkill"]),
    ]
    program += [(_JEQ, "deny", 0, number) for number in arch["denied"]]
    program += [
        (_RET, 0, 0, _ALLOW),
        "clone", (_LD_W_ABS, 0, 0, 16), (_JSET, "allow", "deny", _CLONE_THREAD),  # args[0]: flags
        "kill", (_LD_W_ABS, 0, 0, 16), (_JEQ, "allow", 0, pid), (_JEQ, "allow", "deny", 0),
        "allow", (_RET, 0, 0, _ALLOW),
        "deny", (_RET, 0, 0, _EPERM),
        "no_clone3", (_RET, 0, 0, _ENOSYS),
    ]
    return _assemble(program)


def forbid_new_processes() -> str:
    """Install the seccomp filter on every thread of this process; say what was done."""
    arch = _ARCHES.get(platform.machine())
    if arch is None or not sys.platform.startswith("linux"):
        return f"no seccomp filter on {sys.platform}/{platform.machine()} (the audit hook still applies)"
    program = _seccomp_program(arch, os.getpid())
    filters = (_SockFilter * len(program))(*(_SockFilter(*instruction) for instruction in program))
    fprog = _SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.prctl(38, 1, 0, 0, 0) != 0:                       # PR_SET_NO_NEW_PRIVS
        return f"no seccomp filter: prctl failed with errno {ctypes.get_errno()}"
    result = libc.syscall(ctypes.c_long(arch["seccomp"]), ctypes.c_long(1),   # SET_MODE_FILTER
                          ctypes.c_long(1), ctypes.byref(fprog))              # FLAG_TSYNC
    if result != 0:
        return f"no seccomp filter: seccomp() failed with errno {ctypes.get_errno()}"
    return "seccomp filter installed"


# --- audit hook ---------------------------------------------------------------------------------

_PROCESS_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
    "subprocess.Popen", "pty.spawn", "os.killpg", "resource.setrlimit", "resource.prlimit",
    "socket.__new__", "os.startfile",
})
_LISTING_EVENTS = frozenset({"os.listdir", "os.scandir"})
_CHANGING_EVENTS = frozenset({
    "os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.link", "os.symlink", "os.truncate",
    "os.chmod", "os.chown", "os.utime", "os.chdir", "os.chflags", "os.lchflags", "os.setxattr",
    "os.removexattr", "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
    "shutil.copytree", "shutil.move", "shutil.chown",
})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class PathRules:
    """Which paths the child may read and write. The longest matching root decides."""

    def __init__(self, workdir: str | Path, deny: Iterable[str | Path], allow: Iterable[str | Path]):
        self.workdir = os.path.realpath(workdir)
        self.pid = str(os.getpid())
        roots = [(os.path.realpath(p), False) for p in deny]
        roots += [(os.path.realpath(p), True) for p in allow]
        roots.append((self.workdir, True))
        self.roots = sorted(roots, key=lambda item: len(item[0]), reverse=True)

    def readable(self, real: str) -> bool:
        if not real:
            return False
        parts = real.split(os.sep)
        if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != self.pid:
            return False
        if not _under(real, self.workdir) and any(
                p.startswith(WORKDIR_PREFIX) or p == HIDDEN_FOLDER for p in parts):
            return False  # another child's work, or a reference answer in any checkout here
        for root, allowed in self.roots:
            if _under(real, root):
                return allowed
        return True

    def writable(self, real: str) -> bool:
        return _under(real, self.workdir) or real == os.devnull


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _path_args(args: tuple) -> list[str]:
    """The file-system paths among an audit event's arguments (not file descriptors), resolved.

    Audit events do not say which directory a relative path is relative to (`dir_fd`), so a
    relative path that climbs (`..`) resolves to "" here, which no rule allows; directories
    outside the work folder cannot be opened as a `dir_fd` either (see the "open" rule).
    """
    paths = []
    for arg in args:
        if isinstance(arg, (str, bytes)) or hasattr(arg, "__fspath__"):
            try:
                raw = os.fsdecode(os.fspath(arg))
            except (TypeError, ValueError):
                continue
            climbs = not os.path.isabs(raw) and ".." in raw.split(os.sep)
            paths.append("" if climbs else os.path.realpath(raw))
    return paths


def install_audit_hook(rules: PathRules, own_package: str = "") -> None:
    """Refuse, from now on and for good, what the module docstring lists. `own_package`: the name
    of a submission that is a package itself, whose imports of its own modules find its copy."""
    own_pid = os.getpid()
    blocked_imports = BLOCKED_IMPORTS - {own_package}

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            (real,) = _path_args((path,)) or ("",)
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) \
                or bool((flags or 0) & _WRITE_FLAGS)
            folder = os.path.isdir(real)  # a dir_fd to open other paths relative to
            if not rules.readable(real) or ((writing or folder) and not rules.writable(real)):
                verb = "write" if writing else "open the folder" if folder else "read"
                raise SandboxError(f"the grader does not let submissions {verb} {path}")
        elif event == "import":
            if str(args[0]).split(".")[0] in blocked_imports:
                raise ImportError(f"the grader does not let submissions import {args[0]}")
        elif event in _LISTING_EVENTS:
            if any(not rules.readable(real) for real in _path_args(args)):
                raise SandboxError(f"the grader does not let submissions list {args[0]}")
        elif event in _CHANGING_EVENTS:
            if any(not rules.writable(real) for real in _path_args(args)):
                raise SandboxError(f"the grader does not let submissions change {args[0]} "
                                   f"(only their own work folder)")
        elif event in _PROCESS_EVENTS or event.startswith("ctypes."):
            raise SandboxError(f"the grader does not let submissions use {event}")
        elif event == "os.kill" and args[0] != own_pid:
            raise SandboxError("the grader does not let submissions signal other processes")

    sys.addaudithook(hook)
