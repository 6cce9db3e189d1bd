"""From a config to data on the device and the samplers of each split.

Every sampler gets its own generator, derived from the run's seed and a fixed
stream number, so meta-training, periodic evaluation and the final evaluation draw
independent episodes, and the final test tasks do not depend on how often the run
evaluated along the way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import Config
from .data import miniimagenet
from .data.miniimagenet import N_CLASSES, SCALE, load_miniimagenet
from .data.omniglot import N_CHARACTERS, N_DRAWINGS, augment_rotations, load_omniglot, split_characters
from .data.root import data_root
from .episodes import ClassSampler, SineSampler
from .errors import ConfigError

STREAMS = {"train": 0, "periodic": 1, "final": 2}
SPLITS = {"train": 0, "val": 1, "test": 2}


class TaskData:
    """The examples of each split of one task family, resident on `device`.

    Pools keep the data's own dtype (Omniglot's 0/1 and Mini-ImageNet's 0-255 pixels as
    uint8): the samplers convert only the examples they gather to float32, so no float
    copy of a split is ever made (Mini-ImageNet's training split is 813 MB as uint8,
    3.3 GB as floats).
    """

    def __init__(self, cfg: Config, device: torch.device, data: str | Path | None = None,
                 progress: bool = False):
        self.cfg, self.device = cfg, device
        self.pools: dict[str, torch.Tensor] = {}
        self.scale: float | None = None  # what the samplers multiply the gathered examples by
        if cfg.task == "omniglot":
            images = load_omniglot(data_root(data), progress=progress).images
            train, val, test = split_characters(len(images), val=cfg.val_chars)
            # Training characters become 4 classes each by rotation; test and validation
            # characters are not rotated (PAPERS.md section 4).
            self.pools["train"] = torch.from_numpy(augment_rotations(images[train])).to(device)
            if len(val):
                self.pools["val"] = torch.from_numpy(images[val]).to(device)
            self.pools["test"] = torch.from_numpy(images[test]).to(device)
        elif cfg.task == "miniimagenet":
            # The fixed 64/16/20-class splits, none rotated (PAPERS.md section 4). The count
            # per class is read here, not bound at import, so tests can shrink it.
            splits = load_miniimagenet(data_root(data), images_per_class=miniimagenet.IMAGES_PER_CLASS,
                                       progress=progress).splits
            for split in ("train", "val", "test"):
                self.pools[split] = torch.from_numpy(splits[split]).to(device)
            self.scale = SCALE  # pixels to [0, 1], as the reference's `/ 0xff`

    @property
    def splits(self) -> list[str]:
        """The splits evaluated during training, in logging order (sine tasks are all
        drawn from one distribution, so only "test" is scored)."""
        if self.cfg.task == "sine":
            return ["test"]
        return [s for s in ("train", "val", "test") if s in self.pools]

    def sampler(self, split: str, stream: str, seed: int):
        rng = np.random.default_rng([seed, STREAMS[stream], SPLITS[split]])
        if self.cfg.task == "sine":
            return SineSampler(self.device, rng)
        return ClassSampler(self.pools[split], self.cfg.ways, rng, scale=self.scale)


def pool_sizes(cfg: Config) -> dict[str, tuple[int, int]]:
    """split -> (classes, examples per class) of the task's data, known without loading it
    (the loaders refuse data of any other size). Every split is scored during training,
    so the smallest bounds the ways: Mini-ImageNet's 16 validation classes, for instance."""
    if cfg.task == "sine":
        return {split: (1, SineSampler.GRID) for split in ("train", "test")}
    if cfg.task == "miniimagenet":
        return {split: (N_CLASSES[split], miniimagenet.IMAGES_PER_CLASS) for split in ("train", "val", "test")}
    train, val, test = split_characters(N_CHARACTERS, val=cfg.val_chars)
    sizes = {"train": (4 * len(train), N_DRAWINGS), "test": (len(test), N_DRAWINGS)}
    if len(val):
        sizes["val"] = (len(val), N_DRAWINGS)
    return sizes


def check_sizes(cfg: Config) -> None:
    """Refuse, before any data is read or any file written, ways or shots the data cannot
    supply: ways beyond a split's classes, or support plus query examples beyond the
    examples per class (PAPERS.md section 4: both drawn without replacement)."""
    train_query = cfg.query_shots if cfg.tail == "separate" else 0
    for split, (classes, per_class) in pool_sizes(cfg).items():
        if cfg.task == "sine":
            for name, n in (("shots", cfg.shots), ("train_shots", cfg.train_shots)):
                if n > per_class:
                    raise ConfigError(f"{name}={n} exceeds the {per_class} grid points of a sine task: "
                                      f"lower --set {name}")
            continue
        if cfg.ways > classes:
            raise ConfigError(f"ways={cfg.ways} but the {split} split has only {classes} classes: "
                              "lower --set ways")
        needs = [("shots", cfg.shots, cfg.eval_queries, "eval_queries")]
        if split == "train":
            needs.append(("train_shots", cfg.train_shots, train_query, "query_shots"))
        for name, shots, queries, qname in needs:
            if shots + queries > per_class:
                raise ConfigError(f"{name}={shots} plus {qname}={queries} exceed the {per_class} examples per "
                                  f"class of the {split} split: lower --set {name} or --set {qname}")
