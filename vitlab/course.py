"""`vitlab course init DIR`: write a ready nbgrader course with the six lessons as one assignment.

    DIR/nbgrader_config.py     kernel python3, 120 s per cell, the gradebook in DIR/gradebook.db,
                               feedback without the hidden tests
    DIR/source/vit/*.ipynb     the lessons with answers (in solution regions) and hidden tests

Everything after that is stock nbgrader, run from DIR (see NEXT_STEPS).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ASSIGNMENT = "vit"
CELL_TIMEOUT_S = 120

CONFIG = '''\
# Written by `vitlab course init`. nbgrader reads this file from the folder it runs in.
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import GetGrades

from vitlab.nbgrader_feedback import ClearHiddenTestsFromFeedback

c = get_config()
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = {course_id!r}
c.CourseDirectory.db_url = {db_url!r}

# Every notebook runs in the kernel "python3", whatever kernel a student saved it with.
c.Execute.kernel_name = "python3"
c.Execute.timeout = {timeout}  # seconds per cell; lesson 6 trains briefly under autograde
c.ClearSolutions.code_stub = {{"python": {stub!r}}}

# Feedback shows the visible tests and every check's report, never the hidden tests' code.
c.GenerateFeedback.preprocessors = [GetGrades, ClearHiddenTestsFromFeedback,
                                    CSSHTMLHeaderPreprocessor]
'''

NEXT_STEPS = '''\
Next steps, all from the course folder:

  cd {root}
  nbgrader generate_assignment {a}        # release/{a}/: the lessons as students get them
  # hand out release/{a}/; collect every student's notebooks into submitted/<student>/{a}/
  nbgrader autograde {a}                  # runs the tests in each student's notebooks
  nbgrader generate_feedback {a}          # feedback/<student>/{a}/*.html
  nbgrader export                         # grades.csv

nbgrader runs the tests inside the students' own kernels, where student code can fool them.
Re-grade the same submissions in isolation and flag every student nbgrader scored higher:

  vitlab grade submitted --out vitlab-grades.csv --nbgrader-db gradebook.db
'''


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, metavar="DIR", help="the course folder to write")
    parser.add_argument("--force", action="store_true",
                        help=f"overwrite an existing nbgrader_config.py and source/{ASSIGNMENT}/")


def init_course(root: Path, force: bool = False) -> list[Path]:
    """Write nbgrader_config.py and source/vit/ into `root`; return the files written."""
    from vitlab.lessons.build import CODE_STUB, SOURCE_DIR, write_lessons

    if not SOURCE_DIR.is_dir():
        raise FileNotFoundError(f"The lesson sources {SOURCE_DIR} are missing: `vitlab course init` "
                                f"needs a vitlab checkout installed with `pip install -e .`.")
    root = root.resolve()
    config = root / "nbgrader_config.py"
    source = root / "source" / ASSIGNMENT
    existing = [path for path in (config, source) if path.exists()]
    if existing and not force:
        raise FileExistsError(f"{' and '.join(map(str, existing))} already exist: this looks like a "
                              f"course. Pass --force to overwrite them.")
    root.mkdir(parents=True, exist_ok=True)
    config.write_text(CONFIG.format(root=str(root), course_id=ASSIGNMENT,
                                    db_url=f"sqlite:///{root / 'gradebook.db'}",
                                    timeout=CELL_TIMEOUT_S, stub=CODE_STUB), encoding="utf-8")
    return [config, *write_lessons(source, answers=True)]


def run(args: argparse.Namespace) -> int:
    from vitlab.lessons.build import SourceError

    try:
        written = init_course(args.directory, force=args.force)
    except (OSError, SourceError) as error:
        print(f"vitlab course init: {error}", file=sys.stderr)
        return 1
    root = written[0].parent
    print(f"Wrote the course {root}:")
    for path in written:
        print(f"  {path.relative_to(root)}")
    print()
    print(NEXT_STEPS.format(root=root, a=ASSIGNMENT))
    return 0
