"""`macasr inspect`: how the connector's speech embeddings sit in the LLM's token-embedding space.

For each speech embedding s (one row of the connector's output, (N, H)) against the LLM's input
embedding matrix E (V, H):
- its L2 norm beside the mean L2 norm of E's rows (the ratio speech / token);
- the k vocabulary tokens nearest to it by cosine similarity;
- with a reference transcript (a manifest row), its cosine similarity to the embeddings of the
  transcript's tokens (tokenized as training does, `macasr.model.llm.text_ids`, without the end
  token): an (N, M) matrix, drawn as a heatmap, and whether its nearest token is one of them.

Everything runs under `torch.no_grad` in eval mode, so the same checkpoint and input give the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lhotse.cut import Cut

from macasr.data.collate import collate
from macasr.data.loader import CutDataset
from macasr.errors import DataError, MacasrError
from macasr.infer.inputs import Source, expand
from macasr.model.build import autocast
from macasr.model.llm import text_ids

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROUND = 6  # decimals kept in the JSON: enough to compare, and stable across runs
RESULTS = "inspect.json"  # the file that marks a folder as an inspect's output
WORD_START = "▁"  # shown before a heatmap label whose token begins a word
WORD_START_MARKS = ("▁", "Ġ")  # how tokenizers mark it: SentencePiece / Metaspace, byte-level BPE (GPT-2, Qwen)
ROWS_PER_CHUNK = 64  # speech embeddings compared with the whole vocabulary at once (memory: 64 × V floats)


@dataclasses.dataclass
class Inspection:
    """One utterance's numbers. `similarity` (N, M) is None without a reference transcript."""

    id: str
    duration: float  # seconds
    seconds: list[float]  # (N,) start of each speech embedding, seconds (duration spread evenly over N)
    norms: torch.Tensor  # (N,) L2 norm of each speech embedding
    token_norm: float  # mean L2 norm of the LLM's token embeddings
    nearest_ids: torch.Tensor  # (N, k) vocabulary ids, nearest first
    nearest_cos: torch.Tensor  # (N, k) their cosine similarities
    reference: str | None = None
    reference_ids: list[int] = dataclasses.field(default_factory=list)  # (M,)
    similarity: torch.Tensor | None = None  # (N, M) cosine, speech embedding × transcript token

    @property
    def norm_ratio(self) -> float:
        return float(self.norms.mean()) / self.token_norm

    @property
    def nearest_in_transcript(self) -> float | None:
        """Share of speech embeddings whose nearest vocabulary token is one of the transcript's; None without one."""
        if self.reference is None:
            return None
        if not self.reference_ids:
            return 0.0
        wanted = torch.tensor(sorted(set(self.reference_ids)), device=self.nearest_ids.device)
        return float(torch.isin(self.nearest_ids[:, 0], wanted).float().mean())


def speech_embeddings(model: Any, cut: Cut, device: torch.device, precision: str) -> tuple[torch.Tensor, float]:
    """The connector's output for `cut` → (N, H) float32 on `device` (padding cut off), and the
    clip's seconds. DataError naming the clip when it cannot be read."""
    example = CutDataset(model.encoder.featurizer).example(cut)
    batch = collate([example])
    if batch.bad_clips:
        raise DataError(batch.skipped[0])
    batch = batch.to(device)
    with torch.no_grad(), autocast(device, precision):
        embeds, lengths = model.encode_speech(batch.features, batch.feature_lengths)
    return embeds[0, : int(lengths[0])].float(), batch.durations[0]


def inspect_cut(model: Any, cut: Cut, reference: str | None, device: torch.device, precision: str, top_k: int = 5) -> Inspection:
    """One utterance → its Inspection. `reference`: the transcript, or None (a bare audio file)."""
    speech, seconds = speech_embeddings(model, cut, device, precision)
    table = model.llm.get_input_embeddings().weight.detach().to(speech.device, torch.float32)  # (V, H), on the model's device
    if speech.shape[-1] != table.shape[-1]:
        raise MacasrError(f"speech embeddings are {speech.shape[-1]} wide but the LLM's token embeddings {table.shape[-1]}")
    if not torch.isfinite(speech).all():
        raise MacasrError(f"{cut.id}: the connector's output holds NaN or infinite values")
    unit_table = torch.nn.functional.normalize(table, dim=-1)
    unit = torch.nn.functional.normalize(speech, dim=-1)
    k = min(top_k, len(table))
    nearest_cos, nearest_ids = [], []
    for chunk in unit.split(ROWS_PER_CHUNK):
        values, ids = (chunk @ unit_table.T).topk(k, dim=-1)  # (n, k)
        nearest_cos.append(values)
        nearest_ids.append(ids)
    n = len(speech)
    result = Inspection(
        id=cut.id, duration=seconds, seconds=[seconds * i / n for i in range(n)], norms=speech.norm(dim=-1).cpu(),
        token_norm=float(table.norm(dim=-1).mean()), nearest_ids=torch.cat(nearest_ids).cpu(), nearest_cos=torch.cat(nearest_cos).cpu(),
    )
    if reference is not None:
        ids = text_ids(model.tokenizer, reference)
        result.reference, result.reference_ids = reference, ids
        result.similarity = (unit @ unit_table[ids].T if ids else unit.new_zeros(n, 0)).cpu()
    return result


def _r(x: float) -> float:
    """Rounded for the JSON; a non-finite number is a bug, not a result."""
    if not math.isfinite(x):
        raise MacasrError(f"inspect computed a non-finite number ({x}); the checkpoint's weights may be broken")
    return round(float(x), ROUND)


def _token(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id])


def token_labels(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The heatmap's label per transcript token: the token as decoded (escaped: "\\n"), with "▁"
    before one that begins a word, so "you have" reads "▁yo u ▁have", not "yo u have". A token
    begins a word when it is the first, decodes with a leading space, or its vocabulary entry
    starts with the tokenizer's word mark ("▁", or "Ġ" for byte-level BPE: single tokens decode
    without their space there)."""
    labels = []
    for n, token_id in enumerate(ids):
        piece = _token(tokenizer, token_id)
        raw = tokenizer.convert_ids_to_tokens(token_id)
        starts = n == 0 or piece.startswith(" ") or (isinstance(raw, str) and raw.startswith(WORD_START_MARKS))
        text = repr(piece[1:] if piece.startswith(" ") and len(piece) > 1 else piece)[1:-1]
        labels.append(WORD_START + text if starts else text)
    return labels


def as_record(result: Inspection, tokenizer: Any, heatmap: str | None = None) -> dict[str, Any]:
    """The JSON object of one utterance: summary numbers and, per speech embedding, time, norm and nearest tokens."""
    record: dict[str, Any] = {
        "id": result.id, "duration": _r(result.duration), "speech_embeddings": len(result.norms),
        "speech_norm_mean": _r(float(result.norms.mean())), "token_norm_mean": _r(result.token_norm),
        "norm_ratio": _r(result.norm_ratio), "nearest_cosine_mean": _r(float(result.nearest_cos[:, 0].mean())),
        "reference": result.reference,
    }
    if result.reference is not None:
        record["reference_tokens"] = [_token(tokenizer, i) for i in result.reference_ids]
        record["nearest_in_transcript"] = _r(result.nearest_in_transcript or 0.0)
        record["heatmap"] = heatmap
    record["embeddings"] = [
        {"start": _r(start), "norm": _r(float(norm)),
         "nearest": [{"token": _token(tokenizer, int(i)), "id": int(i), "cosine": _r(float(c))} for i, c in zip(ids, cos)]}
        for start, norm, ids, cos in zip(result.seconds, result.norms, result.nearest_ids, result.nearest_cos)
    ]
    return record


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over utterances: nearest-token cosine, norm ratio, and (over those with a reference)
    the share of speech embeddings whose nearest token is in the transcript (None when none has one)."""
    with_reference = [r["nearest_in_transcript"] for r in records if r.get("reference") is not None]
    mean = lambda values: _r(sum(values) / len(values)) if values else None  # noqa: E731
    return {
        "utterances": len(records),
        "mean_nearest_cosine": mean([r["nearest_cosine_mean"] for r in records]),
        "mean_norm_ratio": mean([r["norm_ratio"] for r in records]),
        "nearest_in_transcript": mean(with_reference),
        "utterances_with_reference": len(with_reference),
    }


def draw_heatmap(result: Inspection, tokenizer: Any, out: Path) -> Figure:
    """The (N, M) cosine similarities as a PNG: speech embeddings (seconds) across, transcript
    tokens down (`token_labels`), on a diverging colour map centred on 0 (limits ± the largest
    |cosine|, so the sign reads at a glance), the norm ratio and mean nearest-token cosine in the
    title → the figure. Needs matplotlib (`macasr[plots]`); Agg canvas, no display needed; the same
    input gives the same bytes (no date or version in the PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    assert result.similarity is not None
    sim = result.similarity.T.numpy()  # (M, N)
    labels = token_labels(tokenizer, result.reference_ids)
    figure = Figure(figsize=(min(4 + 0.08 * sim.shape[1], 30), min(2.4 + 0.22 * max(sim.shape[0], 1), 30)), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    end = result.duration
    limit = max(float(abs(sim).max()) if sim.size else 0.0, 1e-6)  # symmetric: 0 is the colour map's middle
    image = ax.imshow(sim, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest",
                      extent=(0, end, len(labels) - 0.5, -0.5))
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    nearest = float(result.nearest_cos[:, 0].mean())
    ax.set(xlabel=f"seconds ({len(result.norms)} speech embeddings)", ylabel=f"transcript tokens ({WORD_START} begins a word)",
           title=f"{result.id}: cosine(speech embedding, token embedding)\n"
                 f"norm ratio (speech / token) {result.norm_ratio:.3f}, mean nearest-token cosine {nearest:.3f}")
    ax.title.set_fontsize(9)
    figure.colorbar(image, ax=ax, label="cosine similarity")
    partial = out.with_name(f".{out.name}.tmp")
    figure.savefig(partial, format="png", dpi=100, metadata={"Software": None})
    partial.replace(out)
    return figure


def checked_sources(inputs: Sequence[str], allow_commands: bool, limit: int | None = None) -> list[Source]:
    """`macasr transcribe`'s inputs (audio files, folders, glob patterns, manifests) → one Source
    per utterance, in order (all of them: the caller inspects the first `limit`, and can say that
    there are more). MacasrError, one line, naming the first
    input that cannot be used (a missing file, a pattern or folder without audio, an empty or bad
    manifest; a bad manifest row only among the first `limit`) and how many more there are: an
    analysis over fewer utterances than asked for would pass for one over all."""
    sources = expand(inputs, allow_commands)
    bad = [s.error for n, s in enumerate(sources) if s.error is not None and (s.id is None or limit is None or n < limit)]
    if bad:
        more = f" (and {len(bad) - 1} more input{'s' * (len(bad) > 2)} that cannot be used)" if len(bad) > 1 else ""
        raise MacasrError(bad[0] + more)
    return sources


def check_out(out: Path, force: bool) -> None:
    """Refuse, before any work, an --out that is a file, or a folder that is not empty without
    `force` (an earlier inspect's heatmaps would stay beside the new ones); `force` replaces only
    an earlier inspect's output (a folder holding inspect.json), never a folder of other files."""
    if out.exists() and not out.is_dir():
        raise MacasrError(f"--out {out}: is a file; give a folder for inspect.json and the heatmaps")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / RESULTS).is_file():
        raise MacasrError(f"--out {out}: the folder holds files but no {RESULTS}, so it is not an earlier inspect's output; "
                          "give a new or empty folder")
    if not force:
        raise MacasrError(f"--out {out}: holds an earlier inspect's output ({RESULTS}); give a new or empty folder, "
                          "or --force to replace it")


def clear_earlier(out: Path) -> None:
    """Delete an earlier inspect's inspect.json and heatmaps (every .png under `out`), and the
    folders that leaves empty, so no stale heatmap sits beside the new ones."""
    if not out.is_dir():
        return
    (out / RESULTS).unlink(missing_ok=True)
    for png in out.rglob("*.png"):
        png.unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def reference_of(cut: Cut, from_manifest: bool) -> str | None:
    """A manifest row's transcript (its first supervision's text); None for a bare audio file."""
    if not from_manifest:
        return None
    return cut.supervisions[0].text if cut.supervisions else ""

