"""What every benchmark does with its result: add where and when it ran, write it, print it."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def write_result(out: Path, report: dict[str, Any]) -> None:
    """Write `report` as JSON to `out` (benchmarks/results/NAME.json by default), with the date,
    machine, CPU count and Python version added, and print it."""
    report = {**report, "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
              "cpus": os.cpu_count(), "python": platform.python_version()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
