"""`macasr data prepare`: real corpora → lhotse CutSet manifests, one per split.

lhotse's recipes parse the corpora (`lhotse.recipes.prepare_<name>`); this module only turns
their Recording/Supervision manifests into CutSets with one supervision per cut, writes each split
atomically as `OUT_DIR/<corpus>_<split>.jsonl.gz`, counts what was skipped and why, and suggests the
`[datasets.NAME]` lines for the config. Kaldi folders (`macasr.data.kaldi`) and Hugging Face
datasets (`macasr.data.hf`) come in through the same writer.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import inspect
import json
import logging
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from macasr.data.kaldi import lhotse_reads_sphere
from macasr.errors import DataError
from macasr.fileio import atomic_open

OWN_SOURCES = ("kaldi", "hf")  # prepared by macasr itself, not by a lhotse recipe

# Per corpus, the [datasets.*] options that make its transcripts agree with the others
# (docs/data.md, "Training targets from mixed corpora").
SUGGESTED_OPTIONS: dict[str, dict[str, Any]] = {
    "librispeech": {"text": "lower"},  # upper case, no punctuation
    "commonvoice": {"text": "basic"},  # cased and punctuated → lower case, no punctuation (apostrophes kept)
    "fisher-english": {"drop_annotations": True},  # [laughter] (( )) th- ...
    "switchboard": {"drop_annotations": True},  # [noise] <unk> partial words
}

HOW2_HELP = (
    "How2 ships filterbank features, not audio, and a speech-LLM needs the waveform: recover the audio "
    "from the original YouTube videos (or the How2 release's audio), convert it with "
    "`ffmpeg -i VIDEO -ac 1 -ar 16000 ID.wav`, write a Kaldi folder with wav.scp (ID path) + segments "
    "+ text (+ utt2spk), and prepare it with `macasr data prepare kaldi DIR OUT_DIR` (docs/data.md, How2)"
)


@dataclasses.dataclass
class SplitSummary:
    """What one written manifest holds (hours in `seconds`) and what was left out, by reason."""

    name: str  # dataset name suggested for [datasets.NAME]
    path: Path
    cuts: int = 0
    seconds: float = 0.0
    speakers: set[str] = dataclasses.field(default_factory=set)
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # suggested [datasets.*] keys
    note: str = ""

    def toml(self) -> str:
        """The `[datasets.NAME]` table to paste into a config."""
        lines = [f"[datasets.{self.name}]", f"manifest = [{json.dumps(str(self.path))}]"]
        for key, value in self.options.items():
            lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- writing cuts


def dataset_name(corpus: str, split: str) -> str:
    """`librispeech`, `dev-clean` → `librispeech_dev_clean` (a bare TOML key that reads well)."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", f"{corpus}_{split}" if split else corpus).strip("_")


def manifest_path(out_dir: Path, corpus: str, split: str) -> Path:
    return out_dir / (f"{corpus}_{split}.jsonl.gz" if split else f"{corpus}.jsonl.gz")


def skip_reason(cut: Any) -> str | None:
    """Why a cut cannot be a training example (None: it can)."""
    if cut.duration <= 0:
        return "zero duration"
    if not cut.supervisions:
        return None  # recordings only (noise, RIRs): kept, see SplitSummary.note
    if len(cut.supervisions) != 1:
        return "more than one supervision"
    text = cut.supervisions[0].text
    if text is None or not text.strip():
        return "empty transcript"
    return None


def write_cuts(cuts: Iterable[Any], summary: SplitSummary) -> SplitSummary:
    """Stream `cuts` into `summary.path` (gzipped lhotse JSONL, replaced in one rename) and count
    them; cuts with a `skip_reason` are left out and counted. Raises DataError when none is left."""
    summary.path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(summary.path) as raw, gzip.GzipFile(fileobj=raw, mode="wb") as gz:
        for cut in cuts:
            if reason := skip_reason(cut):
                summary.skipped[reason] += 1
                continue
            gz.write((json.dumps(cut.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))
            summary.cuts += 1
            summary.seconds += cut.duration
            summary.speakers.update(s.speaker for s in cut.supervisions if s.speaker)
        if summary.cuts == 0:
            why = ", ".join(f"{n} {r}" for r, n in summary.skipped.items()) or "the source has none"
            raise DataError(f"{summary.path}: no usable utterances ({why}); nothing written")
    return summary


def cuts_from_manifests(recordings: Any, supervisions: Any | None) -> Any:
    """Recording/Supervision manifests → CutSet with one supervision per cut, in its channel
    (a two-channel telephone call becomes one mono cut per turn); recordings-only manifests
    (noise, RIRs) become one cut per recording."""
    from lhotse import CutSet

    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    if supervisions is None or len(supervisions) == 0:
        return cuts
    return cuts.trim_to_supervisions(keep_overlapping=False)


# ----------------------------------------------------------------------------- lhotse recipes


def recipe_names() -> list[str]:
    """Every corpus lhotse can prepare, spelled as on the command line (`fisher-english`)."""
    import lhotse.recipes

    return sorted(n[len("prepare_"):].replace("_", "-") for n in dir(lhotse.recipes) if n.startswith("prepare_"))


def corpus_names() -> list[str]:
    return sorted(recipe_names() + list(OWN_SOURCES))


def find_recipe(corpus: str) -> Callable[..., Any]:
    """`lhotse.recipes.prepare_<corpus>`; DataError with the closest names for an unknown one."""
    import lhotse.recipes

    if corpus.lower() == "how2":
        raise DataError(f"how2: no recipe. {HOW2_HELP}")
    function = getattr(lhotse.recipes, "prepare_" + corpus.replace("-", "_").lower(), None)
    if function is None:
        close = difflib.get_close_matches(corpus.lower(), corpus_names(), n=5, cutoff=0.6)
        hint = f"close names: {', '.join(close)}" if close else "none is close"
        raise DataError(f"unknown corpus {corpus!r}: expected kaldi, hf or a lhotse recipe ({hint}; "
                        "`macasr data corpora` lists them all)")
    return function


def parse_options(options: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs for a recipe; VALUE is JSON when it parses (`3`, `true`, `["en"]`), else a string."""
    parsed: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key.strip().isidentifier():
            raise DataError(f"--option {option!r}: expected KEY=VALUE with a recipe argument's name as KEY")
        try:
            parsed[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.strip()] = value
    return parsed


def recipe_arguments(recipe: Callable[..., Any], corpus_dir: Path, work_dir: Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for a recipe: the corpus folder as its first parameter, a scratch
    output_dir, absolute audio paths (the manifests are used from anywhere) and the user's options.
    Unknown option names are refused with the recipe's parameters."""
    params = inspect.signature(recipe).parameters
    if unknown := sorted(set(options) - set(params)):
        raise DataError(f"--option {unknown[0]}: {recipe.__name__} has no such argument "
                        f"(it takes {', '.join(params)})")
    args: dict[str, Any] = {next(iter(params)): corpus_dir}
    if "output_dir" in params:
        args["output_dir"] = work_dir
    if "absolute_paths" in params:
        args["absolute_paths"] = True
    return {**args, **options}


class _RecipeLog(logging.Handler):
    """Collects what a recipe logs about data it leaves out ("No such file: ...", fix_manifests'
    "Removed N supervisions ...") so the summary can say it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.missing: list[str] = []
        self.notes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("No such file"):
            self.missing.append(message.partition(":")[2].strip())
        elif record.levelno >= logging.WARNING and "lhotse" in record.pathname:
            self.notes.append(message)


@contextmanager
def _recipe_log() -> Iterator[_RecipeLog]:
    """Collect the recipe's log records and Python warnings (Fisher's "N recordings had errors and
    were omitted") while it runs."""
    root = logging.getLogger()
    handler, level = _RecipeLog(), root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield handler
        handler.notes += [str(w.message) for w in caught if "lhotse" in w.filename]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _is_leaf(value: Any) -> bool:
    return isinstance(value, Mapping) and "recordings" in value


def flatten_manifests(result: Any, prefix: str = "") -> dict[str, Mapping[str, Any]]:
    """A recipe's nested answer ({part: {...}}, {lang: {part: {...}}} or one {...}) → {split: leaf},
    split names joined with `_` (`en_train`); "" for a corpus with one unnamed split."""
    if _is_leaf(result):
        return {prefix: result}
    if not isinstance(result, Mapping):
        return {}
    flat: dict[str, Mapping[str, Any]] = {}
    for key, value in result.items():
        flat.update(flatten_manifests(value, f"{prefix}_{key}" if prefix else str(key)))
    return flat


def _expected_rows(corpus: str, corpus_dir: Path, split: str) -> int | None:
    """How many utterances the corpus's own lists name for a split (LibriSpeech `*.trans.txt`
    lines, Common Voice TSV rows), to count those the recipe dropped; None when unknown."""
    if corpus == "librispeech":
        files = list((corpus_dir / split).rglob("*.trans.txt"))
        return sum(1 for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()) if files else None
    if corpus == "commonvoice" and "_" in split:
        language, part = split.rsplit("_", 1)
        tsv = corpus_dir / language / f"{part}.tsv"
        if tsv.is_file():
            return max(0, sum(1 for line in tsv.read_text(encoding="utf-8").splitlines() if line.strip()) - 1)
    return None


def _missing_in(split: str, missing: list[str]) -> int:
    return sum(1 for m in missing if f"/{split.rsplit('_', 1)[-1]}/" in m or f"/{split}/" in m)


def prepare_recipe(corpus: str, corpus_dir: Path, out_dir: Path, options: Mapping[str, Any] | None = None) -> list[SplitSummary]:
    """Run lhotse's recipe for `corpus` on `corpus_dir` and write one CutSet manifest per split."""
    corpus = corpus.lower()
    recipe = find_recipe(corpus)
    if not corpus_dir.is_dir():
        raise DataError(f"{corpus_dir}: no such folder (expected the {corpus} corpus)")
    out_dir.mkdir(parents=True, exist_ok=True)
    options = dict(options or {})
    if corpus == "switchboard":
        options.setdefault("transcripts_dir", str(switchboard_transcripts(corpus_dir)))
    # lhotse would run the sph2pipe program for every .sph file (Fisher, Switchboard); uncompressed
    # SPHERE is read with soundfile instead.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".recipe-") as work, _recipe_log() as log, lhotse_reads_sphere():
        try:
            result = recipe(**recipe_arguments(recipe, corpus_dir, Path(work), options))
        except (AssertionError, ValueError, KeyError, FileNotFoundError, IndexError) as e:
            detail = f"{type(e).__name__}: {e}" if str(e) else f"{type(e).__name__} in {_failing_line(e)}"
            raise DataError(f"{corpus_dir}: lhotse's {corpus} recipe failed ({detail}); "
                            f"expected the corpus as released (docs/data.md, {corpus})") from None
        splits = flatten_manifests(result)
        if not splits:
            raise DataError(f"{corpus_dir}: lhotse's {corpus} recipe found no data")
        summaries = [_write_split(corpus, corpus_dir, out_dir, split, leaf, log) for split, leaf in sorted(splits.items())]
    for s in summaries:
        s.options = dict(SUGGESTED_OPTIONS.get(corpus, {}))
    if log.notes and summaries:
        summaries[-1].note = "; ".join(dict.fromkeys(log.notes))
    return summaries


def _write_split(corpus: str, corpus_dir: Path, out_dir: Path, split: str, leaf: Mapping[str, Any], log: _RecipeLog) -> SplitSummary:
    summary = SplitSummary(dataset_name(corpus, split), manifest_path(out_dir, corpus, split))
    supervisions = leaf.get("supervisions")
    write_cuts(cuts_from_manifests(leaf["recordings"], supervisions), summary)
    if not supervisions:
        summary.note = "recordings only (no transcripts): a noise/RIR manifest, not a training set"
    expected = _expected_rows(corpus, corpus_dir, split)
    written = summary.cuts + sum(summary.skipped.values())
    if expected is not None and expected > written:
        summary.skipped["listed but no readable audio file"] += expected - written
    elif missing := _missing_in(split, log.missing):
        summary.skipped["audio file missing"] += missing
    return summary


def _failing_line(error: BaseException) -> str:
    """`file.py:LINE` where a bare `assert` of a recipe failed (its message is empty)."""
    import traceback

    frame = traceback.extract_tb(error.__traceback__)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} `{frame.line}`"


def switchboard_transcripts(corpus_dir: Path) -> Path:
    """The Mississippi State transcripts lhotse's recipe needs (it would download them otherwise)."""
    for candidate in [corpus_dir / "swb_ms98_transcriptions", corpus_dir.parent / "swb_ms98_transcriptions"]:
        if candidate.is_dir():
            return candidate
    raise DataError(
        f"{corpus_dir}: no swb_ms98_transcriptions folder inside it or beside it; unpack "
        "switchboard_word_alignments.tar.gz (ISIP Mississippi State transcripts) there, or pass "
        "--option transcripts_dir=PATH (nothing is downloaded)"
    )


# ----------------------------------------------------------------------------- one entry point


def prepare(corpus: str, source: str, out_dir: Path, *, options: Iterable[str] = (), allow_pipes: bool = False,
            split: str = "train", audio_column: str = "audio", text_column: str = "text",
            speaker_column: str | None = None, name: str | None = None) -> list[SplitSummary]:
    """`macasr data prepare CORPUS SOURCE OUT_DIR`: kaldi (`allow_pipes`, `name`), hf (`split`,
    the columns, `name`) or a lhotse recipe by name (`options`: KEY=VALUE strings for it)."""
    corpus = corpus.lower()
    if corpus == "kaldi":
        from macasr.data.kaldi import prepare_kaldi

        return [prepare_kaldi(Path(source), out_dir, allow_pipes=allow_pipes, name=name)]
    if corpus == "hf":
        from macasr.data.hf import prepare_hf

        return [prepare_hf(source, out_dir, split=split, audio_column=audio_column, text_column=text_column,
                           speaker_column=speaker_column, name=name)]
    refuse_features_only(Path(source))
    return prepare_recipe(corpus, Path(source), out_dir, parse_options(options))


FEATURE_FILES = ("feats.scp", "cmvn.scp")


def refuse_features_only(folder: Path) -> None:
    """A folder of Kaldi features without audio (How2's release) → DataError saying how to get audio."""
    if not folder.is_dir() or (folder / "wav.scp").is_file():
        return
    features = [n for n in FEATURE_FILES if (folder / n).is_file()] or [p.name for p in sorted(folder.glob("*.ark"))[:1]]
    if features and not any(next(folder.rglob(f"*.{ext}"), None) for ext in ("wav", "flac", "sph", "mp3", "ogg", "opus")):
        raise DataError(f"{folder}: holds features ({features[0]}) but no audio and no wav.scp. {HOW2_HELP}")
