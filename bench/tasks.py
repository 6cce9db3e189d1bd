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
from .data.omniglot import augment_rotations, load_omniglot, split_characters
from .data.root import data_root
from .episodes import ClassSampler, SineSampler

STREAMS = {"train": 0, "periodic": 1, "final": 2}
SPLITS = {"train": 0, "val": 1, "test": 2}


class TaskData:
    """The examples of each split of one task family, resident on `device`."""

    def __init__(self, cfg: Config, device: torch.device, data: str | Path | None = None,
                 progress: bool = False):
        self.cfg, self.device = cfg, device
        self.pools: dict[str, torch.Tensor] = {}
        if cfg.task == "omniglot":
            images = load_omniglot(data_root(data), progress=progress).images
            train, val, test = split_characters(len(images), val=cfg.val_chars)
            # Training characters become 4 classes each by rotation; test and validation
            # characters are not rotated (PAPERS.md section 4).
            self.pools["train"] = torch.from_numpy(augment_rotations(images[train])).to(device)
            if len(val):
                self.pools["val"] = torch.from_numpy(images[val]).to(device)
            self.pools["test"] = torch.from_numpy(images[test]).to(device)
        self._check_sizes()

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
        return ClassSampler(self.pools[split], self.cfg.ways, rng)

    def _check_sizes(self) -> None:
        # Draw one tiny episode of each shape the run will use, so a shots or ways
        # setting the data cannot satisfy fails before anything is written.
        cfg = self.cfg
        for split in dict.fromkeys(["train", *self.splits]):
            s = self.sampler(split, "final", seed=0)
            if split == "train":
                s.sample(1, cfg.train_shots, cfg.query_shots if cfg.tail == "separate" else 0, 1, 1)
            s.sample(1, cfg.shots, cfg.eval_queries, 1, 1)
