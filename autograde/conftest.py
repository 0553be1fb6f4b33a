"""`pytest autograde/`: grade a submission stage by stage, student code isolated in a child process.

    pytest autograde/                              the lesson notebooks in lessons/
    pytest autograde/ --submission PATH            a .py file, a notebook, or a folder of them
    pytest autograde/ --submission PATH --grade-json OUT.json    also write the JSON verdict
    pytest autograde/test_patching.py              only that stage

The submission is graded once per session (vitlab.grading.grade_submission); each test file
asserts one stage's status, and the terminal ends with a table: points, status, first message.
"""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_VERDICT = pytest.StashKey()
_STAGES = pytest.StashKey()


def pytest_addoption(parser):
    group = parser.getgroup("vitlab", "vitlab autograde")
    group.addoption("--submission", default=str(REPO / "lessons"), metavar="PATH",
                    help="the submission to grade: a .py file, a notebook or a folder "
                         "(default: the lesson notebooks in lessons/)")
    group.addoption("--grade-json", default=None, metavar="OUT",
                    help="write the JSON verdict to OUT")
    group.addoption("--grade-timeout", type=float, default=None, metavar="S",
                    help="seconds per stage (default: each stage's own limit)")


def pytest_configure(config):
    if config.option.help:
        return
    from vitlab.submission import SubmissionError, read_submission

    try:
        read_submission(config.getoption("submission"))  # reads files only: runs no code
    except (FileNotFoundError, SubmissionError) as error:
        raise pytest.UsageError(f"--submission: {error}") from None


def pytest_collection_modifyitems(config, items):
    """Grade only the stages whose tests were selected (e.g. `pytest autograde/test_head.py`)."""
    stages = [getattr(item.module, "STAGE", None) for item in items]
    config.stash[_STAGES] = list(dict.fromkeys(stage for stage in stages if stage))


@pytest.fixture(scope="session")
def verdict(pytestconfig):
    """The submission's Verdict, graded once for the whole session."""
    from vitlab.checks import STAGES
    from vitlab.grading import grade_submission

    selected = pytestconfig.stash.get(_STAGES, [])
    result = grade_submission(pytestconfig.getoption("submission"),
                              stages=[name for name in STAGES if name in selected] or None,
                              timeout=pytestconfig.getoption("grade_timeout"))
    pytestconfig.stash[_VERDICT] = result
    out = pytestconfig.getoption("grade_json")
    if out:
        result.write_json(out)
    return result


def pytest_terminal_summary(terminalreporter, config):
    result = config.stash.get(_VERDICT, None)
    if result is None:
        return
    terminalreporter.section(f"vitlab grade: {result.submission}")
    for line in result.table().splitlines():
        terminalreporter.write_line(line)
    for warning in result.warnings:
        terminalreporter.write_line(f"warning: {warning}")
    out = config.getoption("grade_json")
    if out:
        terminalreporter.write_line(f"JSON verdict: {out}")
