"""The grader: student code runs in an isolated child process, the verdict is made outside it.

`grade_submission(path, stages=None, seed=None)` -> `Verdict` (`.to_json()` is the contract's
JSON verdict). `vitlab grade` (cli.py) grades many submissions in parallel.
"""
__all__ = ["grade_submission", "Verdict", "DEFAULT_MEMORY_MB", "kill_all_children"]


def __getattr__(name: str):
    # Imported on first use, so that `vitlab --help` and the sandbox do not pay for torch.
    if name == "Verdict":
        from vitlab.grading.verdict import Verdict

        return Verdict
    if name in __all__:
        from vitlab.grading import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'vitlab.grading' has no attribute {name!r}")
