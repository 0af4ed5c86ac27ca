"""Tiny corpora in their real layouts (LibriSpeech, Common Voice, Kaldi + SPHERE, Hugging Face),
written by the tests of `macasr data`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich tables of the CLI printed 200 columns wide, whatever the terminal (or none, under xdist)."""
    from macasr.cli import _common

    for console in (_common.console, _common.err_console):
        monkeypatch.setattr(console, "_width", 200)


def tone(seconds: float, rate: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (int(seconds * rate), channels) if channels > 1 else (int(seconds * rate),)
    return (0.2 * rng.standard_normal(shape)).clip(-0.9, 0.9).astype("float32")


def write_librispeech(root: Path) -> Path:
    """LibriSpeech/dev-clean/SPK/CHAPTER/SPK-CHAPTER-XXXX.flac + SPK-CHAPTER.trans.txt; one line
    names a FLAC that is not there."""
    corpus = root / "LibriSpeech"
    for spk, chapter, seconds in [("84", "121123", (1.0, 1.5)), ("174", "50561", (2.0,))]:
        folder = corpus / "dev-clean" / spk / chapter
        folder.mkdir(parents=True)
        lines = []
        for i, s in enumerate(seconds):
            uid = f"{spk}-{chapter}-{i:04d}"
            sf.write(folder / f"{uid}.flac", tone(s, 16000, i), 16000)
            lines.append(f"{uid} GO DO YOU HEAR NUMBER {spk} {i}")
        lines.append(f"{spk}-{chapter}-0099 THIS LINE HAS NO AUDIO")
        (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    (corpus / "SPEAKERS.TXT").write_text(";ID  |SEX| SUBSET           |MINUTES| NAME\n84   | F | dev-clean        | 8.02 | Christie\n")
    return corpus


CV_COLUMNS = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
              "age", "gender", "accents", "variant", "locale", "segment"]


def write_commonvoice(root: Path) -> Path:
    """cv-corpus-N/en/{validated,train,dev,test}.tsv (a recent release's columns), clips/*.mp3,
    clip_durations.tsv; one test row names a clip that is not there."""
    corpus = root / "cv-corpus-20.0-2024-12-06"
    lang = corpus / "en"
    (lang / "clips").mkdir(parents=True)
    rows = {"train": [("spk-a", "common_voice_en_1.mp3", "Hello, world!")],
            "dev": [("spk-a", "common_voice_en_2.mp3", "Is it dev?")],
            "test": [("spk-b", "common_voice_en_3.mp3", 'She said "yes" twice.'),
                     ("spk-c", "common_voice_en_4.mp3", "It's quiet here."),
                     ("spk-c", "common_voice_en_404.mp3", "No clip for this one.")]}
    durations = ["clip\tduration[ms]"]
    for split, split_rows in rows.items():
        lines = ["\t".join(CV_COLUMNS)]
        for i, (client, clip, sentence) in enumerate(split_rows):
            if "404" not in clip:
                sf.write(lang / "clips" / clip, tone(0.5 + 0.25 * i, 48000, i), 48000, format="MP3")
                durations.append(f"{clip}\t{int((0.5 + 0.25 * i) * 1000)}")
            lines.append("\t".join([client, clip, f"s{i}", sentence, "", "2", "0", "twenties", "female_feminine", "", "", "en", ""]))
        (lang / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    (lang / "validated.tsv").write_text((lang / "train.tsv").read_text())
    (lang / "clip_durations.tsv").write_text("\n".join(durations) + "\n")
    return corpus


def write_kaldi(root: Path, *, extra_wav: str = "", extra_segments: str = "", extra_text: str = "") -> tuple[Path, np.ndarray]:
    """An 8 kHz two-channel NIST SPHERE call (one channel per side) referenced through sph2pipe
    lines, with segments, text (with annotation tags), utt2spk and utt2dur."""
    data = root / "data" / "train"
    data.mkdir(parents=True)
    sph = root / "audio" / "sw02001.sph"
    sph.parent.mkdir()
    samples = tone(4.0, 8000, 7, channels=2)
    sf.write(sph, samples, 8000, format="NIST", subtype="PCM_16")
    (data / "wav.scp").write_text(f"sw02001-A sph2pipe -f wav -p -c 1 {sph} |\nsw02001-B sph2pipe -f wav -p -c 2 {sph} |\n" + extra_wav)
    (data / "segments").write_text("sw02001-A_000000-000150 sw02001-A 0.00 1.50\nsw02001-B_000100-000400 sw02001-B 1.00 4.00\n" + extra_segments)
    (data / "text").write_text("sw02001-A_000000-000150 uh-huh [laughter] yeah\nsw02001-B_000100-000400 i think th- that's right\n" + extra_text)
    (data / "utt2spk").write_text("sw02001-A_000000-000150 sw02001-A\nsw02001-B_000100-000400 sw02001-B\n")
    (data / "utt2dur").write_text("sw02001-A_000000-000150 1.5\nsw02001-B_000100-000400 3.0\n")
    return data, sf.read(sph, dtype="float32")[0]


def save_hf_dataset(root: Path) -> Path:
    import datasets

    def wav_bytes(seconds: float, seed: int) -> bytes:
        buffer = io.BytesIO()
        sf.write(buffer, tone(seconds, 16000, seed), 16000, format="WAV", subtype="PCM_16")
        return buffer.getvalue()

    # Built as a {bytes, path} struct and cast to Audio, as hub datasets store audio: encoding
    # through the Audio feature directly would need torchcodec, which macasr does not use.
    split = datasets.Dataset.from_dict(
        {"audio": [{"bytes": wav_bytes(0.5, 1), "path": None}, {"bytes": wav_bytes(1.25, 2), "path": None}],
         "sentence": ["Hi there.", "Second one"], "client": ["x", "y"]}).cast_column("audio", datasets.Audio())
    folder = root / "tiny_hf"
    datasets.DatasetDict({"test": split}).save_to_disk(str(folder))
    return folder


def write_switchboard(root: Path) -> tuple[Path, np.ndarray]:
    """LDC97S62 (an 8 kHz two-channel uncompressed SPHERE call) and the ISIP
    swb_ms98_transcriptions beside it: one `*-trans.text` per side, with a [silence] segment."""
    audio = root / "LDC97S62" / "swb1_d1" / "data"
    audio.mkdir(parents=True)
    samples = tone(3.0, 8000, 11, channels=2)
    sf.write(audio / "sw02001.sph", samples, 8000, format="NIST", subtype="PCM_16")
    trans = root / "swb_ms98_transcriptions" / "20" / "2001"
    trans.mkdir(parents=True)
    (trans / "sw2001A-ms98-a-trans.text").write_text(
        "sw2001A-ms98-a-0001 0.000000 0.500000 [silence]\nsw2001A-ms98-a-0002 0.500000 1.750000 uh-huh [laughter] right\n")
    (trans / "sw2001B-ms98-a-trans.text").write_text("sw2001B-ms98-a-0001 1.000000 3.000000 i think th- that's it\n")
    return root / "LDC97S62", sf.read(audio / "sw02001.sph", dtype="float32")[0]


def write_fisher(root: Path) -> tuple[Path, np.ndarray]:
    """Fisher English part 1 as lhotse's recipe reads it: LDC2004S13/<disc>/audio/<dir>/fe_03_NNNNN.sph
    (8 kHz two-channel SPHERE), LDC2004T19/data/trans/<dir>/fe_03_NNNNN.txt (three header lines,
    then `START END SIDE: words`) and LDC2004T19/doc/fe_03_p1_calldata.tbl (speaker pins per side)."""
    corpus = root / "fisher"
    audio = corpus / "LDC2004S13" / "fe_03_p1_sph1" / "audio" / "000"
    audio.mkdir(parents=True)
    samples = tone(3.0, 8000, 5, channels=2)
    sf.write(audio / "fe_03_00001.sph", samples, 8000, format="NIST", subtype="PCM_16")
    trans = corpus / "LDC2004T19" / "data" / "trans" / "000"
    trans.mkdir(parents=True)
    (trans / "fe_03_00001.txt").write_text(
        "# fe_03_00001.sph\n\n\n0.50 1.50 A: hi (( um )) my name is\n\n1.20 2.80 B: [laughter] oh hi th- there\n")
    doc = corpus / "LDC2004T19" / "doc"
    doc.mkdir()
    (doc / "fe_03_p1_calldata.tbl").write_text(
        "CALL_ID,DATE,TOPIC,SIG_GRADE,CNV_GRADE,APIN,ASX.DL,APHNUM,APHSET,APHTYP,BPIN,BSX.DL,BPHNUM,BPHSET,BPHTYP\n"
        "00001,20021112_102108,ENG01,2,2,3917,F.a,0,1,3,3911,M.a,0,1,3\n")
    return corpus, sf.read(audio / "fe_03_00001.sph", dtype="float32")[0]
