"""The lesson notebooks: generated from lessons/src/*.md and solutions/ only, clean student
versions committed, helpers that reuse earlier answers, and every untouched lesson runs (nbclient)
up to its first stub. (The answers running top to bottom is checked by the nbgrader run in
test_course.py, which autogrades a student who wrote exactly the reference answers.)"""
from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import solutions
from vitlab.checks import STAGES
from vitlab.lessons import (LESSONS, UNTOUCHED_STUB, EarlierLessonNotDone, quick_mode,
                            use_earlier_answers)
from vitlab.lessons.build import (BEGIN_HIDDEN, BEGIN_SOLUTION, LESSON_DIR, REGENERATE,
                                  SOURCE_DIR, SourceError, build_notebook, parse_source,
                                  solution_code, stale_lessons, write_lessons)

MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def nbgrader_meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


@pytest.fixture(scope="module")
def answers_dir(tmp_path_factory) -> Path:
    """The six lessons with answers and hidden tests (what `vitlab course init` puts in source/)."""
    folder = tmp_path_factory.mktemp("answers")
    write_lessons(folder, answers=True)
    return folder


# --- one source of truth -------------------------------------------------------------------

def test_committed_lessons_are_what_the_sources_give():
    stale = stale_lessons()
    assert not stale, (f"{', '.join(stale)} differ from lessons/src/*.md and solutions/*.py: "
                       f"regenerate them with `{REGENERATE}` (and commit the result)")


@pytest.mark.parametrize("lesson", LESSONS)
def test_committed_lesson_is_a_clean_student_version(lesson):
    notebook = nbformat.read(LESSON_DIR / f"{lesson}.ipynb", as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code_cells)
    assert not any(marker in c.source for c in notebook.cells for marker in MARKERS)
    solution_cells = [c for c in code_cells if nbgrader_meta(c).get("solution")]
    assert solution_cells and all(UNTOUCHED_STUB.search(c.source) for c in solution_cells)
    test_cells = [c for c in code_cells if nbgrader_meta(c).get("grade")]
    stage = STAGES[LESSONS[lesson]]
    assert [nbgrader_meta(c)["points"] for c in test_cells] == [stage.max_points]
    assert nbgrader_meta(test_cells[0])["locked"] is True
    assert f'assert_stage("{stage.name}")' in test_cells[0].source


def test_points_per_stage_match_the_verdict(answers_dir):
    points: dict[str, float] = {}
    for lesson in LESSONS:
        notebook = nbformat.read(answers_dir / f"{lesson}.ipynb", as_version=4)
        for cell in notebook.cells:
            if nbgrader_meta(cell).get("grade"):
                stage = re.search(r'assert_stage\("(\w+)"\)', cell.source).group(1)
                points[stage] = points.get(stage, 0) + nbgrader_meta(cell)["points"]
                assert BEGIN_HIDDEN in cell.source, f"{lesson}: the tests of {stage} have no hidden part"
    assert points == {name: stage.max_points for name, stage in STAGES.items()}
    assert sum(points.values()) == 60


def test_every_answer_is_the_reference_code_verbatim(answers_dir):
    """Solution cells, markers removed, hold exactly solutions/'s classes and functions, and all of
    them: no answer is written anywhere else."""
    found = set()
    for lesson in LESSONS:
        notebook = nbformat.read(answers_dir / f"{lesson}.ipynb", as_version=4)
        for cell in notebook.cells:
            if not nbgrader_meta(cell).get("solution"):
                continue
            assert BEGIN_SOLUTION in cell.source
            code = "\n".join(line for line in cell.source.split("\n")
                             if "BEGIN SOLUTION" not in line and "END SOLUTION" not in line)
            for node in ast.parse(code).body:
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    module = importlib.import_module(f"solutions.{LESSONS[lesson]}")
                    reference = inspect.getsource(getattr(module, node.name))
                    segment = code.split("\n")[node.lineno - 1:node.end_lineno]
                    assert "\n".join(segment) == reference.rstrip("\n"), node.name
                    found.add(node.name)
    assert set(solutions.__all__) <= found


# --- the generator's messages ----------------------------------------------------------------

def test_generator_names_file_and_line_of_a_bad_source(tmp_path):
    source = tmp_path / "99_bad.md"
    source.write_text("# Title\n\n```rust\nfn main() {}\n```\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"99_bad\.md:3: unknown block ```rust"):
        parse_source(source)
    source.write_text("text\n```python\nx = 1\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"99_bad\.md:2: the ```python block is never closed"):
        parse_source(source)
    source.write_text("# Title\n\nExplaining ### BEGIN SOLUTION in prose\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"99_bad\.md:1: .*only come from a solution or tests"):
        build_notebook(source, answers=False)
    with pytest.raises(SourceError, match=r"patching\.py defines no top-level PatchEmbeding"):
        solution_code(Path(solutions.__file__).parent / "patching.py", ("PatchEmbeding",))


def test_sources_and_lessons_correspond():
    assert sorted(p.stem for p in SOURCE_DIR.glob("*.md")) == list(LESSONS)


# --- the helpers the notebooks call ---------------------------------------------------------

def test_quick_mode_follows_the_tests_and_nbgrader(monkeypatch):
    monkeypatch.delenv("VITLAB_LESSON_QUICK", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert not quick_mode()
    monkeypatch.setenv("VITLAB_LESSON_QUICK", "0")
    assert not quick_mode()
    monkeypatch.setenv("VITLAB_LESSON_QUICK", "1")
    assert quick_mode()
    monkeypatch.delenv("VITLAB_LESSON_QUICK")
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")  # what nbgrader 0.9.6 sets
    assert quick_mode()


def test_use_earlier_answers_loads_a_finished_notebook(answers_dir, monkeypatch, capsys):
    import torch

    monkeypatch.chdir(answers_dir)
    namespace: dict = {}
    use_earlier_answers("01_patching.ipynb", "02_cls_token.ipynb", namespace=namespace)
    assert "✓ from 01_patching.ipynb: PatchEmbedding" in capsys.readouterr().out
    tokens = namespace["ClassToken"](8)(namespace["PatchEmbedding"](1, 4, 8)(torch.zeros(2, 1, 8, 12)))
    assert tokens.shape == (2, 1 + 2 * 3, 8)


def test_use_earlier_answers_names_the_unfinished_notebook(tmp_path, monkeypatch):
    (tmp_path / "01_patching.ipynb").write_bytes((LESSON_DIR / "01_patching.ipynb").read_bytes())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with pytest.raises(EarlierLessonNotDone,
                       match=r"01_patching\.ipynb is not finished: cell \d+ \(patch_embedding\) "
                             r"still raise NotImplementedError\. Finish 01_patching\.ipynb first"):
        use_earlier_answers("01_patching.ipynb", namespace=namespace)
    assert "PatchEmbedding" in namespace  # what did load stays loaded
    with pytest.raises(EarlierLessonNotDone, match=r"02_cls_token\.ipynb is not in this folder"):
        use_earlier_answers("02_cls_token.ipynb", namespace=namespace)


def test_use_earlier_answers_reports_an_answer_that_fails(answers_dir, tmp_path, monkeypatch):
    notebook = nbformat.read(answers_dir / "01_patching.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if nbgrader_meta(c).get("solution"))
    cell.source = cell.source.replace("self.patch_size = patch_size", "self.patch_size = patch_size +")
    nbformat.write(notebook, tmp_path / "01_patching.ipynb")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EarlierLessonNotDone, match=r"01_patching\.ipynb, cell \d+ \(patch_embedding\)"
                                                   r", line \d+: SyntaxError.*\n    Fix it in 01_patching"):
        use_earlier_answers("01_patching.ipynb", namespace={})


# --- running the untouched notebooks (nbclient, real kernels) ------------------------------

@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory) -> dict:
    """Quick mode, and the small built-in dataset generated into a temporary cache."""
    return {**os.environ, "VITLAB_LESSON_QUICK": "1",
            "VITLAB_CACHE": str(tmp_path_factory.mktemp("vitlab-cache"))}


@pytest.mark.parametrize("position", range(len(LESSONS)))
def test_untouched_lesson_runs_up_to_its_first_stub(position, answers_dir, kernel_env, tmp_path):
    """A student who finished the earlier lessons opens this one: every cell runs until the first
    one that calls a stub, which raises NotImplementedError — nothing crashes before."""
    lessons = list(LESSONS)
    for earlier in lessons[:position]:
        (tmp_path / f"{earlier}.ipynb").write_bytes((answers_dir / f"{earlier}.ipynb").read_bytes())
    lesson = lessons[position]
    notebook = nbformat.read(LESSON_DIR / f"{lesson}.ipynb", as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError) as raised:
        client.execute(env=kernel_env)
    assert raised.value.ename == "NotImplementedError", raised.value
    code = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code"]
    failed = next(i for i in code if any(o.output_type == "error" for o in notebook.cells[i].outputs))
    first_stub = next(i for i in code if nbgrader_meta(notebook.cells[i]).get("solution"))
    assert failed > first_stub
    ran = [i for i in code if i < failed]
    assert all(notebook.cells[i].execution_count is not None for i in ran)
    checkpoints = [notebook.cells[i] for i in ran if "vitlab.check(" in notebook.cells[i].source]
    for cell in checkpoints:  # a checkpoint before the stub runs reports, it does not crash
        assert "not implemented" in "".join(o.get("text", "") for o in cell.outputs)
