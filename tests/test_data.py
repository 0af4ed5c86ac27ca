"""Manifests and SpecAugment (reading clips and batching: test_loader.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from macasr.data.manifest import load_manifest
from macasr.errors import DataError


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_relative_audio_paths_resolve_from_the_manifest_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    m = write_lines(tmp_path / "sub" / "m.jsonl", [{"audio": "a.wav", "text": "hi", "duration": 1}])
    (u,) = load_manifest(m)
    assert u.audio == str(tmp_path.resolve() / "sub" / "a.wav") and u.id == "m-000001" and u.duration == 1.0


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not valid JSON (Expecting property name enclosed in double quotes)"),
    ('{"audio": "a.wav", "text": 3, "duration": 1}', "`text` = 3: expected the transcript as a string"),
    ('{"audio": "a.wav", "text": "x", "duration": 0}', "`duration` = 0: expected seconds as a finite positive number"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"audio": "a.wav", "text": "x"}', "missing key `duration` (expected audio, text, duration)"),
])
def test_bad_manifest_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    m = write_lines(tmp_path / "m.jsonl", [{"audio": "a.wav", "text": "ok", "duration": 1}, line])
    with pytest.raises(DataError) as e:
        load_manifest(m)
    assert str(e.value) == f"{m}:2: {message}"


GOOD = '"audio": "a.wav", "text": "x", "duration": 1.5'
BAD_FIELDS = [  # (the line's JSON, what the one problem line says after FILE:LINE: )
    ('{"audio": "a.wav", "text": "x", "duration": NaN}', "`duration` = NaN: expected seconds as a finite positive number"),
    ('{"audio": "a.wav", "text": "x", "duration": Infinity}', "`duration` = Infinity: expected seconds as a finite positive number"),
    ('{"audio": "a.wav", "text": "x", "duration": 1e400}', "`duration` = Infinity: expected seconds as a finite positive number"),
    ('{"audio": "a.wav", "text": "x", "duration": -2}', "`duration` = -2: expected seconds as a finite positive number"),
    ('{"audio": "a.wav", "text": "x", "duration": "1.5"}', '`duration` = "1.5": expected seconds as a finite positive number'),
    ('{"audio": "a.wav", "text": "x", "duration": true}', "`duration` = true: expected seconds as a finite positive number"),
    ('{"audio": "a.wav", "text": "x", "duration": null}', "`duration` = null: expected seconds as a finite positive number"),
    ("{" + GOOD + ', "offset": "abc"}', '`offset` = "abc": expected seconds as a finite number >= 0'),
    ("{" + GOOD + ', "offset": -0.5}', "`offset` = -0.5: expected seconds as a finite number >= 0"),
    ("{" + GOOD + ', "offset": NaN}', "`offset` = NaN: expected seconds as a finite number >= 0"),
    ("{" + GOOD + ', "offset": false}', "`offset` = false: expected seconds as a finite number >= 0"),
    ('{"audio": "", "text": "x", "duration": 1}', '`audio` = "": expected the audio file\'s path as a non-empty string'),
    ('{"audio": 7, "text": "x", "duration": 1}', "`audio` = 7: expected the audio file's path as a non-empty string"),
    ('{"audio": "a.wav", "text": null, "duration": 1}', "`text` = null: expected the transcript as a string"),
    ("{" + GOOD + ', "id": true}', "`id` = true: expected a non-empty string (or an integer)"),
    ("{" + GOOD + ', "id": ""}', '`id` = "": expected a non-empty string (or an integer)'),
    ("{" + GOOD + ', "id": ["a"]}', '`id` = ["a"]: expected a non-empty string (or an integer)'),
]


@pytest.mark.parametrize(("line", "message"), BAD_FIELDS, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(BAD_FIELDS)])
def test_every_field_is_checked_where_it_is_read(tmp_path: Path, line: str, message: str) -> None:
    m = write_lines(tmp_path / "m.jsonl", [{"audio": "a.wav", "text": "ok", "duration": 1}, line])
    with pytest.raises(DataError) as e:
        load_manifest(m)
    assert str(e.value) == f"{m}:2: {message}"


def test_a_huge_integer_duration_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    m = write_lines(tmp_path / "m.jsonl", ['{"audio": "a.wav", "text": "x", "duration": 1' + "0" * 400 + "}"])
    with pytest.raises(DataError, match=r":1: `duration` = 1000.*\.\.\.: expected seconds as a finite positive number"):
        load_manifest(m)


def test_good_optional_fields_are_kept(tmp_path: Path) -> None:
    m = write_lines(tmp_path / "m.jsonl", [{"audio": "a.wav", "text": "", "duration": 2, "offset": 0, "id": 7},
                                           {"audio": "a.wav", "text": "x", "duration": 0.5, "offset": 1.25, "id": "b"}])
    first, second = load_manifest(m)
    assert (first.id, first.text, first.offset) == ("7", "", 0.0) and (second.id, second.offset) == ("b", 1.25)
    assert load_manifest(write_lines(tmp_path / "w.jsonl", [{"audio": "a.wav", "text": "x", "duration": 2}]))[0].offset is None


def test_every_bad_line_is_reported_at_once(tmp_path: Path) -> None:
    m = write_lines(tmp_path / "m.jsonl", [
        '{"audio": "a.wav", "text": "x", "duration": NaN}', {"audio": "a.wav", "text": "ok", "duration": 1},
        '{"audio": "a.wav", "text": 1, "duration": 1, "offset": -1}', "{oops",
    ])
    with pytest.raises(DataError) as e:
        load_manifest(m)
    lines = str(e.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{m}:1", f"{m}:3", f"{m}:3", f"{m}:4"]
    assert "`text` = 1" in lines[1] and "`offset` = -1" in lines[2] and "not valid JSON" in lines[3]


def test_many_bad_lines_are_capped_with_a_count(tmp_path: Path) -> None:
    from macasr.data.manifest import MAX_PROBLEMS_SHOWN

    m = write_lines(tmp_path / "m.jsonl", [{"audio": "a.wav", "text": "x", "duration": -i} for i in range(MAX_PROBLEMS_SHOWN + 5)])
    with pytest.raises(DataError) as e:
        load_manifest(m)
    lines = str(e.value).splitlines()
    assert len(lines) == MAX_PROBLEMS_SHOWN + 1 and lines[-1] == f"... and 5 more problems in {m}"
    assert lines[0].startswith(f"{m}:1: `duration` = 0:") and lines[-2].startswith(f"{m}:{MAX_PROBLEMS_SHOWN}: ")


def test_duplicate_ids_in_a_manifest_are_an_error(tmp_path: Path) -> None:
    m = write_lines(tmp_path / "m.jsonl", [
        {"audio": "a.wav", "text": "x", "duration": 1, "id": "u1"}, {"audio": "b.wav", "text": "y", "duration": 1, "id": "m-000003"},
        {"audio": "c.wav", "text": "z", "duration": 1}, {"audio": "d.wav", "text": "w", "duration": 1, "id": "u1"},
    ])
    with pytest.raises(DataError) as e:
        load_manifest(m)
    assert str(e.value).splitlines() == [
        f'{m}:3: `id` = "m-000003" (this line\'s default id): expected an id used once in the manifest (line 2 has it too)',
        f'{m}:4: `id` = "u1": expected an id used once in the manifest (line 1 has it too)',
    ]


def test_same_named_manifests_in_two_folders_load_together(tmp_path: Path) -> None:
    from macasr.data.manifest import load_manifests

    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        paths.append(write_lines(tmp_path / folder / "train.jsonl", [{"audio": "x.wav", "text": folder, "duration": 1}]))
    assert [u.text for u in load_manifests(paths)] == ["a", "b"]  # default ids repeat; only reports per manifest use them


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text('\ufeff{"audio": "a.wav", "text": "x", "duration": 1}\n', encoding="utf-8")
    assert load_manifest(m)[0].text == "x"


def test_spec_augment_masks_bands_and_spans_without_touching_the_input() -> None:
    import torch

    from macasr.data.augment import spec_augment

    torch.manual_seed(0)
    features = torch.randn(80, 200)
    original = features.clone()
    masked = [spec_augment(features) for _ in range(20)]
    assert torch.equal(features, original)  # the input is not modified
    changed = [(m != features) for m in masked]
    assert all(m.shape == features.shape for m in masked)
    assert any(c.all(dim=1).any() for c in changed)  # a whole frequency band masked
    assert any(c.all(dim=0).any() for c in changed)  # a whole time span masked
    assert all(c.float().mean() < 0.5 for c in changed)  # most of the signal survives


def test_spec_augment_leaves_a_waveform_whole_in_frequency() -> None:
    import torch

    from macasr.data.augment import spec_augment

    torch.manual_seed(0)
    wave = torch.randn(1, 16_000)
    for _ in range(20):
        changed = spec_augment(wave) != wave
        assert changed.float().mean() <= 0.1  # only time spans, never the one "band"
