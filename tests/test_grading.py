"""The isolated grader (vitlab.grading): the reference scores full points, stubs score 0, a broken
cell costs its own stage only, and hostile submissions (tests/adversarial/) cannot pass a stage
they did not implement while the run still finishes; `vitlab grade` writes the CSV and JSONs and
flags students whose nbgrader score is higher than vitlab's.

Every grading starts child processes that import torch, so verdicts are session fixtures."""
import argparse
import ast
import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from vitlab.checks import STAGES
from vitlab.grading import cli as grade_cli
from vitlab.grading import grade_submission, wire
from vitlab.grading.sandbox import WORKDIR_PREFIX, PathRules

REPO = Path(__file__).resolve().parent.parent
ADVERSARIAL = Path(__file__).resolve().parent / "adversarial"
# the reference's modules, each after the ones it uses
MODULES = ["patching", "cls_token", "encoder_block", "head", "skeleton", "training"]
CONTRACT_KEYS = {"submission", "stages", "warnings", "points", "max_points"}
STAGE_KEYS = {"passed", "failed", "points", "max_points", "status", "messages"}
HOSTILE_STAGES = ["patching", "cls_token"]
# hostile submission -> (status of patching, words of its message)
HOSTILE = {
    "hang": ("error", "did not finish within"),
    "hang_at_import": ("error", "did not finish within 3 s (an endless loop, or far too slow?) "
                                "while this code loaded"),
    "exit_at_import": ("error", "exited with code 0"),
    "exit_in_forward": ("error", "exited with code 0"),
    "sys_exit": ("error", "sys.exit(0)"),
    "crash": ("error", "killed by SIGSEGV"),
    "flood": ("error", "printed more than 64 MiB on stdout"),
    "patch_allclose": ("error", "while the checks ran, so their results are not trusted"),
    "fork": ("failed", "no process could be started"),
    "read_solutions": ("failed", "the reference could not be read"),
    "memory_hog": ("failed", "can't allocate memory"),
}


# --- submissions built from the reference ----------------------------------------------------

def reference_parts() -> list[tuple[str, str]]:
    """(imports, body) of each reference module, without the imports of `solutions` itself."""
    parts = []
    for name in MODULES:
        lines = (REPO / "solutions" / f"{name}.py").read_text().splitlines(keepends=True)
        imports = [l for l in lines if l.startswith(("import ", "from ")) and "solutions" not in l]
        body = [l for l in lines if not l.startswith(("import ", "from "))]
        parts.append(("".join(imports), "".join(body)))
    return parts


def reference_source() -> str:
    return "".join(imports + body for imports, body in reference_parts())


def stub_source() -> str:
    """The reference with every function and method body replaced by `raise NotImplementedError`."""
    tree = ast.parse(reference_source())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            node.body = [ast.Raise(ast.Call(ast.Name("NotImplementedError", ast.Load()), [], []))]
    return ast.unparse(ast.fix_missing_locations(tree))


def reference_notebook(path: Path) -> tuple[int, int]:
    """The reference as a lesson notebook: an import cell (with a magic), a stub replaced by a
    later cell, one solution cell per module, a training cell that would fail if run, and a
    syntax error in the training solution cell. Returns that cell's number and line."""
    parts = reference_parts()
    notebook = nbformat.v4.new_notebook()
    imports = "".join(dict.fromkeys("".join(i for i, _ in parts).splitlines(keepends=True)))
    lesson_imports = ("import matplotlib.pyplot as plt\nfrom torchvision.transforms import v2\n"
                      "from vitlab.data import CLASS_NAMES, LiTSDataset\n")
    cells = [("code", "%matplotlib inline\n" + lesson_imports + imports),
             ("solution", "class PatchEmbedding(nn.Module):\n    def __init__(self, *args):\n"
                          "        raise NotImplementedError()\n")]
    cells += [("solution", body) for _, body in parts]
    broken = "def evaluate(model, loader, criterion, device) -> tuple[float, float]:"
    training_body = cells[-1][1]
    cells[-1] = ("solution", training_body.replace(broken, broken.rstrip(":")))
    cells.append(("code", "loss = train_one_epoch(model, loader, optimizer, criterion, 'cpu')"))
    for i, (kind, source) in enumerate(cells):
        cell = nbformat.v4.new_code_cell(source)
        if kind == "solution":
            cell.metadata["nbgrader"] = {"grade": False, "solution": True, "locked": False,
                                         "grade_id": f"cell_{i}", "schema_version": 3}
        notebook.cells.append(cell)
    notebook.cells.insert(0, nbformat.v4.new_markdown_cell("# The reference, as a lesson"))
    nbformat.write(notebook, str(path))
    training_cell_number = len(cells)          # 1-based, after the markdown cell
    line = training_body[:training_body.index(broken)].count("\n") + 1
    return training_cell_number, line


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("built")
    (folder / "reference.py").write_text(reference_source())
    (folder / "stubs.py").write_text(stub_source())
    cell, line = reference_notebook(folder / "reference.ipynb")
    return {"folder": folder, "training_cell": cell, "training_line": line}


@pytest.fixture(scope="session")
def reference_verdict(built):
    return grade_submission(built["folder"] / "reference.py")


@pytest.fixture(scope="session")
def stub_verdict(built):
    return grade_submission(built["folder"] / "stubs.py")


@pytest.fixture(scope="session")
def notebook_verdict(built):
    return grade_submission(built["folder"] / "reference.ipynb")


def test_reference_scores_full_points_in_the_contract_json(reference_verdict):
    result = reference_verdict.to_json()
    assert set(result) == CONTRACT_KEYS
    assert list(result["stages"]) == list(STAGES)
    for name, stage in result["stages"].items():
        assert set(stage) == STAGE_KEYS
        assert stage["status"] == "passed", stage["messages"]
        assert stage["points"] == stage["max_points"] == 10 and stage["failed"] == 0
    assert result["points"] == result["max_points"] == 60
    assert result["warnings"] == []
    json.dumps(result)  # serialisable as it is


def test_untouched_stubs_score_zero_not_implemented_everywhere(stub_verdict):
    assert stub_verdict.points == 0 and stub_verdict.max_points == 60
    for name, result in stub_verdict.stages.items():
        assert result.status == "not_implemented", (name, result.messages)
        assert "NotImplementedError" in result.messages[0] and "stubs.py, line" in result.messages[0]


def test_generated_lessons_grade_zero_as_stubs_and_full_with_answers(tmp_path, reference_verdict):
    from vitlab.lessons.build import write_lessons

    write_lessons(tmp_path / "stubs", answers=False)
    write_lessons(tmp_path / "answers", answers=True)
    stubs, answers = grade_submission(tmp_path / "stubs"), grade_submission(tmp_path / "answers")
    assert {r.status for r in stubs.stages.values()} == {"not_implemented"} and stubs.points == 0
    assert answers.points == 60, answers.table()
    assert stubs.warnings == answers.warnings == []   # every import cell ran in the child


def test_notebook_syntax_error_costs_its_own_stage_only(notebook_verdict, built):
    statuses = {name: result.status for name, result in notebook_verdict.stages.items()}
    assert statuses == {**{name: "passed" for name in STAGES}, "training": "error"}
    (message,) = notebook_verdict.stages["training"].messages
    expected = (f"reference.ipynb, cell {built['training_cell']} (cell_{built['training_cell'] - 2}),"
                f" line {built['training_line']}: SyntaxError")
    assert expected in message
    assert notebook_verdict.warnings == []  # the failure is reported once, in its stage


# --- `pytest autograde/` ---------------------------------------------------------------------

def run_autograde(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def test_autograde_grades_the_selected_stages_and_ends_with_the_table(built, tmp_path):
    out = tmp_path / "verdict.json"
    done = run_autograde("autograde/test_training.py", "autograde/test_cls_token.py",
                         "--submission", str(built["folder"] / "reference.ipynb"),
                         "--grade-json", str(out))
    assert done.returncode == 1, done.stdout[-3000:]
    assert "1 failed, 1 passed" in done.stdout
    assert "Stage 6" in done.stdout and "SyntaxError" in done.stdout  # the stage's own report
    table = done.stdout[done.stdout.index("vitlab grade: "):]
    assert re.search(r"stage +points +status +first message\n"
                     r"cls_token +10/10 +passed\n"
                     r"training +0/10 +error +the code that defines train_one_epoch failed: reference\.ipynb, "
                     r"cell \d+ \(cell_\d+\), line \d+: Syntax.*\n"
                     r"total +10/20\n", table)
    verdict = json.loads(out.read_text())
    assert set(verdict) == CONTRACT_KEYS and list(verdict["stages"]) == ["cls_token", "training"]


def test_reference_package_folder_imports_its_own_modules(reference_verdict, tmp_path):
    # solutions/ imports `from solutions.x import ...`: in the child that must find the copy (the
    # real folder stays unreadable); reference_verdict has started the zygote, so this is quick
    assert grade_submission(REPO / "solutions").points == 60
    # the same files under another name import the hidden reference: refused, and only the
    # module that does it fails (skeleton.py, which re-imports PatchEmbedding but does not own it)
    shutil.copytree(REPO / "solutions", tmp_path / "answers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    verdict = grade_submission(tmp_path / "answers")
    statuses = {name: result.status for name, result in verdict.stages.items()}
    assert statuses["skeleton"] == "error" and statuses["patching"] == statuses["training"] == "passed"
    assert re.search(r"answers/skeleton.py, line \d+: ImportError: the grader does not let "
                     r"submissions import solutions\.", verdict.stages["skeleton"].messages[0])


def test_autograde_refuses_a_missing_submission(tmp_path):
    done = run_autograde("autograde/", "--submission", str(tmp_path / "nope.ipynb"))
    assert done.returncode == 4
    assert "--submission: " in done.stderr and "nope.ipynb: no such file or folder" in done.stderr


# --- hostile submissions and `vitlab grade` ------------------------------------------------------

def make_gradebook(path: Path, scores: dict[str, float]) -> None:
    """A real nbgrader gradebook in which assignment "vit" gave each student `scores[student]`/20."""
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{path}") as gradebook, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLAlchemy's autoflush notes from inside nbgrader
        gradebook.add_assignment("vit")
        gradebook.add_notebook("lesson", "vit")
        gradebook.add_grade_cell("tests", "lesson", "vit", max_score=20, cell_type="code")
        gradebook.add_solution_cell("answer", "lesson", "vit")
        for student, score in scores.items():
            gradebook.add_student(student)
            gradebook.add_submission("vit", student)
            gradebook.find_grade("tests", "lesson", "vit", student).auto_score = score
        gradebook.db.commit()


@pytest.fixture(scope="session")
def grade_run(tmp_path_factory, built):
    """`vitlab grade submitted/ --jobs 2 --nbgrader-db ...` over every hostile submission and the
    reference notebook, each as an nbgrader submitted/<student>/vit/ folder."""
    course = tmp_path_factory.mktemp("course")
    submitted = course / "submitted"
    for name in HOSTILE:
        folder = submitted / name / "vit"
        folder.mkdir(parents=True)
        (folder / "a_honest.py").write_text((ADVERSARIAL / "honest.py").read_text())
        (folder / f"b_{name}.py").write_text((ADVERSARIAL / f"{name}.py").read_text())
    (submitted / "reference" / "vit").mkdir(parents=True)
    (submitted / "reference" / "vit" / "lesson.ipynb").write_bytes(
        (built["folder"] / "reference.ipynb").read_bytes())
    # nbgrader ran the students' code in its own process: the patcher fooled it
    make_gradebook(course / "gradebook.db", {"patch_allclose": 20, "reference": 20, "hang": 0})

    parser = argparse.ArgumentParser()
    grade_cli.add_arguments(parser)
    out = course / "grades.csv"
    args = parser.parse_args([str(submitted), "--out", str(out), "--jobs", "2", "--timeout", "3",
                              "--memory-mb", "1024",
                              "--nbgrader-db", str(course / "gradebook.db"),
                              *[f"--stage={name}" for name in HOSTILE_STAGES]])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # a session fixture has no capsys
        code = grade_cli.run(args)
    with out.open() as file:
        rows = {row["submission"]: row for row in csv.DictReader(file)}
    verdicts = {path.stem: json.loads(path.read_text()) for path in (course / "grades").glob("*.json")}
    return {"code": code, "printed": printed.getvalue(), "rows": rows, "verdicts": verdicts}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_submission_cannot_pass_and_the_other_stage_is_graded(grade_run, name):
    verdict = grade_run["verdicts"][name]
    status, words = HOSTILE[name]
    patching = verdict["stages"]["patching"]
    assert patching["status"] == status and patching["points"] == 0
    assert words in patching["messages"][0]
    expected_cls_token = "failed" if name == "patch_allclose" else "passed"
    assert verdict["stages"]["cls_token"]["status"] == expected_cls_token


def test_replacements_at_load_are_undone_and_reported(grade_run):
    during_stage = grade_run["verdicts"]["patch_allclose"]["stages"]["patching"]["messages"][0]
    for name in ("torch.allclose", "torch.testing.assert_close", "assert_array_equal"):
        assert name in during_stage
    warnings = grade_run["verdicts"]["patch_allclose"]["warnings"]
    assert any("torch.allclose" in w and "torch.testing.assert_close" in w
               and "put the originals back" in w for w in warnings)
    assert any("MiB on stdout" in w for w in grade_run["verdicts"]["flood"]["warnings"])


def test_grade_writes_csv_and_json_and_flags_nbgrader_overscores(grade_run):
    assert grade_run["code"] == 0
    rows = grade_run["rows"]
    assert set(rows) == {*HOSTILE, "reference"}
    assert list(rows["reference"]) == ["submission", *HOSTILE_STAGES, "total", "max",
                                       "nbgrader_points", "flagged"]
    assert rows["reference"]["total"] == "20" and rows["reference"]["flagged"] == ""
    assert rows["patch_allclose"]["nbgrader_points"] == "20"
    assert rows["patch_allclose"]["flagged"] == "yes"
    assert rows["hang"]["nbgrader_points"] == "0" and rows["hang"]["flagged"] == ""
    assert rows["fork"]["nbgrader_points"] == ""       # not in the gradebook
    for name, row in rows.items():
        verdict = grade_run["verdicts"][name]
        assert set(verdict) == CONTRACT_KEYS
        assert float(row["total"]) == verdict["points"]
        assert [float(row[s]) for s in HOSTILE_STAGES] == [
            verdict["stages"][s]["points"] for s in HOSTILE_STAGES]
    patcher = grade_run["verdicts"]["patch_allclose"]["points"]
    assert (f"flagged: nbgrader scored 1 student(s) higher than vitlab:\n"
            f"  patch_allclose (nbgrader 20/20, vitlab {patcher:g}/20)\n") in grade_run["printed"]


def test_grade_refuses_a_missing_submission(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    grade_cli.add_arguments(parser)
    code = grade_cli.run(parser.parse_args([str(tmp_path / "nope"), "--out", str(tmp_path / "g.csv")]))
    assert code == 2 and "nope: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["--out", "grades"], "--out {tmp}/grades: name the CSV file to write, e.g. grades.csv"),
    (["--out", "grades.csv", "--stage", "patchin"], "Unknown stage(s) ['patchin']: the stages are ['patching'"),
])
def test_grade_refuses_bad_options_before_grading(tmp_path, capsys, args, message):
    """Before any grading: a CSV named --out (not a folder the verdicts would clash with), known stages."""
    submission = tmp_path / "student.py"
    submission.write_text("x = 1\n")
    parser = argparse.ArgumentParser()
    grade_cli.add_arguments(parser)
    argv = [str(submission)] + [str(tmp_path / a) if a.startswith("grades") else a for a in args]
    assert grade_cli.run(parser.parse_args(argv)) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.py"]   # nothing written


def test_nbgrader_folder_names_submissions_by_student(tmp_path):
    for student, assignment in [("alice", "vit"), ("bob", "vit"), ("bob", "extra")]:
        (tmp_path / student / assignment).mkdir(parents=True)
        (tmp_path / student / assignment / "lesson.ipynb").write_text("{}")
    entries = grade_cli.nbgrader_entries(tmp_path)
    assert [e.name for e in entries] == ["alice/vit", "bob/extra", "bob/vit"]
    assert grade_cli.json_name("bob/vit") == "bob_vit.json"
    (tmp_path / "alice" / "extra").mkdir()
    assert grade_cli.nbgrader_entries(tmp_path / "alice") == []  # no student/assignment layout
    assert grade_cli.nbgrader_is_higher((9, 10), 8, 10) and not grade_cli.nbgrader_is_higher((16, 20), 8, 10)


# --- the layers under it ----------------------------------------------------------------------

def test_wire_round_trips_plain_data():
    data = {"a": [1, 2.5, float("nan"), None, True, "text"], "t": (3, (4,)),
            "x": np.arange(6, dtype=np.float32).reshape(2, 3), "m": np.array([True, False]),
            "n": {"deep": np.int64(7), "big": np.zeros((2, 0), dtype=np.int16)}}
    back = wire.decode(wire.encode(data))
    assert back["a"][:2] == [1, 2.5] and np.isnan(back["a"][2]) and back["a"][3:] == [None, True, "text"]
    assert back["t"] == (3, (4,))
    assert back["x"].dtype == np.float32 and np.array_equal(back["x"], data["x"])
    assert back["m"].dtype == bool and back["n"]["deep"] == 7 and back["n"]["big"].shape == (2, 0)


DEEP = [0]
for _ in range(40):
    DEEP = [DEEP]


@pytest.mark.parametrize("value, words", [
    (torch.zeros(2), "torch.Tensor is not plain data"),
    (np.array([object()]), "numbers only"),
    ({1: 2}, "keys must be str"),
    (DEEP, "nested deeper"),
])
def test_wire_refuses_what_is_not_plain_data(value, words):
    with pytest.raises(wire.WireError, match=re.escape(words)):
        wire.encode(value)


def test_wire_decoder_trusts_nothing():
    good = wire.encode({"x": np.ones(3)})
    with pytest.raises(wire.WireError, match="cut off"):
        wire.decode(good[:-5])
    head = json.dumps({"t": "array", "i": 0}).encode()
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    forged = (len(head).to_bytes(4, "big") + head
              + len(pickled.getvalue()).to_bytes(8, "big") + pickled.getvalue())
    with pytest.raises(wire.WireError, match="not a valid .npy array"):
        wire.decode(forged)  # never unpickled
    for tree in ({"t": "array", "i": 3}, {"t": "set", "v": []}, {"a": 1}):
        head = json.dumps(tree).encode()
        with pytest.raises(wire.WireError):
            wire.decode(len(head).to_bytes(4, "big") + head)


def test_path_rules_hide_the_reference_and_other_children(tmp_path):
    workdir = tmp_path / f"{WORKDIR_PREFIX}mine"
    workdir.mkdir()
    rules = PathRules(workdir, deny=[REPO], allow=[REPO / "vitlab"])
    assert not rules.readable(str(REPO / "solutions" / "patching.py"))
    assert not rules.readable(str(REPO / ".git" / "HEAD"))
    assert rules.readable(str(REPO / "vitlab" / "checks" / "base.py"))
    assert rules.readable(str(workdir / "answer.py")) and rules.writable(str(workdir / "out.txt"))
    assert not rules.readable(str(tmp_path / f"{WORKDIR_PREFIX}other" / "answer.py"))
    assert not rules.readable("/proc/1/environ")
    assert rules.readable(f"/proc/{os.getpid()}/status")
    assert not rules.writable(str(REPO / "vitlab" / "checks" / "base.py"))
    assert not rules.readable("")   # what a climbing relative path resolves to (dir_fd unknown)


SECCOMP_PROBE = """
import json, os, subprocess, sys, threading
from vitlab.grading.sandbox import forbid_new_processes
report = {"installed": forbid_new_processes()}
def attempt(name, start):
    try:
        pid = start()
    except OSError as error:
        report[name] = f"refused: {error.strerror}"
        return
    if pid == 0:
        os._exit(0)
    report[name] = "started"
attempt("fork", os.fork)
attempt("subprocess", lambda: subprocess.Popen([sys.executable, "-c", "pass"]).pid)
attempt("posix_spawn", lambda: os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], {}))
attempt("kill parent", lambda: os.kill(os.getppid(), 0) or 1)
attempt("chroot", lambda: os.chroot("/") or 1)
thread = threading.Thread(target=lambda: report.update(thread="ran"))
thread.start(); thread.join()
print(json.dumps(report))
"""


def test_seccomp_filter_refuses_processes_and_chroot_even_without_the_audit_hook():
    done = subprocess.run([sys.executable, "-c", SECCOMP_PROBE], capture_output=True, text=True,
                          timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["installed"] == "seccomp filter installed"
    for name in ("fork", "subprocess", "posix_spawn", "kill parent", "chroot"):
        assert report[name] == "refused: Operation not permitted", (name, report)
    assert report["thread"] == "ran"   # threads (torch's too) still start
