"""vitlab: build a Vision Transformer stage by stage, with autograded checkpoints."""

__version__ = "0.1.0"


def check(stage, *symbols, **named):
    """Run one stage's checkpoint on your own code and print a short report (see vitlab.checks)."""
    from vitlab.checks import check as _check

    return _check(stage, *symbols, _caller_depth=2, **named)
