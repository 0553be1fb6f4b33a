"""A submission's verdict: one StageResult per stage, warnings, and the contract's JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitlab.checks.base import StageResult

FIRST_MESSAGE_CHARS = 100


@dataclass
class Verdict:
    submission: str
    stages: dict[str, StageResult]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0                                          # not part of the JSON
    stage_seconds: dict[str, float] = field(default_factory=dict)  # not part of the JSON

    @property
    def points(self) -> float:
        return sum(result.points for result in self.stages.values())

    @property
    def max_points(self) -> float:
        return sum(result.max_points for result in self.stages.values())

    def to_json(self) -> dict[str, Any]:
        """The contract's JSON verdict (../shared/STAGE_CONTRACT.md, "Submissions")."""
        return {
            "submission": self.submission,
            "stages": {name: result.to_json() for name, result in self.stages.items()},
            "warnings": list(self.warnings),
            "points": round(self.points, 4),
            "max_points": self.max_points,
        }

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        return path

    def table(self) -> str:
        """One line per stage: stage, points/max, status, first message; then the total."""
        rows = [("stage", "points", "status", "first message")]
        for name, result in self.stages.items():
            messages = result.messages
            first = messages[0] if messages else ""
            if len(first) > FIRST_MESSAGE_CHARS:
                first = first[:FIRST_MESSAGE_CHARS - 1] + "…"
            rows.append((name, f"{result.points:g}/{result.max_points:g}",
                         result.status.replace("_", " "), first))
        rows.append(("total", f"{self.points:g}/{self.max_points:g}", "", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return "\n".join(
            ("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
            .rstrip() for row in rows)
