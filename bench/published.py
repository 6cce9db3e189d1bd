"""The published numbers and full-scale settings the report sets beside each run.

Everything here is data transcribed from /work/shared/reference/PAPERS.md (section 2
for the result tables, section 3 for the paper's meta-iterations, section 5 for the
gradient-combination experiment, section 6 for the sine task), each entry with the
source it came from, so the report never shows a number without saying where it is
printed. No torch import: the report must run where only the results are.

Accuracies are in percent, as printed; the paper's "+-" is undefined (PAPERS.md
section 2: probably a spread over runs, not a 95% interval), so it is kept as
printed and labelled "+-" rather than "95% CI".
"""

from __future__ import annotations

from dataclasses import dataclass

REPTILE_T1 = "Reptile paper (arXiv 1803.02999 v3), Table 1"
REPTILE_T2 = "Reptile paper (arXiv 1803.02999 v3), Table 2"
MAML_PAPER = "MAML paper (Finn et al., ICML 2017)"
L2L = "learn2learn's reports for its own code (not a paper table)"


@dataclass(frozen=True)
class Published:
    """One published number: where it is printed and what setting it belongs to."""

    dataset: str
    """"omniglot" or "miniimagenet"."""
    setting: str
    """Ways and shots, e.g. "5w1s"."""
    method: str
    """The row label as printed, e.g. "Reptile + transduction"."""
    value: float
    """Accuracy in percent."""
    pm: float | None
    """The printed +- (undefined by the source; None when none is printed)."""
    source: str

    def text(self) -> str:
        """The number as printed, e.g. "95.39 +- 0.09"."""
        return f"{self.value:g}" + (f" +- {self.pm:g}" if self.pm is not None else "")


def _rows(source: str, dataset: str, settings: tuple[str, ...], rows: dict[str, tuple]) -> list[Published]:
    """Expand a printed table (method -> one (value, pm) per setting) into entries."""
    return [Published(dataset, setting, method, cell[0], cell[1], source)
            for method, cells in rows.items() for setting, cell in zip(settings, cells)]


# PAPERS.md section 2, Reptile paper Table 1 (Mini-ImageNet 5-way): the rows of the
# miniimagenet-5w1s and -5w5s presets (the "+ transduction" rows with --set
# transductive=true); the MAML rows' own settings are miniimagenet-5w1s-maml and -5w5s-maml.
_TABLE1 = _rows(REPTILE_T1, "miniimagenet", ("5w1s", "5w5s"), {
    "MAML + transduction": ((48.70, 1.84), (63.11, 0.92)),
    "FOMAML + transduction": ((48.07, 1.75), (63.15, 0.91)),
    "Reptile": ((47.07, 0.26), (62.74, 0.37)),
    "Reptile + transduction": ((49.97, 0.32), (65.99, 0.58)),
})

# PAPERS.md section 2, Reptile paper Table 2 (Omniglot).
_TABLE2 = _rows(REPTILE_T2, "omniglot", ("5w1s", "5w5s", "20w1s", "20w5s"), {
    "MAML + transduction": ((98.7, 0.4), (99.9, 0.1), (95.8, 0.3), (98.9, 0.2)),
    "FOMAML + transduction": ((98.3, 0.5), (99.2, 0.2), (89.4, 0.5), (97.9, 0.1)),
    "Reptile": ((95.39, 0.09), (98.90, 0.10), (88.14, 0.15), (96.65, 0.33)),
    "Reptile + transduction": ((97.68, 0.04), (99.48, 0.06), (89.43, 0.14), (97.12, 0.32)),
})

# PAPERS.md section 2, the MAML paper's own numbers (its evaluation is transductive);
# PAPERS.md gives them without +- (the Reptile paper's Table 2 copies them with one).
_MAML = [
    Published("omniglot", "5w1s", "MAML", 98.7, None, MAML_PAPER),
    Published("omniglot", "5w5s", "MAML", 99.9, None, MAML_PAPER),
    Published("omniglot", "20w1s", "MAML", 95.8, None, MAML_PAPER),
    Published("omniglot", "20w5s", "MAML", 98.9, None, MAML_PAPER),
    Published("miniimagenet", "5w1s", "MAML", 48.70, None, MAML_PAPER),
    Published("miniimagenet", "5w5s", "MAML", 63.11, None, MAML_PAPER),
    Published("miniimagenet", "5w1s", "first-order MAML", 48.07, None, MAML_PAPER),
    Published("miniimagenet", "5w5s", "first-order MAML", 63.15, None, MAML_PAPER),
]

# PAPERS.md section 2: learn2learn's reports for its own code (settings never recorded).
_L2L = [
    Published("omniglot", "5w1s", "MAML (Omniglot-CNN)", 99.1, None, L2L),
    Published("miniimagenet", "5w1s", "MAML", 48.3, None, L2L),
    Published("miniimagenet", "5w5s", "MAML", 65.4, None, L2L),
    Published("omniglot", "5w5s", "Reptile", 99.5, None, L2L),
    Published("miniimagenet", "5w5s", "Reptile", 65.5, None, L2L),
]

PUBLISHED: tuple[Published, ...] = tuple(_TABLE1 + _TABLE2 + _MAML + _L2L)
"""Every published number in PAPERS.md section 2."""


@dataclass(frozen=True)
class FullScale:
    """The paper's run length and test-task count for a preset, to flag reduced runs."""

    meta_iters: int
    eval_tasks: int
    source: str


FULL_SCALE: dict[str, FullScale] = {
    # PAPERS.md section 3: 5-way 100,000 meta-iterations, 20-way 200,000; section 4: 10,000 test tasks.
    "omniglot-5w1s": FullScale(100_000, 10_000, "Reptile paper appendix (PAPERS.md section 3), 10,000 test tasks"),
    "omniglot-5w5s": FullScale(100_000, 10_000, "Reptile paper appendix (PAPERS.md section 3), 10,000 test tasks"),
    "omniglot-20w1s": FullScale(200_000, 10_000, "Reptile paper appendix (PAPERS.md section 3), 10,000 test tasks"),
    "omniglot-20w5s": FullScale(200_000, 10_000, "Reptile paper appendix (PAPERS.md section 3), 10,000 test tasks"),
    # PAPERS.md section 3: the MAML paper's 60,000 meta-iterations; its test-task count is
    # not recorded there, so the Reptile protocol's 10,000 (what the preset pins) is used.
    **{f"omniglot-{s}-maml": FullScale(60_000, 10_000, "MAML paper: 60,000 meta-iterations (PAPERS.md section 3); "
                                                        "10,000 test tasks as the preset pins")
       for s in ("5w1s", "5w5s", "20w1s", "20w5s")},
    # PAPERS.md section 3: Mini-ImageNet 5-way, 100,000 meta-iterations (Reptile), 60,000 (MAML).
    **{f"miniimagenet-{s}": FullScale(100_000, 10_000, "Reptile paper appendix (PAPERS.md section 3), "
                                                       "10,000 test tasks") for s in ("5w1s", "5w5s")},
    **{f"miniimagenet-{s}-maml": FullScale(60_000, 10_000, "MAML paper: 60,000 meta-iterations (PAPERS.md "
                                                           "section 3); 10,000 test tasks as the preset pins")
       for s in ("5w1s", "5w5s")},
    # PAPERS.md section 5: 40,000 meta-iterations; test tasks as the Reptile paper's Omniglot protocol.
    "omniglot-gradsum": FullScale(40_000, 10_000, "Reptile paper section 6.2 (PAPERS.md section 5); "
                                                 "10,000 test tasks as the preset pins"),
    # PAPERS.md section 6: the public example's 30,000 meta-iterations; it only plots, so the
    # 10,000 test tasks are the suite's own choice (the preset).
    "sine": FullScale(30_000, 10_000, "public Reptile sine example (PAPERS.md section 6); "
                                      "10,000 test tasks as the preset pins"),
}

# The Omniglot presets of Reptile paper Table 2: preset -> (dataset, setting); and the
# same rows with the MAML paper's settings.
_TABLE2_PRESETS = {f"omniglot-{s}": ("omniglot", s) for s in ("5w1s", "5w5s", "20w1s", "20w5s")}
_MAML_PRESETS = {**{f"omniglot-{s}-maml": ("omniglot", s) for s in ("5w1s", "5w5s", "20w1s", "20w5s")},
                 **{f"miniimagenet-{s}-maml": ("miniimagenet", s) for s in ("5w1s", "5w5s")}}
_TABLE1_PRESETS = {f"miniimagenet-{s}": ("miniimagenet", s) for s in ("5w1s", "5w5s")}


def full_scale(preset: str) -> FullScale | None:
    """The paper's scale for a preset; variants such as `omniglot-gradsum-...` share their family's."""
    if preset in FULL_SCALE:
        return FULL_SCALE[preset]
    if preset.startswith("omniglot-gradsum"):
        return FULL_SCALE["omniglot-gradsum"]
    return None


def find(source: str, dataset: str, setting: str, method: str) -> Published | None:
    return next((p for p in PUBLISHED if (p.source, p.dataset, p.setting, p.method)
                 == (source, dataset, setting, method)), None)


def lookup(preset: str, algo: str, transductive: bool = False) -> Published | None:
    """The published number a run of `algo` on `preset` is compared with, or None.

    Table 2 has no non-transductive MAML or FOMAML rows, so those runs are compared with
    the "+ transduction" rows (the label says so); Reptile picks its row by `transductive`.
    """
    for presets, source in ((_TABLE2_PRESETS, REPTILE_T2), (_TABLE1_PRESETS, REPTILE_T1)):
        if preset in presets:
            method = {"reptile": "Reptile + transduction" if transductive else "Reptile",
                      "maml": "MAML + transduction", "fomaml": "FOMAML + transduction"}.get(algo)
            return find(source, *presets[preset], method) if method else None
    if preset in _MAML_PRESETS and algo == "maml":
        return find(MAML_PAPER, *_MAML_PRESETS[preset], "MAML")
    if preset in _MAML_PRESETS and algo == "fomaml":
        # The MAML paper prints first-order MAML for Mini-ImageNet only; the Reptile paper's
        # tables quote it for Omniglot too (its "FOMAML + transduction" rows).
        dataset, setting = _MAML_PRESETS[preset]
        table = REPTILE_T2 if dataset == "omniglot" else REPTILE_T1
        return (find(MAML_PAPER, dataset, setting, "first-order MAML")
                or find(table, dataset, setting, "FOMAML + transduction"))
    return None


def other_reports(preset: str, algo: str) -> list[Published]:
    """Further numbers for the same setting and algorithm from other sources (MAML paper,
    learn2learn), shown beside the main one: they disagree, which is the point."""
    setting = _TABLE2_PRESETS.get(preset) or _TABLE1_PRESETS.get(preset) or _MAML_PRESETS.get(preset)
    if setting is None:
        return []
    main = lookup(preset, algo)
    family = {"maml": "MAML", "reptile": "Reptile"}.get(algo)
    return [p for p in PUBLISHED if family and (p.dataset, p.setting) == setting and p.source != REPTILE_T2
            and p.method.startswith(family) and p != main]


def no_number_note(preset: str, algo: str) -> str:
    """Why there is no published number for this preset and algorithm (shown as a footnote)."""
    if preset == "sine":
        # PAPERS.md section 6: the public example only plots; the ~0.12 MSE quoted for it is
        # not a table in either paper. The MAML paper's sine numbers use another task
        # distribution, K and network.
        return ("sine: no published table number (the public example only plots; the ~0.12 MSE "
                "quoted for it is not a paper table; the MAML paper's sine MSEs use another protocol)")
    if preset.startswith("omniglot-gradsum"):
        return "gradient combinations: the Reptile paper shows a figure only (section 6.2), no table"
    if preset in _MAML_PRESETS:
        return f"{algo} on the MAML preset: the MAML paper prints no number for it"
    if preset in _TABLE2_PRESETS:
        return f"{algo}: no row in the Reptile paper's Table 2"
    if preset in _TABLE1_PRESETS:
        return f"{algo}: no row in the Reptile paper's Table 1"
    return f"{preset}: no published table for this preset"


# --- the paper's tables as runs (`python -m bench reproduce`, the report's "Paper tables") ---


@dataclass(frozen=True)
class TableRow:
    """One printed row of a paper table and the runs that reproduce it."""

    method: str
    """The row label as printed."""
    algo: str
    maml_settings: bool
    """Run with the MAML paper's settings (the `-maml` preset), where the table's number comes from."""
    transductive: bool


@dataclass(frozen=True)
class PaperTable:
    source: str
    dataset: str
    settings: tuple[str, ...]
    """The columns: ways and shots."""

    def preset(self, setting: str, row: TableRow) -> str:
        return f"{self.dataset}-{setting}" + ("-maml" if row.maml_settings else "")


TABLE_ROWS = (
    TableRow("MAML + transduction", "maml", True, True),
    TableRow("FOMAML + transduction", "fomaml", True, True),
    TableRow("Reptile", "reptile", False, False),
    TableRow("Reptile + transduction", "reptile", False, True),
)
"""The rows of Reptile paper Tables 1 and 2 (PAPERS.md section 2). The MAML and FOMAML
numbers there are the MAML paper's, so they are reproduced with its settings; the
Reptile rows with the Reptile paper's, scored without and with transduction."""

PAPER_TABLES = {
    "omniglot": PaperTable(REPTILE_T2, "omniglot", ("5w1s", "5w5s", "20w1s", "20w5s")),
    "miniimagenet": PaperTable(REPTILE_T1, "miniimagenet", ("5w1s", "5w5s")),
}


def table_runs(table: str) -> list[tuple[str, str, str, bool]]:
    """Every (row label, preset, algo, transductive) of a paper table, column by column."""
    t = PAPER_TABLES[table]
    return [(row.method, t.preset(s, row), row.algo, row.transductive) for s in t.settings for row in TABLE_ROWS]
