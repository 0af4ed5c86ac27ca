"""The model card (README.md) of an exported bundle: what the model is, how it was trained, how
well it did (from an eval report when one is given) and how to load it.

Markdown with Hugging Face's YAML front matter, so the hub shows it as a model card.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from macasr import __version__
from macasr.errors import MacasrError

if TYPE_CHECKING:
    from macasr.config import Config
    from macasr.model.build import PartCount

# The card's evaluation columns: what a reader compares with published tables, then the rates
# that say why a WER is bad. Timings (decode seconds, RTFx) are left out: they describe the
# machine that decoded, not the model.
REPORT_COLUMNS = {"utterances": "Utterances", "hours": "Hours", "wer": "WER %", "cer": "CER %", "substitutions": "Sub",
                  "deletions": "Del", "insertions": "Ins", "loop_rate": "Loops %", "empty_output_rate": "Empty out %",
                  "no_speech_output_rate": "No-speech out %", "length_ratio": "Hyp/Ref"}
PERCENT = {"wer", "cer", "loop_rate", "empty_output_rate", "no_speech_output_rate"}
WEIGHTS = {"frozen": "frozen", "trained": "fully trained", "lora": "frozen + LoRA adapters"}


def read_report(path: Path) -> dict[str, Any]:
    """An eval report (`macasr eval --report`): a JSON object with `datasets` and `overall`.
    Raises MacasrError naming the file and what is wrong."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MacasrError(f"--report {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MacasrError(f"--report {path}: not readable JSON ({str(e).splitlines()[0]})") from None
    if not (isinstance(report, dict) and isinstance(report.get("datasets"), dict) and isinstance(report.get("overall"), dict)):
        raise MacasrError(f"--report {path}: not a macasr eval report (expected an object with 'datasets' and 'overall'; "
                          "write one with `macasr eval --report FILE`)")
    return report


def _number(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if key in PERCENT:
        return f"{100 * value:.2f}"
    if key == "hours" or isinstance(value, float):
        return f"{value:.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _metric(key: str, value: Any) -> str:
    """'best validation WER: 4.69 %' for the checkpoint's metrics, other keys as they are."""
    if key == "best_wer" and isinstance(value, (int, float)):
        return f"best validation WER: {100 * value:.2f} %"
    if key == "best_step" and isinstance(value, int):
        return f"best validation step: {value:,}"
    return f"{key}: {value}"


def report_table(report: dict[str, Any]) -> list[str]:
    """The report's datasets and overall as a Markdown table (REPORT_COLUMNS that it holds)."""
    rows = {**report["datasets"], "overall": report["overall"]}
    keys = [k for k in REPORT_COLUMNS if any(isinstance(row, dict) and k in row for row in rows.values())]
    header = ["Dataset", *(REPORT_COLUMNS[k] for k in keys)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        row = row if isinstance(row, dict) else {}
        cells = [f"**{name}**" if name == "overall" else name, *(_number(k, row.get(k)) for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report_source(report: dict[str, Any], report_name: str | None) -> str:
    """'From `test.json` (checkpoint `runs/x/best.pt`; normalizer whisper; greedy search):'."""
    decoding = report.get("decoding") or {}
    beams = decoding.get("num_beams")
    search = f"beam search, {beams} beams" if isinstance(beams, int) and beams > 1 else "greedy search" if beams else None
    facts = [f"checkpoint `{report['checkpoint']}`" if report.get("checkpoint") else "checkpoint not recorded",
             f"normalizer `{report.get('normalizer', 'unknown')}`", *([search] if search else [])]
    if report.get("overrides"):
        facts.append(f"scored with {_flags(report['overrides'])}")
    return f"From `{report_name}` ({'; '.join(facts)}), WER and CER in %:"


def _flags(overrides: list[str]) -> str:
    return ", ".join(f"`--set {o}`" for o in overrides)


def _changed(overrides: list[str] | None) -> list[str]:
    """The card's line for a config changed at export (`macasr export --set`), else nothing."""
    if not overrides:
        return []
    return [f"Exported with {_flags(overrides)}: the bundle's config holds these values, not those of the training run.", ""]


def scored_elsewhere(report: dict[str, Any], ckpt: Path) -> str | None:
    """A warning line when the report names a checkpoint other than `ckpt`, else None."""
    scored = report.get("checkpoint")
    if not scored or Path(scored).resolve() == ckpt.resolve():
        return None
    return f"the report scored {scored}, not {ckpt}: its table describes another checkpoint"


def _source(info: dict[str, Any]) -> str:
    """`org/name` (revision abc1234) or `./llm` (from /path/folder)."""
    if info.get("folder"):
        return f"`./{info['folder']}` in this bundle (from `{info['source']}`)"
    revision = f" (revision `{info['revision']}`)" if info.get("revision") else " (revision not recorded)"
    return f"`{info['source']}`{revision}"


def _lora(part_cfg: Any) -> str:
    lora = part_cfg.lora
    return f", r = {lora.r}, alpha = {lora.alpha}, on {', '.join(lora.target_modules)}" if lora.enabled else ""


def architecture(cfg: Config, manifest: dict[str, Any], counts: dict[str, PartCount]) -> list[str]:
    connector = cfg.model.connector
    rows = [
        ("Encoder", f"{cfg.model.encoder.name}: {_source(manifest['parts']['encoder'])}",
         WEIGHTS[manifest["parts"]["encoder"]["weights"]] + _lora(cfg.model.encoder), counts["encoder"]),
        ("Connector", f"{connector.name} (downsample {getattr(connector, 'downsample', 1)})", "trained", counts["connector"]),
        ("LLM", _source(manifest["parts"]["llm"]), WEIGHTS[manifest["parts"]["llm"]["weights"]] + _lora(cfg.model.llm), counts["llm"]),
    ]
    lines = ["| Part | Model | Weights | Parameters | Trained |", "|---|---|---|---|---|"]
    lines += [f"| {part} | {model} | {weights} | {c.total:,} | {c.trainable:,} |" for part, model, weights, c in rows]
    total = sum(c.total for c in counts.values())
    trained = sum(c.trainable for c in counts.values())
    return [*lines, f"| **Total** | | | {total:,} | {trained:,} |"]


def _data(cfg: Config, names: list[str]) -> str:
    """`train` (data/train.jsonl), for each name or manifest path."""
    def one(name: str) -> str:
        manifests = cfg.datasets[name].manifest if name in cfg.datasets else []
        return f"`{name}`" + (f" ({', '.join(Path(m).name for m in manifests)})" if manifests else "")

    return ", ".join(one(n) for n in names) or "none recorded"


def model_card(cfg: Config, manifest: dict[str, Any], counts: dict[str, PartCount], report: dict[str, Any] | None,
               report_name: str | None = None) -> str:
    """The bundle's README.md."""
    hub = [info["source"] for info in manifest["parts"].values() if not info.get("folder")]
    front = ["---", "library_name: macasr", "pipeline_tag: automatic-speech-recognition", "tags: [macasr, speech-llm, asr]"]
    front += ["base_model:", *(f"- {h}" for h in hub)] if hub else []
    lines = [*front, "---", "", f"# {cfg.train.name}", "",
             f"A speech-LLM ASR model (speech encoder → connector → causal LLM) exported by macasr {__version__} "
             f"from `{Path(manifest['source_checkpoint']).name}` at step {manifest['step']:,}.", "",
             "## Architecture", "", *architecture(cfg, manifest, counts), "",
             f"Prompt (`{cfg.prompt.style}` style): prefix {json.dumps(cfg.prompt.prefix)}, suffix {json.dumps(cfg.prompt.suffix)}.", "",
             *_changed(manifest.get("overrides")),
             "## Training", "",
             f"- Steps: {manifest['step']:,}",
             f"- Training data: {_data(cfg, cfg.data.train)}",
             f"- Validation data: {_data(cfg, cfg.data.valid)}"]
    lines += [f"- {_metric(k, v)}" for k, v in manifest.get("metrics", {}).items()]
    lines += ["", "## Evaluation", ""]
    if report is None:
        lines.append("No evaluation report was given at export (`macasr export --report report.json`).")
    else:
        lines += [report_source(report, report_name), "", *report_table(report)]
    return "\n".join([*lines, "", *usage(manifest), ""])


def usage(manifest: dict[str, Any]) -> list[str]:
    lines = ["## Usage", "", "```python", "import macasr", "", 'transcriber = macasr.load("path/to/this/folder")',
             'print(transcriber.transcribe(["clip.wav"])[0].text)', "```", "",
             "```bash", "macasr transcribe --ckpt path/to/this/folder clip.wav", "macasr eval --ckpt path/to/this/folder --manifest test.jsonl", "```"]
    llm = manifest["parts"]["llm"]
    if llm["weights"] == "lora":
        base = f"path/to/this/folder/{llm['folder']}" if llm.get("folder") else llm["source"]
        lines += ["", "The LLM's LoRA adapters are in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors`):", "",
                  "```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
                  f'llm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "path/to/this/folder")', "```"]
    plugins = manifest.get("plugins") or {}
    if plugins.get("files"):
        lines += ["", f"The connector code is in this folder ({', '.join(f'`{f}`' for f in plugins['files'])}, named by "
                  "`[plugins] modules` in `config.toml`); macasr imports it when the bundle is loaded."]
    if plugins.get("modules"):
        lines += ["", f"Loading needs the plugin module{'s' * (len(plugins['modules']) > 1)} "
                  f"{', '.join(f'`{m}`' for m in plugins['modules'])} installed (importable): `[plugins] modules` names "
                  "them, and a module name cannot be copied into a bundle."]
    if manifest.get("merged_llm"):
        lines += ["", f"`{manifest['merged_llm']}/` holds the LLM with the adapters merged in (fp32), loadable with `AutoModelForCausalLM`."]
    return lines
