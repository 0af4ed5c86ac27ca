"""Waveform augmentation of cuts ([augment]): what each augmentation does to the audio, that every
draw is fixed by (seed, epoch, cut id), that everything is off by default, and the errors."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.utils import fastcopy

from macasr.config_parse import _convert, _Errors
from macasr.data.augment import AugmentConfig, build_augmenter, load_clips, narrowband_copy, uses_waveform
from macasr.data.manifest import load_manifest, open_cuts, write_manifest
from macasr.data.transforms import TELEPHONE_RATE, mu_law
from macasr.errors import ConfigError, DataError

RATE = 16_000
LOW, HIGH = 440.0, 6_000.0  # Hz: a tone the telephone band keeps and one it removes


def _tones(seconds: float = 2.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * LOW * t) + 0.2 * np.sin(2 * np.pi * HIGH * t)).astype(np.float32)


@pytest.fixture()
def speech(tmp_path: Path):
    """A 2 s, 16 kHz MonoCut of two tones, with a transcript, as open_cuts makes them."""
    sf.write(tmp_path / "speech.wav", _tones(), RATE)
    cut = Recording.from_file(tmp_path / "speech.wav").to_cut()
    sup = SupervisionSegment(id=cut.id, recording_id=cut.id, start=0.0, duration=cut.duration, text="two tones")
    return fastcopy(cut, supervisions=[sup], custom={"origin": "speech.jsonl:1"})


@pytest.fixture()
def noise_manifest(tmp_path: Path) -> Path:
    """A lhotse RecordingSet of one 0.7 s clip of white noise at 8 kHz: shorter than the speech
    and at another rate, so mixing must resample it and lay several stretches end to end."""
    noise = np.random.default_rng(0).standard_normal(int(0.7 * 8000)).astype(np.float32) * 0.1
    sf.write(tmp_path / "noise.wav", noise, 8000)
    path = tmp_path / "noise_recordings.jsonl.gz"
    RecordingSet.from_recordings([Recording.from_file(tmp_path / "noise.wav")]).to_file(path)
    return path


def _audio(cut) -> np.ndarray:
    audio = cut.load_audio()
    assert audio.dtype == np.float32 and audio.ndim == 2 and audio.shape[0] == 1 and np.isfinite(audio).all()
    return audio[0]


def _power_share(audio: np.ndarray, low: float, high: float, rate: int = RATE) -> float:
    """Share of the signal's power between low and high Hz."""
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


def _peak_hz(audio: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])


def _augment(cfg: AugmentConfig, cut, epoch: int = 0, seed: int = 0):
    augmenter = build_augmenter(cfg, seed)
    assert augmenter is not None
    return augmenter(cut, epoch)


def test_everything_is_off_by_default(speech) -> None:
    assert build_augmenter(AugmentConfig(), seed=0) is None
    assert not uses_waveform(AugmentConfig())
    assert AugmentConfig().validate() == []
    for on in ({"speed_prob": 0.5}, {"narrowband_prob": 0.5}, {"gain_prob": 0.5}):
        assert uses_waveform(AugmentConfig(**on))


def test_speed_changes_duration_and_pitch_by_the_factor(speech) -> None:
    out = _augment(AugmentConfig(speed_prob=1.0, speed_factors=[1.25]), speech)
    audio = _audio(out)
    assert out.duration == pytest.approx(speech.duration / 1.25, abs=1e-3)
    assert len(audio) == pytest.approx(2 * RATE / 1.25, abs=2)
    # Speed perturbation plays the audio faster, so every frequency rises by the factor.
    assert _peak_hz(audio) == pytest.approx(LOW * 1.25, abs=2)
    assert out.supervisions[0].duration == pytest.approx(out.duration, abs=1e-3)
    assert out.id == speech.id and out.custom["origin"] == "speech.jsonl:1"


def test_noise_is_mixed_over_the_whole_clip_at_the_drawn_snr(speech, noise_manifest: Path) -> None:
    cfg = AugmentConfig(noise_prob=1.0, noise_manifest=str(noise_manifest), noise_snr=[5.0, 5.0])
    out = _augment(cfg, speech)
    clean, mixed = _audio(speech), _audio(out)
    noise = mixed - clean
    assert 10 * np.log10((clean**2).sum() / (noise**2).sum()) == pytest.approx(5.0, abs=0.2)
    # The 0.7 s noise clip is laid end to end: every stretch of the 2 s clip carries noise.
    quarters = (noise[: len(noise) // 4 * 4].reshape(4, -1) ** 2).mean(axis=1)
    assert quarters.min() > 0.5 * quarters.max()
    assert out.id == speech.id and out.supervisions[0].text == "two tones"
    assert out.custom == {"origin": "speech.jsonl:1"}  # the noise clip brings no fields of its own


def test_noise_snr_is_drawn_from_the_range(speech, noise_manifest: Path) -> None:
    cfg = AugmentConfig(noise_prob=1.0, noise_manifest=str(noise_manifest), noise_snr=[0.0, 20.0])
    augmenter = build_augmenter(cfg, seed=0)
    clean = _audio(speech)
    snrs = []
    for epoch in range(6):
        noise = _audio(augmenter(speech, epoch)) - clean
        snrs.append(10 * np.log10((clean**2).sum() / (noise**2).sum()))
    assert all(-0.2 < s < 20.2 for s in snrs) and max(snrs) - min(snrs) > 2.0


def test_reverb_convolves_with_the_impulse_response(speech, tmp_path: Path) -> None:
    rir = np.zeros(4000, dtype=np.float32)
    rir[1000], rir[1800] = 1.0, 0.5  # the direct sound and one echo 50 ms later
    sf.write(tmp_path / "rir.wav", np.concatenate([np.full(4000, 0.9, dtype=np.float32), rir]), RATE)
    # The impulse response is the segment after 0.25 s of something else in the same file.
    write_manifest(tmp_path / "rirs.jsonl", [{"audio": "rir.wav", "offset": 0.25, "duration": 0.25}])
    out = _audio(_augment(AugmentConfig(rir_prob=1.0, rir_manifest=str(tmp_path / "rirs.jsonl")), speech))
    clean = _audio(speech)
    expected = np.convolve(clean, rir[1000:])[: len(clean)]  # lhotse aligns the output on the direct sound
    expected *= np.sqrt((clean**2).sum() / (expected**2).sum())  # lhotse keeps the clip's power
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_narrowband_removes_everything_above_4_khz(speech) -> None:
    cfg = AugmentConfig(narrowband_prob=1.0, narrowband_mu_law=0.0)
    out = _augment(cfg, speech)
    clean, band = _audio(speech), _audio(out)
    assert out.sampling_rate == RATE and len(band) == len(clean)
    assert _power_share(clean, 4_100, RATE / 2) > 0.2
    assert _power_share(band, 4_100, RATE / 2) < 1e-4
    low = slice(RATE // 4, -RATE // 4)  # away from the clip's edges
    low_tone = 0.3 * np.sin(2 * np.pi * LOW * np.arange(len(clean)) / RATE)
    np.testing.assert_allclose(band[low], low_tone[low], atol=0.01)


def test_mu_law_codes_8_bits_per_sample() -> None:
    x = (0.5 * np.sin(np.linspace(0, 60, 8000))).astype(np.float32)[None, :]
    coded = mu_law(x)
    assert coded.shape == x.shape and coded.dtype == np.float32
    assert len(np.unique(coded)) <= 256 < len(np.unique(x))
    error = coded - x
    assert 0 < np.abs(error).max() < 0.02  # μ-law's steps near 0.5 are 1/64 wide
    assert mu_law(np.array([[2.0, -3.0]], dtype=np.float32)).tolist() == mu_law(np.array([[1.0, -1.0]], dtype=np.float32)).tolist()


def test_narrowband_mu_law_is_drawn_by_its_probability(speech) -> None:
    plain = _audio(_augment(AugmentConfig(narrowband_prob=1.0, narrowband_mu_law=0.0), speech))
    coded = _audio(_augment(AugmentConfig(narrowband_prob=1.0, narrowband_mu_law=1.0), speech))
    assert _power_share(coded, 4_100, RATE / 2) < 1e-4
    difference = np.abs(coded - plain)
    assert 1e-4 < difference.mean() < 0.01  # quantization noise, not another signal


def test_gain_scales_the_audio_by_the_drawn_decibels(speech) -> None:
    out = _audio(_augment(AugmentConfig(gain_prob=1.0, gain_db=[-6.0, -6.0]), speech))
    np.testing.assert_allclose(out, _audio(speech) * 10 ** (-6 / 20), rtol=1e-5)


def test_draws_depend_on_seed_epoch_and_cut_only(speech, noise_manifest: Path) -> None:
    cfg = AugmentConfig(speed_prob=1.0, speed_factors=[0.9, 1.1], noise_prob=1.0, noise_manifest=str(noise_manifest),
                        noise_snr=[0.0, 30.0], gain_prob=1.0, narrowband_prob=0.5)
    worker_a, worker_b = build_augmenter(cfg, seed=7), build_augmenter(cfg, seed=7)
    first = _audio(worker_a(speech, 3))
    np.testing.assert_array_equal(_audio(worker_b(speech, 3)), first)  # another worker, same draw
    np.testing.assert_array_equal(_audio(pickle.loads(pickle.dumps(worker_a))(speech, 3)), first)
    for other in (worker_a(speech, 4), build_augmenter(cfg, seed=8)(speech, 3), worker_a(fastcopy(speech, id="other"), 3)):
        audio = _audio(other)
        assert len(audio) != len(first) or not np.allclose(audio, first)


def test_draws_do_not_depend_on_python_hash_salt() -> None:
    """Workers are processes with their own str-hash salt; the draw must not use hash()."""
    code = "from macasr.data.augment import _rng; print(_rng(1, 2, 'utt-7', 'gain').random())"
    draws = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONHASHSEED": salt}).stdout for salt in ("1", "2")}
    assert len(draws) == 1


def test_every_augmentation_together_still_loads_as_mono_float32(speech, noise_manifest: Path, tmp_path: Path) -> None:
    rir = np.exp(-np.arange(1600) / 200).astype(np.float32) * np.random.default_rng(1).standard_normal(1600).astype(np.float32)
    sf.write(tmp_path / "rir.wav", rir, 8000)
    write_manifest(tmp_path / "rirs.jsonl", [{"audio": str(tmp_path / "rir.wav")}])
    cfg = AugmentConfig(speed_prob=1.0, speed_factors=[0.9], rir_prob=1.0, rir_manifest=str(tmp_path / "rirs.jsonl"),
                        noise_prob=1.0, noise_manifest=str(noise_manifest), gain_prob=1.0, narrowband_prob=1.0,
                        narrowband_mu_law=1.0)
    out = _augment(cfg, speech)
    audio = _audio(out)
    assert len(audio) == pytest.approx(2 * RATE / 0.9, abs=2) and out.duration == pytest.approx(2 / 0.9, abs=1e-3)
    assert _power_share(audio, 4_100, RATE / 2) < 1e-3  # the telephone band comes last, after the noise


def test_cuts_from_macasr_manifests_augment_and_load(tmp_path: Path, noise_manifest: Path) -> None:
    """open_cuts' cuts: a stereo file's segment (loaded as both channels, mixed to mono by the
    dataset) and a 22.05 kHz file keep their channel count; an unreadable row is left as it is."""
    sf.write(tmp_path / "stereo.wav", np.stack([_tones(3.0), _tones(3.0) * 0.5], axis=1), RATE)
    sf.write(tmp_path / "cd.wav", _tones(2.0, rate=22_050), 22_050)
    write_manifest(tmp_path / "train.jsonl", [
        {"audio": "stereo.wav", "text": "a", "duration": 1.0, "offset": 0.5},
        {"audio": "cd.wav", "text": "b", "duration": 2.0},
        {"audio": "gone.wav", "text": "c", "duration": 1.0},
    ])
    cfg = AugmentConfig(speed_prob=1.0, speed_factors=[0.9], noise_prob=1.0, noise_manifest=str(noise_manifest),
                        gain_prob=1.0, narrowband_prob=1.0)
    augmenter = build_augmenter(cfg, seed=0)
    stereo, cd, gone = open_cuts(tmp_path / "train.jsonl")
    for cut in (stereo, cd):
        out = augmenter(cut, 0)
        audio, plain = out.load_audio(), cut.load_audio()
        assert audio.dtype == np.float32 and np.isfinite(audio).all() and audio.shape[0] == plain.shape[0]
        assert audio.shape[1] == pytest.approx(plain.shape[1] / 0.9, abs=2)
        assert out.custom["origin"] == cut.custom["origin"]
    assert augmenter(gone, 0) is gone


def test_a_clip_with_a_problem_is_left_for_the_dataset_to_report(speech) -> None:
    broken = fastcopy(speech, custom={"problem": "cannot read audio header"})
    assert _augment(AugmentConfig(gain_prob=1.0, speed_prob=1.0), broken) is broken


def test_bad_values_are_reported_one_line_each() -> None:
    cfg = AugmentConfig(speed_prob=1.5, speed_factors=[], noise_prob=0.5, noise_snr=[20.0, 10.0], gain_db=[3.0],
                        rir_manifest="rirs.jsonl", narrowband_mu_law=-0.1)
    assert cfg.validate() == [
        "[augment] speed_prob: expected a probability from 0 to 1, got 1.5",
        "[augment] narrowband_mu_law: expected a probability from 0 to 1, got -0.1",
        "[augment] speed_factors: empty, but speed_prob is on; expected factors such as [0.9, 1.0, 1.1]",
        "[augment] noise_snr: expected [min, max] in dB with min <= max, got [20.0, 10.0]",
        "[augment] gain_db: expected [min, max] in dB with min <= max, got [3.0]",
        "[augment] noise_manifest: empty, but noise_prob = 0.5; name a manifest of noise clips",
        "[augment] rir_prob: 0, so rir_manifest is never used; set rir_prob (e.g. 0.5) or remove rir_manifest",
    ]
    assert AugmentConfig(speed_prob=1.0, speed_factors=[0.0, 1.1]).validate() == [
        "[augment] speed_factors: expected factors above 0 and at most 4, got [0.0]"]
    with pytest.raises(ConfigError, match=r"\[augment\] speed_prob"):
        build_augmenter(AugmentConfig(speed_prob=2.0), seed=0)


def test_the_config_parser_reads_lists_of_numbers() -> None:
    errors = _Errors()
    cfg = _convert(AugmentConfig, {"speed_prob": 1, "speed_factors": [0.9, 1, 1.1], "gain_db": [-3, 3]}, "augment", errors)
    assert errors.items == [] and cfg.speed_factors == [0.9, 1.0, 1.1] and cfg.gain_db == [-3.0, 3.0]
    assert all(isinstance(f, float) for f in cfg.speed_factors)
    errors = _Errors()
    _convert(AugmentConfig, {"speed_factors": ["fast"], "noise_snr": 10}, "augment", errors)
    assert errors.items == [
        ("augment.speed_factors", "`augment.speed_factors`: expected a list of numbers, got ['fast'] (list)"),
        ("augment.noise_snr", "`augment.noise_snr`: expected a list of numbers, got 10 (int)"),
    ]


def test_clip_manifests_in_every_accepted_form(tmp_path: Path, noise_manifest: Path) -> None:
    sf.write(tmp_path / "stereo.wav", np.zeros((4000, 2), dtype=np.float32), 8000)
    write_manifest(tmp_path / "rows.jsonl", [{"audio": "stereo.wav"}, {"audio": "stereo.wav", "offset": 0.1, "duration": 0.2}])
    rows = load_clips(tmp_path / "rows.jsonl")
    assert [(c.num_channels, c.duration, c.supervisions) for c in rows] == [(1, 0.5, []), (1, 0.2, [])]
    recordings = RecordingSet.from_file(noise_manifest)
    sup = SupervisionSegment(id="n", recording_id=recordings[0].id, start=0.0, duration=0.7, text="hum")
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=SupervisionSet.from_segments([sup]))
    cuts.map(lambda c: fastcopy(c, custom={"origin": "musan"})).to_file(tmp_path / "noise_cuts.jsonl.gz")
    for path in (noise_manifest, tmp_path / "noise_cuts.jsonl.gz"):
        clips = load_clips(path)
        # A noise clip brings no transcript or fields into the mix (a MixedCut merges its tracks' custom).
        assert [(c.duration, c.supervisions, c.custom) for c in clips] == [(0.7, [], None)]


@pytest.mark.parametrize("case, expected", [
    ("missing", r"^\[augment\] noise_manifest: .*nothing\.jsonl: no such file$"),
    ("empty", r"^\[augment\] noise_manifest: .*empty\.jsonl holds no clips$"),
    ("supervisions", r"^\[augment\] noise_manifest: .*sups\.jsonl\.gz: expected a lhotse RecordingSet or CutSet manifest, got a SupervisionSet$"),
    ("no audio", r"^\[augment\] noise_manifest: .*recordings\.jsonl\.gz: 1 clip without audio \(duration 0\): empty$"),
    ("not json", r"^\[augment\] noise_manifest: .*text\.jsonl: cannot read as JSON Lines \(.*\)$"),
    ("bad rows", r"^.*rows\.jsonl:1: .*gone\.wav: no such audio file\n.*rows\.jsonl:2: `duration` = -1: expected seconds as a finite positive number\n"
                 r".*rows\.jsonl:3: .*text\.wav: cannot read audio header \(.*\)\n"
                 r".*rows\.jsonl:4: expected an object with \"audio\" naming an audio file\n"
                 r".*rows\.jsonl:5: .*empty\.wav: audio is empty\n"
                 r".*rows\.jsonl:6: `offset` = 0\.05, `duration` = 0\.1: expected a segment within the audio's 0\.100 s$"),
])
def test_unusable_clip_manifests_are_named(tmp_path: Path, case: str, expected: str) -> None:
    sf.write(tmp_path / "ok.wav", np.zeros(800, dtype=np.float32), 8000)
    path = {"missing": tmp_path / "nothing.jsonl", "empty": tmp_path / "empty.jsonl",
            "supervisions": tmp_path / "sups.jsonl.gz", "bad rows": tmp_path / "rows.jsonl",
            "no audio": tmp_path / "recordings.jsonl.gz", "not json": tmp_path / "text.jsonl"}[case]
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 8000)
    if case == "empty":
        path.write_text("")
    elif case == "not json":
        path.write_text("noise.wav\n")
    elif case == "no audio":
        RecordingSet.from_recordings([Recording.from_file(tmp_path / "empty.wav")]).to_file(path)
    elif case == "supervisions":
        SupervisionSet.from_segments([SupervisionSegment(id="s", recording_id="r", start=0, duration=1)]).to_file(path)
    elif case == "bad rows":
        (tmp_path / "text.wav").write_text("not audio")
        rows = ({"audio": "gone.wav"}, {"audio": "ok.wav", "duration": -1}, {"audio": "text.wav"}, {"sound": "ok.wav"},
                {"audio": "empty.wav"}, {"audio": "ok.wav", "offset": 0.05, "duration": 0.1})
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=expected):
        build_augmenter(AugmentConfig(noise_prob=0.5, noise_manifest=str(path)), seed=0)


@pytest.mark.parametrize("coded", [False, True])
def test_narrowband_copy_writes_an_8_khz_test_set(tmp_path: Path, coded: bool) -> None:
    sf.write(tmp_path / "a.wav", _tones(1.0), RATE)
    sf.write(tmp_path / "b.wav", _tones(3.0, rate=44_100), 44_100)
    write_manifest(tmp_path / "test.jsonl", [
        {"id": "a", "audio": "a.wav", "text": "first", "duration": 1.0},
        {"id": "b", "audio": "b.wav", "text": "second", "duration": 1.5, "offset": 1.0},
    ])
    out = narrowband_copy(tmp_path / "test.jsonl", tmp_path / "nb", mu_law=coded)
    assert out == tmp_path / "nb" / "test.jsonl"
    copies = load_manifest(out)
    assert [(u.id, u.text, u.duration) for u in copies] == [("a", "first", 1.0), ("b", "second", 1.5)]
    for u in copies:
        info = sf.info(u.audio)
        assert (info.samplerate, info.channels, info.subtype) == (TELEPHONE_RATE, 1, "ULAW" if coded else "PCM_16")
        audio, _ = sf.read(u.audio, dtype="float32")
        assert _power_share(audio, LOW - 20, LOW + 20, TELEPHONE_RATE) > 0.95  # the 6 kHz tone is gone


def test_every_problem_of_both_clip_manifests_is_reported_at_once(tmp_path: Path) -> None:
    noise = tmp_path / "noise.jsonl"
    noise.write_text('{"audio": "gone.wav"}\nnot json\n')
    cfg = AugmentConfig(noise_prob=0.5, noise_manifest=str(noise), rir_prob=0.5, rir_manifest=str(tmp_path))
    with pytest.raises(DataError) as e:
        build_augmenter(cfg, 0)
    assert str(e.value).splitlines() == [
        f"{noise}:1: {tmp_path / 'gone.wav'}: no such audio file",
        f"{noise}:2: not valid JSON (Expecting value)",
        f"[augment] rir_manifest: {tmp_path}: is a folder; expected a manifest file",
    ]


def test_config_check_names_missing_clip_manifests(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from macasr.cli import app

    path = tmp_path / "c.toml"
    path.write_text(f'[augment]\nnoise_prob = 0.5\nnoise_manifest = "{tmp_path / "n.jsonl"}"\n'
                    f'rir_prob = 0.5\nrir_manifest = "{tmp_path}"\n')
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {path}:3: [augment] noise_manifest: {str(tmp_path / 'n.jsonl')!r} no such manifest",
        f"error: {path}:5: [augment] rir_manifest: {str(tmp_path)!r} is a folder; expected a manifest file",
    ]


def test_narrowband_copy_reads_prepared_lhotse_manifests_and_names_bad_clips(tmp_path: Path) -> None:
    # `data prepare` writes lhotse CutSets: the natural input of a telephone-band test set.
    from lhotse import CutSet

    from macasr.data.manifest import open_cuts

    sf.write(tmp_path / "a.wav", _tones(1.0), RATE)
    write_manifest(tmp_path / "m.jsonl", [{"id": "a", "audio": "a.wav", "text": "first", "duration": 1.0, "speaker": "s1"}])
    CutSet.from_cuts(list(open_cuts(tmp_path / "m.jsonl"))).to_file(tmp_path / "test-clean.jsonl.gz")
    out = narrowband_copy(tmp_path / "test-clean.jsonl.gz", tmp_path / "nb")
    assert out == tmp_path / "nb" / "test-clean.jsonl"
    [u] = load_manifest(out)
    assert (u.id, u.text, u.speaker, sf.info(u.audio).samplerate) == ("a", "first", "s1", TELEPHONE_RATE)
    (tmp_path / "a.wav").unlink()
    with pytest.raises(DataError, match=r"a.wav: no such audio file \(manifest .*m.jsonl:1\)"):
        narrowband_copy(tmp_path / "m.jsonl", tmp_path / "nb2")
