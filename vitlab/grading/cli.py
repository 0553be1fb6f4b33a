"""`vitlab grade SUBMISSION... --out grades.csv`: grade many submissions in parallel.

Each SUBMISSION is a .py file, a notebook, a folder, or an nbgrader `submitted/` folder
(`submitted/<student>/<assignment>/*.ipynb`), in which every `<student>/<assignment>` folder is
one submission named by the student id. Writes one CSV row per submission (points per stage,
total, maximum) and the contract's JSON verdict per submission into a folder named like the CSV
(grades.csv -> grades/<name>.json). `--nbgrader-db` adds each student's nbgrader score and flags
those whose nbgrader score (as a fraction of its maximum) is higher than vitlab's.

The graders are threads: each one only waits on its own isolated child process (and judges the
plain data it sends), so `--jobs N` runs N children at once.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCE_SUFFIXES = (".py", ".ipynb")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submissions", nargs="+", type=Path, metavar="SUBMISSION",
                        help="a .py file, a notebook, a folder, or an nbgrader submitted/ folder")
    parser.add_argument("--out", type=Path, required=True,
                        help="the CSV to write; the JSON verdicts go to a folder of the same name")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                        help="submissions graded at the same time (default: %(default)s)")
    parser.add_argument("--nbgrader-db", type=Path, metavar="PATH",
                        help="an nbgrader gradebook (gradebook.db): compare its scores with vitlab's")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="seconds per stage (default: each stage's own limit)")
    parser.add_argument("--stage", action="append", dest="stages", metavar="NAME",
                        help="grade only this stage (repeat for more; default: all six)")
    parser.add_argument("--memory-mb", type=int, metavar="MB",
                        help="memory each submission may use beyond torch's own (default: 4096)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the checks' inputs")


@dataclass(frozen=True)
class Entry:
    """One submission to grade."""

    name: str
    path: Path
    student: str = ""
    assignment: str = ""


def _has_sources(folder: Path) -> bool:
    return any(p.suffix in SOURCE_SUFFIXES for p in folder.iterdir() if p.is_file())


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def nbgrader_entries(submitted: Path) -> list[Entry]:
    """The `<student>/<assignment>` folders of an nbgrader submitted/ folder ([] if it is not one).
    A submission is named by its student id, or `student/assignment` when a student has several."""
    if not submitted.is_dir() or _has_sources(submitted):
        return []
    pairs = [(student, assignment) for student in _subfolders(submitted)
             for assignment in _subfolders(student) if _has_sources(assignment)]
    several = len({s for s, _ in pairs}) < len(pairs)
    return [Entry(f"{s.name}/{a.name}" if several else s.name, a, s.name, a.name)
            for s, a in pairs]


def expand_submissions(paths: list[Path]) -> list[Entry]:
    entries: list[Entry] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        entries += nbgrader_entries(path) or [Entry(path.stem if path.is_file() else
                                                    path.resolve().name, path)]
    seen: dict[str, int] = {}
    unique = []
    for entry in entries:
        seen[entry.name] = seen.get(entry.name, 0) + 1
        name = entry.name if seen[entry.name] == 1 else f"{entry.name}-{seen[entry.name]}"
        unique.append(Entry(name, entry.path, entry.student, entry.assignment))
    return unique


def json_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name) + ".json"


# --- nbgrader ----------------------------------------------------------------------------------

def nbgrader_scores(db_path: Path, entries: list[Entry]) -> dict[str, tuple[float, float]]:
    """name -> (score, max_score) from an nbgrader gradebook, for the entries nbgrader graded."""
    bin_dir = os.path.dirname(sys.executable)   # nbgrader runs `alembic` from the PATH
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    from nbgrader.api import Gradebook, MissingEntry

    scores = {}
    with Gradebook(f"sqlite:///{db_path.resolve()}") as gradebook:
        for entry in entries:
            if not entry.student:
                continue
            try:
                submission = gradebook.find_submission(entry.assignment, entry.student)
            except MissingEntry:
                continue
            scores[entry.name] = (float(submission.score), float(submission.max_score))
    return scores


def nbgrader_is_higher(nbgrader: tuple[float, float], points: float, max_points: float) -> bool:
    """Whether nbgrader gave more than vitlab, each score as a fraction of its own maximum."""
    score, maximum = nbgrader
    if maximum <= 0 or max_points <= 0:
        return False
    return score / maximum > points / max_points + 1e-9


# --- grading -----------------------------------------------------------------------------------

def _grade_one(entry: Entry, args: argparse.Namespace, hidden: list[Path]):
    from vitlab.checks import STAGES, stage_names
    from vitlab.checks.base import error_result
    from vitlab.grading.runner import DEFAULT_MEMORY_MB, grade_submission
    from vitlab.grading.verdict import Verdict
    from vitlab.submission import SubmissionError

    try:
        return grade_submission(entry.path, args.stages, args.seed, timeout=args.timeout,
                                memory_mb=args.memory_mb or DEFAULT_MEMORY_MB, hidden=hidden)
    except (OSError, SubmissionError, ValueError) as error:
        names = stage_names(args.stages or None)
        return Verdict(str(entry.path), {name: error_result(STAGES[name], str(error))
                                         for name in names}, [str(error)])


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vitlab.checks import stage_names
    from vitlab.grading.runner import kill_all_children

    try:
        stages = stage_names(args.stages or None)
    except ValueError as error:
        print(f"vitlab grade: {error}", file=sys.stderr)
        return 2
    try:
        entries = expand_submissions(args.submissions)
    except FileNotFoundError as error:
        print(f"vitlab grade: {error}", file=sys.stderr)
        return 2
    if args.nbgrader_db is not None and not args.nbgrader_db.is_file():
        print(f"vitlab grade: {args.nbgrader_db}: no such gradebook file", file=sys.stderr)
        return 2
    if args.out.suffix.lower() != ".csv":
        print(f"vitlab grade: --out {args.out}: name the CSV file to write, e.g. grades.csv (the JSON "
              f"verdicts then go to the folder grades/)", file=sys.stderr)
        return 2
    json_dir = args.out.with_suffix("")
    hidden = [p.resolve() for p in args.submissions] + [args.out.resolve(), json_dir.resolve()]
    if args.nbgrader_db is not None:
        hidden += [args.nbgrader_db.resolve().parent]   # the course: source/, release/, the db

    started = time.perf_counter()
    verdicts = {}
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        futures = {pool.submit(_grade_one, entry, args, hidden): entry for entry in entries}
        for future in tqdm(as_completed(futures), total=len(futures), desc="grading",
                           unit="submission", file=sys.stderr):
            verdicts[futures[future].name] = future.result()
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        kill_all_children()
        raise
    pool.shutdown()

    scores = nbgrader_scores(args.nbgrader_db, entries) if args.nbgrader_db else {}
    columns = ["submission", *stages, "total", "max"]
    if args.nbgrader_db:
        columns += ["nbgrader_points", "flagged"]
    rows, flagged = [], []
    for entry in entries:
        verdict = verdicts[entry.name]
        verdict.write_json(json_dir / json_name(entry.name))
        row = {"submission": entry.name, "total": f"{verdict.points:g}",
               "max": f"{verdict.max_points:g}"}
        row.update({name: f"{verdict.stages[name].points:g}" for name in stages})
        if args.nbgrader_db:
            score = scores.get(entry.name)
            higher = score is not None and nbgrader_is_higher(score, verdict.points,
                                                              verdict.max_points)
            row.update(nbgrader_points="" if score is None else f"{score[0]:g}",
                       flagged="yes" if higher else "")
            if higher:
                flagged.append(f"{entry.name} (nbgrader {score[0]:g}/{score[1]:g}, "
                               f"vitlab {verdict.points:g}/{verdict.max_points:g})")
        rows.append(row)
    write_csv(args.out, rows, columns)
    print(f"graded {len(entries)} submission(s) in {time.perf_counter() - started:.1f} s: "
          f"{args.out} and {json_dir}/")
    if flagged:
        print(f"flagged: nbgrader scored {len(flagged)} student(s) higher than vitlab:")
        for line in flagged:
            print(f"  {line}")
    return 0
