"""Training in several processes: torchrun + DDP on gloo (CPU), against one process.

The equivalence tested: with one duration bucket ([data] num_buckets = 1) lhotse's sampler draws
the same sequence of batches whatever the world size and gives rank r the batches r, r + N,
r + 2N, ...; so optimizer step k on N ranks with grad_accum 1 sees exactly the micro-batches of
step k in one process with grad_accum N, and DDP's mean of the ranks' gradients equals the
accumulated mean. Validation decodes one clip at a time ([eval] batch_size = 1) so a clip's
transcript does not depend on which clips share its batch, on which rank.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from itertools import islice
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import macasr
from macasr import config as config_module
from macasr.cli import app
from macasr.data.collate import BadClip
from macasr.data.loader import train_sampler
from macasr.data.manifest import open_cuts, shar_part
from macasr.data.prepare import prepare
from macasr.data.shar import write_shar
from macasr.errors import DataError, MacasrError
from macasr.evaluate.run import evaluate_cuts
from macasr.model.build import build_model
from macasr.train import ddp
from macasr.train.distributed import (
    World, all_gather_object, broadcast_decision, free_port, init_distributed, launch_local,
    mean_over_ranks,
)
from macasr.train.engine import Trainer
from macasr.train.run import global_batch, train, training_sets
from tests.corpora import write_librispeech

REPO = Path(macasr.__file__).resolve().parents[1]
RUN_FILES = ["bad_clips.jsonl", "best.pt", "config.toml", "curves.png", "last.pt", "metrics.jsonl"]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess that imports this checkout's macasr, offline, one thread each."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", **extra}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def trained(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def batches(manifest: Path, rank: int, size: int, count: int) -> list[list[str]]:
    """The clip ids of the first `count` batches rank `rank` of `size` trains on (as the Trainer samples)."""
    sampler = train_sampler(open_cuts(manifest), max_batch_seconds=0, batch_size=2, num_buckets=1, seed=0,
                            rank=rank, world_size=size)
    return [[cut.id for cut in batch] for batch in islice(sampler, count)]


def test_with_one_bucket_rank_r_of_n_trains_on_every_nth_batch_of_one_process(corpus) -> None:
    one = batches(corpus["train"], 0, 1, 8)
    assert [batches(corpus["train"], rank, 2, 4) for rank in (0, 1)] == [one[0::2], one[1::2]]


def with_missing_audio(manifest: Path, ids: set[str], out: Path) -> Path:
    """A copy of `manifest` (absolute audio paths) whose clips `ids` name audio files that do not exist."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        row["audio"] = str(manifest.parent / ("missing.wav" if row["id"] in ids else row["audio"]))
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


@pytest.fixture(scope="module")
def runs(tiny_config, corpus, tmp_path_factory):
    """The same training (4 optimizer steps of 4 clips, validated at steps 2 and 4) in one process
    with grad_accum 2, in-process, and in two processes with grad_accum 1 through `macasr train --nproc 2`.
    Two clips cannot be read: one in rank 0's second batch, one in rank 1's first (both skipped)."""
    root = tmp_path_factory.mktemp("ddp")
    bad = {batches(corpus["train"], 0, 2, 2)[1][0], batches(corpus["train"], 1, 2, 1)[0][0]}
    train_set = with_missing_audio(corpus["train"], bad, root / "train.jsonl")
    base = config_module.replace(tiny_config, **{
        "data.train": [str(train_set)], "data.valid": [str(corpus["valid"])], "data.batch_size": 2,
        "data.num_buckets": 1, "eval.batch_size": 1, "train.output_dir": str(root), "train.warmup_steps": 0,
        "train.max_steps": 4, "train.valid_every": 2, "train.lr": 1e-3, "logging.log_every": 1,
    })
    one = config_module.replace(base, **{"train.name": "one", "train.grad_accum": 2})
    train(one, Console(file=io.StringIO()))
    config_module.dump(config_module.replace(base, **{"train.name": "two", "train.grad_accum": 1}), root / "two.toml")
    done = subprocess.run([sys.executable, "-m", "macasr", "train", str(root / "two.toml"), "--nproc", "2"],
                          cwd=root, env=child_env(COLUMNS="300"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return root / "one", root / "two", done.stdout


def test_two_processes_follow_the_loss_curve_of_one_with_the_same_global_batch(runs) -> None:
    one, two, _ = runs
    steps = lambda run: [(m["step"], m["loss"], m["lr"]) for m in metrics(run) if "loss" in m]  # noqa: E731
    assert [s for s, _, _ in steps(two)] == [1, 2, 3, 4]
    for (step, loss, lr), (step2, loss2, lr2) in zip(steps(one), steps(two), strict=True):
        assert (step2, lr2) == (step, lr)
        assert loss2 == pytest.approx(loss, rel=1e-5), f"step {step}"
    weights_one, weights_two = trained(one / "last.pt"), trained(two / "last.pt")
    assert weights_one.keys() == weights_two.keys() and weights_one
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], rtol=1e-5, atol=1e-6)
    assert torch.load(two / "last.pt", weights_only=True)["step"] == 4


def test_two_processes_score_the_whole_valid_set(runs) -> None:
    one, two, _ = runs
    valid = lambda run: [(m["step"], m["valid_wer"], m["valid_cer"]) for m in metrics(run) if "valid_wer" in m]  # noqa: E731
    assert [v[0] for v in valid(two)] == [2, 4]
    assert valid(two) == valid(one)  # rank 0's 3 of the 6 clips alone would score otherwise


def test_only_rank_zero_writes_the_run_folder_and_prints(runs) -> None:
    one, two, printed = runs
    assert sorted(p.name for p in two.iterdir()) == RUN_FILES
    bad_clips = lambda run: sorted((run / "bad_clips.jsonl").read_text().splitlines())  # noqa: E731
    assert len(bad_clips(two)) == 2 and bad_clips(two) == bad_clips(one)  # rank 1's too, once each
    assert printed.count("skipped clip: ") == 2
    assert printed.count("done: 4 steps") == 1
    assert printed.count("global batch: up to 2 clips per micro-batch × 2 processes × grad_accum 1 = up to 4 clips") == 1
    assert printed.count(": valid WER") == 2  # step 2 and step 4, once each


# ----------------------------------------------------------------------------- failures


RANK_SCRIPT = textwrap.dedent("""
    import sys, time
    from macasr.errors import MacasrError
    from macasr.train.distributed import all_gather_object, init_distributed
    world = init_distributed("cpu", timeout_s=3)
    if world.rank == 1:
        time.sleep(120)  # hangs: never answers
    try:
        all_gather_object(world, "hello")
    except MacasrError as e:
        print(e)
        sys.exit(1)
    print("no error")
""")


def test_a_rank_that_stops_answering_fails_the_others_within_the_timeout(tmp_path: Path) -> None:
    """A rank that exits fails the others at once (the connection closes); one that hangs, after the timeout."""
    port = str(free_port())
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=child_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                            MASTER_PORT=port))
             for r in range(2)]
    try:
        out, _ = ranks[0].communicate(timeout=120)
    finally:
        ranks[1].kill()
        ranks[1].wait()
    assert ranks[0].returncode == 1, out
    assert "rank 0 of 2: gathering results failed, another rank stopped or did not answer within [train] distributed_timeout_s" in out


# ----------------------------------------------------------------------------- pieces


def test_one_process_needs_no_process_group() -> None:
    world = init_distributed("cpu")
    assert world == World(0, 0, 1) and world.is_main and not world.distributed
    assert all_gather_object(world, {"a": 1}) == [{"a": 1}]
    assert broadcast_decision(world, True) is True
    assert mean_over_ranks(world, 2.5) == 2.5
    loss = torch.tensor(1.5)
    assert ddp.step_totals(world, loss, 3.0, ["clip"]) == (loss, 3.0, [], False)
    assert ddp.RankShare(world).mine([1, 2, 3]) == [1, 2, 3]


def test_ranks_validate_disjoint_shares_that_cover_the_set() -> None:
    shares = [ddp.RankShare(World(rank=r, size=3)).mine(list(range(10))) for r in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(10))
    assert shares[1] == [1, 4, 7]


class HalfShare:
    """The share of rank 0 of 2, with the other rank's transcripts never arriving."""

    def __init__(self) -> None:
        self.decoded: list[int] = []

    def mine(self, cuts):
        return list(cuts[0::2])

    def merge(self, decoded):
        self.decoded = sorted(decoded.hypotheses)
        return decoded


def test_validation_decodes_only_the_rank_share_and_scores_what_merge_gives(tiny_config, corpus, model) -> None:
    cuts = list(open_cuts(corpus["valid"]))
    share = HalfShare()
    half = evaluate_cuts(model, cuts, "valid", tiny_config, torch.device("cpu"), "fp32", share=share)
    assert share.decoded == [0, 2, 4] and half.utterances == 3  # positions in the whole set
    whole = evaluate_cuts(model, cuts, "valid", tiny_config, torch.device("cpu"), "fp32", share=ddp.RankShare(World()))
    assert whole.utterances == len(cuts) == 6


def test_only_trainable_weights_take_part_in_gradient_sync(model, process_group) -> None:
    wrapped = ddp.wrap(model, World(0, 0, 2), torch.device("cpu"))
    assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) and wrapped.module is model
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and wrapped.parameters_to_ignore == frozen | {n for n, _ in model.named_buffers()}
    assert {id(p) for p in wrapped._module_parameters} == {id(p) for p in model.parameters() if p.requires_grad}
    assert not wrapped.find_unused_parameters
    with ddp.micro_step(wrapped, World(0, 0, 2), last=False):
        assert not wrapped.require_backward_grad_sync
    with ddp.micro_step(wrapped, World(0, 0, 2), last=True):
        assert wrapped.require_backward_grad_sync
    assert ddp.wrap(model, World(), torch.device("cpu")) is model


@pytest.fixture
def process_group(tmp_path: Path):
    """A gloo group of this one process, so DDP can be built in-process (as any rank)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_a_rank_other_than_zero_hands_its_clip_reports_to_rank_zero(tiny_config, corpus, tmp_path, process_group) -> None:
    cfg = config_module.replace(tiny_config, **{"data.train": [str(corpus["train"])], "train.output_dir": str(tmp_path)})
    train_set, valid_set = training_sets(cfg)
    trainers = [Trainer(cfg, build_model(cfg), train_set, valid_set, torch.device("cpu"), "fp32",
                        Console(file=io.StringIO(), width=400), world=World(rank, rank, 2)) for rank in (0, 1)]
    clip = BadClip(origin="train.jsonl:3", id="c3", audio="a3.wav", why="no such audio file")
    trainers[1]._bad_clips("skipped clip", [clip])
    trainers[1]._report_once("warning", ["a3.wav: quiet"])
    trainers[1]._bad_clips("skipped clip", [clip])  # once only
    assert trainers[1].console.file.getvalue() == "" and not cfg.run_dir.exists()
    sent = trainers[1].pending_bad_clips
    assert sent == [("skipped clip", clip), ("warning", "a3.wav: quiet")]
    trainers[1]._write_shared_bad_clips(sent)
    assert trainers[1].pending_bad_clips == [] and not cfg.run_dir.exists()
    trainers[0]._write_shared_bad_clips(sent)
    assert [json.loads(line)["id"] for line in (cfg.run_dir / "bad_clips.jsonl").read_text().splitlines()] == ["c3"]
    assert trainers[0].console.file.getvalue().splitlines() == [f"skipped clip: {clip.line}", "warning: a3.wav: quiet"]


def test_unused_weights_are_looked_for_only_when_the_trained_encoder_can_skip_some(model) -> None:
    model.encoder.model.config.encoder_layerdrop = 0.1
    assert not ddp.skips_layers(model)  # frozen encoder: LayerDrop never runs in training
    model.encoder.requires_grad_(True)
    assert ddp.skips_layers(model)
    model.encoder.model.config.encoder_layerdrop = 0.0
    assert not ddp.skips_layers(model)
    # wav2vec2-style time masking with a trained embedding, which a batch too short for a span leaves unused
    model.encoder.model.register_parameter("masked_spec_embed", torch.nn.Parameter(torch.zeros(32)))
    assert ddp.skips_layers(model)


def test_the_global_batch_is_per_rank_limits_times_ranks_times_accumulation(tiny_config) -> None:
    cfg = config_module.replace(tiny_config, **{"data.max_batch_seconds": 60.0, "data.batch_size": 8, "train.grad_accum": 4})
    assert global_batch(cfg, 8).startswith("global batch: up to 60 s of audio and 8 clips per micro-batch × 8 processes "
                                           "× grad_accum 4 = up to 1920 s and 256 clips per optimizer step")


def test_distributed_timeout_must_be_positive(tiny_config) -> None:
    bad = config_module.replace(tiny_config, **{"train.distributed_timeout_s": 0})
    assert "[train] distributed_timeout_s: must be at least 1 (seconds), got 0" in bad.train.validate()


def test_a_rank_started_without_torchrun_says_so(tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    cfg = config_module.replace(tiny_config, **{"train.output_dir": str(tmp_path), "data.train": ["x.jsonl"]})
    with pytest.raises(MacasrError, match=r"^rank 1 of 2 \(WORLD_SIZE is set\): cannot join the other ranks: .*MASTER_ADDR"
                                          r".*; start every rank with torchrun \(or `macasr train --nproc N`\)$"):
        train(cfg, Console(file=io.StringIO()))
    assert not list(tmp_path.iterdir())  # nothing was written


def test_nproc_is_refused_inside_a_torchrun_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(MacasrError, match="--nproc 2: this process is already rank 1 of 2"):
        launch_local(2, ["train", "x.toml"])


def test_a_failure_under_nproc_is_one_line_naming_the_rank(runs) -> None:
    _, two, _ = runs
    before = {p.name: p.stat().st_mtime_ns for p in two.iterdir()}
    done = subprocess.run([sys.executable, "-m", "macasr", "train", str(two.parent / "two.toml"), "--nproc", "2"],
                          cwd=two.parent, env=child_env(COLUMNS="300"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    # Each rank fails on its own; the launcher may stop the second before it prints.
    assert 2 <= len(lines) <= 3, done.stderr
    assert all(re.match(r"error: rank [01] of 2: .* already holds a run", line) for line in lines[:-1]), lines
    assert re.fullmatch(r"error: --nproc 2: rank [01] of 2 failed first \(exit status 1\), with its error printed "
                        r"above; the other ranks were stopped", lines[-1])
    assert "Traceback" not in done.stderr + done.stdout
    assert {p.name: p.stat().st_mtime_ns for p in two.iterdir()} == before


def test_ranks_read_disjoint_shar_shards_that_cover_all(tmp_path: Path) -> None:
    [source] = prepare("librispeech", str(write_librispeech(tmp_path)), tmp_path / "manifests")
    write_shar(source.path, tmp_path / "shar", shard_size=1)  # 3 cuts, 3 shards
    every = sorted(cut.id for cut in open_cuts(tmp_path / "shar"))
    parts = [[cut for cut in open_cuts(tmp_path / "shar", part=(rank, 2))] for rank in range(2)]
    ids = [sorted(cut.id for cut in part) for part in parts]
    assert len(ids[0]) == 2 and len(ids[1]) == 1 and not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == every
    assert parts[1][0].load_audio().shape[1] > 0  # the rank's own audio shards come with its cuts
    with pytest.raises(DataError, match="3 Shar shards cannot give each of 4 processes its own"):
        shar_part(tmp_path / "shar", 0, 4)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_stop_signal_to_the_nproc_launcher_exits_as_one_process_does(tmp_path, monkeypatch, sig, code) -> None:
    """torchrun's agent passes the signal on to the ranks (which finish their step and write last.pt)
    and then raises; `--nproc` ends with the exit status of a one-process stop, not a traceback."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.launcher import api

    def launcher(config, entrypoint):
        def run(*args):
            raise SignalException(f"Process 1 got signal: {int(sig)}", sig)
        return run

    monkeypatch.setattr(api, "elastic_launch", launcher)
    assert launch_local(2, ["train", "x.toml"]) == sig.name
    config = tmp_path / "c.toml"
    config.write_text("")
    result = CliRunner().invoke(app, ["train", str(config), "--nproc", "2"])
    assert result.exit_code == code, result.output
