"""`macasr eval` decoding options: --num-beams and --batch-seconds, and results that do not depend
on how clips are batched (greedy and beam)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lhotse.testing.dummies import dummy_cut
from lhotse.utils import fastcopy
from typer.testing import CliRunner

from macasr import config as config_module
from macasr.cli import app
from macasr.data.loader import eval_sampler
from macasr.data.manifest import open_cuts
from macasr.evaluate.run import evaluate_cuts
from macasr.model.build import build_model
from macasr.train import checkpoint

WEIGHT_STD = 0.3  # the saved tiny LM (std 0.02) says one token forever; this one varies with its input
runner = CliRunner()


@pytest.fixture(scope="module")
def lively_config(tiny_config, tmp_path_factory):
    """The tiny config with an LLM of livelier random weights, saved as a model folder (so that a
    checkpoint restores it too): each clip gets its own transcript."""
    folder = tmp_path_factory.mktemp("lively") / "llm"
    shutil.copytree(tiny_config.model.llm.path, folder)  # its tokenizer; the weights are replaced
    torch.manual_seed(0)
    llm = build_model(tiny_config).llm
    with torch.no_grad():
        for weight in (p for p in llm.parameters() if p.dim() == 2):
            weight.normal_(0.0, WEIGHT_STD)
    llm.save_pretrained(folder)
    return config_module.replace(tiny_config, **{"model.llm.path": str(folder)})


@pytest.fixture(scope="module")
def lively(lively_config):
    torch.manual_seed(0)
    return build_model(lively_config).eval()


def _cuts(durations: list[float]) -> list:
    return [fastcopy(dummy_cut(i), duration=d) for i, d in enumerate(durations)]


def test_batch_seconds_bounds_the_padded_audio_of_each_batch() -> None:
    cuts = _cuts([1.0, 3.0, 2.0, 0.5, 9.0, 2.0])
    batches = [[c.duration for c in batch] for batch in eval_sampler(cuts, batch_size=1, batch_seconds=6.0)]
    # longest first; cuts × the longest ≤ 6 s; the 9 s cut alone
    assert batches == [[9.0], [3.0, 2.0], [2.0, 1.0, 0.5]]
    assert [len(b) for b in eval_sampler(cuts, batch_size=4)] == [4, 2]  # 0 seconds: by count


@pytest.mark.parametrize("beams", [1, 3])
def test_results_are_the_same_for_any_batching(lively, lively_config, corpus, beams: int) -> None:
    cuts = list(open_cuts(corpus["test"]))
    runs = []
    for batching in ({"eval.batch_size": 1}, {"eval.batch_size": 3}, {"eval.batch_size": 1, "eval.batch_seconds": 4.0}):
        cfg = config_module.replace(lively_config, **{**batching, "eval.num_beams": beams})
        runs.append(evaluate_cuts(lively, cuts, "test", cfg, torch.device("cpu"), "fp32"))
    hypotheses = [[u.hypothesis for u in s.per_utterance] for s in runs]
    assert len(set(hypotheses[0])) > 1  # the clips get different transcripts: a mix-up would show
    assert hypotheses[1] == hypotheses[0] and hypotheses[2] == hypotheses[0]
    assert all(s.per_utterance == runs[0].per_utterance and s.counts == runs[0].counts for s in runs)
    assert [u.id for u in runs[0].per_utterance] == [c.id for c in cuts]


@pytest.fixture(scope="module")
def lively_ckpt(lively, lively_config, tmp_path_factory) -> Path:
    return checkpoint.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", checkpoint.model_payload(lively, lively_config))


def test_num_beams_and_batch_seconds_options(lively_ckpt: Path, corpus, tmp_path: Path) -> None:
    reports = {}
    for name, args in {"greedy": ["--batch-size", "2"], "beam": ["--num-beams", "3", "--batch-seconds", "3.5", "--repeat-ngram-stop", "2"]}.items():
        result = runner.invoke(app, ["eval", "--ckpt", str(lively_ckpt), "--manifest", str(corpus["test"]),
                                     "--report", str(tmp_path / f"{name}.json"), *args])
        assert result.exit_code == 0, result.output
        assert "Loops %" in result.stdout and "RTFx" in result.stdout  # the rates table
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
        assert reports[name]["datasets"]["test"]["rtfx"] > 0 and reports[name]["overall"]["decode_seconds"] > 0
    assert reports["greedy"]["decoding"]["num_beams"] == 1 and reports["beam"]["decoding"]["num_beams"] == 3
    assert reports["greedy"]["decoding"]["repeat_ngram_stop"] == 8 and reports["beam"]["decoding"]["repeat_ngram_stop"] == 2
    hyps = {name: [json.loads(line)["hypothesis"] for line in (tmp_path / f"{name}.utterances.jsonl").read_text().splitlines()]
            for name in reports}
    assert len(set(hyps["greedy"])) > 1  # the checkpoint restores the lively LLM
    assert hyps["beam"] != hyps["greedy"]  # the option reached the decoder


def test_batch_size_and_batch_seconds_together_are_refused(lively_ckpt: Path, corpus) -> None:
    result = runner.invoke(app, ["eval", "--ckpt", str(lively_ckpt), "--manifest", str(corpus["test"]),
                                 "--batch-size", "2", "--batch-seconds", "3"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["error: give --batch-size (clips per batch) or --batch-seconds (audio seconds per "
                                          "batch), not both"]
    bad = runner.invoke(app, ["eval", "--ckpt", str(lively_ckpt), "--manifest", str(corpus["test"]), "--batch-seconds", "-1"])
    assert bad.exit_code == 1 and "[eval] batch_seconds" in bad.stderr and "-1" in bad.stderr
