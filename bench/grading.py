"""Grading benchmark: `vitlab grade --jobs 2` against `nbgrader autograde` on the same submissions.

A course made by `vitlab course init`, its release from `nbgrader generate_assignment`, and
20 students in submitted/<student>/vit/ (every lesson answered with the reference, or lessons
1-3 only, or none). Also: seconds to grade the reference (all stages, and each stage) and a
notebook checkpoint (`vitlab.check` in this process).
"""
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
STUDENTS = 20
KINDS = ("answers", "first_three", "untouched")  # cycled over the students


def missing() -> str | None:
    try:
        import vitlab.course  # noqa: F401
        import vitlab.grading  # noqa: F401
        from vitlab.lessons import LESSONS  # noqa: F401
    except ImportError as error:
        return f"vitlab grade, vitlab course or the lessons are not there yet ({error})"
    return None


def seconds(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def write_students(root: Path, count: int) -> list[str]:
    from vitlab.course import ASSIGNMENT
    from vitlab.lessons import LESSONS

    release, source = root / "release" / ASSIGNMENT, root / "source" / ASSIGNMENT
    names = [f"{lesson}.ipynb" for lesson in LESSONS]
    students = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        student = f"student{i:02d}_{kind}"
        folder = root / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        for position, name in enumerate(names):
            # an answered lesson: the instructor's source notebook, whose solution cells hold the
            # reference answers (the solution markers are comments; autograde restores the tests)
            use_answer = kind == "answers" or (kind == "first_three" and position < 3)
            shutil.copyfile((source if use_answer else release) / name, folder / name)
        students.append(student)
    return students


def checkpoint_seconds(rounds: int) -> dict[str, float]:
    """Median seconds of `vitlab.check(stage, ...)` on the reference, per stage, in this process."""
    import solutions
    import vitlab
    from vitlab.checks import STAGES

    timings = {}
    for name, stage in STAGES.items():
        symbols = {s: getattr(solutions, s) for s in stage.symbols + stage.optional_symbols if hasattr(solutions, s)}
        runs = []
        for _ in range(rounds):
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                result = vitlab.check(name, **symbols)
            runs.append(time.perf_counter() - start)
            if result.status != "passed":
                raise RuntimeError(f"vitlab.check({name!r}) on the reference did not pass:\n{result.report()}")
        timings[name] = statistics.median(runs)
    return timings


def reference_seconds(submission: Path) -> dict[str, float]:
    """Seconds for grade_submission on the reference answers: the first call (which also starts
    the grader's zygote process, importing torch), then all stages, then each stage alone."""
    from vitlab.checks import STAGES
    from vitlab.grading import grade_submission

    timings = {}
    for label, stages in ([("first call (patching, starts the grader)", ["patching"]), ("all stages", None)]
                          + [(name, [name]) for name in STAGES]):
        start = time.perf_counter()
        verdict = grade_submission(submission, stages=stages)
        timings[label] = time.perf_counter() - start
        if verdict.points != verdict.max_points:
            raise RuntimeError(f"the reference answers scored {verdict.points}/{verdict.max_points} ({label})")
    return timings


def run(rounds: int = 1, quick: bool = False, log=print) -> dict:
    from vitlab import cli
    from vitlab.course import ASSIGNMENT

    count = 3 if quick else STUDENTS
    results = {"title": "Grading", "students": count}
    with tempfile.TemporaryDirectory(prefix="vitlab-bench-grading-") as tmp:
        root = Path(tmp) / "course"
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               "VITLAB_CACHE": str(Path(tmp) / "cache")}
        env.pop("VITLAB_LESSON_QUICK", None)
        with contextlib.redirect_stdout(io.StringIO()):
            cli.main(["course", "init", str(root)])
        seconds(["nbgrader", "generate_assignment", ASSIGNMENT], root, env)
        students = write_students(root, count)
        answers = root / "submitted" / students[0] / ASSIGNMENT
        log(f"  course with {count} students in {root}")

        results["checkpoint_s"] = checkpoint_seconds(3)
        log(f"  vitlab.check per stage: {results['checkpoint_s']}")
        results["reference_s"] = reference_seconds(answers)
        log(f"  grading the reference: {results['reference_s']}")

        # Whole runs take minutes, so each round is one nbgrader run and one vitlab run, back to back.
        runs = {"nbgrader autograde": [], "vitlab grade --jobs 2": []}
        for r in range(max(1, rounds)):
            force = ["--force"] if r else []
            nbgrader = seconds(["nbgrader", "autograde", ASSIGNMENT, *force], root, env)
            vitlab_grade = seconds([str(BIN / "vitlab"), "grade", "submitted", "--jobs", "2",
                                    "--out", str(Path(tmp) / f"grades-{r}.csv")], root, env)
            runs["nbgrader autograde"].append(nbgrader / count)
            runs["vitlab grade --jobs 2"].append(vitlab_grade / count)
            log(f"  round {r + 1}: nbgrader {nbgrader:.0f} s, vitlab grade {vitlab_grade:.0f} s for {count} submissions")

    ratios = [n / v for n, v in zip(runs["nbgrader autograde"], runs["vitlab grade --jobs 2"])]
    results["per_submission_s"] = {name: statistics.median(values) for name, values in runs.items()}
    results["runs_per_submission_s"] = runs
    results["speedup"] = statistics.median(ratios)
    results["targets"] = [{"what": "grading: vitlab grade --jobs 2 vs nbgrader autograde, per submission",
                           "value": results["speedup"], "goal": 3.0, "met": results["speedup"] >= 3.0}]
    results["notes"] = [
        f"{count} submissions: {', '.join(KINDS)} in turn (six lesson notebooks each).",
        "nbgrader autograde runs every cell of every notebook, one submission after the other, in the "
        "student's own kernel (lesson 6 trains, in its quick mode). vitlab grade runs only the solution and "
        "import cells, then each stage's checks in an isolated child process forked from a warm zygote, "
        "two submissions at a time (--jobs 2).",
    ]
    results["sections"] = [
        {"title": f"Grading {count} submissions", "columns": ["grader", "seconds per submission (median)", "vs nbgrader"],
         "rows": [[name, f"{s:.2f}", f"{results['per_submission_s']['nbgrader autograde'] / s:.2f}x"]
                  for name, s in results["per_submission_s"].items()]},
        {"title": "Grading the reference answers (grade_submission, an isolated child process)",
         "columns": ["stages", "seconds"], "rows": [[k, f"{v:.2f}"] for k, v in results["reference_s"].items()]},
        {"title": "A notebook checkpoint: vitlab.check on the reference, in process (median of 3)",
         "columns": ["stage", "seconds"], "rows": [[k, f"{v:.3f}"] for k, v in results["checkpoint_s"].items()]},
    ]
    return results
