"""Several processes training on a Shar folder: each rank reads its own shards (and its own share
of every other manifest), its stream is endless, and last.pt holds every rank's data position.

Two ranks run in this process (a one-process gloo group, so that DDP can be built) to look at
what each rank's sampler draws; two real processes (ranks 0 and 1 of a gloo group on CPU, as
torchrun starts them) check that stopping and resuming continues bit for bit.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from rich.console import Console

from macasr import config as config_module
from macasr.data import loader
from macasr.data.loader import own_part
from macasr.data.manifest import open_cuts, write_manifest
from macasr.data.prepare import prepare
from macasr.data.shar import write_shar
from macasr.errors import CheckpointError, DataError
from macasr.model.build import build_model
from macasr.train.distributed import World, free_port
from macasr.train.engine import Trainer
from macasr.train.run import train, training_sets
from tests.corpora import write_librispeech
from tests.test_distributed import child_env, metrics, trained


def rows(manifest: Path) -> list[dict]:
    """A macasr manifest's rows with absolute audio paths (so a copy can live anywhere)."""
    out = []
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        out.append({**row, "audio": str(manifest.parent / row["audio"])})
    return out


def shard_ids(folder: Path, shards: list[int]) -> set[str]:
    """The cut ids that Shar shards `shards` of `folder` hold, read from their cuts manifests."""
    ids = set()
    for number in shards:
        with gzip.open(folder / f"cuts.{number:06d}.jsonl.gz", "rt") as f:
            ids |= {json.loads(line)["id"] for line in f if line.strip()}
    return ids


@contextlib.contextmanager
def one_process_group(folder: Path) -> Iterator[None]:
    """A gloo group of this one process, so DDP can be built in-process (as any rank)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture
def process_group(tmp_path: Path):
    with one_process_group(tmp_path):
        yield


@pytest.fixture
def few_cuts_sampled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bucket edges from 64 cuts and a sampler buffer of 64 (not 10,000 and 2,000): an endless
    stream of 16 clips would be read hundreds of times over before the first batch."""
    monkeypatch.setattr(loader, "BINS_ESTIMATE_CUTS", 64)
    monkeypatch.setattr(loader, "SHAR_BUFFER_CUTS", 64)


def rank_trainers(cfg, ranks: int = 2) -> list[Trainer]:
    """The Trainer of each of `ranks` ranks, with the training data that rank opens."""
    return [Trainer(cfg, build_model(cfg), *training_sets(cfg, World(r, r, ranks)), torch.device("cpu"), "fp32",
                    Console(file=io.StringIO(), width=400), world=World(r, r, ranks)) for r in range(ranks)]


def drawn(trainer: Trainer, batches: int) -> list[str]:
    """The cut ids of the first `batches` batches of a Trainer's sampler."""
    return [cut.id for batch in islice(trainer.sampler, batches) for cut in batch]


# ----------------------------------------------------------------------------- each rank its own part


def test_open_cuts_gives_each_rank_a_disjoint_share_of_every_kind(corpus, tmp_path: Path) -> None:
    jsonl = corpus["train"]
    ids = [row["id"] for row in rows(jsonl)]
    assert [[c.id for c in open_cuts(jsonl, part=(r, 3))] for r in range(3)] == [ids[0::3], ids[1::3], ids[2::3]]
    [lhotse] = prepare("librispeech", str(write_librispeech(tmp_path)), tmp_path / "manifests")  # 3 lhotse cuts
    every = [c.id for c in open_cuts(lhotse.path)]
    assert [[c.id for c in open_cuts(lhotse.path, part=(r, 2))] for r in range(2)] == [every[0::2], every[1::2]]
    with pytest.raises(DataError, match=rf"^{lhotse.path}: 3 clips cannot give each of 4 processes its own; "):
        open_cuts(lhotse.path, part=(0, 4))


def test_ranks_read_their_own_part_only_with_several_of_them_and_a_shar_folder(corpus, tmp_path: Path) -> None:
    write_shar(corpus["train"], tmp_path / "shar", shard_size=8)
    assert own_part([corpus["train"], tmp_path / "shar"], 1, 2) == (1, 2)
    assert own_part([corpus["train"], tmp_path / "shar"], 0, 1) == (0, 1)
    assert own_part([corpus["train"]], 1, 2) == (0, 1)  # no Shar: each rank reads it all, keeps its batches


def test_each_rank_trains_on_its_own_shards_endlessly_and_together_on_all(tiny_config, corpus, tmp_path: Path,
                                                                         process_group, few_cuts_sampled) -> None:
    shar = tmp_path / "shar"
    assert write_shar(corpus["train"], shar, shard_size=8).shards == 4
    cfg = config_module.replace(tiny_config, **{"data.train": [str(shar)], "train.output_dir": str(tmp_path)})
    passes = []
    for rank, trainer in enumerate(rank_trainers(cfg)):
        assert trainer.own_data and trainer.endless
        assert (trainer.sampler.rank, trainer.sampler.world_size) == (0, 1)  # the stream is already the rank's own
        own = shard_ids(shar, [rank, rank + 2])  # shards 0, 2 and 1, 3
        [stream] = trainer.sampler.cuts
        ids = [cut.id for cut in islice(stream, 48)]
        assert [set(ids[:16]), set(ids[16:32]), set(ids[32:])] == [own] * 3  # pass after pass over its 16 clips
        assert set(drawn(trainer, 10)) <= own
        passes.append(own)
    assert passes[0] | passes[1] == shard_ids(shar, [0, 1, 2, 3]) and not passes[0] & passes[1]


def test_a_clip_dropped_for_its_long_target_on_another_rank_is_printed_by_rank_zero(tiny_config, corpus, tmp_path: Path,
                                                                                   process_group, few_cuts_sampled) -> None:
    write_shar(corpus["train"], tmp_path / "shar", shard_size=8)
    cfg = config_module.replace(tiny_config, **{"data.train": [str(tmp_path / "shar")], "train.output_dir": str(tmp_path)})
    first, second = rank_trainers(cfg)
    [cut] = islice(second.sampler.cuts[0], 1)
    second._too_long(cut, 50, 10)  # rank 1 alone reads this clip, and prints nothing
    [(label, line)] = second.pending_bad_clips
    assert label == "dropped clip" and line.startswith(f"{cut.id} (") and "its target has 50 tokens, more than the 10" in line
    first._write_shared_bad_clips(second.pending_bad_clips)
    assert first.console.file.getvalue().startswith(f"dropped clip: {cut.id} (")


def test_without_shar_or_with_one_process_the_ranks_sample_as_before(tiny_config, corpus, tmp_path: Path,
                                                                    process_group) -> None:
    cfg = config_module.replace(tiny_config, **{"data.train": [str(corpus["train"])], "train.output_dir": str(tmp_path)})
    second = rank_trainers(cfg)[1]
    assert not second.own_data and not second.endless
    assert (second.sampler.rank, second.sampler.world_size) == (1, 2)
    write_shar(corpus["train"], tmp_path / "shar", shard_size=8)
    shar = config_module.replace(cfg, **{"data.train": [str(tmp_path / "shar")]})
    [one] = rank_trainers(shar, ranks=1)
    assert not one.own_data and not one.endless and len(drawn(one, 100)) == 32  # one pass, then the epoch ends


def test_a_mixture_of_shar_and_jsonl_splits_both_over_the_ranks(tiny_config, corpus, tmp_path: Path,
                                                                process_group, few_cuts_sampled) -> None:
    every = rows(corpus["train"])
    write_manifest(tmp_path / "in_shar.jsonl", every[:16])
    write_shar(tmp_path / "in_shar.jsonl", tmp_path / "shar", shard_size=4)
    jsonl = write_manifest(tmp_path / "plain.jsonl", every[16:])
    cfg = config_module.replace(tiny_config, **{"data.train": [str(tmp_path / "shar"), str(jsonl)],
                                                "train.output_dir": str(tmp_path)})
    plain = [row["id"] for row in every[16:]]
    for rank, trainer in enumerate(rank_trainers(cfg)):
        [stream] = trainer.sampler.cuts
        own = shard_ids(tmp_path / "shar", [rank, rank + 2]) | set(plain[rank::2])  # 8 + 8 clips
        assert set(cut.id for cut in islice(stream, 80)) == own
        assert set(drawn(trainer, 10)) <= own


def test_a_shar_folder_with_fewer_shards_than_processes_is_refused_at_start(tiny_config, corpus, tmp_path: Path) -> None:
    write_shar(corpus["train"], tmp_path / "shar", shard_size=16)  # 2 shards
    cfg = config_module.replace(tiny_config, **{"data.train": [str(tmp_path / "shar")]})
    with pytest.raises(DataError, match=r"shar: 2 Shar shards cannot give each of 3 processes its own"):
        training_sets(cfg, World(2, 2, 3))


# ----------------------------------------------------------------------------- two real processes, resumed


def too_short(folder: Path, count: int) -> list[dict]:
    """`count` clips of 10 ms: shorter than the STFT window, so each is a bad clip a rank skips."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        sf.write(folder / f"short{i}.wav", np.full(160, 0.1, dtype=np.float32), 16_000)
        out.append({"id": f"short{i}", "audio": str(folder / f"short{i}.wav"), "text": "mary", "duration": 0.01})
    return out


RANK_SCRIPT = textwrap.dedent("""
    import sys
    from macasr import config
    from macasr.data import loader
    from macasr.train import run
    loader.BINS_ESTIMATE_CUTS = loader.SHAR_BUFFER_CUTS = 64  # as few_cuts_sampled does
    leave, run.teardown = run.teardown, lambda: None  # one process group for all the runs (starting is most of the time)
    for toml, how in zip(sys.argv[1::2], sys.argv[2::2]):
        run.train(config.load(toml), resume=how == "resume")
    leave()
""")


def two_ranks(runs: list[tuple[Path, str]]) -> str:
    """Train each (config, "new" or "resume") in turn as ranks 0 and 1 of 2 (gloo on CPU), in two
    processes → what rank 0 printed; every run must succeed."""
    port, args = str(free_port()), [str(a) for run in runs for a in run]
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, *args], cwd=runs[0][0].parent,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=child_env(COLUMNS="300", RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(2)]
    try:
        printed = [rank.communicate(timeout=400)[0] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait()
    assert [rank.returncode for rank in ranks] == [0, 0], "\n".join(printed)
    return printed[0]


@pytest.fixture(scope="module")
def shar_runs(tiny_config, corpus, tmp_path_factory):
    """8 steps on 2 processes in one go, and 4 steps then resumed to 8, on a Shar folder of 4 shards.
    Shard 1 (rank 1's) holds only clips too short to use: rank 1 skips those batches (of one clip),
    so the two ranks' data positions differ, and each must be restored as its own."""
    root = tmp_path_factory.mktemp("shar_ddp")
    good = rows(corpus["train"])
    write_manifest(root / "train.jsonl", good[:8] + too_short(root / "short", 8) + good[8:24])
    assert write_shar(root / "train.jsonl", root / "shar", shard_size=8).shards == 4
    base = config_module.replace(tiny_config, **{
        "data.train": [str(root / "shar")], "data.batch_size": 1, "train.output_dir": str(root), "train.warmup_steps": 0,
        "train.valid_every": 4, "train.lr": 1e-3, "train.min_lr_ratio": 1.0, "logging.log_every": 1,
        "logging.curves": False, "model.connector.dropout": 0.1,
    })

    def toml(name: str, steps: int) -> Path:
        cfg = config_module.replace(base, **{"train.name": name, "train.max_steps": steps})
        return config_module.dump(cfg, root / f"{name}-{steps}.toml")

    printed = two_ranks([(toml("straight", 8), "new"), (toml("resumed", 4), "new"), (toml("resumed", 8), "resume"),
                         (toml("halfway", 4), "new")])  # halfway: resumed/last.pt as it was before resuming
    halfway = torch.load(root / "halfway" / "last.pt", weights_only=True)
    return root / "straight", root / "resumed", halfway, printed, base


def test_two_processes_stopped_and_resumed_train_bit_for_bit_as_in_one_go(shar_runs) -> None:
    straight, resumed, halfway, printed, _ = shar_runs
    assert "resumed from" in printed and "at step 4" in printed
    positions = halfway["rank_positions"]
    assert len(halfway["rank_samplers"]) == 2 and positions[0] != positions[1]  # rank 1 skipped batches of short clips
    assert [s["diagnostics"]["stats_per_epoch"][0]["kept_batches"] for s in halfway["rank_samplers"]] == [n for _, n in positions]
    losses = lambda run: [(m["step"], m["loss"]) for m in metrics(run) if "loss" in m]  # noqa: E731
    assert [s for s, _ in losses(resumed)] == list(range(1, 9))
    assert losses(resumed) == losses(straight)
    a, b = trained(straight / "last.pt"), trained(resumed / "last.pt")
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    bad = [json.loads(line)["id"] for line in (straight / "bad_clips.jsonl").read_text().splitlines()]
    assert bad and set(bad) <= {f"short{i}" for i in range(8)} and len(bad) == len(set(bad))  # rank 1's, written once


def test_resuming_with_another_number_of_processes_is_refused(shar_runs) -> None:
    straight, _, _, _, base = shar_runs
    cfg = config_module.replace(base, **{"train.name": "straight", "train.max_steps": 9})
    before = {p.name: p.stat().st_mtime_ns for p in straight.iterdir()}
    with pytest.raises(CheckpointError, match=r"last.pt: its data position was saved by 2 processes each reading its own "
                                              r"part of the data; this run has 1 process; resume with the number of "
                                              r"processes it was saved with \(--nproc 2\), or start over with --overwrite$"):
        train(cfg, Console(file=io.StringIO()), resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in straight.iterdir()} == before


def test_a_one_process_run_is_not_resumed_by_ranks_reading_their_own_shards(shar_runs, tmp_path: Path,
                                                                            few_cuts_sampled) -> None:
    *_, base = shar_runs
    one = config_module.replace(base, **{"train.name": "one", "train.max_steps": 1})
    train(one, Console(file=io.StringIO()))
    with one_process_group(tmp_path):
        three = Trainer(one, build_model(one), *training_sets(one, World(0, 0, 3)), torch.device("cpu"), "fp32",
                        Console(file=io.StringIO()), world=World(0, 0, 3))
        with pytest.raises(CheckpointError, match=r"saved by 1 process; this run has 3 processes each reading its own "
                                                  r"part of the data; .* \(--nproc 1\)"):
            three.resume(one.run_dir / "last.pt")
