"""Output says why decoding stopped: `decode_loader`'s stop reasons, the Python API's `Transcript.stop`,
`transcribe --format json` (`"stop"`) and a note on stderr for a txt transcript a guard cut.

The tiny random LM says one token forever, so with the repeat guard on (the default) every clip
stops on "repeat", and with it off on "max_tokens"; "end" is covered in tests/test_decoding.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import noise
from macasr import config as config_module
from macasr.cli import app
from macasr.config import Config
from macasr.data.loader import CutDataset, build_loader, eval_sampler
from macasr.evaluate.run import decoding_options
from macasr.infer.decode import Decoded, decode_loader
from macasr.infer.transcribe import Transcriber, file_cut
from macasr.model.build import build_model
from macasr.model.decoding import DecodingOptions
from macasr.train import checkpoint

runner = CliRunner()
GUARDS = {4: "repeat", 0: "max_tokens"}  # repeat_ngram_stop → the guard that stops the looping tiny LM


@pytest.fixture(scope="module")
def ckpts(tiny_config: Config, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """A checkpoint per repeat_ngram_stop setting in GUARDS (the same weights), without the VAD
    (it would find no speech in the noise clips, which then would not be decoded)."""
    folder, model = tmp_path_factory.mktemp("guard_ckpts"), build_model(tiny_config)
    configs = {n: config_module.replace(tiny_config, **{"eval.repeat_ngram_stop": n, "eval.vad": False}) for n in GUARDS}
    return {n: checkpoint.save_checkpoint(folder / f"repeat{n}.pt", checkpoint.model_payload(model, cfg)) for n, cfg in configs.items()}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("guard_clips")
    paths = [folder / f"clip{i}.wav" for i in range(3)]
    for i, path in enumerate(paths):
        sf.write(path, noise(0.5 + i * 0.4, seed=i), 16_000)
    return paths


def test_the_guards_are_on_by_default() -> None:
    assert decoding_options(Config()) == DecodingOptions()  # one set of defaults, for the API and the config
    assert DecodingOptions().repeat_ngram_stop > 0


@pytest.mark.parametrize("n", sorted(GUARDS))
def test_decode_loader_reports_a_stop_reason_per_clip(tiny_config: Config, clips: list[Path], n: int) -> None:
    model = build_model(tiny_config)
    cuts = [file_cut(str(p), i) for i, p in enumerate(clips)]
    loader = build_loader(CutDataset(model.encoder.featurizer), eval_sampler(cuts, batch_size=2))
    cfg = config_module.replace(tiny_config, **{"eval.repeat_ngram_stop": n})
    decoded = decode_loader(model, loader, decoding_options(cfg), model.llm.device, "fp32")
    assert isinstance(decoded, Decoded)
    assert set(decoded.hypotheses) == set(decoded.stop_reasons) == {0, 1, 2}
    assert decoded.stop_reasons == decoded.guard_stops() == dict.fromkeys(range(3), GUARDS[n])


@pytest.mark.parametrize("n", sorted(GUARDS))
def test_the_python_api_says_which_guard_stopped(ckpts: dict[int, Path], clips: list[Path], n: int) -> None:
    results = Transcriber.from_checkpoint(ckpts[n], device="cpu").transcribe([*clips, clips[0].with_name("missing.wav")])
    assert [r.stop for r in results] == [GUARDS[n]] * 3 + [None]  # None: the missing file has no transcript
    assert all(GUARDS[n] in r.guard_note for r in results[:3]) and results[3].guard_note is None


@pytest.mark.parametrize("n", sorted(GUARDS))
def test_transcribe_json_says_which_guard_stopped(ckpts: dict[int, Path], clips: list[Path], n: int) -> None:
    result = runner.invoke(app, ["transcribe", *map(str, clips), "--ckpt", str(ckpts[n]), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(row["audio"], row["stop"]) for row in rows] == [(str(p), GUARDS[n]) for p in clips]
    assert result.stderr == ""  # JSON carries the reason; no notes besides it


def test_transcribe_txt_notes_a_guard_stop_on_stderr(ckpts: dict[int, Path], clips: list[Path]) -> None:
    result = runner.invoke(app, ["transcribe", str(clips[0]), "--ckpt", str(ckpts[4])])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) <= 1 and "repeat" not in result.stdout  # stdout: the transcript only
    (note,) = result.stderr.splitlines()
    assert str(clips[0]) in note and "stop: repeat" in note
