"""`vitlab course init` and a whole nbgrader run on it, with real nbgrader and real kernels.

One module-scoped run: course init -> `nbgrader generate_assignment vit` -> four students in
submitted/<student>/vit/ -> `nbgrader autograde vit` -> `nbgrader generate_feedback vit` ->
`nbgrader export` -> `vitlab grade submitted --nbgrader-db gradebook.db`. The students:
- untouched: the release as handed out (0 points);
- answers: every solution cell holds the reference answer (60 points: every lesson runs top to
  bottom, in quick mode because nbgrader sets NBGRADER_EXECUTION);
- first_three: lessons 1-3 answered, 4-6 untouched (exactly 30); lesson 1 saved with a kernel
  that does not exist here (the config's kernel_name must win);
- cheater: lesson 1 untouched but with code that fools the tests in its own kernel (nbgrader
  gives 10, vitlab 0: flagged), and lesson 2 fooling only the visible test (a failing hidden test,
  whose code must not show in the feedback).
"""
from __future__ import annotations

import csv
import html
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from vitlab import cli
from vitlab.course import ASSIGNMENT, CELL_TIMEOUT_S
from vitlab.lessons import LESSONS
from vitlab.lessons.build import HIDDEN_SEED, LESSON_DIR

BIN = Path(sys.executable).parent
NOTEBOOKS = [f"{lesson}.ipynb" for lesson in LESSONS]
EXPECTED_NBGRADER = {"untouched": 0, "answers": 60, "first_three": 30, "cheater": 10}
EXPECTED_VITLAB = {"untouched": 0, "answers": 60, "first_three": 30, "cheater": 0}

FOOL_EVERYTHING = """

import torch
import vitlab.checks

torch.allclose = lambda *args, **kwargs: True


class _Passed:
    status, points = "passed", 10.0

    def report(self):
        return "all good"


vitlab.checks.assert_stage = lambda *args, **kwargs: _Passed()
vitlab.checks.run_in_process = lambda *args, **kwargs: _Passed()
"""
FOOL_VISIBLE_TEST = """

import vitlab.checks

vitlab.checks.assert_stage = lambda *args, **kwargs: None
"""


@dataclass
class Course:
    root: Path
    timings: Timings
    nbgrader: dict[str, dict]   # grades.csv rows by student
    vitlab: dict[str, dict]     # vitlab grade's CSV rows by student
    vitlab_output: str


def run(command: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


class Timings(dict):
    """Wall-clock and CPU seconds (of the command and its kernels) per step of the run."""

    def measure(self, name: str, command: list[str], cwd: Path, env: dict):
        cpu_before, start = _children_cpu(), time.perf_counter()
        done = run(command, cwd, env)
        self[name] = (time.perf_counter() - start, _children_cpu() - cpu_before)
        return done

    def __str__(self) -> str:
        return ", ".join(f"{name} {wall:.1f} s ({cpu:.1f} s CPU)" for name, (wall, cpu) in self.items())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def answered(release: Path, source: Path, name: str) -> nbformat.NotebookNode:
    """The release notebook with every solution cell holding the reference answer."""
    notebook = nbformat.read(release / name, as_version=4)
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source
               for c in nbformat.read(source / name, as_version=4).cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    for cell in notebook.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = answers[cell.metadata["nbgrader"]["grade_id"]]
    return notebook


def with_extra_code(notebook: nbformat.NotebookNode, code: str) -> nbformat.NotebookNode:
    cell = next(c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("solution"))
    cell.source += code
    return notebook


def write_students(root: Path) -> None:
    release, source = root / "release" / ASSIGNMENT, root / "source" / ASSIGNMENT

    def untouched(name):
        return nbformat.read(release / name, as_version=4)

    students = {
        "untouched": {name: untouched(name) for name in NOTEBOOKS},
        "answers": {name: answered(release, source, name) for name in NOTEBOOKS},
        "first_three": {name: answered(release, source, name) if name < "04" else untouched(name)
                        for name in NOTEBOOKS},
        "cheater": {NOTEBOOKS[0]: with_extra_code(untouched(NOTEBOOKS[0]), FOOL_EVERYTHING),
                    NOTEBOOKS[1]: with_extra_code(untouched(NOTEBOOKS[1]), FOOL_VISIBLE_TEST)},
    }
    students["first_three"][NOTEBOOKS[0]].metadata.kernelspec.name = "a-kernel-only-the-student-has"
    for student, notebooks in students.items():
        folder = root / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        for name, notebook in notebooks.items():
            nbformat.write(notebook, folder / name)


def read_rows(path: Path, key: str) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {row[key]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    root = tmp_path_factory.mktemp("course") / "vit-course"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "VITLAB_CACHE": str(tmp_path_factory.mktemp("vitlab-cache"))}
    env.pop("VITLAB_LESSON_QUICK", None)  # quick mode must come from nbgrader's own variable
    assert cli.main(["course", "init", str(root)]) == 0
    timings = Timings()
    timings.measure("generate_assignment", ["nbgrader", "generate_assignment", ASSIGNMENT], root, env)
    write_students(root)
    for student in EXPECTED_NBGRADER:
        timings.measure(f"autograde {student}",
                        ["nbgrader", "autograde", ASSIGNMENT, "--student", student], root, env)
    timings.measure("generate_feedback", ["nbgrader", "generate_feedback", ASSIGNMENT], root, env)
    timings.measure("export", ["nbgrader", "export"], root, env)
    out = root.parent / "vitlab-grades.csv"
    regrade = timings.measure("vitlab grade", [str(BIN / "vitlab"), "grade", "submitted", "--out",
                                               str(out), "--nbgrader-db", "gradebook.db"], root, env)
    print(f"\nnbgrader run: {timings}")
    return Course(root, timings, read_rows(root / "grades.csv", "student_id"),
                  read_rows(out, "submission"), regrade.stdout)


def errors(notebook: nbformat.NotebookNode) -> list[tuple[int, str, str]]:
    return [(i, o.ename, o.evalue) for i, c in enumerate(notebook.cells) if c.cell_type == "code"
            for o in c.outputs if o.output_type == "error"]


def autograded(course: Course, student: str, name: str) -> nbformat.NotebookNode:
    return nbformat.read(course.root / "autograded" / student / ASSIGNMENT / name, as_version=4)


# --- course init (no nbgrader needed) --------------------------------------------------------

def test_course_init_writes_config_and_source(tmp_path, capsys):
    root = tmp_path / "course"
    assert cli.main(["course", "init", str(root)]) == 0
    printed = capsys.readouterr().out
    for command in ("nbgrader generate_assignment vit", "nbgrader autograde vit",
                    "nbgrader generate_feedback vit", "nbgrader export",
                    "vitlab grade submitted --out vitlab-grades.csv --nbgrader-db gradebook.db"):
        assert command in printed
    config = (root / "nbgrader_config.py").read_text()
    assert f"c.CourseDirectory.db_url = 'sqlite:///{root.resolve()}/gradebook.db'" in config
    assert 'c.Execute.kernel_name = "python3"' in config
    assert f"c.Execute.timeout = {CELL_TIMEOUT_S}" in config
    compile(config, "nbgrader_config.py", "exec")
    for name in NOTEBOOKS:
        notebook = nbformat.read(root / "source" / ASSIGNMENT / name, as_version=4)
        assert notebook.metadata.kernelspec.name == "python3"
        assert any("### BEGIN SOLUTION" in c.source for c in notebook.cells)
        assert any("### BEGIN HIDDEN TESTS" in c.source for c in notebook.cells)


def test_course_init_does_not_overwrite_a_course(tmp_path, capsys):
    root = tmp_path / "course"
    assert cli.main(["course", "init", str(root)]) == 0
    (root / "nbgrader_config.py").write_text("# the instructor's edits\n")
    assert cli.main(["course", "init", str(root)]) == 1
    assert "Pass --force to overwrite" in capsys.readouterr().err
    assert (root / "nbgrader_config.py").read_text() == "# the instructor's edits\n"
    assert cli.main(["course", "init", str(root), "--force"]) == 0
    assert "c.CourseDirectory.course_id = 'vit'" in (root / "nbgrader_config.py").read_text()


# --- the nbgrader run --------------------------------------------------------------------------

def test_release_is_exactly_the_committed_lessons(course):
    for name in NOTEBOOKS:
        released = nbformat.read(course.root / "release" / ASSIGNMENT / name, as_version=4)
        committed = nbformat.read(LESSON_DIR / name, as_version=4)
        assert [c.source for c in released.cells] == [c.source for c in committed.cells], name


def test_nbgrader_export_gives_each_student_their_points(course):
    scores = {student: float(row["score"]) for student, row in course.nbgrader.items()}
    assert scores == EXPECTED_NBGRADER
    assert {float(row["max_score"]) for row in course.nbgrader.values()} == {60.0}


def test_answers_run_top_to_bottom_without_an_error(course):
    """Every lesson, answered with the reference, ran in its kernel from the first cell to the
    last with no error and nothing on stderr, pictures included."""
    pictures = {}
    for name in NOTEBOOKS:
        notebook = autograded(course, "answers", name)
        assert errors(notebook) == [], name
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in code), name
        assert not [o for c in code for o in c.outputs
                    if o.output_type == "stream" and o.name == "stderr"], name
        pictures[name] = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert pictures["01_patching.ipynb"] >= 3 and pictures["04_encoder_block.ipynb"] >= 1
    assert pictures["06_training.ipynb"] >= 5  # augmentations, curves, 2 confusion matrices, attention


def test_unfinished_earlier_lessons_get_a_friendly_message(course):
    notebook = autograded(course, "first_three", "05_head.ipynb")
    (index, name, message), *_ = errors(notebook)
    assert name == "EarlierLessonNotDone"
    assert "04_encoder_block.ipynb is not finished" in message
    assert "Finish 04_encoder_block.ipynb first" in message


def test_feedback_never_shows_hidden_tests(course):
    hidden_code = (f"seed={HIDDEN_SEED}", "BEGIN HIDDEN TESTS", "hidden = run_in_process")
    # the autograded copy does hold the hidden tests, and the cheater's lesson 2 failed one of them
    fooled = autograded(course, "cheater", "02_cls_token.ipynb")
    assert any(f"seed={HIDDEN_SEED}" in c.source for c in fooled.cells)
    assert any("hidden tests (other random inputs)" in message for _, _, message in errors(fooled))
    pages = sorted((course.root / "feedback").glob(f"*/{ASSIGNMENT}/*.html"))
    assert len(pages) == 6 + 6 + 6 + 2
    for page in pages:
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))
        assert not [code for code in hidden_code if code in text], page
    cheater = html.unescape(re.sub(r"<[^>]+>", "", (course.root / "feedback" / "cheater" / ASSIGNMENT
                                                   / "02_cls_token.html").read_text(encoding="utf-8")))
    assert "hidden tests (other random inputs)" in cheater  # the report is shown, the code is not


def test_vitlab_grade_flags_the_student_who_fooled_nbgrader(course):
    totals = {student: float(row["total"]) for student, row in course.vitlab.items()}
    assert totals == EXPECTED_VITLAB
    flagged = {student for student, row in course.vitlab.items() if row["flagged"] == "yes"}
    assert flagged == {"cheater"}
    assert "cheater (nbgrader 10/60, vitlab 0/60)" in course.vitlab_output
