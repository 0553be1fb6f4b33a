"""Grade a submission from outside: student code runs in a child process, the verdict is made here.

One child per submission runs the stages in sequence (vitlab.grading.child, started through
vitlab.grading.process). The parent draws every stage's inputs, sends them, reads back the
probe's plain data over a pipe (wire.py: JSON and .npy, never pickle), and judges it itself with
`evaluate_stage`. A child that dies, hangs
past a stage's time limit or sends what the parent refuses costs that stage (`error`); a fresh
child loads the submission again for the stages left. A cell that kills or hangs the child while
the submission loads is skipped by the next child, and the stages it should define are `error`.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import site
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from vitlab.checks.base import Stage, StageResult, error_result, evaluate_stage, not_implemented_result
from vitlab.grading.process import (OUTPUT_LIMIT_BYTES, OUTPUT_TAIL_BYTES, STARTUP_TIME_LIMIT_S,
                                   STOPPING, Child, ChildGone, kill_all_children)
from vitlab.grading.sandbox import WORKDIR_PREFIX
from vitlab.grading.verdict import Verdict
from vitlab.submission import CodeCell, LoadFailure, read_submission

DEFAULT_MEMORY_MB = 4096          # per child, on top of what torch's import takes (~0.8 GiB)
CELL_TIME_LIMIT_S = 30.0          # per cell or .py file while the submission loads
MAX_CHILDREN = 12                 # per submission: restarts after deaths, hangs and killer cells
RETIRE_MEMORY_FRACTION = 0.5      # a child holding more of its memory limit is not reused
MAX_SUBMISSION_BYTES = 100 * 2**20
OUTPUT_WARNING_BYTES = 2**20      # a submission that prints more gets a warning

__all__ = ["grade_submission", "kill_all_children", "DEFAULT_MEMORY_MB"]


# --- one submission ----------------------------------------------------------------------------

class _Session:
    """The grading of one submission: its children, what loading found, and the stage results."""

    def __init__(self, label: str, cells: list[CodeCell], unreadable: list[LoadFailure],
                 setup: dict[str, Any], workdir: Path, cell_limit_s: float) -> None:
        self.label = label
        self.cells = cells
        self.unreadable = unreadable
        self.setup = setup
        self.workdir = workdir
        self.cell_limit_s = cell_limit_s
        self.child: Child | None = None
        self.children_started = 0
        self.start_error = ""
        self.loaded = False
        self.failures: dict[int, LoadFailure] = {}   # position in `cells` -> what went wrong
        self.present: set[str] = set()
        self.warnings: list[str] = []
        self.printed = {"stdout": 0, "stderr": 0}

    # children

    def ensure_child(self) -> Child | None:
        while self.child is None and not self.start_error:
            if STOPPING.is_set():
                self.start_error = "the grading was interrupted"
            elif self.children_started >= MAX_CHILDREN:
                self.start_error = (f"gave up after starting {MAX_CHILDREN} grading processes "
                                    f"for this submission")
            else:
                self.child = self._start_and_load()
        return self.child

    def _start_and_load(self) -> Child | None:
        self.children_started += 1
        current = child = None
        try:
            child = Child(self.workdir)
            child.send({**self.setup, "event": "setup", "skip": sorted(self.failures)},
                       time.monotonic() + STARTUP_TIME_LIMIT_S)
            limit = STARTUP_TIME_LIMIT_S
            ready = child.receive(time.monotonic() + limit, limit)
            if ready["event"] != "ready":
                raise child.fail("did not start as expected")
            limit = self.cell_limit_s
            while True:
                message = child.receive(time.monotonic() + limit, limit)
                if message["event"] == "cell" and _is_index(message.get("index"), self.cells):
                    current = message["index"]
                elif message["event"] == "loaded":
                    self._record_load(message, child)
                    return child
                else:
                    raise child.fail("sent a message out of turn")
        except ChildGone as gone:
            if child is not None:
                self._account_output(child)
            if current is None:
                self.start_error = f"the grading could not start: {gone.message()}"
            else:
                cell = self.cells[current]
                self.failures[current] = LoadFailure(
                    cell.where, cell.defines(),
                    f"{cell.where}: {gone.message('while this code loaded')}", current)
            return None

    def _record_load(self, message: dict, child: Child) -> None:
        try:
            failures = [LoadFailure(self.cells[f["index"]].where, self.cells[f["index"]].defines(),
                                    str(f["message"]), f["index"], bool(f["not_implemented"]))
                        for f in message["failures"] if _is_index(f["index"], self.cells)]
            present = {str(name) for name in message["symbols"]}
            tampered = [str(name) for name in message["tampered"]]
        except (KeyError, TypeError) as error:
            raise child.fail(f"sent a malformed load report ({error!r})") from None
        if self.loaded:
            return  # a restarted child loads the same code: the first report stands
        self.loaded = True
        self.present = present
        for failure in failures:
            self.failures.setdefault(failure.position, failure)
        if tampered:
            self.warnings.append(f"the submission replaced {', '.join(tampered)} while loading; "
                                 f"the grader put the originals back before running the checks")

    def close(self) -> None:
        if self.child is not None:
            self.child.quit()
            self._account_output(self.child)
            self.child = None

    def _account_output(self, child: Child) -> None:
        self.printed["stdout"] += child.stdout.total
        self.printed["stderr"] += child.stderr.total

    def _lose_child(self) -> None:
        self._account_output(self.child)
        self.child = None

    # stages

    def grade(self, stage: Stage, inputs: dict, time_limit_s: float) -> StageResult:
        child = self.ensure_child()
        before_running = self._status_from_load(stage)
        if before_running is not None:
            return before_running
        if child is None:
            return error_result(stage, self.start_error)
        deadline = time.monotonic() + time_limit_s
        try:
            child.send({"event": "stage", "stage": stage.name, "inputs": inputs}, deadline)
            reply = child.receive(deadline, time_limit_s)
            if reply["event"] != "stage" or reply.get("status") not in ("ok", "not_implemented",
                                                                       "error"):
                raise child.fail("answered out of turn")
        except ChildGone as gone:
            self._lose_child()
            return error_result(stage, gone.message("while the checks ran"))
        memory_used = reply.get("memory_used")
        if not isinstance(memory_used, (int, float)) or memory_used > RETIRE_MEMORY_FRACTION:
            self.close()  # what the code still holds must not starve the next stage
        tampered = reply.get("tampered")
        if tampered:
            names = ", ".join(str(name) for name in tampered) if isinstance(tampered, list) else "?"
            return error_result(stage, f"the submission replaced {names} while the checks ran, "
                                       f"so their results are not trusted")
        if reply["status"] == "not_implemented":
            return not_implemented_result(stage, str(reply.get("message", "")))
        if reply["status"] == "error":
            return error_result(stage, f"the code stopped the checks: {reply.get('message', '')}")
        return evaluate_stage(stage, inputs, reply.get("data"))

    def _status_from_load(self, stage: Stage) -> StageResult | None:
        """`error` or `not_implemented` when loading already decided the stage; else None."""
        for symbol in stage.symbols:
            # the last code that defines the symbol decides; imports of it count only when no
            # code defines it (a module that re-imports a symbol does not own it)
            positions = ([i for i, cell in enumerate(self.cells) if symbol in cell.defines(False)]
                         or [i for i, cell in enumerate(self.cells) if symbol in cell.defines()])
            failure = self.failures.get(positions[-1]) if positions else None
            if failure is not None and failure.not_implemented:
                return not_implemented_result(stage, failure.message)
            if failure is not None:
                return error_result(stage, f"the code that defines {symbol} failed: "
                                           f"{failure.message}")
        if not self.loaded:
            return None
        missing = [symbol for symbol in stage.symbols if symbol not in self.present]
        if missing and self.unreadable:
            return error_result(stage, f"{', '.join(missing)} not found, and "
                                       f"{self.unreadable[0].message}")
        if missing:
            return not_implemented_result(stage, f"{', '.join(missing)} is not defined in "
                                                 f"{self.label}")
        return None

    def load_warnings(self, stage_errors: Iterable[str]) -> list[str]:
        """Failures of cells that no stage's message already reports, and printing volume."""
        reported = "\n".join(stage_errors)
        warnings = [failure.message for failure in self.unreadable]
        warnings += [failure.message for _, failure in sorted(self.failures.items())
                     if not failure.not_implemented and failure.message not in reported]
        for stream, total in self.printed.items():
            if total > OUTPUT_WARNING_BYTES:
                warnings.append(f"the submission printed {total / 2**20:.1f} MiB on {stream} "
                                f"(the grader keeps the last {OUTPUT_TAIL_BYTES // 1024} KiB and "
                                f"stops a process past {OUTPUT_LIMIT_BYTES // 2**20} MiB)")
        return warnings + self.warnings


def _is_index(value: Any, cells: list) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(cells)


def grade_submission(path: str | Path, stages: Iterable[str] | None = None,
                     seed: int | None = None, *, timeout: float | None = None,
                     memory_mb: int = DEFAULT_MEMORY_MB, hidden: Iterable[str | Path] = (),
                     threads: int = 1) -> Verdict:
    """Grade one submission (a .py file, a notebook or a folder) in an isolated child process.

    `stages`: stage names (default: all, in course order); `seed`: for the stages' inputs
    (default 0, so that a verdict can be reproduced); `timeout`: seconds per stage and per
    loading cell, instead of each stage's own limit; `memory_mb`: memory the child may use
    beyond torch's own; `hidden`: more paths the child must not read (other submissions, the
    output folder, a gradebook).
    """
    from vitlab.checks import STAGES, stage_names

    names = stage_names(stages)
    original = Path(path)
    source = original.resolve()
    cells, unreadable = read_submission(source)
    seed = 0 if seed is None else seed
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    session = None
    try:
        copy = _copy_submission(source, workdir)
        (workdir / ".tmp").mkdir()
        deny, allow = _hidden_and_allowed(source, hidden)
        setup = {"workdir": str(workdir), "submission": str(copy), "deny": deny, "allow": allow,
                 "memory_bytes": memory_mb * 2**20, "threads": threads}
        session = _Session(source.name, cells, unreadable, setup, workdir,
                           timeout or CELL_TIME_LIMIT_S)
        results, stage_seconds = {}, {}
        for name in names:
            stage = STAGES[name]
            stage_started = time.perf_counter()
            inputs = stage.make_inputs(seed)
            results[name] = session.grade(stage, inputs, timeout or stage.time_limit_s)
            stage_seconds[name] = time.perf_counter() - stage_started
    finally:
        try:
            if session is not None:
                session.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    warnings = [f"{name}: {warning}" for name, result in results.items()
                for warning in result.warnings]
    warnings += session.load_warnings(message for result in results.values()
                                      for message in result.messages)
    return Verdict(str(original), results, warnings, time.perf_counter() - started, stage_seconds)


def _copy_submission(source: Path, workdir: Path) -> Path:
    """Copy what the child may see: the submission only, without symbolic links."""
    target = workdir / source.name
    if source.is_file():
        shutil.copyfile(source, target)
        return target

    def ignored(folder: str, names: list[str]) -> list[str]:
        return [name for name in names if name.startswith(".") or name == "__pycache__"
                or os.path.islink(os.path.join(folder, name))]

    total = 0
    for folder, folders, files in os.walk(source):
        folders[:] = [name for name in folders if name not in ignored(folder, folders)]
        total += sum(os.lstat(os.path.join(folder, name)).st_size
                     for name in files if name not in ignored(folder, files))
    if total > MAX_SUBMISSION_BYTES:
        raise ValueError(f"{source} holds {total / 2**20:.0f} MiB; a submission may hold at most "
                         f"{MAX_SUBMISSION_BYTES // 2**20} MiB: remove data and checkpoints")
    shutil.copytree(source, target, ignore=ignored)
    return target


def _hidden_and_allowed(source: Path, hidden: Iterable[str | Path]) -> tuple[list[str], list[str]]:
    """Folders the child must not read (the longest matching root decides) and the exceptions
    it needs: the reference, this repository (tests, autograde, .git), the submission's own
    folder (other students' work), minus the vitlab package and the Python installation."""
    import vitlab

    package = Path(vitlab.__file__).resolve().parent
    deny = [source, *map(str, hidden)]
    if source.parent not in (Path("/"), Path.home()):
        deny.append(source.parent)
    spec = importlib.util.find_spec("solutions")
    if spec is not None and spec.submodule_search_locations:
        deny += list(spec.submodule_search_locations)
    if (package.parent / "pyproject.toml").exists():
        deny.append(package.parent)
    allow = [package, sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()]
    return [str(p) for p in deny], [str(p) for p in dict.fromkeys(allow)]
