"""SpeechLLM: encoder → connector → LLM, with two entry points, `forward` and `generate` (and
`generate_with_stops`, which also says why each clip's decoding stopped).

Symbols: B batch, N speech embeddings, P/S prefix/suffix tokens, M target tokens, H LLM width.

Each row is laid out as [prefix | speech | suffix | target] and left-padded, in training and in
generation alike, so the prompt a model is trained on is token for token the one it decodes
from. Position ids count from each row's first real token. Unless gradients must reach an LLM
weight, the prefix's keys and values come from a cache computed once per loaded model
(`macasr.model.prefix_cache`) and the rows hold only [speech | suffix | target]; the result is the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from macasr.model.decoding import DecodingOptions, Stop, beam_search, cache_kwargs, greedy_hypotheses
from macasr.model.llm import PromptTokens
from macasr.model.prefix_cache import PrefixCache

if TYPE_CHECKING:
    from macasr.data.collate import Batch

IGNORE_INDEX = -100


class Generated(NamedTuple):
    """One clip's transcript and why decoding stopped: "end" (the model ended it), "repeat" (the
    repeat guard cut a loop) or "max_tokens" (the token cap cut it)."""

    text: str
    stop: Stop


class SpeechLLM(nn.Module):
    def __init__(
        self, encoder: nn.Module, connector: nn.Module, llm: Any, tokenizer: Any, prompt: PromptTokens, prefix_cache: bool = True,
    ) -> None:
        """`prefix_cache`: reuse the prompt prefix's key/value states while the LLM is frozen ([train] prefix_cache)."""
        super().__init__()
        self.encoder = encoder
        self.connector = connector
        self.llm = llm
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.register_buffer("prefix_ids", torch.tensor(prompt.prefix, dtype=torch.long), persistent=False)
        self.register_buffer("suffix_ids", torch.tensor(prompt.suffix, dtype=torch.long), persistent=False)
        self.use_prefix_cache = prefix_cache
        self._prefix_cache = PrefixCache()

    def cached_prefix(self, batch: int) -> Any:
        """A KV cache holding the prompt prefix's states for `batch` rows, or None when the prefix
        must run in the rows (cache off, gradients must reach an LLM weight, sliding-window
        attention; see `macasr.model.prefix_cache`). The states are computed once per loaded model
        and reused by every batch until an LLM weight, its dtype or device changes."""
        if not self.use_prefix_cache or not self._prefix_cache.usable(self.llm, self.prompt.prefix):
            return None
        return self._prefix_cache.rows(self.llm, self.prompt.prefix, batch)

    def train(self, mode: bool = True) -> SpeechLLM:
        """Frozen parts stay in eval mode (no dropout) while the trainable parts train."""
        super().train(mode)
        for part in (self.encoder, self.llm):
            if not any(p.requires_grad for p in part.parameters()):
                part.eval()
        return self

    def encode_speech(self, features: torch.Tensor, lengths: torch.Tensor, encoded: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, C, L) → speech embeddings (B, N, H) and their lengths (B,).

        With `encoded`, features are already encoder frames (B, D, T) from the feature cache
        (`Batch.encoded`) and the encoder is skipped."""
        if encoded:
            frames, frame_lengths = features.transpose(1, 2), lengths  # (B, T, D)
        else:
            frames, frame_lengths = self.encoder(features, lengths)
        embeds, embed_lengths = self.connector(frames, frame_lengths)
        return embeds, embed_lengths

    def _layout(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor, target_embeds: torch.Tensor | None = None,
        target_lengths: torch.Tensor | None = None, cached: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded [prefix | speech | suffix | target] → embeds (B, L, H), mask, position ids (B, L).

        One gather from a bank [prefix | all speech | suffix | all targets] (B, P+N+S+M, H), so the
        layout costs the same for any batch size. With `cached` (a cache holding the prefix's P
        states, `cached_prefix`), rows are [speech | suffix | target], left-padded, their positions
        counting on from P, and the mask (B, P+L) covers the cached prefix too.
        """
        embed = self.llm.get_input_embeddings()
        start = 0 if cached is None else len(self.prefix_ids)  # the prefix tokens not held in the rows
        prefix, suffix = embed(self.prefix_ids[start:]), embed(self.suffix_ids)  # (P, H) (0 rows when cached), (S, H)
        batch, frames = speech.shape[:2]
        if target_embeds is None:
            target_embeds = prefix.new_zeros(batch, 0, prefix.shape[-1])
            target_lengths = torch.zeros_like(speech_lengths)
        p, s, n, m = len(prefix), len(suffix), speech_lengths[:, None], target_lengths[:, None]  # n, m: (B, 1)
        bank = torch.cat([prefix.expand(batch, -1, -1), speech.to(prefix.dtype), suffix.expand(batch, -1, -1), target_embeds], 1)
        total = p + n + s + m  # (B, 1) real tokens per row
        width = int(total.max())
        pos = torch.arange(width, device=bank.device)[None, :] - (width - total)  # (B, L), < 0 on padding
        # Prefix and speech sit in the bank where they sit in the row; suffix and target are shifted.
        index = torch.where(pos >= p + n, p + frames + (pos - p - n), pos)  # suffix
        index = torch.where(pos >= p + n + s, p + frames + s + (pos - p - n - s), index)  # target
        mask = (pos >= 0).long()
        embeds = bank.gather(1, (index * mask)[..., None].expand(-1, -1, bank.shape[-1])) * mask[..., None].to(bank.dtype)
        if cached is not None:
            mask = torch.cat([mask.new_ones(batch, start), mask], 1)  # the cached prefix is real in every row
        return embeds, mask, pos.clamp(min=0) + start

    def forward(self, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy over target tokens (the transcript and its end token) only."""
        speech, speech_lengths = self.encode_speech(batch.features, batch.feature_lengths, batch.encoded)
        targets, lengths = batch.targets, batch.target_lengths  # (B, M), (B,)
        target_embeds = self.llm.get_input_embeddings()(targets)
        cached = self.cached_prefix(len(targets))
        embeds, mask, positions = self._layout(speech, speech_lengths, target_embeds, lengths, cached)
        width = targets.shape[1]
        past = cache_kwargs(self.llm, cached) if cached is not None else {}
        # Logits only where a target token is predicted: the last M+1 columns, minus the last one.
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                          logits_to_keep=width + 1, **past).logits[:, :-1]  # (B, M, V)
        # Right-align the targets, like the left-padded rows: column j holds token j - (M - m).
        source = torch.arange(width, device=targets.device)[None, :] - (width - lengths[:, None])  # (B, M)
        labels = targets.gather(1, source.clamp(min=0)).masked_fill(source < 0, IGNORE_INDEX)
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)

    @torch.no_grad()
    def generate(self, batch: Batch, options: DecodingOptions | None = None) -> list[str]:
        """Batched transcription (greedy, or beam search when `num_beams` > 1); each row equals
        decoding that clip alone."""
        return [g.text for g in self.generate_with_stops(batch, options)]

    @torch.no_grad()
    def generate_with_stops(self, batch: Batch, options: DecodingOptions | None = None) -> list[Generated]:
        """`generate`, with why each clip stopped, so a transcript cut by a guard can be flagged."""
        options = options or DecodingOptions()
        speech, speech_lengths = self.encode_speech(batch.features, batch.feature_lengths, batch.encoded)
        cached = self.cached_prefix(len(speech))
        embeds, mask, positions = self._layout(speech, speech_lengths, cached=cached)
        caps, end, stop = options.max_new_tokens(batch.durations), self.prompt.end_id, options.repeat_ngram_stop
        if options.num_beams > 1:
            best = beam_search(self.llm, embeds, mask, positions, caps, end, options.num_beams, options.length_penalty, stop, cached)
        else:
            best = greedy_hypotheses(self.llm, embeds, mask, positions, caps, end, stop, cached)
        texts = self.tokenizer.batch_decode([h.tokens for h in best], skip_special_tokens=True)
        # A transcript is one line: runs of whitespace (newlines included) become one space.
        return [Generated(" ".join(text.split()), h.stop) for text, h in zip(texts, best)]
