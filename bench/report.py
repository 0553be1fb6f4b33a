"""docs/performance.md, written from the JSON results of every part that has been run."""
import datetime
import json
from pathlib import Path

PARTS = ("model", "data", "grading", "gpu")
TITLES = {"model": "Model", "data": "Data", "grading": "Grading", "gpu": "GPU"}
WHERE = {"gpu": " on a machine with a CUDA GPU (it is skipped where there is none)"}

INTRO = """\
# Performance

Written by `make bench` (`python -m bench`; one part: `python -m bench model --repeats 5`)
from the JSON results in `bench/results/`. Do not edit by hand: run the benchmark again.

How the figures are taken: the machine is shared, so absolute speeds drift from second to
second. Every speed figure is therefore a ratio of two things measured next to each other:
in every round the baseline runs before every second case and again after it, each case is
compared with the baseline runs around it, and the order rotates from round to round. A ratio
is the median over rounds; an images/s column is the median of the case's own rounds, so it
drifts with the machine's load where the ratio next to it does not. The machine's load
average when each part finished is in its machine table.
"""


def load(results_dir: Path) -> dict[str, dict]:
    results = {}
    for part in PARTS:
        path = results_dir / f"{part}.json"
        if path.exists():
            results[part] = json.loads(path.read_text())
    return results


def table(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_section(machine: dict) -> str:
    rows = [[key.replace("_", " "), ", ".join(map(str, value)) if isinstance(value, list) else value]
            for key, value in machine.items() if key != "gpu"]
    gpu = machine.get("gpu")
    rows.append(["gpu", "none" if not gpu else f"{gpu['name']}, {gpu['memory_gib']} GiB"])
    return "## Machine\n\n" + table(["what", "value"], rows)


def render(results: dict[str, dict]) -> str:
    parts = [INTRO]
    machines = {part: r["machine"] for part, r in results.items() if "machine" in r}
    for part, machine in machines.items():
        parts.append(machine_section(machine).replace("## Machine", f"## Machine ({part} run, {results[part]['date']})"))
    targets = [[t["what"], t["goal"], f"{t['value']:.2f}", "met" if t["met"] else "**missed**"]
               for r in results.values() for t in r.get("targets", [])]
    if targets:
        parts.append("## Targets\n\n" + table(["target", "goal", "measured", ""], targets))
    for part in PARTS:
        if part not in results:
            parts.append(f"## {TITLES[part]}\n\nNot run yet: `python -m bench {part}`{WHERE.get(part, '')}.")
            continue
        r = results[part]
        body = [f"## {r['title']}"]
        if r.get("notes"):
            body.append("\n".join(f"- {note}" for note in r["notes"]))
        for section in r["sections"]:
            body.append(f"### {section['title']}\n\n" + table(section["columns"], section["rows"]))
        parts.append("\n\n".join(body))
    return "\n\n".join(parts) + "\n"


def write(results_dir: Path, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(load(results_dir)))
    return out


def stamp() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
