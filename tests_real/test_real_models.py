"""Real Whisper + SmolLM2-135M-Instruct through the CLI: check, plan, train, eval, transcribe,
greedy and beam search, chat and plain prompts, LoRA, export and reload (see conftest.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import ENCODER, LLM, STEPS, Workspace, macasr, read_jsonl


def safetensors_params(path: Path, prefix: str = "") -> int:
    """Parameters stored in a safetensors file under `prefix`, counted from the tensor shapes
    alone (no model code), as an independent check of `plan`."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith(prefix))


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def stm_segments(stm: Path, wav: Path, out: Path, n: int) -> Path:
    """The `n` longest segments of the recording's STM transcript as a macasr manifest (offsets
    into the one WAV, reference text as transcribed)."""
    rows = []
    for line in stm.read_text().splitlines():
        uri, _channel, speaker, start, end, *words = line.split()
        rows.append({"id": f"{uri}-{float(start):07.3f}", "audio": str(wav), "offset": float(start),
                     "duration": round(float(end) - float(start), 3), "text": " ".join(words), "speaker": speaker})
    rows = sorted(rows, key=lambda r: -r["duration"])[:n]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_config_check(workspace: Workspace) -> None:
    assert "ok" in macasr("config", "check", workspace.config).output


@pytest.mark.parametrize("encoder", [ENCODER, "whisper-base"])
def test_plan_counts_the_real_models(workspace: Workspace, models: Path, encoder: str) -> None:
    """`plan` counts the encoder's and the LLM's parameters as their safetensors files hold them
    (SmolLM2 ties its output head to the embeddings, so the file has no lm_head)."""
    plan = json.loads(macasr("plan", workspace.config, "--json", "--set", f"model.encoder.path={models / encoder}").stdout)
    assert plan["parts"]["encoder"]["params"] == safetensors_params(models / encoder / "model.safetensors", "model.encoder.")
    assert plan["parts"]["llm"]["params"] == safetensors_params(models / LLM / "model.safetensors")
    assert plan["parts"]["encoder"]["trainable"] == plan["parts"]["llm"]["trainable"] == 0
    assert plan["total"]["trainable"] == plan["parts"]["connector"]["params"] > 0


def test_training_lowers_the_loss(workspace: Workspace) -> None:
    """20 connector steps from the feature cache: the loss of the last five steps is well below
    that of the first five (the chat-tuned LLM starts far from the transcripts)."""
    losses = [r["loss"] for r in read_jsonl(workspace.run / "metrics.jsonl") if "loss" in r]
    assert len(losses) == STEPS
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_chat_and_plain_prompts_of_the_real_tokenizer(models: Path) -> None:
    """SmolLM2-Instruct's chat template frames the speech as a user turn and ends the reply with
    <|im_end|>; the plain prompt is the prefix and suffix as text, ended by eos."""
    from transformers import AutoTokenizer

    from macasr.config import PromptConfig
    from macasr.model.llm import prompt_tokens

    tokenizer = AutoTokenizer.from_pretrained(models / LLM)
    chat = prompt_tokens(tokenizer, PromptConfig(style="chat"))
    plain = prompt_tokens(tokenizer, PromptConfig(style="plain"))
    assert tokenizer.decode(chat.prefix).startswith("<|im_start|>system")
    assert tokenizer.decode(chat.prefix).endswith("<|im_start|>user\n" + PromptConfig().prefix)
    assert tokenizer.decode(chat.suffix) == PromptConfig().suffix + "<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.convert_ids_to_tokens(chat.end_id) == "<|im_end|>"
    assert tokenizer.decode(plain.prefix) == PromptConfig().prefix
    assert tokenizer.decode(plain.suffix) == PromptConfig().suffix
    assert plain.end_id == tokenizer.eos_token_id


@pytest.mark.parametrize("beams", [1, 3])
def test_eval_greedy_and_beam_stop_at_the_end_token(workspace: Workspace, tmp_path: Path, beams: int) -> None:
    """Every test clip's search ends because the model emitted <|im_end|>, not at the token cap
    or the repeat guard; WER is a finite number."""
    report = tmp_path / "report.json"
    macasr("eval", "--ckpt", workspace.run / "best.pt", "--config", workspace.config, "--dataset", "test",
           "--num-beams", str(beams), "--report", report)
    scores = json.loads(report.read_text())["datasets"]["test"]
    assert scores["utterances"] == 6 and math.isfinite(scores["wer"])
    stops = [u["stop"] for u in read_jsonl(tmp_path / "report.utterances.jsonl")]
    assert stops == ["end"] * 6, stops


def test_transcribe_and_eval_a_real_recording(workspace: Workspace, models: Path, tmp_path: Path) -> None:
    """Real conversational speech (pyannote.audio's sample, 30 s): `transcribe` decodes it (VAD on)
    into segments inside the recording, each with a transcript and the reason its decoding stopped;
    `eval` scores its three longest reference segments. A connector trained for 20 steps on 48
    synthetic clips does not transcribe real telephone speech (measured: one 0-30 s segment, a few
    words, cut by the repeat guard), so only that each step runs and reports is checked: its
    stopping cleanly is checked on the synthetic test set above."""
    wav = models / "recordings" / "sample.wav"
    (row,) = json_lines(macasr("transcribe", wav, "--ckpt", workspace.run / "best.pt", "--format", "json",
                               "--vad", "on").stdout)
    assert row["duration"] == pytest.approx(30.0) and row["stop"] in ("end", "repeat", "max_tokens")
    assert row["segments"] and all(0 <= s["start"] < s["end"] <= 30.0 for s in row["segments"])
    manifest = stm_segments(models / "recordings" / "sample.stm", wav, tmp_path / "sample.jsonl", n=3)
    report = tmp_path / "sample.json"
    macasr("eval", "--ckpt", workspace.run / "best.pt", "--manifest", manifest, "--report", report, "--vad", "off")
    (entry,) = json.loads(report.read_text())["datasets"].values()
    assert entry["utterances"] == 3 and entry["ref_words"] >= 31 and math.isfinite(entry["wer"])


def test_export_and_reload_give_the_same_transcripts(workspace: Workspace, tmp_path: Path) -> None:
    clips = sorted((workspace.data / "audio" / "test").glob("*.wav"))[:3]
    before = json_lines(macasr("transcribe", *clips, "--ckpt", workspace.run / "best.pt", "--format", "json").stdout)
    macasr("export", workspace.run / "best.pt", "--out", tmp_path / "bundle")
    after = json_lines(macasr("transcribe", *clips, "--ckpt", tmp_path / "bundle", "--format", "json").stdout)
    assert [r["text"] for r in after] == [r["text"] for r in before]
    assert all(r["text"] for r in before)


def test_lora_with_the_plain_prompt_trains_exports_and_reloads(workspace: Workspace, tmp_path: Path) -> None:
    """LoRA adapters on the real LLM with the plain prompt: a few steps train the adapters (their
    B matrices leave zero), the checkpoint holds them, and the exported bundle transcribes as the
    checkpoint does."""
    import torch

    sets = ["--set", "model.llm.lora.enabled=true", "--set", "prompt.style=plain", "--set", "train.max_steps=3",
            "--set", "train.valid_every=3", "--set", "train.name=lora", "--set", "data.batch_size=2"]
    macasr("train", workspace.config, *sets)
    run = workspace.run.parent / "lora"
    losses = [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    weights = torch.load(run / "best.pt", map_location="cpu", weights_only=True)["model"]
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values())
    clip = sorted((workspace.data / "audio" / "test").glob("*.wav"))[0]
    before = json_lines(macasr("transcribe", clip, "--ckpt", run / "best.pt", "--format", "json").stdout)
    macasr("export", run / "best.pt", "--out", tmp_path / "bundle")
    after = json_lines(macasr("transcribe", clip, "--ckpt", tmp_path / "bundle", "--format", "json").stdout)
    assert [r["text"] for r in after] == [r["text"] for r in before]
    assert before[0]["stop"] in ("end", "repeat", "max_tokens")
