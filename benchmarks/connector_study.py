"""Benchmark `connector_study`: every connector × Whisper window policy, with real pretrained models.

    python benchmarks/connector_study.py --reduced [--models .cache/realmodels] [--work /tmp/connector_study]
    python benchmarks/connector_study.py            # the full setting, for a GPU

Real Whisper (tiny.en reduced, base full) and SmolLM2-135M-Instruct, built by
tools/realmodels/build.sh (`make test-real` builds them into .cache/realmodels), both frozen;
only the connector trains. Each cell of the table is one run on the same synthetic espeak corpus
(macasr.data.synth, as `macasr demo` uses; train and valid voices seen, no held-out voices), with
the same step budget, batch, learning rate and seed, and the connector's default shape
(docs/config.md): every connector from the registry (linear, mlp, transformer, qformer) and
`[model.encoder] window` = own (each clip encoded at its length) or full (padded to Whisper's 30 s
window, as it was trained). The encoder runs once per window policy, into a feature cache
(`macasr cache build`), so the runs time the connector and the LLM, as training from a cache does.

Everything runs through the CLI as a user would (cache build, train, eval; greedy decoding, no
VAD), one subprocess per command. Per cell: WER on valid and test (eval of last.pt), trainable
parameters (`macasr plan --json`), training throughput (optimizer steps and audio seconds per
second of training, from metrics.jsonl; validation and checkpoints excluded), final loss, and
how many test hypotheses ended with the end token. Writes benchmarks/results/connector_study.json
(connector_study_reduced.json with --reduced) and prints the table as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import RESULTS, write_result  # benchmarks/common.py (scripts run from this folder)

CONNECTORS = ("linear", "mlp", "transformer", "qformer")
WINDOWS = ("own", "full")
LLM = "smollm2-135m-instruct"
SETTINGS: dict[str, dict[str, Any]] = {
    # Minutes on 2 idle CPU cores (docs/research.md): far too small to learn the task, but every
    # cell trains, decodes and is scored with the real models, and the loss curves can be compared.
    "reduced": {"encoder": "whisper-tiny.en", "n_train": 64, "n_valid": 8, "n_test": 8, "steps": 40,
                "batch_size": 4, "lr": 1e-3, "warmup_steps": 4, "device": "cpu"},
    # One GPU: the demo's corpus size and step budget.
    "full": {"encoder": "whisper-base", "n_train": 6000, "n_valid": 100, "n_test": 200, "steps": 2000,
             "batch_size": 32, "lr": 1e-3, "warmup_steps": 100, "device": "auto"},
}


def macasr(*args: str) -> str:
    """Run `python -m macasr ARGS` from the repository root; its stdout, or an error with its stderr."""
    done = subprocess.run([sys.executable, "-m", "macasr", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    if done.returncode != 0:
        raise SystemExit(f"macasr {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def write_config(path: Path, models: Path, data: dict[str, Path], work: Path, window: str, s: dict[str, Any]) -> Path:
    """The study's TOML config for one window policy; the connector is set per run with --set."""
    path.write_text(f"""\
[model.encoder]
name = "whisper"
path = "{models / s['encoder']}"
window = "{window}"

[model.llm]
path = "{models / LLM}"

[prompt]
style = "chat"

[data]
train = ["train"]
batch_size = {s['batch_size']}
num_workers = 0
cache = "{work / f'cache-{window}'}"

[train]
output_dir = "{work / 'runs'}"
max_steps = {s['steps']}
lr = {s['lr']}
warmup_steps = {s['warmup_steps']}
valid_every = {s['steps']}
save_every = 0
device = "{s['device']}"

[eval]
batch_size = 16
vad = false

[logging]
log_every = 1
curves = false

[datasets.train]
manifest = ["{data['train']}"]

[datasets.valid]
manifest = ["{data['valid']}"]

[datasets.test]
manifest = ["{data['test']}"]
""")
    return path


def throughput(metrics: Path) -> dict[str, float]:
    """Optimizer steps per second between the first and last logged step (training only: the
    run validates once, after its last step) and the median audio seconds per second."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    first, last = steps[0], steps[-1]
    return {"train_steps_per_s": (last["step"] - first["step"]) / (last["time"] - first["time"]),
            "audio_s_per_s": statistics.median(r["audio_seconds_per_second"] for r in steps),
            "first_loss": first["loss"], "final_loss": last["loss"]}


def run_cell(config: Path, connector: str, window: str, work: Path) -> dict[str, Any]:
    """Train one connector with one window policy, evaluate last.pt on valid and test."""
    name = f"{connector}-{window}"
    sets = ["--set", f"model.connector.name={connector}", "--set", f"train.name={name}"]
    plan = json.loads(macasr("plan", str(config), "--json", *sets))
    start = time.perf_counter()
    macasr("train", str(config), "--overwrite", *sets)
    train_wall = time.perf_counter() - start
    run = work / "runs" / name
    report = work / f"{name}.json"
    macasr("eval", "--ckpt", str(run / "last.pt"), "--config", str(config), "--dataset", "valid", "--dataset", "test",
           "--report", str(report))
    scores = json.loads(report.read_text())["datasets"]
    stops = [json.loads(line)["stop"] for line in report.with_name(f"{name}.utterances.jsonl").read_text().splitlines()
             if json.loads(line)["dataset"] == "test"]
    return {"connector": connector, "window": window, "trainable_params": plan["total"]["trainable"],
            "valid_wer": scores["valid"]["wer"], "test_wer": scores["test"]["wer"],
            "test_end_stops": f"{stops.count('end')}/{len(stops)}", "train_wall_s": round(train_wall, 1),
            **throughput(run / "metrics.jsonl")}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| connector | window | trainable params | valid WER % | test WER % | train steps/s | audio s/s | loss first → last | test stops at end token |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    lines += [f"| {r['connector']} | {r['window']} | {r['trainable_params'] / 1e6:.2f} M | {100 * r['valid_wer']:.1f} | "
              f"{100 * r['test_wer']:.1f} | {r['train_steps_per_s']:.3f} | {r['audio_s_per_s']:.2f} | "
              f"{r['first_loss']:.2f} → {r['final_loss']:.2f} | {r['test_end_stops']} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduced", action="store_true", help="the CPU setting (small corpus, few steps)")
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("MACASR_REAL_MODELS", ROOT / ".cache/realmodels")),
                        help="folder built by tools/realmodels/build.sh (default: $MACASR_REAL_MODELS or .cache/realmodels)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/macasr_connector_study"), help="data, caches and runs")
    parser.add_argument("--connectors", nargs="+", default=list(CONNECTORS), choices=CONNECTORS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    setting = "reduced" if args.reduced else "full"
    s = SETTINGS[setting]
    models, work = args.models.resolve(), args.work.resolve()
    missing = [m for m in (s["encoder"], LLM) if not (models / m / "config.json").is_file()]
    if missing:
        raise SystemExit(f"{models}: no {', '.join(missing)}; build them with tools/realmodels/build.sh {models} "
                         "(or `make test-real`)")
    from macasr.data import synth

    work.mkdir(parents=True, exist_ok=True)
    data = synth.build_corpus(work / "data", n_train=s["n_train"], n_valid=s["n_valid"], n_test=s["n_test"], n_unseen=0)
    out = args.out or RESULTS / f"connector_study{'_reduced' if args.reduced else ''}.json"
    report: dict[str, Any] = {"benchmark": "connector_study", "setting": setting, **s, "llm": LLM}
    rows: list[dict[str, Any]] = []
    for window in WINDOWS:
        config = write_config(work / f"study-{window}.toml", models, data, work, window, s)
        start = time.perf_counter()
        macasr("cache", "build", str(config))
        cache_s = time.perf_counter() - start
        for connector in args.connectors:
            rows.append({**run_cell(config, connector, window, work), "cache_build_s": round(cache_s, 1)})
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
            # Each finished cell is kept: a run cut short still leaves its rows (complete: false).
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({**report, "rows": rows, "complete": False}, indent=2) + "\n")
    print(markdown(rows))
    write_result(out, {**report, "rows": rows, "complete": True})


if __name__ == "__main__":
    main()
