"""Decoding users rely on: beam search agrees with greedy, with itself clip by clip and with
transformers, ranks by true scores, finds what greedy misses, stops in time, and a back-to-back
loop ends a hypothesis."""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import noise
from macasr import config as config_module
from macasr.data.collate import Example, collate
from macasr.evaluate.run import decoding_options
from macasr.model.build import build_model
from macasr.model.decoding import DecodingOptions, Hypothesis, beam_search, greedy_hypotheses, greedy_search
from macasr.model.llm import TargetTokenizer

TEXTS = ["the cat sat on the mat", "hello world", "seven green apples"]
SECONDS = [1.3, 0.6, 2.2]
CAPS = [9, 5, 12]
WEIGHT_STD = 0.3  # the saved tiny LM (std 0.02) says one token forever; this one varies with its input


def prompts(model, exs: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompt rows (embeds, mask, position ids) as `SpeechLLM.generate` builds them."""
    batch = collate(exs)
    speech, lengths = model.encode_speech(batch.features, batch.feature_lengths)
    return model._layout(speech, lengths)


@pytest.fixture(scope="module")
def tiny(tiny_config) -> SimpleNamespace:
    """The model with livelier random LM weights, three clips, their prompt rows batched and alone
    (encoded once for the module), and `end`: a token greedy emits early, used as the end token so
    that hypotheses end at varied lengths (the random LM almost never emits its real end token)."""
    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    with torch.no_grad():
        for weight in (p for p in model.llm.parameters() if p.dim() == 2):
            weight.normal_(0.0, WEIGHT_STD)
        target = TargetTokenizer(model.tokenizer, model.prompt.end_id)
        exs = [
            Example(i, f"u{i}", t, s, model.encoder.featurizer(noise(s, seed=i)), target(t))
            for i, (t, s) in enumerate(zip(TEXTS, SECONDS))
        ]
        rows, alone = prompts(model, exs), [prompts(model, [ex]) for ex in exs]
    greedy = greedy_search(model.llm, *rows, CAPS, model.prompt.end_id)
    later = Counter(t for row in greedy for t in row[1:] if t not in {row[0] for row in greedy})
    end = later.most_common(1)[0][0]  # a likely token, never a first one: hypotheses end at varied lengths
    return SimpleNamespace(model=model, llm=model.llm, examples=exs, rows=rows, alone=alone, end=end)


@torch.no_grad()
def teacher_forced_score(llm, rows, tokens: list[int], end: int | None, length_penalty: float) -> float:
    """The beam scorer recomputed from scratch: one clip's prompt rows (1, L), its new tokens
    (and `end` when it ended) scored in one forward pass without a cache."""
    embeds, mask, positions = rows
    scored = torch.tensor(tokens + ([] if end is None else [end]))  # (M,)
    full = torch.cat([embeds, llm.get_input_embeddings()(scored)[None]], 1)  # (1, L+M, H)
    mask = torch.cat([mask, mask.new_ones(1, len(scored))], 1)
    positions = torch.cat([positions, positions[:, -1:] + 1 + torch.arange(len(scored))[None]], 1)
    logits = llm(inputs_embeds=full, attention_mask=mask, position_ids=positions).logits[0, embeds.shape[1] - 1 : -1]
    total = logits.float().log_softmax(-1).gather(1, scored[:, None]).sum()  # logits (M, V)
    return float(total) / len(scored) ** length_penalty


def test_options_come_from_the_eval_config(tiny_config) -> None:
    cfg = config_module.replace(tiny_config, **{"eval.num_beams": 3, "eval.length_penalty": 0.5, "eval.repeat_ngram_stop": 4})
    options = decoding_options(cfg)
    assert (options.num_beams, options.length_penalty, options.repeat_ngram_stop) == (3, 0.5, 4)
    assert options.max_tokens_base == cfg.eval.max_tokens_base


def test_one_beam_equals_greedy(tiny) -> None:
    for end in (tiny.model.prompt.end_id, tiny.end):
        greedy = greedy_search(tiny.llm, *tiny.rows, CAPS, end)
        assert [h.tokens for h in beam_search(tiny.llm, *tiny.rows, CAPS, end, num_beams=1)] == greedy
    assert any(0 < len(t) < c for t, c in zip(greedy, CAPS))  # some hypothesis ended before its cap


def test_batched_beam_search_equals_each_clip_alone(tiny) -> None:
    batched = beam_search(tiny.llm, *tiny.rows, CAPS, tiny.end, num_beams=3)
    alone = [beam_search(tiny.llm, *rows, [cap], tiny.end, num_beams=3)[0] for rows, cap in zip(tiny.alone, CAPS)]
    assert [h.tokens for h in batched] == [h.tokens for h in alone]
    # Scores are float32 sums; padding changes the summation order, so compare at float32 precision.
    torch.testing.assert_close([h.score for h in batched], [h.score for h in alone], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@pytest.mark.parametrize("frequent_end", [True, False], ids=["ends-early", "runs-to-caps"])
def test_beam_search_ranks_by_true_scores(tiny, length_penalty: float, frequent_end: bool) -> None:
    """The score a hypothesis won with is its teacher-forced score (a wrong cache reorder breaks this)."""
    end = tiny.end if frequent_end else tiny.model.prompt.end_id
    for beams in (2, 4):
        best = beam_search(tiny.llm, *tiny.rows, CAPS, end, num_beams=beams, length_penalty=length_penalty)
        for clip, hypothesis in enumerate(best):
            ended = len(hypothesis.tokens) < CAPS[clip]  # a hypothesis without its end token fills its cap
            true = teacher_forced_score(tiny.llm, tiny.alone[clip], hypothesis.tokens, end if ended else None, length_penalty)
            assert hypothesis.score == pytest.approx(true, abs=1e-4)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_equals_transformers_when_nothing_ends(tiny, length_penalty: float) -> None:
    """With no end token in reach, beam search is fully specified (the K best sums at each step, the
    best at the cap), so transformers' own beam search is an oracle. (It also shows that beam search
    can score below greedy: the greedy path may be pruned early; both implementations agree on it.)"""
    never = -1  # an end id no token has; transformers is kept off its end token by min_new_tokens
    for (embeds, mask, positions), cap in zip(tiny.alone, CAPS):
        for beams in (2, 4):
            ours = beam_search(tiny.llm, embeds, mask, positions, [cap], never, num_beams=beams, length_penalty=length_penalty)[0]
            theirs = tiny.llm.generate(
                inputs_embeds=embeds, attention_mask=mask, num_beams=beams, do_sample=False, max_new_tokens=cap,
                min_new_tokens=cap, length_penalty=length_penalty, eos_token_id=tiny.model.prompt.end_id,
                pad_token_id=tiny.model.prompt.end_id, output_scores=True, return_dict_in_generate=True,
            )
            assert ours.tokens == theirs.sequences[0].tolist()
            assert ours.score == pytest.approx(float(theirs.sequences_scores[0]), abs=1e-4)


def test_prefill_runs_once_per_clip_not_per_beam(tiny) -> None:
    calls = []
    handle = tiny.llm.register_forward_pre_hook(
        lambda _m, _a, kw: calls.append(("embeds" if kw.get("inputs_embeds") is not None else "ids", len(kw["attention_mask"]))),
        with_kwargs=True,
    )
    try:
        beam_search(tiny.llm, *tiny.rows, CAPS, tiny.model.prompt.end_id, num_beams=4)
    finally:
        handle.remove()
    assert calls[0] == ("embeds", 3) and len(calls) > 1 and set(calls[1:]) == {("ids", 12)}


def test_generate_uses_beam_search_when_asked(tiny) -> None:
    options = DecodingOptions(num_beams=3, max_tokens_per_second=4.0, max_tokens_base=2)
    texts = tiny.model.generate(collate(tiny.examples), options)
    best = beam_search(tiny.llm, *tiny.rows, options.max_new_tokens(SECONDS), tiny.model.prompt.end_id, num_beams=3,
                       repeat_ngram_stop=options.repeat_ngram_stop)
    decoded = tiny.model.tokenizer.batch_decode([h.tokens for h in best], skip_special_tokens=True)
    assert texts == [" ".join(text.split()) for text in decoded]
    greedy = tiny.model.generate(collate(tiny.examples), DecodingOptions(max_tokens_per_second=4.0, max_tokens_base=2))
    assert texts != greedy  # so the comparison above tells the strategies apart


def cut_at_first_loop(tokens: list[int], n: int) -> list[int]:
    """What the repeat guard should leave: the tokens up to the first place where they end in a
    unit of p <= n tokens repeated over max(n, 2p) more tokens, minus those repeats."""
    for end in range(len(tokens) + 1):
        for p in range(1, n + 1):
            span = max(n, 2 * p)
            if span + p <= end and tokens[end - span : end] == tokens[end - span - p : end - p]:
                return tokens[: end - span]
    return tokens


def test_greedy_stops_where_the_real_model_loops(tiny) -> None:
    caps = [20] * 3
    free = greedy_hypotheses(tiny.llm, *tiny.rows, caps, tiny.model.prompt.end_id)
    assert [h.stop for h in free] == ["max_tokens"] * 3  # the random LM never ends on its own
    for n in (1, 2, 4, 6, 8):
        guarded = greedy_hypotheses(tiny.llm, *tiny.rows, caps, tiny.model.prompt.end_id, repeat_ngram_stop=n)
        assert [h.tokens for h in guarded] == [cut_at_first_loop(h.tokens, n) for h in free]
        assert [h.stop for h in guarded] == ["repeat" if cut_at_first_loop(h.tokens, n) != h.tokens else "max_tokens" for h in free]
    cuts = [{len(cut_at_first_loop(h.tokens, n)) for n in (1, 4, 6, 8)} for h in free]
    assert any(len(lengths) > 2 for lengths in cuts)  # it loops with units of several lengths, so n matters


class TableLM(nn.Module):
    """A stand-in causal LM with HF's call signature: the next-token logits are TABLE[last token].
    A prompt's last token is its last embedding's first value. Tokens go into a real DynamicCache,
    so a cache left with B rows instead of B*K fails as it would in a real model."""

    def __init__(self, table: torch.Tensor) -> None:
        from transformers import Qwen3Config

        super().__init__()
        self.config = Qwen3Config(num_hidden_layers=1, vocab_size=len(table))
        self.register_buffer("table", table)  # (V, V)
        self.calls = 0

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, logits_to_keep=0, **kwargs):
        self.calls += 1
        seen = inputs_embeds[..., 0].round().long() if input_ids is None else input_ids  # (R, S)
        cache.update(seen[:, None, :, None].float(), seen[:, None, :, None].float(), 0)  # (R, 1, S, 1) per step
        return SimpleNamespace(logits=self.table[seen[:, -1]][:, None])  # (R, 1, V)


def table_lm(follows: dict[int, dict[int, float]], vocab: int = 32) -> TableLM:
    """A TableLM from next-token probabilities; an unlisted token is followed by the end token 0."""
    table = torch.full((vocab, vocab), -30.0)
    table[:, 0] = 0.0
    for token, probs in follows.items():
        table[token] = -30.0
        for follow, p in probs.items():
            table[token, follow] = math.log(p)
    return TableLM(table)


def table_prompts(last_tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt rows ending in `last_tokens`; row 0 one shorter, so left-padded."""
    embeds = torch.tensor([[0.0, 0.0, float(t)] for t in last_tokens])[..., None]
    mask = torch.tensor([[0, 1, 1]] + [[1, 1, 1]] * (len(last_tokens) - 1))
    return embeds, mask, (mask.cumsum(1) - 1).clamp(min=0)  # (B, 3, 1), (B, 3), (B, 3)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_finds_what_greedy_misses_and_stops_in_time(length_penalty: float) -> None:
    llm = table_lm({
        # Clip 0: greedy takes 2 (0.5) and then spreads thin; 3 (0.4) then ends almost surely.
        1: {2: 0.5, 3: 0.4, 9: 0.1}, 2: {4: 0.28, 5: 0.25, 6: 0.23, 7: 0.23, 0: 0.01}, 3: {0: 0.95, 9: 0.05},
        **{t: {0: 0.9, 9: 0.1} for t in (4, 5, 6, 7)},
        # Clip 1: 13 and 12 end first (0.38, 0.03), but the open beam 12 14 ends later with 0.45,
        # so a search that stopped once it held K ended hypotheses would be wrong.
        11: {12: 0.5, 13: 0.4, 9: 0.1}, 12: {14: 0.9, 0: 0.06, 15: 0.04}, 13: {0: 0.95, 9: 0.05}, 14: {0: 0.99, 9: 0.01},
    })
    rows, caps = table_prompts([1, 11]), [8, 8]
    assert greedy_search(llm, *rows, caps, 0) == [[2, 4], [12, 14]]
    llm.calls = 0
    best = beam_search(llm, *rows, caps, 0, num_beams=2, length_penalty=length_penalty)
    assert [h.tokens for h in best] == [[3], [12, 14]]
    assert [h.score for h in best] == pytest.approx([math.log(0.38) / 2**length_penalty, math.log(0.4455) / 3**length_penalty], abs=1e-3)
    assert llm.calls == 3  # prefill and two steps: both clips are settled long before their caps


# t → t + 1, except 5 → 6 → 7 → 5 (a loop of 3 tokens), and 31 → 31: no path ever ends.
CHAIN = {t: {t + 1: 0.99} for t in range(1, 31)} | {7: {5: 0.99}, 31: {31: 0.99}}


def decode(llm, rows, caps: list[int], beams: int, **kwargs) -> list[Hypothesis]:
    """Greedy for one beam, else beam search: the two must agree on what the guards do."""
    if beams == 1:
        return greedy_hypotheses(llm, *rows, caps, 0, **kwargs)
    return beam_search(llm, *rows, caps, 0, num_beams=beams, **kwargs)


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize(("n", "looping_row", "stop"), [
    (3, [5, 6, 7], "repeat"), (4, [5, 6, 7], "repeat"), (6, [5, 6, 7], "repeat"),  # a loop shorter than n is caught
    (2, [5, 6, 7] * 4, "max_tokens"), (0, [5, 6, 7] * 4, "max_tokens"),  # a loop longer than n is not
])
def test_a_loop_ends_the_hypothesis(beams: int, n: int, looping_row: list[int], stop: str) -> None:
    llm, rows, caps = table_lm(CHAIN), table_prompts([4, 9]), [12, 12]
    hypotheses = decode(llm, rows, caps, beams, repeat_ngram_stop=n)
    assert [h.tokens for h in hypotheses] == [looping_row, list(range(10, 22))]  # the other clip runs to its cap
    assert [h.stop for h in hypotheses] == [stop, "max_tokens"]


@pytest.mark.parametrize("beams", [1, 2])
def test_every_stop_reason_is_reported(beams: int) -> None:
    """Clip 0 ends on the end token, clip 1 loops (a 1-token loop: 3 tokens for n = 2), clip 2 runs
    to its cap."""
    ends, loops, runs_on = {1: {2: 0.9, 3: 0.1}, 2: {0: 0.9, 3: 0.1}}, {11: {12: 0.99}, 12: {12: 0.99}}, {t: {t + 1: 0.99} for t in range(20, 31)}
    llm = table_lm(ends | loops | runs_on)
    hypotheses = decode(llm, table_prompts([1, 11, 20]), [6, 6, 6], beams, repeat_ngram_stop=2)
    assert [h.tokens for h in hypotheses] == [[2], [12], [21, 22, 23, 24, 25, 26]]
    assert [h.stop for h in hypotheses] == ["end", "repeat", "max_tokens"]


# Clip 0: greedy takes 2 and ends ([2], mean log-prob -0.35); beam search also finds 3 5 5 5 ...,
# whose 5 → 5 (0.99) makes a loop more likely per token (-0.11 at 8 tokens) than any answer.
LOOP_BAIT = {1: {2: 0.55, 3: 0.45}, 2: {0: 0.9, 9: 0.1}, 3: {5: 1.0}, 5: {5: 0.99, 0: 0.01}}


@pytest.mark.parametrize("n", [0, 2, 4])
@pytest.mark.parametrize("beams", [2, 4])
def test_beam_search_prefers_an_ended_hypothesis_to_a_loop(beams: int, n: int) -> None:
    """A hypothesis that ended on the end token outranks any the cap or the repeat guard stopped,
    however well its length-normalized score looks (the real-LLM failure: 4 beams looped to the
    cap on 7 of 20 clips where greedy ended)."""
    llm, rows, caps = table_lm(LOOP_BAIT), table_prompts([1, 1]), [8, 8]
    assert [h.tokens for h in greedy_hypotheses(llm, *rows, caps, 0, repeat_ngram_stop=n)] == [[2], [2]]
    best = beam_search(llm, *rows, caps, 0, num_beams=beams, repeat_ngram_stop=n)
    assert [(h.tokens, h.stop) for h in best] == [([2], "end")] * 2
    assert best[0].score == pytest.approx((math.log(0.55) + math.log(0.9)) / 2, abs=1e-4)


def test_beam_search_falls_back_to_the_best_guard_stop_when_nothing_ends() -> None:
    llm, rows, never = table_lm({1: {2: 0.6, 3: 0.4}, 2: {2: 0.99}, 3: {3: 0.999}}), table_prompts([1]), -1
    best = beam_search(llm, *rows, [8], never, num_beams=2, repeat_ngram_stop=2)[0]
    assert (best.tokens, best.stop) == ([2], "repeat")  # 2 2 2 is cut to 2; 3 3 3 scores lower (log 0.4 < log 0.6)
