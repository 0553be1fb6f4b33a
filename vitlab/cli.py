"""The `vitlab` command: one sub-command per job, each implemented in its own module."""
import argparse
import importlib
import sys

# (words on the command line, module that implements it, one-line help)
# Each module provides add_arguments(parser) and run(args) -> exit code.
COMMANDS = [
    (("train",), "vitlab.train", "train the reference ViT (or a submission's model)"),
    (("data", "synth"), "vitlab.phantom", "write the synthetic CT-like dataset"),
    (("data", "prepare-lits"), "vitlab.prepare_lits", "turn public LiTS NIfTI volumes into the course layout"),
    (("grade",), "vitlab.grading.cli", "grade many submissions in isolated processes"),
    (("course", "init"), "vitlab.course", "write a ready nbgrader course"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module_name, help_text in COMMANDS:
        if len(words) == 1:
            sub = commands.add_parser(words[0], help=help_text, description=help_text)
        else:
            group, name = words
            if group not in groups:
                group_parser = commands.add_parser(group, help=f"{group} commands")
                groups[group] = group_parser.add_subparsers(dest=f"{group}_command", required=True,
                                                            metavar="COMMAND")
            sub = groups[group].add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
