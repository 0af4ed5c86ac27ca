"""Peak memory while iterating a 1,000,000-row manifest as a lazy CutSet (goal: <= 300 MB above baseline).

    python benchmarks/manifest_memory.py [--rows N] [--out benchmarks/results/manifest_memory.json]

The rows point at a few real WAV files (the audio is not read; headers are). Each kind of manifest
macasr reads is measured in a fresh process: macasr JSONL (the check pass plus one iteration) and a
lhotse CutSet (`*.jsonl.gz`) written from it. Peak RSS comes from the OS (the child's VmHWM; Linux only).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

GOAL_MB = 300

# Peak RSS is the kernel's VmHWM of the child: unlike ru_maxrss, it starts afresh at exec, so the
# parent's own peak (it writes the corpus) cannot leak into the measurement.
_CHILD = """
import sys, time
from macasr.data.manifest import open_cuts
import lhotse  # imported before the baseline, so the library itself is not counted

def hwm_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))

base = hwm_kb()
t0 = time.perf_counter()
n = seconds = 0
for cut in open_cuts(sys.argv[1]):
    n += 1
    seconds += cut.duration
print(n, seconds, base, hwm_kb(), time.perf_counter() - t0)
"""


def write_corpus(folder: Path, rows: int, files: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for i in range(files):
        sf.write(folder / f"clip{i}.wav", (0.1 * rng.standard_normal(16_000 * 4)).astype("float32"), 16_000)
    path = folder / "big.jsonl"
    with path.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"utt{i:07d}", "audio": f"clip{i % files}.wav", "text": "the quick brown fox jumps",
                                "duration": 4.0, "speaker": f"spk{i % 2000}"}) + "\n")
    return path


def measure(manifest: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(manifest)], capture_output=True, text=True, check=True)
    n, seconds, base, peak, wall = out.stdout.split()
    return {"cuts": int(n), "hours": round(float(seconds) / 3600, 1), "baseline_mb": round(int(base) / 1024, 1),
            "peak_mb": round(int(peak) / 1024, 1), "above_baseline_mb": round((int(peak) - int(base)) / 1024, 1),
            "seconds": round(float(wall), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "manifest_memory.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = write_corpus(Path(tmp), args.rows)
        results = {"macasr_jsonl": measure(jsonl)}
        from macasr.data.manifest import open_cuts

        cutset = Path(tmp) / "big.jsonl.gz"
        open_cuts(jsonl).to_file(cutset)  # lazy in, streamed out
        results["lhotse_cutset"] = measure(cutset)
    report = {"benchmark": "manifest_memory", "rows": args.rows, "goal_mb_above_baseline": GOAL_MB,
              "met": all(r["above_baseline_mb"] <= GOAL_MB for r in results.values()),
              "machine": f"{platform.machine()}, {platform.python_version()}", "date": time.strftime("%Y-%m-%d"),
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
