"""Evaluation protocols: the shared one of a comparison, and each algorithm's own.

A comparison evaluates every algorithm with the same protocol: the preset's
evaluation settings ("shared"). An algorithm's own published protocol is how its
paper evaluated it, which a reader may want beside the shared number:

- "maml-paper" (MAML, FOMAML; Finn et al. 2017, section 5 and appendix, PAPERS.md
  section 3): plain SGD with the paper's alpha from a fresh state, a few steps on the
  whole support set, scored transductively (MAML's batch norm normalises the query
  batch with its own statistics), K query examples per class;
- "reptile-paper" (Reptile, joint training, the gradient sums): the evaluation
  settings of the suite's Reptile preset for the same task, ways and shots, whose
  values come from the Reptile paper's appendix and reference commands.

A protocol is a set of evaluation-time replacements of the run's settings (the
inner optimizer used to fine-tune at test, the steps, the batch, the queries, the
scoring); training is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Config, available_presets, load_config
from .errors import ConfigError

PROTOCOL_FIELDS = ("inner_optimizer", "inner_lr", "inner_beta1", "inner_beta2", "inner_eps", "inner_state",
                   "eval_steps", "eval_batch", "eval_queries", "transductive")
"""The settings an evaluation protocol decides."""

CHOICES = ("shared", "own", "both")
"""--eval-protocol: the shared one, the algorithm's own, or both (shared first)."""

OWN = {"maml": "maml-paper", "fomaml": "maml-paper", "reptile": "reptile-paper",
       "joint": "reptile-paper", "gradsum": "reptile-paper"}
"""Each algorithm's own published protocol."""

# The MAML paper's test-time inner loop (section 5.2 and appendix; PAPERS.md section 3):
# (alpha, steps). Omniglot 5-way: alpha 0.4, 3 steps at test. Omniglot 20-way: alpha 0.1
# with 5 steps in training; the paper states no test-time count, so the training count
# is used (uncertain: its released code ran 10). Sine: alpha 0.01, the paper's longest
# reported fine-tuning, 10 steps (section 5.1). Mini-ImageNet 5-way: alpha 0.01 with 5
# steps in training, 10 at test (PAPERS.md section 3; its released main.py runs 10 test
# updates for miniimagenet).
MAML_TEST = {("omniglot", 5): (0.4, 3), ("omniglot", 20): (0.1, 5), ("miniimagenet", 5): (0.01, 10),
             ("sine", None): (0.01, 10)}


@dataclass(frozen=True)
class Protocol:
    name: str
    source: str
    settings: dict[str, Any]
    """The replacements applied to the run's settings for evaluation (empty: the preset's)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "settings": dict(self.settings)}


def shared() -> Protocol:
    return Protocol("shared", "the preset's evaluation settings, the same for every algorithm", {})


def own(algo: str, cfg: Config) -> Protocol:
    """`algo`'s own published protocol for cfg's task."""
    name = OWN.get(algo)
    if name == "maml-paper":
        key = (cfg.task, None if cfg.task == "sine" else cfg.ways)
        if key not in MAML_TEST:
            raise ConfigError(f"no published MAML protocol for {cfg.task} {cfg.ways}-way: "
                              "use --eval-protocol shared")
        alpha, steps = MAML_TEST[key]
        support = cfg.shots if cfg.task == "sine" else cfg.ways * cfg.shots
        return Protocol("maml-paper", "Finn et al. 2017 (MAML), section 5 and appendix; PAPERS.md section 3", {
            "inner_optimizer": "sgd", "inner_lr": alpha, "inner_state": "reset", "eval_steps": steps,
            "eval_batch": support, "eval_queries": cfg.eval_queries if cfg.task == "sine" else cfg.shots,
            "transductive": True})
    if name == "reptile-paper":
        preset = "sine" if cfg.task == "sine" else f"{cfg.task}-{cfg.ways}w{cfg.shots}s"
        if preset not in available_presets():
            raise ConfigError(f"no published Reptile protocol for {cfg.task} {cfg.ways}-way {cfg.shots}-shot "
                              f"(no preset {preset!r}): use --eval-protocol shared")
        ref = load_config(preset)
        return Protocol("reptile-paper", f"Nichol et al. 2018 (Reptile), appendix; the evaluation settings of "
                        f"preset {preset!r}", {k: getattr(ref, k) for k in PROTOCOL_FIELDS})
    raise ConfigError(f"no published protocol known for algorithm {algo!r}: use --eval-protocol shared")


def protocols(choice: str, algo: str, cfg: Config) -> list[Protocol]:
    """The protocols a run evaluates with, the primary one first."""
    if choice not in CHOICES:
        raise ConfigError(f"--eval-protocol {choice!r}: choose one of {', '.join(CHOICES)}")
    if choice == "shared":
        return [shared()]
    if choice == "own":
        return [own(algo, cfg)]
    return [shared(), own(algo, cfg)]


def eval_config(cfg: Config, protocol: Protocol) -> Config:
    """The settings evaluation runs with under `protocol`. A state carried from training
    only makes sense for the optimizer that made it: with another one, start fresh."""
    out = cfg.replace(**protocol.settings)
    if out.inner_optimizer != cfg.inner_optimizer and out.inner_state == "carry":
        out = out.replace(inner_state="reset")
    return out


def scored(results: list, evals: list) -> dict[str, Any]:
    """final.json's evaluation fields: the primary protocol's result (an `EvalResult` per
    entry of `evals`, the (protocol, evaluation config) pairs), and the own protocol's
    beside it when there are two."""
    (primary, pcfg), result = evals[0], results[0]
    return {**result.summary(), "split": "test", "transductive": pcfg.transductive, "eval_protocol": primary.name,
            "own_protocol": ({**results[1].summary(), "name": evals[1][0].name,
                              "transductive": evals[1][1].transductive} if len(evals) > 1 else None)}
