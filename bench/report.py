"""`python -m bench report [RESULTS_DIR] [--out reports/]`: REPORT.md with figures and tables.

The report is rebuilt from the files the runs wrote (config.json, env.json,
metrics.csv, final.json, and the optional variance.csv and sine_predictions.csv);
it never imports the training code or torch, so it runs anywhere the results are.
Everything in it is in a fixed order and the figures are saved without timestamps,
so two reports from the same results differ only in the "Generated" line.

Every figure title and table row carries the run's scale (meta-iterations, seeds,
test tasks) and a "reduced" mark against the paper's setting (bench/published.py),
so a short run is never read as a reproduction of the paper's numbers.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from . import published
from .errors import BenchError
from .report_data import (SINE_FILE, VARIANCE_FILE, ReportError, Run, Skipped, curve_split, curves, discover,
                          finals, no_runs_error)
from .report_stats import ALPHA, pairwise, seed_std, summarize
from .speed import rate_text, speedup_text

__all__ = ["ReportError", "build_report", "add_parser", "main_report"]

GRADSUM_PREFIX = "omniglot-gradsum"
PRESET_ORDER = ("omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s", "omniglot-5w1s-maml",
                "omniglot-5w5s-maml", "omniglot-20w1s-maml", "omniglot-20w5s-maml", "miniimagenet-5w1s",
                "miniimagenet-5w5s", "miniimagenet-5w1s-maml", "miniimagenet-5w5s-maml", "omniglot-gradsum", "sine")
"""Sections in the README's order (Table 2's columns first); other presets follow by name."""
TIMESTAMP_PREFIX = "Generated "
"""The one line that changes between two reports from the same results."""
SETTINGS = ("meta_iters", "meta_batch", "inner_steps", "inner_lr", "eval_tasks", "transductive", "device")
ENV_KEYS = ("python", "torch", "numpy", "bench", "platform", "device", "device_name", "cpu_threads", "git_commit")
NOT_TESTED = "not tested (needs ≥2 seeds each)"


def _figures():
    """bench.report_figures (matplotlib and seaborn, about a second to import), imported
    when a figure is drawn: every command imports this module for its parser."""
    from . import report_figures

    return report_figures


# --- formatting -----------------------------------------------------------------


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (pipes inside cells escaped)."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def fmt(x: float, metric: str) -> str:
    """A value in display units: accuracy in percent to 2 decimals, MSE to 4 significant digits."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.2f}" if metric == "accuracy" else f"{x:.4g}"


def count(n) -> str:
    return f"{int(n):,}"


def distinct(values) -> str:
    """The distinct values of a setting across seeds, e.g. "1,000" or "1,000 / 2,000"."""
    seen = []
    for v in values:
        text = count(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else str(v)
        if text not in seen:
            seen.append(text)
    return " / ".join(seen) if seen else "—"


def metric_label(metric: str, split: str = "test") -> str:
    return f"{split} accuracy (%)" if metric == "accuracy" else f"{split} {metric.upper()}"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def preset_rank(preset: str) -> tuple:
    return (PRESET_ORDER.index(preset) if preset in PRESET_ORDER else len(PRESET_ORDER), preset)


def method_order(runs: list[Run]) -> list[str]:
    """Methods in display order (Reptile first, gradient sums by their terms)."""
    return [m for _, m in sorted({(r.method_key, r.method) for r in runs})]


@dataclass(frozen=True)
class Section:
    """A preset's section of the report: all its runs, or, where they were made at more than one
    scale, those of one scale (runs of different lengths are never averaged together)."""

    title: str
    preset: str
    key: str
    """The figures' file names: the preset, with the scale where the preset has several."""
    runs: list[Run]


def sections(runs: list[Run]) -> list[Section]:
    """The runs by preset (in the README's order) and, within a preset made at several scales
    (meta-iterations, test tasks), by scale, the longest first."""
    by_preset: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: preset_rank(r.preset)):  # stable: keeps method and seed order
        by_preset.setdefault(r.preset, []).append(r)
    out = []
    for preset, runs_p in by_preset.items():
        scales = sorted({r.scale for r in runs_p}, reverse=True)
        if len(scales) == 1:
            out.append(Section(preset, preset, preset, runs_p))
            continue
        for iters, tasks in scales:
            out.append(Section(f"{preset} at {count(iters)} meta-iterations, {count(tasks)} test tasks", preset,
                               f"{preset}-{iters}-iters-{tasks}-tasks",
                               [r for r in runs_p if r.scale == (iters, tasks)]))
    return out


def anchor(title: str) -> str:
    """The link target a Markdown renderer gives a heading (GitHub's rule)."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


# --- scale: reduced runs must not pass for reproductions -----------------------------


def reduced_mark(preset: str, meta_iters: int, eval_tasks: int) -> str:
    """ "full" or "reduced: ..." against the paper's meta-iterations and test tasks."""
    full = published.full_scale(preset)
    if full is None:
        return "? (no paper scale known)"
    short = []
    if meta_iters < full.meta_iters:
        short.append(f"{count(meta_iters)}/{count(full.meta_iters)} meta-iters")
    if eval_tasks < full.eval_tasks:
        short.append(f"{count(eval_tasks)}/{count(full.eval_tasks)} test tasks")
    return "**reduced**: " + ", ".join(short) if short else "full"


def scale_note(fin: pd.DataFrame) -> str:
    """E.g. "1,000 meta-iters, 2 seeds, 1,000 test tasks — REDUCED (paper: 100,000 meta-iters, ...)"."""
    seeds = fin.groupby("method")["seed"].nunique()
    low, high = int(seeds.min()), int(seeds.max())
    seed_text = f"{low} seed{'s' if low != 1 else ''}" if low == high else f"{low}-{high} seeds per method"
    iters, tasks = distinct(sorted(fin["meta_iters"])), distinct(sorted(fin["eval_tasks"]))
    note = f"{iters} meta-iters, {seed_text}, {tasks} test tasks"
    presets = sorted(fin["preset"].unique())
    fulls = {p: published.full_scale(p) for p in presets}
    if any(f is None for f in fulls.values()):
        return note + " (paper scale unknown)"
    reduced = any(r.meta_iters < fulls[r.preset].meta_iters or r.eval_tasks < fulls[r.preset].eval_tasks
                  for r in fin.itertuples())
    if not reduced:
        return note + " (paper scale)"
    paper = distinct([f"{count(f.meta_iters)} meta-iters, {count(f.eval_tasks)} test tasks" for f in fulls.values()])
    return note + f" — REDUCED (paper: {paper})"


# --- per-preset sections -----------------------------------------------------------------


def _figure_md(stem: Path, out_dir: Path, alt: str) -> str:
    rel = stem.relative_to(out_dir).as_posix()
    return f"![{alt}]({rel}.png)\n\n[SVG (vector)]({rel}.svg)"


def _written(paths: list[Path], out_dir: Path, progress: bool) -> None:
    """One progress line per figure written."""
    if progress:
        print("wrote " + ", ".join(p.relative_to(out_dir).as_posix() for p in paths), flush=True)


def _curves_section(section: Section, fin: pd.DataFrame, out_dir: Path, progress: bool) -> list[str]:
    runs, preset = section.runs, section.preset
    split, metric = curve_split(runs), runs[0].metric
    df = curves([r for r in runs if r.metric == metric], split, metric)
    if df.empty:
        return [f"No {split} {metric} evaluations in these runs' metrics.csv (eval_every = 0?): no learning curves."]
    stem = out_dir / "figures" / f"{slug(section.key)}-curves"
    title = f"{preset}: {metric_label(metric, split)}\n{scale_note(fin)}"
    top = 100.0 if metric == "accuracy" else None
    _written(_figures().learning_curves(df, method_order(runs), metric_label(metric, split), title, stem, top),
             out_dir, progress)
    every = distinct(sorted(r.config.get("eval_every_tasks", "?") for r in runs))
    last = ("; the last point of each test curve is the final evaluation on "
            f"{distinct(sorted(fin['eval_tasks']))} test tasks") if split == "test" else ""
    return [_figure_md(stem, out_dir, f"{preset} learning curves"), "",
            f"Mean over seeds; the band is the 95% Student-t interval over seeds (none with one seed"
            f"{'; the axis ends at 100%, which a band over few seeds can pass' if top else ''}). "
            f"Points are the periodic evaluations on {every} {split} tasks{last}. Right: against "
            f"meta-training seconds (the mean over seeds at each step), which depend on the device "
            f"(see Environment).{_rescored_note(runs)}"]


def _rescored_note(runs: list[Run]) -> str:
    """Which methods are other runs scored again (`bench evaluate`): one point each, the final."""
    rescored = method_order([r for r in runs if isinstance(r.config.get("evaluated_from"), dict)])
    if not rescored:
        return ""
    return (f" {', '.join(rescored)}: other runs' final initialisations scored again with other "
            "evaluation settings (`python -m bench evaluate`; their `config.json` names the run), so only "
            "the final point.")


def _note(notes: list[str], text: str) -> str:
    """A footnote marker, numbering each distinct note once per table."""
    if text not in notes:
        notes.append(text)
    return f"[{notes.index(text) + 1}]"


def _published_cell(preset: str, algo: str, transductive: bool, notes: list[str]) -> str:
    """The published number with a footnote naming its source row, other sources' numbers for
    the same setting after it, or "—" with the reason."""
    def ref(p: published.Published) -> str:
        where = f'{p.source}, row "{p.method}", {p.dataset} {p.setting}'
        return f"{p.text()} {_note(notes, where)}"
    main = published.lookup(preset, algo, transductive)
    rest = published.other_reports(preset, algo)
    if main is None and not rest:
        return f"— {_note(notes, published.no_number_note(preset, algo))}"
    cell = ref(main) if main else "—"
    if main and "transduction" in main.method and not transductive:
        cell += " " + _note(notes, "the published row is transductive; this run is not (`--set transductive=true`)")
    others = [ref(p) for p in rest]  # numbered after the main source
    return cell + (f" (also: {'; '.join(others)})" if others else "")


def _results_table(preset: str, fin: pd.DataFrame, order: list[str]) -> list[str]:
    """Final value per method beside the published number, with spread and scale."""
    metric = fin["metric"].iloc[0]
    summary = summarize(fin).set_index("method").loc[order]
    has_own = "own_value" in summary.columns and summary["own_n"].fillna(0).gt(0).any()
    header = ["method", "seeds", f"final {metric_label(metric)}, mean over seeds",
              "95% CI over test tasks (per seed, ±)", "std over seeds (n)", "ms / meta-iter",
              "published", "scale vs paper"] + (["own protocol (mean, ± CI over tasks)"] if has_own else [])
    notes: list[str] = []
    rows = []
    for method, s in summary.iterrows():
        first = fin[fin["method"] == method].iloc[0]
        trans = bool(fin.loc[fin["method"] == method, "transductive"].any())
        row = [method, ", ".join(map(str, sorted(s["seeds"]))), fmt(s["mean"], metric),
               ", ".join(f"±{fmt(c, metric)}" if np.isfinite(c) else "—" for c in s["ci95_list"]),
               f"{fmt(s['std'], metric)} ({s['n']})", f"{s['ms']:.1f}" if np.isfinite(s["ms"]) else "—",
               _published_cell(preset, first["algo"], trans, notes),
               reduced_mark(preset, int(s["meta_iters_min"]), int(s["eval_tasks_min"]))]
        if has_own:
            row.append(f"{fmt(s['own_value'], metric)} ± {fmt(s['own_ci95'], metric)}"
                       if s["own_n"] > 0 else "—")
        rows.append(row)
    full = published.full_scale(preset)
    lines = [md_table(header, rows), ""]
    lines += [f"- [{i}] {n}" for i, n in enumerate(notes, 1)]
    intervals = distinct(sorted(str(v) for v in fin["interval"].dropna().unique()))
    lines += ["", f"The per-seed CI is the run's own interval over its test tasks ({intervals}); the std "
              "is over seeds, the spread a comparison between methods must beat. Published \"+-\" values are "
              "as printed (the Reptile paper does not define them; PAPERS.md section 2). Published "
              "accuracies are in percent."]
    if full:
        lines += ["", f"Paper scale for this preset: {count(full.meta_iters)} meta-iterations, "
                      f"{count(full.eval_tasks)} test tasks. Source: {full.source}."]
    return lines


def _significance(fin: pd.DataFrame, order: list[str]) -> list[str]:
    """Welch's t-test between every pair of methods of a preset, over per-seed final values."""
    if len(order) < 2:
        return ["One method only: nothing to compare."]
    metric = fin["metric"].iloc[0]
    pairs = pairwise(fin, order)
    rows = []
    for p in pairs.itertuples():
        if not p.tested:
            rows.append([p.a, p.b, f"{p.n_a} / {p.n_b}", fmt(p.diff, metric), "—", NOT_TESTED, "—"])
        elif not np.isfinite(p.p):
            rows.append([p.a, p.b, f"{p.n_a} / {p.n_b}", fmt(p.diff, metric), "—",
                         "undefined (no spread over seeds)", "—"])
        else:
            rows.append([p.a, p.b, f"{p.n_a} / {p.n_b}", fmt(p.diff, metric), f"{p.t:.2f}", f"{p.p:.3g}",
                         "**yes**" if p.significant else "no"])
    return [f"Welch's t-test (unequal variances, two-sided; `scipy.stats.ttest_ind(equal_var=False)`) on "
            f"the per-seed final values of each pair of methods; marked when p < {ALPHA}. No correction "
            "for multiple comparisons; seeds are the independent units, not test tasks.", "",
            md_table(["method A", "method B", "seeds A / B", "mean A - B", "t", "p", f"p < {ALPHA}"], rows)]


def _preset_section(section: Section, fin: pd.DataFrame, out_dir: Path, progress: bool) -> list[str]:
    order = method_order(section.runs)
    return [f"## {section.title}", "", f"Scale: {scale_note(fin)}.", "",
            *_curves_section(section, fin, out_dir, progress), "",
            "### Results", "", *_results_table(section.preset, fin, order), "",
            "### Significance", "", *_significance(fin, order), ""]


# --- cross-preset sections ---------------------------------------------------------------


def _paper_tables_section(fin: pd.DataFrame) -> list[str]:
    """Reptile paper Tables 1 and 2 filled from the runs (`python -m bench reproduce`):
    per row and column, the mean over seeds beside the printed number."""
    lines = ["## Paper tables", ""]
    for name, table in published.PAPER_TABLES.items():
        cells, any_run = {}, False
        for method, preset, algo, transductive in published.table_runs(name):
            setting = preset.split("-")[1]
            runs = fin[(fin["preset"] == preset) & (fin["algo"] == algo) & (fin["transductive"] == transductive)]
            if len(runs):  # the longest runs, where the row was run at several scales
                longest = max(zip(runs["meta_iters"], runs["eval_tasks"]))
                runs = runs[(runs["meta_iters"] == longest[0]) & (runs["eval_tasks"] == longest[1])]
            paper = published.find(table.source, table.dataset, setting, method)
            ours = "—"
            if len(runs):
                any_run = True
                n = len(runs)
                spread = f" ± {fmt(runs['value'].std(), 'accuracy')}" if n > 1 else ""
                scale = reduced_mark(preset, int(runs["meta_iters"].min()), int(runs["eval_tasks"].min()))
                ours = (f"{fmt(runs['value'].mean(), 'accuracy')}{spread} ({n} seed{'s' if n != 1 else ''}"
                        f"{', **reduced**' if scale != 'full' else ''})")
            cells[method, setting] = f"{ours} / {paper.text() if paper else '—'}"
        if not any_run:
            lines += [f"{table.source}: no runs yet (`python -m bench reproduce --table {name}`).", ""]
            continue
        header = ["method", *[f"{table.dataset} {s}" for s in table.settings]]
        rows = [[row.method, *[cells[row.method, s] for s in table.settings]] for row in published.TABLE_ROWS]
        lines += [f"**{table.source}** (`python -m bench reproduce --table {name}`). Each cell: this suite's "
                  "accuracy (%), mean ± std over seeds, then the published number as printed; **reduced**: fewer "
                  "meta-iterations or test tasks than the paper (the preset's section gives the scale). Where a "
                  "row was run at several scales, the cell holds the longest runs.", "",
                  md_table(header, rows), ""]
    return lines


def _gradsum_section(runs: list[Run], fin: pd.DataFrame, out_dir: Path, progress: bool) -> list[str]:
    """PAPERS.md section 5 (Reptile paper section 6.2): curves per meta-gradient combination."""
    head = ["## Gradient combinations (Reptile paper section 6.2)", ""]
    family = [r for r in runs if r.preset.startswith(GRADSUM_PREFIX)]
    if not family:
        return head + [f"No `{GRADSUM_PREFIX}*` runs. Produce them with `python -m bench run --algo gradsum "
                       f"--preset {GRADSUM_PREFIX} --set meta_grads=1+2` (and `=2`, `=1+2 --set "
                       "meta_grads_mean=true`, ... `=1+2+3+4`; `--algo joint` for g1), several seeds each.", ""]
    presets = sorted({r.preset for r in family})
    split, metric = curve_split(family), "accuracy"

    def label(r: Run) -> str:
        name = "g1 (joint)" if r.algo == "joint" else r.method
        return name if len(presets) == 1 else f"{name} [{r.preset}]"
    df = curves([r for r in family if r.metric == metric], split, metric)
    labels = {(r.preset, r.method): label(r) for r in family}
    df["method"] = [labels[k] for k in zip(df["preset"], df["method"])]
    order = [label(r) for r in sorted(family, key=lambda r: (r.method_key, r.preset))]
    order = list(dict.fromkeys(order))
    if df.empty:
        return head + [f"The `{GRADSUM_PREFIX}*` runs have no {split} accuracy evaluations to plot.", ""]
    stem = out_dir / "figures" / "gradient-combinations"
    title = (f"Meta-gradient combinations, 5-way 5-shot Omniglot: {metric_label(metric, split)}\n"
             f"{scale_note(fin[fin['preset'].isin(presets)])}")
    _written(_figures().gradient_combinations(df, order, metric_label(metric, split), title, stem), out_dir, progress)
    return head + [_figure_md(stem, out_dir, "gradient combinations"), "",
                   f"Curves: {', '.join(order)}. One curve per meta-gradient (mean over seeds, 95% "
                   "t-interval band): g_i is the gradient of the i-th inner step, mean(...) the sum divided "
                   "by its terms. The paper's findings (PAPERS.md section 5): g1 alone does not learn, g2 "
                   "alone (first-order MAML) does, and sums of more gradients learn faster.", ""]


def _variance_frame(runs: list[Run]) -> pd.DataFrame:
    """variance.csv rows, one per run, label and step (extra columns such as `tasks` averaged out)."""
    frames = []
    for r in runs:
        v = r.variance.copy()
        if "algo" in v.columns:
            v["method"] = [r.method if str(a) == r.algo else str(a) for a in v["algo"]]
        else:
            v["method"] = r.method
        v = v.groupby(["method", "step"], as_index=False)[["mean_norm", "variance", "snr"]].mean()
        v["seed"] = r.seed
        frames.append(v)
    return pd.concat(frames, ignore_index=True)


def _variance_section(secs: list[Section], out_dir: Path, progress: bool, fin: pd.DataFrame) -> list[str]:
    head = ["## Meta-gradient variance", ""]
    with_var = [(sec, [r for r in sec.runs if r.variance is not None]) for sec in secs]
    with_var = [(sec, rs) for sec, rs in with_var if rs]
    if not with_var:
        return head + [f"No run folder holds a usable `{VARIANCE_FILE}`. Produce one with "
                       "`python -m bench variance <results>/<preset>/<method>/seed<k>` on a run that kept "
                       "snapshots (it writes step, algo, mean_norm, variance, snr into the run folder), then "
                       "regenerate this report.", ""]
    lines = head + ["Mean norm, variance and signal-to-noise ratio of the meta-gradient against "
                    "meta-iteration (mean over seeds, 95% t-interval band), beside the standard deviation "
                    "of the learning curves over seeds at each step (methods with ≥2 seeds).", ""]
    for sec, runs in with_var:
        all_runs = sec.runs
        var = _variance_frame(runs)
        split, metric = curve_split(all_runs), all_runs[0].metric
        std = seed_std(curves([r for r in all_runs if r.metric == metric], split, metric))
        order = list(dict.fromkeys(method_order(all_runs) + sorted(set(var["method"]))))
        stem = out_dir / "figures" / f"{slug(sec.key)}-variance"
        title = f"{sec.preset}: meta-gradient statistics\n{scale_note(fin[fin['section'] == sec.title])}"
        _written(_figures().variance(var, std, order, metric_label(metric, split), title, stem), out_dir, progress)
        lines += [f"### {sec.title}", "", _figure_md(stem, out_dir, f"{sec.title} variance"), ""]
    return lines


def _sine_section(secs: list[Section], out_dir: Path, progress: bool, fin: pd.DataFrame) -> list[str]:
    head = ["## Sine-wave predictions", ""]
    found = [(sec, [r for r in sec.runs if r.sine is not None]) for sec in secs]
    found = [(sec, rs) for sec, rs in found if rs]
    if not found:
        return head + [f"No run folder holds a usable `{SINE_FILE}` (columns kind, steps, x, y). "
                       "Produce the sine runs with `python -m bench run --algo reptile --preset sine` and "
                       "`python -m bench run --algo joint --preset sine`: every sine run writes the "
                       "predictions file.", ""]
    lines = head + ["One test task per method (the lowest seed with predictions): the true function, the "
                    "support points it is fine-tuned on, and the prediction after each number of inner steps. "
                    "Joint training is expected to stay near f(x) = 0 (PAPERS.md section 6).", ""]
    for sec, runs in found:
        panels, seen = [], set()
        for r in runs:  # runs are sorted by method, then seed: the first of each method
            if r.method not in seen:
                seen.add(r.method)
                panels.append((f"{r.method} (seed {r.seed})", r.sine))
        stem = out_dir / "figures" / f"{slug(sec.key)}-sine"
        title = f"{sec.preset}: predictions on one test task\n{scale_note(fin[fin['section'] == sec.title])}"
        _written(_figures().sine_predictions(panels, title, stem), out_dir, progress)
        lines += [f"### {sec.title}", "", _figure_md(stem, out_dir, f"{sec.title} sine predictions"), ""]
    return lines


SPEED_COLUMNS = ("algo", "preset", "implementation", "ms_per_meta_iter", "peak_mem_mb", "speedup_vs_naive",
                 "speedup_vs_learn2learn", "threads", "torch")


def _cost_section(results_dir: Path) -> list[str]:
    """The speed tables `python -m bench speed` wrote under `results_dir`/speed/."""
    lines = ["## Cost per meta-iteration", ""]
    files = sorted((results_dir / "speed").glob("*.csv"))
    if not files:
        return lines + [f"No speed table in `{(results_dir / 'speed').as_posix()}`: `python -m bench speed` "
                        "writes one per device.", ""]
    lines += ["From `python -m bench speed`: each algorithm at its paper settings, every implementation timed "
              "side by side in one process (median ms per meta-iteration after warm-up; peak memory of one "
              "meta-iteration; the rate of its arithmetic, the matrix products and convolutions the naive "
              "implementation computes, and in brackets its share of the device's rate on one large matrix "
              "product; speed-ups over the naive implementation and over learn2learn, with their 95% "
              "intervals over the timed rounds where the table has them). `seeds` is per run, five runs trained "
              "together.", ""]
    for f in files:
        df = _read_table(f, SPEED_COLUMNS, "a speed table", lines)
        if df is None:
            continue
        rows = [[r["algo"], r["preset"], r["implementation"], r["ms_per_meta_iter"], r["peak_mem_mb"] or "-",
                 rate_text(r), speedup_text(r, "speedup_vs_naive"), speedup_text(r, "speedup_vs_learn2learn")]
                for r in df.to_dict("records")]
        forms = [v for v in df["matmul_form"] if v] if "matmul_form" in df else []  # older tables lack it
        form = f"; matrix product as {distinct(forms)}" if forms else ""
        lines += [f"### {f.stem}", "", f"`{f.as_posix()}`: torch {distinct(df['torch'])}, "
                  f"{distinct(df['threads'])} thread(s){form}.", "",
                  md_table(["algorithm", "preset", "implementation", "ms / meta-iteration", "peak MiB",
                            "GFLOP/s (% of matmul)", "x naive [95%]", "x learn2learn [95%]"], rows), ""]
    return lines + _evaluation_cost(results_dir)


def _read_table(f: Path, columns: tuple[str, ...], kind: str, lines: list[str]) -> pd.DataFrame | None:
    """The CSV `f` as strings, or None with a line added to `lines` saying why it cannot be
    shown (unreadable, or not `kind`: a column of `columns` missing, or no rows)."""
    try:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        lines += [f"`{f.as_posix()}` could not be read ({type(e).__name__}).", ""]
        return None
    missing = [c for c in columns if c not in df.columns]
    if missing or df.empty:
        lines += [f"`{f.as_posix()}` is not {kind} (missing {', '.join(missing) or 'rows'}).", ""]
        return None
    return df


EVAL_COST_COLUMNS = ("preset", "implementation", "tasks", "ms_per_task", "first_call_s", "speedup_vs_plain",
                     "threads", "torch")


def _evaluation_cost(results_dir: Path) -> list[str]:
    """The evaluation speed tables `python -m bench speed --evaluation` wrote under
    `results_dir`/speed/evaluation/ (nothing when there are none)."""
    lines = []
    for f in sorted((results_dir / "speed" / "evaluation").glob("*.csv")):
        df = _read_table(f, EVAL_COST_COLUMNS, "an evaluation speed table", lines)
        if df is None:
            continue
        rows = [[r["preset"], r["implementation"], r["tasks"], r["ms_per_task"], r["first_call_s"],
                 speedup_text(r, "speedup_vs_plain")] for r in df.to_dict("records")]
        lines += [f"### evaluation, {f.stem}", "",
                  f"`{f.as_posix()}` (`python -m bench speed --evaluation`): each preset's evaluation protocol, "
                  f"median ms per test task; torch {distinct(df['torch'])}, {distinct(df['threads'])} thread(s).", "",
                  md_table(["preset", "implementation", "tasks", "ms / test task", "first call s", "x plain [95%]"],
                           rows),
                  ""]
    return lines


def _settings_section(secs: list[Section]) -> list[str]:
    """The key settings per method (distinct values across seeds joined by "/") and overrides."""
    runs = [r for sec in secs for r in sec.runs]
    extra = ["meta_grads"] if any(r.algo == "gradsum" for r in runs) else []
    extra += ["eval_protocol"] if any("eval_protocol" in r.config for r in runs) else []
    extra += ["algo_settings"] if any(r.config.get("algo_settings") for r in runs) else []
    groups: dict[tuple, list[Run]] = {}
    for sec in secs:  # in the sections' order, each scale apart
        for r in sec.runs:
            groups.setdefault((sec.title, r.method), []).append(r)

    def setting(r: Run, key: str):
        if key == "meta_grads" and r.algo != "gradsum":  # means nothing to the other algorithms
            return "—"
        value = r.config.get(key, "—")
        if key == "eval_protocol" and isinstance(value, dict):  # its name, and the own one beside it
            own = r.config.get("own_protocol")
            return value.get("name", "—") + (f" (+ {own['name']})" if isinstance(own, dict) else "")
        if key == "algo_settings" and isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "none"
        return value
    rows = []
    for (_, method), rs in groups.items():
        overrides = distinct(", ".join(f"{k}={v}" for k, v in sorted((r.config.get("overrides") or {}).items()))
                             or "none" for r in rs)
        rows.append([rs[0].preset, method, ", ".join(str(r.seed) for r in rs),
                     *(distinct(setting(r, k) for r in rs) for k in (*SETTINGS, *extra)), overrides])
    return ["## Settings of each run", "",
            "Every other setting is the preset's (`python -m bench presets`; each run's config.json holds all).", "",
            md_table(["preset", "method", "seeds", *SETTINGS, *extra, "overrides (--set)"], rows), ""]


def _environment_section(runs: list[Run]) -> list[str]:
    """The distinct environments (env.json) the runs came from."""
    envs: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.env is not None:
            envs.setdefault(tuple(str(r.env.get(k, "—")) for k in ENV_KEYS), []).append(r)
    missing = [r.path for r in runs if r.env is None]
    rows = [[*key, str(len(rs)), ", ".join(sorted({r.preset for r in rs}))] for key, rs in sorted(envs.items())]
    lines = ["## Environment", ""]
    if rows:
        lines += [md_table([*ENV_KEYS, "runs", "presets"], rows), ""]
    if missing:
        lines += [f"No readable env.json in {len(missing)} run(s): " + ", ".join(f"`{p}`" for p in missing), ""]
    return lines


def _skipped_section(skipped: list[Skipped], runs: list[Run]) -> list[str]:
    lines = ["## Skipped runs", ""]
    if skipped:
        lines += [md_table(["run folder", "reason"], [[f"`{s.path}`", s.reason] for s in skipped]), ""]
    else:
        lines += ["None: every run folder found was complete.", ""]
    notes = [[f"`{r.path}`", n] for r in runs for n in r.notes]
    if notes:
        lines += ["Optional files that could not be used:", "", md_table(["run folder", "problem"], notes), ""]
    return lines


# --- the report ------------------------------------------------------------------------


def build_report(results_dir, out_dir, *, progress: bool = True) -> Path:
    """Write `out_dir`/REPORT.md and its figures from the runs under `results_dir`; return its path.

    Raises ReportError (one line, naming the fix) when there is no complete run.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    runs, skipped = discover(results_dir)
    if not runs:
        raise no_runs_error(results_dir, skipped)
    out_dir.mkdir(parents=True, exist_ok=True)
    fin = finals(runs)
    secs = sections(runs)
    fin["section"] = fin["path"].map({r.path: sec.title for sec in secs for r in sec.runs})

    lines = ["# Benchmark report: Reptile and the MAML family", "",
             f"{TIMESTAMP_PREFIX}{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC", "",
             f"Command: `python -m bench report {results_dir.as_posix()} --out {out_dir.as_posix()}`, "
             f"from {len(runs)} run(s) in `{results_dir.as_posix()}` ({len(skipped)} skipped). Everything "
             "below is read from the run folders' files; nothing is re-run.", "",
             "**Scale.** Every figure title and results row gives the run length, seeds and test tasks; "
             "runs shorter, or evaluated on fewer test tasks, than the paper's setting are marked "
             "**reduced** and are not reproductions of the published numbers.", "",
             "## Contents", "",
             *[f"- [{sec.title}](#{anchor(sec.title)})" for sec in secs],
             "- Paper tables, gradient combinations, meta-gradient variance, sine-wave predictions, cost per "
             "meta-iteration, settings, environment, skipped runs", ""]
    for sec in secs:
        lines += _preset_section(sec, fin[fin["section"] == sec.title], out_dir, progress)
    lines += _paper_tables_section(fin)
    lines += _gradsum_section(runs, fin, out_dir, progress)
    lines += _variance_section(secs, out_dir, progress, fin)
    lines += _sine_section(secs, out_dir, progress, fin)
    lines += _cost_section(results_dir)
    lines += _settings_section(secs)
    lines += _environment_section(runs)
    lines += _skipped_section(skipped, runs)
    report = out_dir / "REPORT.md"
    report.write_text("\n".join(lines).rstrip() + "\n")
    return report


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `report` to the CLI's subcommands (cli.py wires it; main_report runs it)."""
    p = subparsers.add_parser("report", help="write REPORT.md with figures and tables from the results")
    p.add_argument("results", nargs="?", default="results", help="results folder (default: results)")
    p.add_argument("--out", default="reports", help="output folder for REPORT.md and figures/ (default: reports)")
    p.add_argument("--no-progress", action="store_true", help="do not print a line per figure written")
    p.set_defaults(handler=main_report)
    return p


def main_report(args: argparse.Namespace) -> int:
    """Run `report` from parsed arguments; errors print as one line and return 2 (as cli.main)."""
    try:
        path = build_report(args.results, args.out, progress=not getattr(args, "no_progress", False))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
