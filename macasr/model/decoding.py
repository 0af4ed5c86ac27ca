"""Decoding strategies over a causal LM fed with `inputs_embeds` and a KV cache.

Symbols: B batch (clips), K beams per clip, R = B*K beam rows, L prompt length (left-padded),
V vocabulary, T tokens generated so far, C candidates per clip.

Prompts are left-padded so every row's next token sits in the last column; explicit position
ids (counted from each row's first real token) make a padded row compute what it would alone.
Beam search prefills the prompt once per clip and only then copies the KV cache to K rows; the
beams of a clip share its padding, so the mask and position ids are simply repeated.

Every hypothesis says why it stopped (`Hypothesis.stop`): it emitted the end token (`STOP_END`),
it looped (`STOP_REPEAT`, the repeat guard) or it reached its token cap (`STOP_CAP`). A guard
stop is a cut, not an answer: beam search ranks every hypothesis that ended on the end token
above every one a guard stopped (see docs/decoding.md).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch

Stop = Literal["end", "repeat", "max_tokens"]
STOP_END: Stop = "end"  # the model emitted its end token
STOP_REPEAT: Stop = "repeat"  # the repeat guard cut a loop (`repeat_ngram_stop`)
STOP_CAP: Stop = "max_tokens"  # the token cap per clip was reached
REASONS: tuple[Stop, ...] = (STOP_CAP, STOP_END, STOP_REPEAT)


@dataclasses.dataclass(frozen=True)
class DecodingOptions:
    """How to decode; built from `[eval]`."""

    max_tokens_per_second: float = 10.0  # cap on new tokens per second of audio
    max_tokens_base: int = 16  # tokens allowed on top of the per-second cap
    num_beams: int = 1  # 1 = greedy search
    length_penalty: float = 1.0  # beam score = sum of log-probs / length ** length_penalty
    repeat_ngram_stop: int = 8  # end a hypothesis that loops on a unit of up to n tokens (`loop_repeats`; 0 = off)

    def max_new_tokens(self, durations: Sequence[float]) -> list[int]:
        """A cap per clip, so a decode that loops stops in time proportional to the audio."""
        return [self.max_tokens_base + math.ceil(d * self.max_tokens_per_second) for d in durations]


def cache_kwargs(llm: Any, cache: Any = None) -> dict[str, Any]:
    """A KV cache under the keyword this transformers version uses (`cache` from 5.2x on,
    `past_key_values` before): `cache` (one already holding the prompt prefix's states, see
    `macasr.model.prefix_cache`) or a fresh one. The cache object is updated in place by every forward call."""
    from transformers import DynamicCache

    params = inspect.signature(llm.forward).parameters
    keyword = "cache" if "cache" in params else "past_key_values"
    return {keyword: DynamicCache(config=llm.config) if cache is None else cache, "use_cache": True}


def loop_repeats(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """tokens (R, T) → (R,) long: how many trailing tokens are repeats of a loop (0: no loop).

    A row loops when it ends in a unit of p tokens (p from 1 to n) said again and again, the
    repeats after the first copy spanning at least n tokens and at least two more copies. For
    n = 8: one token 9 times in a row, a 2-token unit 5 times, a 6-token phrase 3 times. So speech
    that says a word a few times or a phrase twice is not cut, and every loop of up to n tokens
    is. The count returned drops the repeats and keeps the first copy.
    """
    repeats = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    for period in range(1, n + 1):
        span = max(n, 2 * period)  # repeated tokens after the first copy
        if tokens.shape[1] < span + period:
            break
        periodic = (tokens[:, -span:] == tokens[:, -span - period : -period]).all(1)  # (R,)
        repeats = torch.where(periodic & (repeats == 0), span, repeats)
    return repeats


class Hypothesis(NamedTuple):
    """A decoding result: new tokens without the end token (or the loop's repeats), the score it
    was ranked by, and why it stopped (`STOP_END`, `STOP_REPEAT` or `STOP_CAP`)."""

    tokens: list[int]
    score: float  # summed log-probs (the end token's too, when it ended) / length ** length_penalty
    stop: Stop = STOP_END


def greedy_search(
    llm: Any,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    max_new_tokens: Sequence[int],
    end_id: int,
    repeat_ngram_stop: int = 0,
) -> list[list[int]]:
    """Batched greedy decoding; each row's new tokens (see `greedy_hypotheses`)."""
    hypotheses = greedy_hypotheses(llm, embeds, attention_mask, position_ids, max_new_tokens, end_id, repeat_ngram_stop)
    return [h.tokens for h in hypotheses]


@torch.no_grad()
def greedy_hypotheses(
    llm: Any,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    max_new_tokens: Sequence[int],
    end_id: int,
    repeat_ngram_stop: int = 0,
    prefix: Any = None,
) -> list[Hypothesis]:
    """Batched greedy decoding; each row's new tokens without the end token, their summed float32
    log-probs (the end token's too) and why the row stopped.

    embeds (B, L, H), attention_mask and position_ids (B, L). A row that loops (`loop_repeats`
    with n = `repeat_ngram_stop`) ends there, without the repeats. `prefix`: a cache already
    holding the prompt prefix's P states for the B rows; attention_mask then covers them (B, P+L).
    """
    batch, n, device = embeds.shape[0], repeat_ngram_stop, embeds.device
    caps = torch.tensor(max_new_tokens, device=device)
    cache = cache_kwargs(llm, prefix)
    out = llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1, **cache)
    next_position = position_ids[:, -1:] + 1  # (B, 1)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    reason = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) index into REASONS; 0 = at the cap
    score = torch.zeros(batch, device=device)  # (B,) summed log-probs
    tokens = torch.full((batch, int(caps.max())), end_id, device=device)  # (B, max cap), end_id after the end
    for step in range(tokens.shape[1]):
        logprobs = out.logits[:, -1].float().log_softmax(-1)  # (B, V)
        token = logprobs.argmax(-1).masked_fill(done, end_id)  # (B,)
        score += logprobs.gather(1, token[:, None])[:, 0].masked_fill(done, 0.0)
        tokens[:, step] = token
        ended = ~done & (token == end_id)  # (B,)
        repeats = loop_repeats(tokens[:, : step + 1], n).masked_fill(done | ended, 0)  # (B,)
        looped = repeats > 0
        for row, count in zip(looped.nonzero()[:, 0].tolist(), repeats[looped].tolist()):
            tokens[row, step + 1 - count : step + 1] = end_id  # drop the repeats, keep the first copy
        reason[ended], reason[looped] = REASONS.index(STOP_END), REASONS.index(STOP_REPEAT)
        done |= ended | looped | (step + 1 >= caps)
        if bool(done.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        out = llm(input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position, **cache)
        next_position = next_position + 1
    rows = [row[: row.index(end_id)] if end_id in row else row for row in tokens.tolist()]
    return [Hypothesis(row, total, REASONS[r]) for row, total, r in zip(rows, score.tolist(), reason.tolist())]


class _Step(NamedTuple):
    """One beam step: the K open beams per clip, flattened to R rows, and the hypotheses that ended."""

    source: torch.Tensor  # (R,) the row each open beam extends
    token: torch.Tensor  # (R,) its new token
    score: torch.Tensor  # (R,) its summed log-probs
    history: torch.Tensor  # (R, T+1) its tokens
    ended: list[tuple[int, float, list[int], Stop]]  # (clip, summed log-probs, tokens kept, why) per ended hypothesis


def _beam_step(
    score: torch.Tensor, logprobs: torch.Tensor, history: torch.Tensor, beams: int, end_id: int, repeat_ngram_stop: int
) -> _Step:
    """Extend every clip's beams by one token and keep the best K that go on.

    score (R,), logprobs (R, V), history (R, T). Candidates are ranked by summed log-probs; one
    that emits the end token or loops (`loop_repeats`) ends its hypothesis, and counts only
    if it ranks above the K-th open candidate (as in Whisper's beam search).
    """
    vocab, n = logprobs.shape[-1], repeat_ngram_stop
    total = (score[:, None] + logprobs).view(-1, beams * vocab)  # (B, K*V)
    # A beam ends on at most n + 1 of its candidates (the end token, and one token per loop period
    # from 1 to n), so this many leave K open.
    width = min((n + 2) * beams, total.shape[1])
    top, index = total.topk(width, dim=1)  # (B, C)
    source = torch.arange(total.shape[0], device=total.device)[:, None] * beams + index // vocab  # (B, C) rows
    token = index % vocab  # (B, C)
    sequences = torch.cat([history[source], token[..., None]], dim=-1)  # (B, C, T+1)
    repeats = loop_repeats(sequences.flatten(0, 1), n).view_as(token)  # (B, C)
    looped = repeats > 0
    is_end = token == end_id
    stops = is_end | looped
    opens_ahead = torch.cumsum(~stops, dim=1) - (~stops).long()  # (B, C) open candidates ranked higher
    ended = []
    for clip, rank in (stops & (opens_ahead < beams)).nonzero().tolist():
        tokens = sequences[clip, rank].tolist()
        if bool(is_end[clip, rank]):
            ended.append((clip, float(top[clip, rank]), tokens[:-1], STOP_END))  # without the end token
        else:
            ended.append((clip, float(top[clip, rank]), tokens[: -int(repeats[clip, rank])], STOP_REPEAT))  # without the repeats
    keep = torch.sort(stops.to(torch.int8), dim=1, stable=True).indices[:, :beams]  # (B, K) best open ones
    history = sequences.gather(1, keep[..., None].expand(-1, -1, sequences.shape[-1])).flatten(0, 1)  # (R, T+1)
    source, token, top = (values.gather(1, keep).flatten() for values in (source, token, top))  # (R,) each
    return _Step(source, token, top, history, ended)


def rank(hypothesis: Hypothesis) -> tuple[bool, float]:
    """Sort key of beam search: a hypothesis that ended on the end token outranks every one a guard
    stopped (a loop cut by the repeat guard or the cap is not an answer, however likely its tokens:
    a loop's tokens grow ever more likely, so length-normalized scores favour loops), then score."""
    return hypothesis.stop == STOP_END, hypothesis.score


def _settle(ended: list[Hypothesis], scores: list[float], history: torch.Tensor, norm: float, at_cap: bool) -> bool:
    """Whether a clip is done: at its cap (its K open beams, history (K, T), then stop there),
    or when it holds K hypotheses that ended on the end token and its best open beam, scored at
    the current length (transformers' `early_stopping=False`), cannot beat the K-th best of them.
    Hypotheses a guard stopped do not count: they rank below any that ends later."""
    if at_cap:
        ended += [Hypothesis(tokens, total / norm, STOP_CAP) for tokens, total in zip(history.tolist(), scores)]
        return True
    beams, finished = len(scores), sorted(h.score for h in ended if h.stop == STOP_END)
    return len(finished) >= beams and finished[-beams] >= max(scores) / norm


@torch.no_grad()
def beam_search(
    llm: Any,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    max_new_tokens: Sequence[int],
    end_id: int,
    num_beams: int,
    length_penalty: float = 1.0,
    repeat_ngram_stop: int = 0,
    prefix: Any = None,
) -> list[Hypothesis]:
    """Batched beam search; returns each clip's best hypothesis.

    embeds (B, L, H), attention_mask and position_ids (B, L). A hypothesis scores its summed
    float32 log-probs / length ** length_penalty, its length counting the end token; a looped
    hypothesis keeps the score of the path that looped. The best is chosen by `rank`: one that
    ended on the end token if any did, else the best one a guard stopped. Clips stop one by one
    (`_settle`); their rows run on until every clip is done, their tokens ignored. `prefix` as in
    `greedy_hypotheses`.
    """
    batch, beams, device = embeds.shape[0], num_beams, embeds.device
    kwargs = cache_kwargs(llm, prefix)
    cache = kwargs["cache" if "cache" in kwargs else "past_key_values"]
    out = llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1, **kwargs)
    clip_of_row = torch.arange(batch, device=device).repeat_interleave(beams)  # (R,)
    cache.reorder_cache(clip_of_row)  # B prompt rows → R beam rows, K copies of each clip's prompt
    logprobs = out.logits[:, -1].float().log_softmax(-1)[clip_of_row]  # (R, V)
    attention_mask, next_position = attention_mask[clip_of_row], position_ids[clip_of_row, -1:] + 1  # (R, L), (R, 1)
    # Only one live beam per clip at first, or the K copies would all pick the same tokens.
    score = torch.full((batch, beams), -math.inf, device=device)
    score[:, 0] = 0.0
    score, history = score.flatten(), torch.zeros(batch * beams, 0, dtype=torch.long, device=device)  # (R,), (R, 0)
    ended: list[list[Hypothesis]] = [[] for _ in range(batch)]  # per clip
    done = [False] * batch
    for step in range(max(max_new_tokens)):
        length = step + 1
        source, token, score, history, new = _beam_step(score, logprobs, history, beams, end_id, repeat_ngram_stop)
        norm = length**length_penalty
        for clip, total, tokens, stop in new:
            if not done[clip]:
                ended[clip].append(Hypothesis(tokens, total / norm, stop))
        for clip, scores in enumerate(score.view(batch, beams).tolist()):
            if not done[clip]:
                rows = history[clip * beams : (clip + 1) * beams]  # (K, T)
                done[clip] = _settle(ended[clip], scores, rows, norm, length >= max_new_tokens[clip])
        if all(done):
            break
        cache.reorder_cache(source)  # each row's cache now holds the prefix its beam extends
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(source), 1)], dim=1)
        out = llm(input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position, **kwargs)
        logprobs, next_position = out.logits[:, -1].float().log_softmax(-1), next_position + 1
    return [max(hypotheses, key=rank) for hypotheses in ended]  # the first of equals on a tie
