"""`torchrun --nproc-per-node 2 -m macasr eval ...` (gloo on CPU): each rank decodes a share,
rank 0 alone prints and writes, and the report equals one process's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from macasr.cli import app
from tests.test_distributed import child_env
from tests.test_eval_batching import lively, lively_ckpt, lively_config  # noqa: F401 (fixtures)

MEASURED = ("decode_seconds", "rtfx")  # wall-clock measurements: they differ from run to run


def _results(report: Path) -> dict:
    """The report without its measurements."""
    data = json.loads(report.read_text())
    for entry in [*data["datasets"].values(), data["overall"]]:
        for key in MEASURED:
            entry.pop(key)
    return data


def test_two_ranks_write_the_report_of_one_process(lively_ckpt: Path, corpus, tmp_path: Path) -> None:
    with_gap = tmp_path / "gap.jsonl"  # an unreadable clip too: its line must reach rank 0 from any rank
    rows = [json.loads(line) for line in corpus["valid"].read_text().splitlines()]
    rows = [{**row, "audio": str(corpus["valid"].parent / row["audio"])} for row in rows]  # where they are
    rows.append({"audio": str(tmp_path / "gone.wav"), "text": "hi", "duration": 1.0})
    with_gap.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["eval", "--ckpt", str(lively_ckpt), "--manifest", str(corpus["test"]), "--manifest", str(with_gap),
            "--device", "cpu", "--batch-size", "2"]
    one = CliRunner().invoke(app, [*args, "--report", str(tmp_path / "one.json")])
    assert one.exit_code == 0, one.output
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "macasr", *args, "--report", str(tmp_path / "two.json")],
                         cwd=tmp_path, env=child_env(COLUMNS="200"), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    assert _results(tmp_path / "two.json") == _results(tmp_path / "one.json")
    assert (tmp_path / "two.utterances.jsonl").read_text() == (tmp_path / "one.utterances.jsonl").read_text()
    assert two.stdout.count("WER of") == 1 and two.stdout.count("report: ") == 1  # rank 0 alone prints
    assert len({line["hypothesis"] for line in map(json.loads, (tmp_path / "one.utterances.jsonl").read_text().splitlines())}) > 1
    assert two.stderr.count("gone.wav") == 1
    assert json.loads((tmp_path / "two.json").read_text())["datasets"]["gap"]["skipped"] == 1
