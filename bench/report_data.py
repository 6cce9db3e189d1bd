"""Finding and reading the run folders the report is built from.

Only the files the runs wrote (JSON and CSV) are read, never the training code, so
the report works on a machine without torch and on results copied from elsewhere.
A run with a missing or unreadable file is not an error: it is returned as
`Skipped` with the reason, so one crashed run cannot hide the others.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import BenchError
from .results import FAILED, FINISHED, METRICS_COLUMNS, STATE, read_state

REQUIRED = ("config.json", "metrics.csv", "final.json")
"""A run needs these to be reported; `env.json` is optional (shown as unknown)."""
MARKERS = (*REQUIRED, "env.json", STATE)
"""Any of these makes a folder a (possibly incomplete) run folder."""
VARIANCE_FILE = "variance.csv"
VARIANCE_COLUMNS = ("mean_norm", "variance", "snr")
SINE_FILE = "sine_predictions.csv"
SINE_COLUMNS = ("kind", "steps", "x", "y")
ALGO_ORDER = ("reptile", "fomaml", "maml", "joint", "gradsum")
"""Display order of the algorithms: the paper's subject first."""


class ReportError(BenchError):
    """Nothing to report (the CLI prints it as one line and exits 2)."""


class _Unreadable(Exception):
    """A run file that exists but cannot be used; the message is the skip reason."""


@dataclass
class Run:
    """One complete run folder, parsed."""

    path: str
    """Folder relative to the results folder (POSIX), for display."""
    config: dict[str, Any]
    final: dict[str, Any]
    metrics: pd.DataFrame
    env: dict[str, Any] | None = None
    variance: pd.DataFrame | None = None
    sine: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    """Problems with optional files (env.json, variance.csv, sine_predictions.csv)."""

    @property
    def preset(self) -> str:
        return str(self.config["preset"])

    @property
    def algo(self) -> str:
        return str(self.config["algo"])

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def metric(self) -> str:
        return str(self.final["metric"])

    @property
    def method(self) -> str:
        return method_label(self.algo, self.config)

    @property
    def method_key(self) -> tuple:
        return method_sort_key(self.algo, self.config)

    @property
    def scale(self) -> tuple[int, int]:
        """(meta-iterations, test tasks): the run's length and the size of its final evaluation."""
        iters, tasks = self.final.get("meta_iters"), self.config.get("eval_tasks")
        return (int(iters if _is_number(iters) else self.config["meta_iters"]),
                int(tasks if _is_number(tasks) else self.final["tasks"]))


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def grad_terms(config: dict[str, Any]) -> tuple[int, ...]:
    """The inner steps whose gradients a gradsum run sums, sorted ("2+1" is "1+2")."""
    try:
        return tuple(sorted(int(t) for t in str(config.get("meta_grads", "")).split("+")))
    except ValueError:
        return ()


def method_label(algo: str, config: dict[str, Any]) -> str:
    """The name a method goes by in figures and tables; " + transduction" when its test
    queries were classified in one batch (`transductive`), as the paper's rows say.

    A gradsum run is one method per combination of inner-step gradients (Reptile paper
    section 6.2, PAPERS.md section 5), written as the paper does: g1+g2, or mean(g1+g2)
    for the sum divided by its number of terms.
    """
    suffix = " + transduction" if config.get("transductive") else ""  # as the paper's rows say
    if algo != "gradsum":
        return algo + suffix
    terms = grad_terms(config)
    text = "+".join(f"g{t}" for t in terms) if terms else f"g[{config.get('meta_grads')}]"
    return (f"mean({text})" if config.get("meta_grads_mean") and len(terms) > 1 else text) + suffix


def method_sort_key(algo: str, config: dict[str, Any]) -> tuple:
    """Reptile first, then FOMAML, MAML, joint, the gradient sums by their terms, others by name."""
    rank = ALGO_ORDER.index(algo) if algo in ALGO_ORDER else len(ALGO_ORDER)
    terms = grad_terms(config) if algo == "gradsum" else ()
    return (rank, algo, len(terms), terms, bool(config.get("meta_grads_mean")) if algo == "gradsum" else False,
            bool(config.get("transductive")))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise _Unreadable(f"{path.name}: cannot read ({e.__class__.__name__})") from None
    except json.JSONDecodeError as e:
        raise _Unreadable(f"{path.name}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict):
        raise _Unreadable(f"{path.name}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_csv(path: Path, columns: tuple[str, ...], numeric: tuple[str, ...],
              gaps: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV with at least `columns`, the `numeric` ones all numbers (else _Unreadable);
    the `gaps` columns are numeric too but may hold empty or non-finite values (read as NaN)."""
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise _Unreadable(f"{path.name}: empty file") from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as e:
        raise _Unreadable(f"{path.name}: not a readable CSV ({e.__class__.__name__})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise _Unreadable(f"{path.name}: missing column(s) {', '.join(missing)}")
    for col in numeric:
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            raise _Unreadable(f"{path.name}: non-numeric or empty values in column {col!r}")
        df[col] = values
    for col in gaps:
        values = pd.to_numeric(df[col], errors="coerce")
        df[col] = values.where(np.isfinite(values))
    return df


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _identity(folder: Path, config: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """preset, algo and seed from config.json, else final.json, else the folder names
    (<preset>/<algo>/seed<k>), so an older config without them still reports."""
    parts = folder.parts
    from_path = {"preset": parts[-3] if len(parts) >= 3 else None, "algo": parts[-2] if len(parts) >= 2 else None,
                 "seed": parts[-1][4:] if parts and parts[-1].startswith("seed") else None}
    out = {}
    for key in ("preset", "algo", "seed"):
        value = config.get(key, final.get(key, from_path[key]))
        if value is None or value == "":
            raise _Unreadable(f"config.json: no {key!r} (and none in final.json or the folder name)")
        out[key] = value
    try:
        out["seed"] = int(out["seed"])
    except (TypeError, ValueError):
        raise _Unreadable(f"config.json: seed {out['seed']!r} is not an integer") from None
    return out


def _check(config: dict[str, Any], final: dict[str, Any]) -> None:
    """The fields every table needs: the final number, and the scale to judge it by."""
    if not isinstance(final.get("metric"), str):
        raise _Unreadable("final.json: no 'metric'")
    if not _is_number(final.get("value")):
        raise _Unreadable(f"final.json: 'value' is {final.get('value')!r}, not a number")
    for key, fallback in (("meta_iters", "meta_iters"), ("eval_tasks", "tasks")):
        if not _is_number(config.get(key, final.get(fallback))):
            raise _Unreadable(f"no {key!r} in config.json (nor {fallback!r} in final.json): the run's scale is unknown")


def _optional_csv(folder: Path, name: str, columns: tuple[str, ...], numeric: tuple[str, ...],
                  notes: list[str], gaps: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """An optional per-run CSV; a broken one is noted, not fatal to the run."""
    if not (folder / name).is_file():
        return None
    try:
        df = _read_csv(folder / name, columns, numeric, gaps)
    except _Unreadable as e:
        notes.append(f"{e} (ignored)")
        return None
    if df.empty:
        notes.append(f"{name}: no rows (ignored)")
        return None
    return df


def load_run(folder: Path, results_dir: Path) -> Run | Skipped:
    """Parse one run folder, or say why it cannot be reported."""
    rel = folder.relative_to(results_dir).as_posix() if folder != results_dir else "."
    state = read_state(folder)  # the run's own word first: running, failed or finished
    if state and state.get("state") != FINISHED:
        at = f" (last checkpoint: meta-iteration {state['step']})" if "step" in state else ""
        if state.get("state") == FAILED:
            return Skipped(rel, f"failed{at}: {state.get('message') or 'no message'}")
        return Skipped(rel, f"unfinished{at}: still running, or killed (`--resume` continues it)")
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        hint = " (still running, or it failed)" if "final.json" in missing else ""
        return Skipped(rel, f"missing {', '.join(missing)}{hint}")
    try:
        config = _read_json(folder / "config.json")
        final = _read_json(folder / "final.json")
        _check(config, final)
        metrics = _read_csv(folder / "metrics.csv", METRICS_COLUMNS, ("step", "wall_s", "value"))
        config = {**config, **_identity(folder.relative_to(results_dir), config, final)}
    except _Unreadable as e:
        return Skipped(rel, str(e))
    notes: list[str] = []
    env = None
    if (folder / "env.json").is_file():
        try:
            env = _read_json(folder / "env.json")
        except _Unreadable as e:
            notes.append(f"{e} (environment unknown)")
    variance = _optional_csv(folder, VARIANCE_FILE, ("step", *VARIANCE_COLUMNS), ("step",), notes,
                             gaps=VARIANCE_COLUMNS)
    sine = _optional_csv(folder, SINE_FILE, SINE_COLUMNS, ("x", "y"), notes)
    return Run(rel, config, final, metrics, env, variance, sine, notes)


def discover(results_dir: Path) -> tuple[list[Run], list[Skipped]]:
    """Every run folder under `results_dir` (any depth: a folder holding a run file),
    parsed, in a fixed order so two reports from the same results are identical."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ReportError(f"results folder {results_dir} does not exist: produce runs with "
                          "`python -m bench run --algo reptile ...` (or pass the folder that holds them)")
    folders = sorted({p.parent for name in MARKERS for p in results_dir.rglob(name) if p.is_file()})
    runs: list[Run] = []
    skipped: list[Skipped] = []
    for folder in folders:
        loaded = load_run(folder, results_dir)
        (runs if isinstance(loaded, Run) else skipped).append(loaded)
    runs.sort(key=lambda r: (r.preset, r.method_key, r.seed, r.path))
    return runs, skipped


def no_runs_error(results_dir: Path, skipped: list[Skipped]) -> ReportError:
    """The one-line error when nothing can be reported, naming the fix."""
    how = "produce runs with `python -m bench run --algo reptile ...` (each writes <results>/<preset>/<algo>/seed<k>/)"
    if skipped:
        return ReportError(f"no complete runs in {results_dir} ({len(skipped)} incomplete, e.g. "
                           f"{skipped[0].path}: {skipped[0].reason}): {how}")
    return ReportError(f"no runs in {results_dir}: {how}")


def curve_split(runs: list[Run]) -> str:
    """The split the learning curves show: "val" when every run has validation
    evaluations (model selection data, `val_chars` > 0), else "test"."""
    has_val = [((r.metrics["split"] == "val") & (r.metrics["metric"] == r.metric)).any() for r in runs]
    return "val" if runs and all(has_val) else "test"


def display_scale(metric: str) -> float:
    """Accuracy is stored as a fraction and published in percent; MSE as is."""
    return 100.0 if metric == "accuracy" else 1.0


def curves(runs: list[Run], split: str, metric: str) -> pd.DataFrame:
    """Tidy learning curves: one row per run and evaluation step (metric in display units).

    The last `test` point is the final evaluation (eval_tasks tasks); the others are the
    periodic ones (eval_every_tasks tasks).
    """
    frames = []
    for r in runs:
        m = r.metrics
        rows = m[(m["split"] == split) & (m["metric"] == metric)]
        rows = rows.drop_duplicates("step", keep="last")
        frames.append(pd.DataFrame({"preset": r.preset, "method": r.method, "seed": r.seed,
                                    "step": rows["step"].to_numpy(), "wall_s": rows["wall_s"].to_numpy(),
                                    "value": rows["value"].to_numpy() * display_scale(metric)}))
    columns = ["preset", "method", "seed", "step", "wall_s", "value"]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    # Seeds share steps but not clocks: the wall-clock axis uses the mean over seeds at each step.
    df["wall_s_mean"] = df.groupby(["preset", "method", "step"])["wall_s"].transform("mean")
    return df


def finals(runs: list[Run]) -> pd.DataFrame:
    """One row per run: its final evaluation and the settings that decide whether it is reduced."""
    rows = []
    for r in runs:
        f, own = r.final, r.final.get("own_protocol")
        scale = display_scale(r.metric)
        row = {"path": r.path, "preset": r.preset, "method": r.method, "algo": r.algo, "seed": r.seed,
               "metric": r.metric, "value": f["value"] * scale,
               "ci95": f["ci95"] * scale if _is_number(f.get("ci95")) else float("nan"),
               "tasks": f.get("tasks", r.config.get("eval_tasks")),
               "ms_per_meta_iter": f.get("ms_per_meta_iter", float("nan")),
               "transductive": bool(f.get("transductive", r.config.get("transductive", False))),
               "meta_iters": r.scale[0], "eval_tasks": r.scale[1],
               "interval": f.get("interval"), "device": r.config.get("device")}
        if isinstance(own, dict) and _is_number(own.get("value")):
            own_scale = display_scale(str(own.get("metric", r.metric)))
            row.update(own_value=own["value"] * own_scale, own_tasks=own.get("tasks"),
                       own_ci95=own["ci95"] * own_scale if _is_number(own.get("ci95")) else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)
