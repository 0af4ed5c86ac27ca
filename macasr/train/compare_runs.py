"""`macasr compare RUN_DIR...`: what differs between training runs and how they did, from their
run folders alone (no model is loaded).

A run folder is what `macasr train` leaves: config.toml, metrics.jsonl, checkpoints, and any
eval reports put there (`macasr eval --report runs/NAME/report.json`). Read from them:
- the configs' differences: every flattened key (`train.lr`, `model.connector.name`) whose value
  is not the same in all runs, as written in each config.toml; a key a run's file lacks counts as
  its default (a config from before `[plugins]` existed equals one with an empty table), and shows
  "-" only where it has none (a Q-Former key in an MLP run, a plugin connector's keys);
- from metrics.jsonl: the steps done (the highest logged step), the best validation WER
  (lowest `valid_wer`, the earliest step on a tie) and its step, the last training loss, and the
  throughput (the mean of the training lines' `audio_seconds_per_second`, all processes);
- from every `*.json` directly in the run folder, each read as an eval report (the loader of
  `macasr eval --compare`): the test WER per dataset. A column is the dataset's name, or
  "NAME (STEM)" for a report not named report.json, so reports of different decodings stay apart.
  A report is the run's only when the checkpoint it recorded lies in the run folder (best.pt,
  last.pt, avg.pt, a bundle exported there); one that scored another run's checkpoint (a copied
  report) is left out with a note naming it and the checkpoint it scored.

Anything unreadable is a one-line MacasrError naming the file (and line). `plot_runs` overlays the
runs' loss and validation-WER curves with the pieces of `macasr.train.curves` (needs matplotlib).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from macasr.errors import MacasrError
from macasr.evaluate.compare import LoadedReport, load_report
from macasr.evaluate.report import MISSING
from macasr.train.curves import new_figure, read_metrics, save_figure, series

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
DEFAULT_REPORT = "report.json"  # the report name whose columns carry no file stem
ABSENT = object()  # a config key one run does not have (shown as "-")
VALUE_WIDTH = 40  # characters of a config value shown; longer ones lose their middle


@dataclass(frozen=True)
class Run:
    """One run folder read back. `config` is config.toml flattened to dotted keys."""

    path: Path
    label: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    reports: list[LoadedReport]
    foreign: list[LoadedReport] = field(default_factory=list)  # reports in the folder that scored another checkpoint

    @property
    def steps(self) -> int:
        """The highest step metrics.jsonl logged (0 when it holds no line)."""
        return max((r["step"] for r in self.records), default=0)

    @property
    def best(self) -> tuple[float, int] | None:
        """(lowest validation WER as a fraction, its step; the earliest on a tie); None: no validation."""
        steps, wers = series(self.records, "valid_wer")
        return min(zip(wers, steps), default=None)

    @property
    def final_loss(self) -> float | None:
        return (series(self.records, "loss")[1] or [None])[-1]

    @property
    def throughput(self) -> float | None:
        """Mean audio seconds trained on per second of training time over the training lines."""
        rates = series(self.records, "audio_seconds_per_second")[1]
        return sum(rates) / len(rates) if rates else None

    def test_wers(self) -> dict[str, tuple[float | None, str]]:
        """{column: (test WER as a fraction or None, the report's normalizer)} over its reports."""
        out = {}
        for report in self.reports:
            suffix = "" if report.path.name == DEFAULT_REPORT else f" ({report.path.stem})"
            for name, entry in report.datasets.items():
                out[f"{name}{suffix}"] = (entry["wer"], report.normalizer)
        return out


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables as one level of dotted keys: {"train": {"lr": 1e-4}} → {"train.lr": 1e-4}."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _plain(value: Any) -> Any:
    """A default as TOML reads it back (tuples are arrays)."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _table_defaults(table: Any, raw: Any, prefix: str) -> dict[str, Any]:
    """The flattened defaults of config dataclass `table` for the TOML table `raw`: a component
    table (registry) takes the defaults of the component `raw` names, none for a name not
    registered here (a plugin's); named tables (datasets) have no defaults."""
    from macasr.config import _REGISTRIES

    raw = raw if isinstance(raw, dict) else {}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(table):
        value, sub = getattr(table, f.name), raw.get(f.name)
        registry = _REGISTRIES.get(f.metadata.get("registry", ""))
        name = sub.get("name") if isinstance(sub, dict) else None
        if registry is not None and name is not None:
            if name not in registry.names():
                continue
            value = registry.config_type(name)()
        if dataclasses.is_dataclass(value):
            out |= _table_defaults(value, sub, f"{prefix}{f.name}.")
        elif not isinstance(value, dict):
            out[f"{prefix}{f.name}"] = _plain(value)
    return out


def filled(raw: dict[str, Any]) -> dict[str, Any]:
    """A config.toml (TOML dict) flattened, every key it lacks at its default (`_table_defaults`)."""
    from macasr.config import Config

    return _table_defaults(Config(), raw, "") | flatten(raw)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return filled(tomllib.loads(path.read_text(encoding="utf-8")))
    except tomllib.TOMLDecodeError as e:
        raise MacasrError(f"{path}: not valid TOML ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MacasrError(f"{path}: cannot be read ({e})") from None


def load_run(path: Path, label: str | None = None) -> Run:
    """Read a run folder; MacasrError when it is not one or a file in it is unreadable."""
    if not path.is_dir():
        raise MacasrError(f"run {path}: {'no such folder' if not path.exists() else 'not a folder'}; "
                          "give run folders (runs/NAME) that `macasr train` wrote")
    for needed in (CONFIG_FILE, METRICS_FILE):
        if not (path / needed).is_file():
            raise MacasrError(f"run {path}: not a run folder (no {needed}; `macasr train` writes {CONFIG_FILE} "
                              f"and {METRICS_FILE} there)")
    records = read_metrics(path / METRICS_FILE, strict=True)
    reports = [load_report(p) for p in sorted(path.glob("*.json")) if p.is_file()]
    own = [r for r in reports if r.checkpoint is None or scored_here(r.checkpoint, path)]
    foreign = [r for r in reports if r not in own]
    return Run(path, label or path.name, _read_config(path / CONFIG_FILE), records, own, foreign)


def scored_here(checkpoint: str, run_dir: Path) -> bool:
    """True when `checkpoint` (a report's, as `macasr eval --ckpt` was given it) lies in `run_dir`.
    A relative path is resolved from the current folder; as eval may have run from another one, a
    relative path also counts when its folders are the last folders of `run_dir`
    (`runs/demo/best.pt` for /work/runs/demo)."""
    folder = run_dir.resolve()
    given = Path(checkpoint).expanduser()
    if given.resolve().is_relative_to(folder):
        return True
    if given.is_absolute():
        return False
    parts = Path(os.path.normpath(given)).parent.parts
    return ".." not in parts and (not parts or folder.parts[-len(parts):] == parts)


def load_runs(paths: list[Path]) -> list[Run]:
    """The runs in the order given, labelled by folder name (by the path given when two share a
    name); MacasrError for a folder given twice."""
    seen: dict[Path, Path] = {}
    for path in paths:
        if path.resolve() in seen:
            raise MacasrError(f"run {path} is given twice (as {seen[path.resolve()]} and {path})")
        seen[path.resolve()] = path
    names = [p.name for p in paths]
    return [load_run(p, p.name if names.count(p.name) == 1 else str(p)) for p in paths]


def config_differences(runs: list[Run]) -> dict[str, list[Any]]:
    """{dotted key: its value in each run (ABSENT where a run lacks it)} for the keys whose values
    are not all equal, in the first run's key order (then keys only later runs have)."""
    keys = list(dict.fromkeys(key for run in runs for key in run.config))
    rows = {key: [run.config.get(key, ABSENT) for run in runs] for key in keys}
    return {key: values for key, values in rows.items()
            if any(v != values[0] or type(v) is not type(values[0]) for v in values[1:])}


def shorten(value: Any, width: int = VALUE_WIDTH) -> str:
    """A config value as TOML would show it, its middle cut to fit `width` (paths differ at their ends)."""
    text = "-" if value is ABSENT else value if isinstance(value, str) else json.dumps(value)
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head):]}"


def differences_table(runs: list[Run]) -> Table:
    """One row per config key whose value differs, one column per run."""
    table = Table(title="Config differences", title_justify="left")
    table.add_column("key", no_wrap=True)
    for run in runs:
        table.add_column(Text(run.label), overflow="fold")
    for key, values in config_differences(runs).items():
        table.add_row(Text(key), *(Text(shorten(v)) for v in values))
    return table


def _percent(rate: float | None) -> str:
    return MISSING if rate is None else f"{100 * rate:.2f}"


def results(runs: list[Run]) -> dict[str, list[str]]:
    """{row name: its cell per run}: steps done (of train.max_steps), best validation WER % and its
    step, final loss, throughput, and "test WER % COLUMN" for each report column of any run."""
    columns = list(dict.fromkeys(column for run in runs for column in run.test_wers()))
    rows: dict[str, list[str]] = {name: [] for name in ("steps", "best valid WER %", "best at step", "final loss", "audio s/s")}
    rows |= {f"test WER % {column}": [] for column in columns}
    for run in runs:
        planned = run.config.get("train.max_steps")
        best, loss, rate, tests = run.best, run.final_loss, run.throughput, run.test_wers()
        rows["steps"].append(f"{run.steps:,}" + (f" of {planned:,}" if isinstance(planned, int) else ""))
        rows["best valid WER %"].append(_percent(best[0] if best else None))
        rows["best at step"].append(MISSING if best is None else f"{best[1]:,}")
        rows["final loss"].append(MISSING if loss is None else f"{loss:.4f}")
        rows["audio s/s"].append(MISSING if rate is None else f"{rate:,.1f}")
        for column in columns:
            rows[f"test WER % {column}"].append(_percent(tests[column][0]) if column in tests else "-")
    return rows


def results_table(runs: list[Run]) -> Table:
    """The `results` rows, one column per run."""
    table = Table(title="Runs", title_justify="left")
    table.add_column("", no_wrap=True)
    for run in runs:
        table.add_column(Text(run.label), justify="right", overflow="fold")
    for name, cells in results(runs).items():
        table.add_row(Text(name), *cells)
    return table


def notes(runs: list[Run]) -> list[str]:
    """What the tables cannot say, one line each: no validation logged, no report, a report left
    out (it scored another run's checkpoint), normalizers that differ for one test column (its
    WERs then measure different things)."""
    out = [f"{run.label}: no validation WER in {run.path / METRICS_FILE}" for run in runs if run.best is None]
    out += [f"{run.label}: no eval report (*.json) in {run.path}; `macasr eval --ckpt {run.path / 'best.pt'} --report "
            f"{run.path / DEFAULT_REPORT}` writes one" for run in runs if not run.reports and not run.foreign]
    out += [f"{run.label}: {r.path} left out: it scored {r.checkpoint}, not a checkpoint of {run.path}"
            for run in runs for r in run.foreign]
    by_column: dict[str, dict[str, list[str]]] = {}
    for run in runs:
        for column, (_, normalizer) in run.test_wers().items():
            by_column.setdefault(column, {}).setdefault(normalizer, []).append(run.label)
    for column, normalizers in by_column.items():
        if len(normalizers) > 1:
            used = "; ".join(f"{n}: {', '.join(labels)}" for n, labels in normalizers.items())
            out.append(f"test WER {column}: normalizers differ ({used}); those WERs are not comparable")
    return out


PLOT_SUFFIXES = (".png", ".pdf", ".svg")  # formats matplotlib writes without extra packages


def check_plot_path(out: Path) -> None:
    """Refuse, before any work, a --plot path that is a folder, has no .png/.pdf/.svg suffix, lies
    in a folder that does not exist, or needs matplotlib that is missing."""
    try:
        import matplotlib  # noqa: F401  (the optional extra macasr[plots])
    except ImportError:
        raise MacasrError("--plot needs matplotlib: pip install 'macasr[plots]'") from None
    if out.is_dir():
        raise MacasrError(f"--plot {out}: is a folder; give a file name such as {out / 'runs.png'}")
    if out.suffix.lower() not in PLOT_SUFFIXES:
        raise MacasrError(f"--plot {out}: unknown image type {out.suffix or '(no suffix)'!r}; give a file name ending in "
                          f"{', '.join(PLOT_SUFFIXES)}")
    if not out.parent.is_dir():
        raise MacasrError(f"--plot {out}: no such folder {out.parent}; create it first or give another path")


def plot_runs(runs: list[Run], out: Path) -> Figure:
    """Training loss (left) and validation WER in % (right) over steps, one colour per run, into
    `out` (PNG, PDF or SVG by its suffix) → the figure. Needs matplotlib."""
    figure, loss_ax, wer_ax = new_figure()
    for index, run in enumerate(runs):
        colour = f"C{index}"
        steps, loss = series(run.records, "loss")
        loss_ax.plot(steps, loss, color=colour, marker="o" if len(steps) == 1 else None, label=run.label)  # one point: no line
        steps, wers = series(run.records, "valid_wer")
        wer_ax.plot(steps, [100 * w for w in wers], marker="o", color=colour, label=run.label)
    loss_ax.legend()
    wer_ax.legend()
    if not any(run.best for run in runs):
        wer_ax.text(0.5, 0.5, "no validation WER logged", ha="center", va="center", transform=wer_ax.transAxes)
    check_plot_path(out)
    try:
        save_figure(figure, out)
    except OSError as e:
        raise MacasrError(f"--plot {out}: cannot be written ({e})") from None
    return figure
