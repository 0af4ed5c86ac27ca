from __future__ import annotations

import math

import pytest

from macasr.train.schedule import lr_factor


def test_warmup_is_linear_then_cosine_reaches_the_floor() -> None:
    warmup, total, floor = 10, 110, 0.1
    factors = [lr_factor(s, warmup, total, floor) for s in range(total + 5)]
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    assert factors[warmup + 50] == pytest.approx(floor + (1 - floor) * 0.5)  # half-way down the cosine
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :]))  # never rises after warmup
    assert factors[total] == pytest.approx(floor) and factors[-1] == pytest.approx(floor)


def test_no_warmup_starts_at_the_peak() -> None:
    assert lr_factor(0, 0, 100) == 1.0
    assert lr_factor(100, 0, 100) == 0.0
    assert math.isclose(lr_factor(25, 0, 100), 0.5 * (1 + math.cos(math.pi / 4)))
