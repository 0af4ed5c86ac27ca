"""`macasr plan CONFIG.toml [--json] [--batch-seconds S]`: size a config before renting GPUs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from macasr.cli._common import SetOpt, console, handle_errors


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return str(int(n))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _flops(n: float) -> str:
    for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} FLOP"


def parameter_table(plan: dict[str, Any]) -> Table:
    a = plan["assumptions"]
    table = Table(title="Parameters", caption=f"frozen weights in {a['compute_dtype']}, trainable ones in fp32")
    table.add_column("Part")
    table.add_column("Model", overflow="fold")
    for header in ("Params", "Trainable", "LoRA", "Weights"):
        table.add_column(header, justify="right", no_wrap=True)
    for name, p in plan["parts"].items():
        table.add_row(name, Text(p["model"]), _count(p["params"]), _count(p["trainable"]), _count(p["lora"]), _gib(p["weight_bytes"]))
    total = plan["total"]
    table.add_section()
    table.add_row("total", "", _count(total["params"]), _count(total["trainable"]), _count(total["lora"]), _gib(total["weight_bytes"]))
    return table


def memory_table(plan: dict[str, Any]) -> Table:
    a, m = plan["assumptions"], plan["memory_bytes"]
    title = f"GPU memory (training micro-batch: {a['batch_seconds']:g} s of audio in {a['batch_rows']} rows)"
    caption = (f"planned for CUDA in {a['compute_dtype']} ([train] precision = {a['precision']}); "
               "CUDA context and allocator slack (~1-2 GiB) not included")
    table = Table(title=escape(title), caption=escape(caption))
    table.add_column("Item")
    table.add_column("Size", justify="right", no_wrap=True)
    rows = [("weights", "weights"), ("gradients (fp32)", "gradients"), ("AdamW moments (2 × fp32)", "optimizer"),
            ("activations (estimate)", "activations"), ("training total", "train_total"), None,
            (f"KV cache ({a['eval_rows']} rows × 30 s clips)", "kv_cache"), ("inference total", "inference_total")]
    for row in rows:
        if row is None:
            table.add_section()
            continue
        table.add_row(row[0], _gib(m[row[1]]), style="bold" if row[1].endswith("total") else None)
    table.add_row("checkpoint best.pt (trainable × fp32)", _gib(plan["checkpoint_bytes"]))
    return table


def flops_table(plan: dict[str, Any]) -> Table:
    a, f = plan["assumptions"], plan["flops"]
    prompt = f"{a['prompt_tokens']} prompt tokens" + ("" if a["prompt_tokens_exact"] else " (estimated)")
    caption = (f"FLOPs = 2 × multiply-accumulates; clips of {a['clip_seconds']:g} s, {a['speech_tokens_per_s']:g} speech "
               f"tokens/s, {prompt}, {a['transcript_tokens_per_s']:g} transcript tokens/s")
    caption += (f"; the encoder is counted with [model.encoder] window = {a['encoder_window']!r} (both policies shown); "
                "with a feature cache ([data] cache) it runs once, at `macasr cache build`, not in each training step"
                + (" (this config has one: the training step excludes it)" if a["feature_cache"] else ""))
    table = Table(title="Compute", caption=escape(caption))
    table.add_column("Stage")
    table.add_column("FLOPs", justify="right", no_wrap=True)
    for window in ("own", "full"):
        chosen = " (configured)" if window == a["encoder_window"] else ""
        table.add_row(f"encoder, per audio s, window = {window}{chosen}", _flops(f[f"encoder_{window}_per_audio_s"]))
    for label, key in (("connector, per audio s", "connector_per_audio_s"),
                       ("LLM prefill, per audio s", "llm_prefill_per_audio_s"), ("LLM decoding, per token", "llm_decode_per_token"),
                       ("LLM decoding, per audio s", "llm_decode_per_audio_s"), ("inference, per audio s", "inference_per_audio_s"),
                       ("training step, per audio s", "train_per_audio_s")):
        table.add_row(label, _flops(f[key]))
    return table


@handle_errors
def plan(
    config: Annotated[Path, typer.Argument(help="TOML config to size.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as one JSON object instead of tables.")] = False,
    batch_seconds: Annotated[float | None, typer.Option("--batch-seconds", help="Audio seconds per training micro-batch (default: [data] max_batch_seconds, else batch_size × max_duration or 30 s).", min=0.1, show_default=False)] = None,
    tokens_per_second: Annotated[float, typer.Option("--tokens-per-second", help="Transcript tokens per second of speech, for decoding and target lengths.", min=0.1)] = 4.0,
    sets: SetOpt = None,
) -> None:
    """Parameters, GPU memory and FLOPs of a config, from architecture configs alone (nothing is downloaded)."""
    from macasr import config_overrides
    from macasr.plan import build_plan

    result = build_plan(config_overrides.load(config, sets), batch_seconds, tokens_per_second).to_dict()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for table in (parameter_table(result), memory_table(result), flops_table(result)):
        console.print(table)
