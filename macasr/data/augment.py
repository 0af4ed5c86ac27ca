"""Training-time feature augmentation.

SpecAugment (Park et al., 2019) masks random frequency bands and time spans of the log-mel
features, so the model cannot lean on any one band or instant; it is the cheapest guard against
over-fitting the speakers seen in training. Masks are filled with the clip's mean feature.
"""

from __future__ import annotations

import torch

FREQ_MASKS = 2  # bands per clip
FREQ_MASK_FRACTION = 0.15  # widest band, as a fraction of the bins (12 of 80, 19 of 128)
TIME_MASKS = 2  # spans per clip
TIME_MASK_FRACTION = 0.05  # longest span, as a fraction of the clip's frames


def spec_augment(features: torch.Tensor) -> torch.Tensor:
    """features (C, L) → a masked copy (C, L); uses torch's global RNG (seeded per worker)."""
    out = features.clone()
    bins, frames = out.shape
    fill = out.mean()
    for count, size, fraction, axis in ((FREQ_MASKS, bins, FREQ_MASK_FRACTION, 0), (TIME_MASKS, frames, TIME_MASK_FRACTION, 1)):
        if axis == 0 and bins == 1:  # a waveform (HuBERT, WavLM, wav2vec2) has no frequency axis
            continue
        widest = max(1, int(size * fraction))
        for _ in range(count):
            width = int(torch.randint(0, widest + 1, ()).item())
            start = int(torch.randint(0, max(1, size - width + 1), ()).item())
            if axis == 0:
                out[start : start + width, :] = fill
            else:
                out[:, start : start + width] = fill
    return out
