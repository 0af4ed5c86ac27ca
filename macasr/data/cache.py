"""Frozen-encoder feature cache: encode the training and validation cuts once, train from frames.

A frozen encoder computes the same frames for a clip every epoch; whisper-large-v3 costs about
2.3 TFLOP per 30 s window, far more than the connector. `macasr cache build` runs it once and
training reads the frames back (`[data] cache`), skipping audio decoding, featurizing and the
encoder.

Storage is lhotse's array storage: each clip's frames (T, D) are written by lhotse's
`NumpyFilesWriter` as an fp16 `.npy` file and attached to the cut as a custom `TemporalArray`
named `frames` (`cut.load_frames()` in plain lhotse). We chose it over the other lhotse writers
because it is lossless (the lilcom writers quantise on a log scale, made for log-mel features,
not encoder activations), needs no extra dependency (the HDF5 writers need h5py), keeps fp16 as
fp16, and reads any one clip without an index of byte offsets (the sampler asks for clips in
random order). The cuts are Shar-compatible: `CutSet.to_shar(..., fields={"frames": "numpy"})`
packs the frames into Shar tar shards. `[data] cache_dtype` picks the storage: fp16 (the
default; encoder outputs end in a layer norm, far inside fp16's range, and fp16 keeps 3 more
mantissa bits than bf16), or bf16 for an encoder whose frames could leave fp16's ±65504. numpy
has no bfloat16, so bf16 frames are stored as their 16-bit patterns (an int16 `.npy`, read back
with `from_storage`). A non-finite value is refused either way.

Layout of a cache folder (one SOURCE folder per [data] train/valid dataset name):
    cache_key.json                  what the frames were computed with (`cache_key`), checked on use
    SOURCE/source.json              its manifests, a hash of their contents, shard size, complete?
    SOURCE/frames.000000/xxx/*.npy  the frames of shard 0 (one file per clip, NumpyFilesWriter)
    SOURCE/cuts.000000.jsonl.gz     shard 0's cuts with the `frames` TemporalArray attached

Frames are found by `audio_key(cut)`, a hash of the cut's audio and times, not by its id.

A shard's frames are written to `frames.N.partial/`, renamed when complete, and only then is its
cut manifest written (to a temporary name, then renamed). The manifest is what makes a shard
exist: a build that stops half-way leaves no manifest for the unfinished shard, so no reader
sees it, and the next build re-encodes it while skipping the finished ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from macasr.data.collate import BadClip
from macasr.errors import ConfigError, DataError, MacasrError

if TYPE_CHECKING:
    from lhotse import Cut

    from macasr.config import Config

KEY_FILE = "cache_key.json"
SOURCE_FILE = "source.json"
FIELD = "frames"  # the cut's custom field: cut.load_frames()
STORAGE_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}  # [data] cache_dtype → the key's "dtype"
FORMAT = 1  # bump when the layout changes
DEFAULT_SHARD_SIZE = 1000  # clips per shard: the unit of resuming
KEY_FIELD = "frames_key"  # the cached cut's custom field holding its `audio_key`


class CacheKeyError(MacasrError):
    """The cache was built with other settings than the config asks for (stale frames)."""


# ----------------------------------------------------------------------------- storage


def to_storage(frames: torch.Tensor, dtype: str) -> np.ndarray:
    """Frames (T, D) → the array stored for them: float16, or for "bfloat16" the bf16 bit
    patterns as int16 (numpy has no bfloat16)."""
    if dtype == "bfloat16":
        return frames.detach().to(torch.bfloat16).view(torch.int16).cpu().numpy()
    return frames.detach().to(torch.float16).cpu().numpy()


def from_storage(array: np.ndarray, dtype: str) -> torch.Tensor:
    """A stored array → frames (T, D) float32, the stored values exactly."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return (tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor).float()


# ----------------------------------------------------------------------------- the cache key


def _digest(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:16]


def _tensor_bytes(t: torch.Tensor | np.ndarray) -> bytes:
    """Bytes of a tensor in fp32 when it is floating, so the hash does not depend on the load dtype."""
    t = torch.as_tensor(t).detach().cpu()
    t = t.float() if t.is_floating_point() else t
    return t.contiguous().numpy().tobytes()


def weights_hash(module: nn.Module) -> str:
    """sha256 (16 hex digits) over the module's parameters and buffers: names, shapes and values."""
    state = module.state_dict()
    return _digest(itertools.chain.from_iterable((name.encode(), str(tuple(t.shape)).encode(), _tensor_bytes(t)) for name, t in sorted(state.items())))


def featurizer_settings(featurizer: Any) -> dict[str, Any]:
    """The featurizer's plain settings, arrays as a hash: what makes its features what they are."""
    settings: dict[str, Any] = {"type": type(featurizer).__name__}
    for name, value in sorted(vars(featurizer).items()):
        settings[name] = _digest([_tensor_bytes(value)]) if isinstance(value, (torch.Tensor, np.ndarray)) else value
    return settings


def cache_key(cfg: Config, encoder: nn.Module) -> dict[str, Any]:
    """What cached frames depend on: the encoder's weights (a hash, so a moved or re-downloaded
    checkpoint still matches and a changed one never does), the dtype it ran in, the storage dtype, the featurizer's settings, the window policy and the layer."""
    enc = cfg.model.encoder
    dtype = next(encoder.parameters()).dtype
    return {
        "format": FORMAT, "encoder": enc.name, "weights": weights_hash(encoder),
        "encoder_dtype": str(dtype).removeprefix("torch."), "dtype": STORAGE_DTYPES[cfg.data.cache_dtype],
        "features": featurizer_settings(encoder.featurizer), "window": getattr(enc, "window", "own"),
        "layer": getattr(enc, "layer", 0), "frame_rate": encoder.frame_rate, "dim": encoder.output_dim,
    }


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def key_differences(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """'field: cache has X, config gives Y' for each field that differs, in key order."""
    a, b = _flatten(found), _flatten(expected)
    missing = object()
    return [f"{k}: cache has {a.get(k, missing) if k in a else 'nothing'!r}, config gives {b.get(k) if k in b else 'nothing'!r}"
            for k in dict.fromkeys([*b, *a]) if a.get(k, missing) != b.get(k, missing)]


def read_key(root: Path) -> dict[str, Any] | None:
    path = root / KEY_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable cache key ({e}); rebuild with `macasr cache build CONFIG --rebuild`") from None


def check_key(root: Path, expected: dict[str, Any]) -> None:
    """Raise CacheKeyError naming the first differing field (and how many more) when `root`'s key
    is not `expected`; DataError when `root` is no cache."""
    found = read_key(root)
    if found is None:
        raise DataError(f"{root}: not a feature cache (no {KEY_FILE}); build it with `macasr cache build CONFIG`")
    diffs = key_differences(found, expected)
    if diffs:
        more = f" (and {len(diffs) - 1} more field{'s' * (len(diffs) > 2)})" if len(diffs) > 1 else ""
        raise CacheKeyError(f"{root}: stale feature cache, {diffs[0]}{more}; rebuild it with `macasr cache build CONFIG --rebuild`")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- encoding


class CutEncoder:
    """Cuts → each cut's encoder frames (T, D) as stored (`to_storage` in `dtype`, the cache key's
    "dtype"), or the one line saying why it could not be used; read, featurized and encoded
    `batch_size` at a time.

    Clips are read and featurized by the training dataset itself (`CutDataset.example`, without
    augmentation), so cached frames come from exactly the features live training would use, and
    a clip training would call bad is reported the same way. The encoder is the one training
    would use (same weights and dtype), run under no_grad in eval mode; batching does not change
    a clip's frames (tests/test_window.py)."""

    def __init__(self, encoder: nn.Module, device: torch.device | str = "cpu", batch_size: int = 16,
                 dtype: str = "float16") -> None:
        from macasr.data.loader import CutDataset

        self.encoder = encoder.eval()
        self.dtype = dtype
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dataset = CutDataset(encoder.featurizer)

    def __call__(self, cuts: list[Cut]) -> list[np.ndarray | BadClip]:
        out: list[np.ndarray | BadClip] = []
        for start in range(0, len(cuts), self.batch_size):
            out += self._batch(cuts[start : start + self.batch_size])
        return out

    @torch.no_grad()
    def _batch(self, cuts: list[Cut]) -> list[np.ndarray | BadClip]:
        examples = [self.dataset.example(cut) for cut in cuts]
        features = [x.features for x in examples if not isinstance(x, BadClip)]  # (C, L) each
        if not features:
            return list(examples)
        lengths = torch.tensor([f.shape[-1] for f in features])
        padded = nn.utils.rnn.pad_sequence([f.T for f in features], batch_first=True).transpose(1, 2)
        frames, frame_lengths = self.encoder(padded.to(self.device), lengths.to(self.device))
        encoded = iter(to_storage(frames[i, :n], self.dtype) for i, n in enumerate(frame_lengths.tolist()))
        return [x if isinstance(x, BadClip) else next(encoded) for x in examples]


# ----------------------------------------------------------------------------- building


@dataclasses.dataclass
class SourceReport:
    cuts: int = 0  # cuts cached (now or by an earlier run)
    encoded: int = 0  # cuts encoded by this run
    shards_done: int = 0  # shards written by this run
    shards_kept: int = 0  # finished shards an earlier run left, not re-encoded
    skipped: list[str] = dataclasses.field(default_factory=list)  # one line per clip that could not be read


def _shard_paths(src: Path, index: int) -> tuple[Path, Path]:
    return src / f"frames.{index:06d}", src / f"cuts.{index:06d}.jsonl.gz"


def _skipped_path(src: Path, index: int) -> Path:
    """Why the build left clips of shard `index` out: {audio key: why}, so training can say so."""
    return src / f"skipped.{index:06d}.json"


def _json_default(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):  # in-memory audio (Shar): its digest
        return hashlib.sha1(bytes(value)).hexdigest()
    raise TypeError(f"cannot describe {type(value).__name__} in a cache key")


def audio_key(cut: Cut) -> str:
    """sha1 hex of what a cut's frames depend on: its audio (recording sources, channels,
    transforms, start, duration), not its id, transcript or custom fields.

    Frames are looked up by it, not by cut id: ids are unique within a manifest but two
    manifests may share them (macasr JSONL's default ids are FILE_STEM-LINE), and a cut whose
    audio or times changed since the build must not get the old frames."""
    d = cut.to_dict()
    for field in ("id", "supervisions", "custom"):
        d.pop(field, None)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=_json_default).encode()).hexdigest()


def _storable(cut: Cut) -> Cut:
    """The cut as the shard manifest keeps it: in-memory audio (read from Shar) becomes lhotse's
    Shar placeholder instead of bytes in the JSON (frames stay found through KEY_FIELD)."""
    from lhotse.shar.utils import to_shar_placeholder
    from lhotse.utils import fastcopy

    sources = cut.recording.sources if cut.has_recording else []
    if any(s.type == "memory" for s in sources):
        cut = fastcopy(cut, recording=to_shar_placeholder(cut.recording, cut))
    # Shar's reader marks each cut with its shard (a Path, not JSON) and epoch: reading state, not data.
    custom = {k: v for k, v in (cut.custom or {}).items() if k not in ("shard_origin", "shar_epoch")}
    return fastcopy(cut, custom=custom or None)


def _encode_shard(cuts: list[Cut], encode: Callable[[list[Cut]], list[np.ndarray | BadClip]], report: SourceReport,
                  on_bad_clip: str, dtype: str = "float16") -> tuple[list[tuple[Cut, np.ndarray]], dict[str, str]]:
    """(cut, frames) for each readable cut, encoded longest first (less padding per batch), and
    why each bad clip was left out (by audio key); bad clips go to report.skipped, or stop the
    build with on_bad_clip = "error"."""
    ordered = sorted(cuts, key=lambda c: -c.duration)
    pairs, left_out = [], {}
    for cut, frames in zip(ordered, encode(ordered), strict=True):
        if isinstance(frames, BadClip):
            if on_bad_clip == "error":
                raise DataError(frames.line)
            report.skipped.append(frames.line)
            left_out[audio_key(cut)] = frames.why
        elif not bool(torch.isfinite(from_storage(frames, dtype)).all()):
            why = "are not finite (NaN or ±inf)" if dtype == "bfloat16" else "overflow fp16 (beyond ±65504) or are not finite"
            hint = "" if dtype == "bfloat16" else "; [data] cache_dtype = \"bf16\" stores a wider range"
            raise DataError(f"{cut.id}: its encoder frames {why}; they cannot be cached{hint}")
        else:
            pairs.append((cut, frames))
    return pairs, left_out


def _write_shard(src: Path, index: int, pairs: list[tuple[Cut, np.ndarray]], frame_shift: float,
                 left_out: dict[str, str]) -> None:
    """Frames into frames.N.partial/ (renamed when complete), why clips were left out
    (skipped.N.json), then the cut manifest (atomically), which marks the shard finished."""
    from lhotse import CutSet
    from lhotse.features.io import NumpyFilesWriter

    frames_dir, manifest = _shard_paths(src, index)
    partial = frames_dir.with_name(frames_dir.name + ".partial")
    for stale in (partial, frames_dir):
        shutil.rmtree(stale, ignore_errors=True)
    cached = []
    with NumpyFilesWriter(partial) as writer:
        for cut, frames in pairs:
            key = audio_key(cut)
            array = writer.store_array(key, frames, frame_shift=frame_shift, temporal_dim=0, start=cut.start)
            array = dataclasses.replace(array, array=dataclasses.replace(array.array, storage_path=str(frames_dir.resolve())))
            cached.append(_storable(cut).with_custom(FIELD, array).with_custom(KEY_FIELD, key))
    os.replace(partial, frames_dir)
    if left_out:
        _write_json(_skipped_path(src, index), left_out)
    tmp = manifest.with_name(manifest.name.replace(".jsonl.gz", ".partial.jsonl.gz"))
    CutSet.from_cuts(cached).to_file(tmp)
    os.replace(tmp, manifest)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def prepare_root(root: Path, key: dict[str, Any], names: list[str], rebuild: bool) -> None:
    """Create or reuse `root`: a new cache gets `key`; a stale one is refused (CacheKeyError) or,
    with rebuild, wiped; with rebuild and a current key only the named sources are wiped.
    `build_cache` calls it; a caller may call it first to fail before any other work."""
    found = read_key(root)
    if found is None and root.exists() and any(root.iterdir()):
        raise DataError(f"{root}: exists, is not empty and is not a feature cache (no {KEY_FILE}); "
                        "choose an empty or new folder for [data] cache")
    if found is not None and key_differences(found, key):
        if not rebuild:
            check_key(root, key)
        shutil.rmtree(root)
    elif found is not None and rebuild:
        for name in names:
            shutil.rmtree(root / name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    if read_key(root) is None:
        _write_json(root / KEY_FILE, key)


def _file_chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes, decompressed when gzipped (gzip headers hold a timestamp, so a manifest
    written again with the same cuts keeps its hash)."""
    import gzip

    with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
        while chunk := f.read(1 << 20):
            yield chunk


def source_identity(manifests: list[str]) -> dict[str, Any]:
    """What a source's frames were cut from: its manifests (resolved paths) and a hash of their
    contents (for a Shar folder, of its cut manifests, not its audio), so edited manifests are
    noticed even under the same names."""
    paths = [Path(m).resolve() for m in manifests]
    files = [f for p in paths for f in (sorted(p.glob("cuts.*.jsonl*")) if p.is_dir() else [p])]
    return {"manifests": [str(p) for p in paths],
            "contents": _digest(itertools.chain.from_iterable(_file_chunks(f) for f in files if f.is_file()))}


def _identity_problem(found: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    if found.get("manifests") != wanted["manifests"]:
        return f"it was cached from {found.get('manifests')} but the config gives {wanted['manifests']}"
    if found.get("contents") != wanted["contents"]:
        return "its manifests changed since it was cached"
    return None


def _prepare_source(src: Path, manifests: list[str], shard_size: int) -> None:
    """source.json says what the shards were cut from; resuming from other or edited manifests,
    or with another shard size, would misnumber the shards, so it is refused."""
    wanted = {**source_identity(manifests), "shard_size": shard_size}
    info = src / SOURCE_FILE
    if info.exists():
        found = json.loads(info.read_text(encoding="utf-8"))
        problem = _identity_problem(found, wanted)
        if problem is None and found.get("shard_size") != shard_size:
            problem = f"it was built with --shard-size {found.get('shard_size')}, now {shard_size}"
        if problem:
            raise CacheKeyError(f"{info}: dataset {src.name!r}: {problem}; rebuild it with "
                                f"`macasr cache build CONFIG --datasets {src.name} --rebuild`")
        return
    src.mkdir(parents=True, exist_ok=True)
    _write_json(info, {**wanted, "complete": False})


def build_source(
    root: Path, name: str, manifests: list[str], cuts: Iterable[Cut], encode: Callable[[list[Cut]], list[np.ndarray | str]],
    frame_shift: float, *, shard_size: int = DEFAULT_SHARD_SIZE, on_bad_clip: str = "skip",
    advance: Callable[[int], None] | None = None, dtype: str = "float16",
) -> SourceReport:
    """Cache one source's `cuts` (in their manifest order) under root/name, shard by shard,
    skipping shards an earlier run finished; `advance(n)` is called as n cuts are done. `dtype`
    is the storage dtype `encode` writes (the cache key's "dtype")."""
    src = root / name
    _prepare_source(src, manifests, shard_size)
    report = SourceReport()
    for index, shard in enumerate(_chunks(cuts, shard_size)):
        if _shard_paths(src, index)[1].exists():
            report.shards_kept += 1
        else:
            pairs, left_out = _encode_shard(shard, encode, report, on_bad_clip, dtype)
            _write_shard(src, index, pairs, frame_shift, left_out)
            report.shards_done += 1
            report.encoded += len(pairs)
        if advance:
            advance(len(shard))
    shards = report.shards_kept + report.shards_done
    report.cuts = sum(1 for i in range(shards) for _ in _read_manifest(_shard_paths(src, i)[1]))
    _write_json(src / SOURCE_FILE, {**json.loads((src / SOURCE_FILE).read_text(encoding="utf-8")), "complete": True,
                                    "shards": shards, "cuts": report.cuts})
    return report


def build_cache(
    root: str | Path, key: dict[str, Any], sources: dict[str, list[str]], open_cuts: Callable[[str], Iterable[Cut]],
    encode: Callable[[list[Cut]], list[np.ndarray | str]], *, rebuild: bool = False, shard_size: int = DEFAULT_SHARD_SIZE,
    on_bad_clip: str = "skip", advance: Callable[[int], None] | None = None,
) -> dict[str, SourceReport]:
    """Cache every source (name → manifests) under `root` with `key` (see the module docstring)."""
    root = Path(root)
    prepare_root(root, key, list(sources), rebuild)
    frame_shift = 1.0 / key["frame_rate"]
    reports = {}
    for name, manifests in sources.items():
        cuts = itertools.chain.from_iterable(open_cuts(m) for m in manifests)
        reports[name] = build_source(root, name, manifests, cuts, encode, frame_shift, shard_size=shard_size,
                                     on_bad_clip=on_bad_clip, advance=advance, dtype=key["dtype"])
    return reports


def cache_sources(cfg: Config, names: list[str] | None) -> dict[str, list[str]]:
    """name → manifests of the [data] train and valid sources (each name once), or only `names`;
    ConfigError for a name that is neither, listing those that are."""
    from macasr.data.manifest import dataset_sources

    sources: dict[str, list[str]] = {}
    for split in ("train", "valid"):
        for source in dataset_sources(cfg, split):
            if sources.setdefault(source.name, source.manifests) != source.manifests:
                raise ConfigError(f"[data] {split}: two sources are named {source.name!r} ({sources[source.name]} and "
                                  f"{source.manifests}); the cache keeps one folder per name, so define them as "
                                  "[datasets.*] entries with different names")
    if not sources:
        raise ConfigError("[data] train and valid: empty; nothing to cache")
    unknown = [n for n in names or [] if n not in sources]
    if unknown:
        raise ConfigError(f"--datasets: {', '.join(map(repr, unknown))} not in [data] train or valid (they hold: {', '.join(sources)})")
    return {n: sources[n] for n in names} if names else sources


# ----------------------------------------------------------------------------- reading


def _read_manifest(path: Path) -> Iterator[Cut]:
    from lhotse import CutSet

    yield from CutSet.from_jsonl_lazy(path)


class FrameCache:
    """cut → its cached encoder frames (T, D) float32; the loader's `frames_from` hook.

    Construction checks the key (CacheKeyError naming the differing field), that the sources are
    complete and, given `sources` (name → manifests, as `cache_sources` gives them), that each
    was cached from those manifests, so a dataset left out of the build (or built from other
    manifests) fails at start instead of clip by clip. It indexes the cached cuts by `audio_key`
    (one pass over the shard manifests; about 200 bytes per cut). Picklable, so DataLoader
    workers get their own copy.
    """

    def __init__(self, path: str | Path, expected_key: dict[str, Any], sources: dict[str, list[str]] | None = None) -> None:
        self.root = Path(path)
        check_key(self.root, expected_key)
        self.frame_shift = 1.0 / expected_key["frame_rate"]
        self.dtype: str = expected_key["dtype"]
        self.index: dict[str, tuple[str, str, int]] = {}  # audio_key → (shard folder, storage key, frames)
        self.left_out: dict[str, str] = {}  # audio_key → why cache build could not use the clip
        infos = sorted(self.root.glob(f"*/{SOURCE_FILE}")) if sources is None else [self._source_info(n, m) for n, m in sources.items()]
        for info in infos:
            self._add_source(info)

    def _source_info(self, name: str, manifests: list[str]) -> Path:
        """root/name/source.json, checked to hold `manifests`; DataError naming the dataset otherwise."""
        info = self.root / name / SOURCE_FILE
        if not info.exists():
            raise DataError(f"{self.root}: the feature cache has no frames for dataset {name!r}; "
                            f"build them with `macasr cache build CONFIG --datasets {name}`")
        problem = _identity_problem(json.loads(info.read_text(encoding="utf-8")), source_identity(manifests))
        if problem:
            raise CacheKeyError(f"{info}: dataset {name!r}: {problem}; rebuild it with "
                                f"`macasr cache build CONFIG --datasets {name} --rebuild`")
        return info

    def _add_source(self, info: Path) -> None:
        state = json.loads(info.read_text(encoding="utf-8"))
        if not state.get("complete"):
            raise DataError(f"{info.parent}: this feature cache source is incomplete (its build stopped); "
                            "finish it with `macasr cache build CONFIG`")
        for index in range(state["shards"]):
            frames_dir, manifest = _shard_paths(info.parent, index)
            shard = str(frames_dir.relative_to(self.root))  # relative, so a moved cache still reads
            for cut in _read_manifest(manifest):
                array = cut.custom[FIELD].array
                self.index[cut.custom[KEY_FIELD]] = (shard, array.storage_key, array.shape[0])
            if (skipped := _skipped_path(info.parent, index)).is_file():
                self.left_out.update(json.loads(skipped.read_text(encoding="utf-8")))

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, cut: Cut) -> bool:
        return audio_key(cut) in self.index

    def __call__(self, cut: Cut) -> torch.Tensor:
        """(T, D) float32 (the stored fp16 or bf16 values, exactly); DataError when the cache holds no
        frames for the cut's audio (a new cut, or one whose audio or times changed since the build)."""
        from lhotse.array import Array

        entry = self.index.get(audio_key(cut))
        if entry is None and (why := self.left_out.get(audio_key(cut))):
            raise DataError(f"{why} (so `macasr cache build` left it out of the feature cache)")
        if entry is None:
            raise DataError(f"{cut.id}: the feature cache {self.root} has no frames for its audio ({cut.duration:g} s from "
                            f"{cut.start:g} s of recording {cut.recording_id}); (re)build it with `macasr cache build CONFIG`")
        shard, key, frames = entry
        array = Array(storage_type="numpy_files", storage_path=str(self.root / shard), storage_key=key, shape=[frames])
        return from_storage(array.load(), self.dtype)


def frames_from_config(cfg: Config, encoder: nn.Module) -> Callable[[Cut], torch.Tensor] | None:
    """The loader's `frames_from` hook for a run: None without `[data] cache`, else a FrameCache
    checked against this config's key and its [data] train/valid datasets. ([data] frame_mask
    masks the frames in the training dataset, with SpecAugment seeded per clip.)"""
    if not cfg.data.cache:
        return None
    frames = FrameCache(cfg.data.cache, cache_key(cfg, encoder), cache_sources(cfg, None))
    return frames
