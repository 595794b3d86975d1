"""The targets of the benchmarks: each one stated in one uniform line, met or MISSED.

Every benchmark checks its figures through one `Targets` and exits with its code:

    targets = Targets("ingest")
    targets.at_least("pipeline/ceiling sqlite", 0.74, 0.60)
    #   target pipeline/ceiling sqlite: 0.74 >= 0.60 met
    targets.below("smtp p99 to the 250 sqlite", 123.4, 100, " ms", digits=1)
    #   target smtp p99 to the 250 sqlite: 123.4 ms < 100.0 ms MISSED
    sys.exit(targets.exit_code())  # MISSED (3) when one was missed

run.py names a file in $BENCH_TARGETS; each check is appended to it at once as a
JSON line, so the summary has every target a benchmark checked, even when it died
afterwards.  A benchmark that ran to its end exits 0 or MISSED; any other status (1
for an exception or a SystemExit message) says it failed.  The value is compared as
printed, rounded to its digits, so that no line reads "0.60 >= 0.60 MISSED" (a
difference below the last digit is far below the noise of any benchmark).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

ENV = "BENCH_TARGETS"  # the file run.py reads the targets back from
MISSED = 3  # exit status: the benchmark ran to its end and missed a target


@dataclass(frozen=True)
class Target:
    bench: str
    name: str
    value: float
    op: str  # ">=" or "<"
    goal: float
    unit: str = ""
    digits: int = 2

    @property
    def met(self) -> bool:
        value = round(self.value, self.digits)
        return value >= self.goal if self.op == ">=" else value < self.goal

    @property
    def result(self) -> str:
        return "met" if self.met else "MISSED"

    def figure(self, number: float) -> str:
        return f"{number:.{self.digits}f}{self.unit}"

    def line(self) -> str:
        return (f"target {self.name}: {self.figure(self.value)} {self.op} "
                f"{self.figure(self.goal)} {self.result}")


class Targets:
    """The targets one benchmark checked in this run."""

    def __init__(self, bench: str, out: TextIO | None = None) -> None:
        self.bench, self.out = bench, out
        self.checked: list[Target] = []

    def at_least(self, name: str, value: float, goal: float, unit: str = "",
                 digits: int = 2) -> bool:
        return self._check(Target(self.bench, name, value, ">=", goal, unit, digits))

    def below(self, name: str, value: float, goal: float, unit: str = "",
              digits: int = 2) -> bool:
        return self._check(Target(self.bench, name, value, "<", goal, unit, digits))

    def _check(self, target: Target) -> bool:
        self.checked.append(target)
        print(target.line(), file=self.out or sys.stdout, flush=True)
        if path := os.environ.get(ENV):
            with open(path, "a") as fh:
                fh.write(json.dumps(asdict(target)) + "\n")
        return target.met

    def exit_code(self) -> int:
        return 0 if all(t.met for t in self.checked) else MISSED


def read(path: Path) -> list[Target]:
    """The targets appended to `path` (none when the benchmark wrote none)."""
    if not path.exists():
        return []
    return [Target(**json.loads(line)) for line in path.read_text().splitlines() if line]
