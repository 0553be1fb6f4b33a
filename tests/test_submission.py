"""The submission loader (vitlab.submission): which code of a .py file, a notebook or a folder runs,
in which order, and how a failing cell is reported. In-process: no grading here."""
import warnings

import nbformat
import pytest
import torch

from vitlab.submission import (SubmissionError, SubmissionWarning, defined_names, load_submission,
                               notebook_code, read_submission, run_cells)

IMPORTS = "%matplotlib inline\nimport torch\nfrom torch import nn\n"

STUB_PATCH_EMBEDDING = '''\
class PatchEmbedding(nn.Module):
    def __init__(self, in_channels=1, patch_size=16, embed_dim=192):
        super().__init__()
        raise NotImplementedError()
'''

PATCH_EMBEDDING = '''\
class PatchEmbedding(nn.Module):
    def __init__(self, in_channels=1, patch_size=16, embed_dim=192):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)
'''

CLASS_TOKEN = '''\
class ClassToken(nn.Module):
    def __init__(self, embed_dim):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))

    def forward(self, x):
        return torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
'''


def write_notebook(path, cells):
    """cells: (kind, source) with kind "solution", "code" or "markdown"."""
    notebook = nbformat.v4.new_notebook()
    for i, (kind, source) in enumerate(cells):
        if kind == "markdown":
            notebook.cells.append(nbformat.v4.new_markdown_cell(source))
            continue
        cell = nbformat.v4.new_code_cell(source)
        if kind == "solution":
            cell.metadata["nbgrader"] = {"grade": False, "solution": True, "locked": False,
                                         "grade_id": f"answer_{i}", "schema_version": 3}
        notebook.cells.append(cell)
    nbformat.write(notebook, str(path))
    return path


def assert_patch_embedding_works(cls):
    out = cls(in_channels=1, patch_size=4, embed_dim=5)(torch.zeros(2, 1, 8, 12))
    assert out.shape == (2, 6, 5)


def test_py_file_is_imported_as_a_module_without_its_main_block(tmp_path):
    path = tmp_path / "answer.py"
    path.write_text("import torch\nfrom torch import nn\n" + PATCH_EMBEDDING
                    + "\nif __name__ == '__main__':\n    raise SystemExit('the main block ran')\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SubmissionWarning)
        submission = load_submission(path, stages=["patching"])
    assert_patch_embedding_works(submission.PatchEmbedding)
    assert submission.PatchEmbedding.__module__.startswith("vitlab_submission_answer_")
    assert vars(submission) == {"PatchEmbedding": submission.PatchEmbedding}


def test_notebook_runs_solution_and_import_cells_only_in_order(tmp_path):
    with_magic = PATCH_EMBEDDING.replace("\n\n", "\n!pip install einops\n")
    path = write_notebook(tmp_path / "01_patching.ipynb", [
        ("markdown", "# Patching"),
        ("code", IMPORTS),                                            # import cell: runs
        ("solution", STUB_PATCH_EMBEDDING),                           # replaced below
        ("code", "model = PatchEmbedding()\nraise RuntimeError('the training cell ran')"),
        ("code", "import os\nos._exit(3)"),                           # not imports only: skipped
        ("solution", with_magic),                                     # `!pip` line is skipped
        ("code", "import vitlab\nvitlab.check('patching', PatchEmbedding)"),
    ])
    cells = notebook_code(path)
    assert [(c.number, c.kind) for c in cells] == [(2, "import"), (3, "solution"), (6, "solution")]
    assert cells[2].grade_id == "answer_5"
    assert cells[2].where == "01_patching.ipynb, cell 6 (answer_5)"
    assert "pip" not in cells[2].code and cells[2].code.count("\n") == with_magic.count("\n")

    with warnings.catch_warnings():
        warnings.simplefilter("error", SubmissionWarning)
        submission = load_submission(path, stages=["patching"])
    assert_patch_embedding_works(submission.PatchEmbedding)  # the later definition won


def test_folder_runs_notebooks_and_modules_in_name_order_in_one_namespace(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    write_notebook(folder / "02_cls_token.ipynb", [
        ("code", IMPORTS),
        ("solution", PATCH_EMBEDDING + CLASS_TOKEN + "SEEN = FIRST_NOTEBOOK\n")])
    write_notebook(folder / "01_patching.ipynb", [
        ("code", IMPORTS), ("solution", STUB_PATCH_EMBEDDING + "FIRST_NOTEBOOK = 1\n")])
    (folder / "03_helpers.py").write_text("def train_one_epoch(*args):\n    return 0.5\n")
    (folder / "__init__.py").write_text("raise RuntimeError('a package __init__ is not a submission')\n")
    (folder / "notes.txt").write_text("not code")

    cells, unreadable = read_submission(folder)
    assert unreadable == []
    assert [(c.label, c.number) for c in cells] == [
        ("work/01_patching.ipynb", 1), ("work/01_patching.ipynb", 2),
        ("work/02_cls_token.ipynb", 1), ("work/02_cls_token.ipynb", 2), ("work/03_helpers.py", None)]
    namespace, failures = run_cells(cells)
    assert failures == []
    assert namespace["SEEN"] == 1                   # notebook 02 saw notebook 01's names
    assert namespace["train_one_epoch"]() == 0.5    # the module's names join the namespace
    assert_patch_embedding_works(namespace["PatchEmbedding"])


def test_syntax_error_fails_its_cell_with_cell_and_line_and_the_rest_still_loads(tmp_path):
    broken = CLASS_TOKEN.replace("def forward(self, x):", "def forward(self, x)")
    path = write_notebook(tmp_path / "lesson.ipynb", [
        ("code", IMPORTS), ("solution", broken), ("solution", PATCH_EMBEDDING)])
    namespace, failures = run_cells(read_submission(path)[0])
    assert "ClassToken" not in namespace
    assert_patch_embedding_works(namespace["PatchEmbedding"])
    (failure,) = failures
    assert failure.defines == ("ClassToken",)     # from the def/class lines: the code has no AST
    assert failure.position == 1 and not failure.not_implemented
    assert failure.message.startswith("lesson.ipynb, cell 2 (answer_1), line 6: SyntaxError")

    with pytest.warns(SubmissionWarning, match=r"cell 2 \(answer_1\), line 6: SyntaxError"):
        submission = load_submission(path, stages=["patching", "cls_token"])
    with pytest.raises(AttributeError, match="defines no ClassToken"):
        submission.ClassToken


def test_errors_name_the_deepest_line_of_the_students_code(tmp_path):
    path = write_notebook(tmp_path / "lesson.ipynb", [
        ("solution", "def helper():\n    x = 1\n    return undefined_name\n"),
        ("solution", "import sys\n\nvalue = helper()\n"),
        ("solution", "sys.exit(2)\n"),
        ("solution", "class ClassToken:\n    pass\nraise NotImplementedError()\n"),
        ("solution", "AFTER = True\n"),
    ])
    namespace, failures = run_cells(read_submission(path)[0])
    assert namespace["AFTER"] is True             # a failing cell does not stop the others
    messages = [f.message for f in failures]
    assert messages[0] == ("lesson.ipynb, cell 2 (answer_1), line 3: "
                           "NameError: name 'undefined_name' is not defined")
    assert messages[1] == ("lesson.ipynb, cell 3 (answer_2), line 1: "
                           "SystemExit: the code called sys.exit(2) or exit()")
    assert failures[2].not_implemented and failures[2].defines == ("ClassToken",)


def test_unreadable_notebook_is_reported_and_the_other_files_load(tmp_path):
    folder = tmp_path / "sub"
    folder.mkdir()
    (folder / "01_broken.ipynb").write_text('{"cells": [')
    (folder / "02_ok.py").write_text("import torch\nfrom torch import nn\n" + CLASS_TOKEN)
    cells, unreadable = read_submission(folder)
    assert [c.label for c in cells] == ["sub/02_ok.py"]
    (failure,) = unreadable
    assert failure.defines is None
    assert failure.message.startswith("sub/01_broken.ipynb is not a readable notebook")
    with pytest.raises(SubmissionError, match="not a readable notebook"):
        notebook_code(folder / "01_broken.ipynb")


def test_paths_that_are_not_submissions_get_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        read_submission(tmp_path / "missing.ipynb")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(SubmissionError, match="expected a .py file, a .ipynb notebook, or a folder"):
        read_submission(tmp_path / "data.csv")
    with pytest.raises(SubmissionError, match="holds no .py file and no .ipynb notebook"):
        read_submission(tmp_path)


def test_defined_names_cover_definitions_assignments_and_imports():
    code = ("import torch.nn as nn\nfrom math import sqrt, pi as PI\nclass A: pass\n"
            "def f():\n    inner = 1\nx, (y, z) = 1, (2, 3)\nn: int = 3\n"
            "try:\n    import einops\nexcept ImportError:\n    einops = None\n")
    assert defined_names(code) == ("nn", "sqrt", "PI", "A", "f", "x", "y", "z", "n", "einops")
    assert defined_names("class B(:\n    pass\nC = 1\nD == 2\n") == ("B", "C")
