"""python -m bench [model] [data] [grading] [--repeats N] [--quick]

Runs the named parts (all by default), writes each part's JSON to bench/results/ and
rewrites docs/performance.md from every result present.
"""
import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

from bench import machine, report

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[2])
    parser.add_argument("parts", nargs="*", metavar="PART",
                        help=f"any of {', '.join(report.PARTS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per comparison (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the benchmark runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: PyTorch's own choice, one per core)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "performance.md")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.parts) - set(report.PARTS))
    if unknown:
        parser.error(f"unknown part {', '.join(unknown)}: choose from {', '.join(report.PARTS)}")
    args.results.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    for part in args.parts or report.PARTS:
        module = importlib.import_module(f"bench.{part}")
        missing = module.missing() if hasattr(module, "missing") else None
        if missing:
            print(f"[bench] {part}: skipped, {missing}", flush=True)
            continue
        print(f"[bench] {part}", flush=True)
        results = module.run(rounds=args.repeats, quick=args.quick,
                             log=lambda line: print(line, flush=True))
        results["machine"] = machine.describe()
        results["date"] = report.stamp()
        path = args.results / f"{part}.json"
        path.write_text(json.dumps(results, indent=1))
        print(f"[bench] {part}: wrote {path}", flush=True)
    out = report.write(args.results, args.report)
    print(f"[bench] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
