"""Interleaved timing: a noisy minute hits the baseline and the case compared with it alike.

The machine is shared, so absolute rates drift from second to second. Each figure we report
is therefore a ratio of two things measured next to each other: in every round the baseline
runs before every second case and at the end, so each case is compared with the baseline
runs just before and just after it; the order of the cases rotates from round to round.
"""
import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Case:
    """One thing to time: `run()` does `work` units (images, submissions...) per call."""
    name: str
    run: Callable[[], None]
    work: float


def rate(case: Case) -> float:
    start = time.perf_counter()
    case.run()
    return case.work / (time.perf_counter() - start)


def interleave(cases: list[Case], baseline: str, rounds: int,
               log: Callable[[str], None] = print) -> dict[str, dict[str, list[float]]]:
    """Per case, its rate (work/s) and its ratio to the neighbouring baseline runs, in every round."""
    base = next(case for case in cases if case.name == baseline)
    others = [case for case in cases if case is not base]
    results = {case.name: {"rates": [], "ratios": []} for case in cases}
    for r in range(rounds):
        shift = r % len(others) if others else 0
        order = others[shift:] + others[:shift]
        base_rates = [rate(base)]
        for i in range(0, len(order), 2):
            pair = [(case, rate(case)) for case in order[i:i + 2]]
            base_rates.append(rate(base))
            around = (base_rates[-2] + base_rates[-1]) / 2
            for case, value in pair:
                results[case.name]["rates"].append(value)
                results[case.name]["ratios"].append(value / around)
        results[baseline]["rates"].append(statistics.median(base_rates))
        results[baseline]["ratios"].append(1.0)
        log(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {values['rates'][-1]:.1f}/s" for name, values in results.items()))
    return results


def summarise(measured: dict[str, dict[str, list[float]]], baseline: str) -> dict[str, dict]:
    """Per case: the median rate, and the median over rounds of its ratio to the baseline."""
    return {name: {"median_per_s": statistics.median(values["rates"]),
                   "rates_per_s": values["rates"],
                   f"ratio_to_{slug(baseline)}": statistics.median(values["ratios"]),
                   "ratios": values["ratios"]}
            for name, values in measured.items()}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
