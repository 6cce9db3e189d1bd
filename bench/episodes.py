"""Episodes and the samplers that draw them.

An `Episode` holds support and query tensors and the plan of inner minibatches
(indices into the support set); a meta-batch is the same object with the tasks
stacked on a leading dimension. Samplers own their random generator (NumPy's, so
that the draws are identical on every device), draw indices on the host, and
gather the examples from a data tensor that already lives on the run's device:
no data loader in the hot loop, one small index copy per meta-batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError


@dataclass(frozen=True)
class Episode:
    """One task, or a meta-batch of tasks (then every tensor has the tasks first).

    support_x: (n_support, *x_shape), support_y: (n_support,)
    query_x: (n_query, *x_shape), query_y: (n_query,)
    inner_batches: (steps, batch) indices into the support set: the inner-loop plan.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    inner_batches: Tensor

    @property
    def num_tasks(self) -> int:
        return self.support_y.shape[0]

    def task(self, i: int) -> "Episode":
        """Task i of a meta-batch."""
        return Episode(*(t[i] for t in self._tensors()))

    def tasks(self, start: int, stop: int) -> "Episode":
        """Tasks start..stop-1 of a meta-batch, still a meta-batch (tasks first)."""
        return Episode(*(t[start:stop] for t in self._tensors()))

    @staticmethod
    def concatenated(parts: list["Episode"]) -> "Episode":
        """Meta-batches of tasks of the same shapes as one meta-batch, in order."""
        return Episode(*(torch.cat(tensors) for tensors in zip(*(part._tensors() for part in parts))))

    def padded(self, tasks: int) -> "Episode":
        """This meta-batch filled up to `tasks` tasks with copies of its last one."""
        extra = tasks - self.num_tasks
        return Episode(*(torch.cat([t, t[-1:].expand(extra, *t.shape[1:])]) for t in self._tensors()))

    def inner_data(self) -> tuple[Tensor, Tensor]:
        """The inner minibatches as data: (tasks, steps, batch, *x_shape) and labels."""
        idx = self.inner_batches
        if idx.dim() == 2:  # a single task
            return self.support_x[idx], self.support_y[idx]
        rows = torch.arange(idx.shape[0], device=idx.device).view(-1, 1, 1)
        return self.support_x[rows, idx], self.support_y[rows, idx]

    def shared_tail(self) -> "Episode":
        """The last planned minibatch becomes the query ("tail") set, drawn from the same
        examples as the inner minibatches (FOMAML's shared tail, Reptile paper 6.3)."""
        plan = self.inner_batches
        last = Episode(self.support_x, self.support_y, self.query_x, self.query_y, plan[..., -1:, :])
        qx, qy = last.inner_data()
        step_axis = plan.dim() - 2  # 0 for one task, 1 for a meta-batch
        return Episode(self.support_x, self.support_y, qx.squeeze(step_axis), qy.squeeze(step_axis),
                       plan[..., :-1, :])

    def _tensors(self) -> tuple[Tensor, ...]:
        return self.support_x, self.support_y, self.query_x, self.query_y, self.inner_batches


def to_device(a: np.ndarray, device: torch.device) -> Tensor:
    """A host array as a tensor on `device`. To a GPU through pinned memory without
    waiting: a plain copy from pageable memory makes the host wait for all the GPU work
    queued before it, which would stop the host from drawing the next meta-batch while
    the GPU computes this one."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def minibatch_plan(rng: np.random.Generator, n: int, steps: int, batch: int) -> np.ndarray:
    """One task's inner minibatches without replacement, as the reference's
    `_mini_batches`: walk a shuffled order of the n examples in consecutive batches,
    reshuffling each time it runs out (a batch may span two shuffles). Returns
    (steps, batch) indices."""
    epochs = math.ceil(steps * batch / n)
    order = rng.random((epochs, n)).argsort(-1).reshape(-1)
    return order[: steps * batch].reshape(steps, batch)


def _plan_rng(rng: np.random.Generator) -> np.random.Generator:
    """A generator of its own for one task's minibatch plan, seeded from `rng` with one
    fixed-size draw: the tasks a sampler draws (classes, examples) are then the same
    whatever the plan's steps and batch, so evaluation protocols that fine-tune
    differently score the same test tasks."""
    return np.random.default_rng(rng.integers(2**63))


class ClassSampler:
    """N-way episodes from a pool of classes.

    images: (classes, drawings, *x_shape) on the run's device (uint8 or float); the
    examples are returned as float32 with a channel axis when the pool has none.
    scale: None returns the pool's values as floats (Omniglot's 0/1 pixels); else the
    gathered examples, and only they, are multiplied by it (Mini-ImageNet's uint8 pool
    stays uint8 on the device, a quarter of a float copy, and 1/255 maps it to [0, 1]).
    Classes are drawn without replacement, and per class the support and query
    examples without replacement (PAPERS.md section 4). Labels 0..N-1 are assigned to
    the drawn classes in random order, so no class keeps a label across episodes.
    """

    def __init__(self, images: Tensor, ways: int, rng: np.random.Generator, scale: float | None = None):
        self.images, self.ways, self.rng = images, ways, rng
        classes, drawings = images.shape[:2]
        if ways > classes:
            raise ConfigError(f"ways={ways} but the split has only {classes} classes: lower --set ways")
        self.drawings = drawings
        # Applied as a division by 1/scale (255.0 exactly for 1/255): float32 x / 255 is what
        # the reference computes (`astype('float32') / 0xff`), while x * float32(1/255)
        # differs from it in the last bit for 126 of the 256 pixel values.
        self.divisor = None if scale is None else 1 / scale

    def sample(self, tasks: int, shots: int, queries: int, steps: int, batch: int) -> Episode:
        if shots + queries > self.drawings:
            raise ConfigError(f"shots={shots} plus {queries} queries per class exceed the {self.drawings} "
                              "examples per class: lower the shots")
        # Task by task, so that n tasks drawn at once equal the same n drawn in chunks.
        rng, n_cls = self.rng, self.images.shape[0]
        classes, draws, plans = [], [], []
        for _ in range(tasks):
            classes.append(rng.choice(n_cls, self.ways, replace=False))
            draws.append(rng.random((self.ways, self.drawings)).argsort(-1)[:, : shots + queries])
            plans.append(minibatch_plan(_plan_rng(rng), self.ways * shots, steps, batch))
        classes, draws, plan = np.stack(classes), np.stack(draws), np.stack(plans)

        dev = self.images.device
        cls = to_device(classes, dev)[:, :, None]
        x = self.images[cls, to_device(draws, dev)].float()  # (T, ways, shots+queries, ...)
        if self.divisor is not None:
            x = x / self.divisor
        if x.dim() == 5:  # (T, ways, k, H, W): add the channel axis
            x = x.unsqueeze(3)
        y = torch.arange(self.ways, device=dev).view(1, -1, 1).expand(tasks, -1, shots + queries)

        def flat(t: Tensor) -> Tensor:  # (T, ways, k, ...) -> (T, ways * k, ...), class-major
            return t.reshape(tasks, -1, *t.shape[3:])

        return Episode(flat(x[:, :, :shots]), flat(y[:, :, :shots]),
                       flat(x[:, :, shots:]), flat(y[:, :, shots:]),
                       to_device(plan, dev))


class SineSampler:
    """Sine-wave regression tasks (PAPERS.md section 6, the public Reptile example).

    y = amplitude * sin(x + phase), amplitude ~ U[0.1, 5], phase ~ U[0, 2 pi], on 50
    points evenly spaced on [-5, 5]. Support: `shots` of the grid points drawn without
    replacement (all 50 for meta-training); query: the whole grid, on which the test
    MSE is measured.
    """

    GRID = 50

    def __init__(self, device: torch.device | str, rng: np.random.Generator):
        self.rng, self.device = rng, torch.device(device)
        self.x = np.linspace(-5, 5, self.GRID)

    def sample(self, tasks: int, shots: int, queries: int, steps: int, batch: int) -> Episode:
        if shots > self.GRID:
            raise ConfigError(f"shots={shots} exceeds the {self.GRID} grid points of a sine task")
        amplitude, phase, points, plans = [], [], [], []
        for _ in range(tasks):  # task by task, so that chunked draws equal one draw
            amplitude.append(self.rng.uniform(0.1, 5.0))
            phase.append(self.rng.uniform(0.0, 2 * np.pi))
            points.append(self.rng.random(self.GRID).argsort()[:shots])
            plans.append(minibatch_plan(_plan_rng(self.rng), shots, steps, batch))
        amplitude, phase = np.array(amplitude)[:, None], np.array(phase)[:, None]
        points, plan = np.stack(points), np.stack(plans)
        y = amplitude * np.sin(self.x[None] + phase)
        x = np.broadcast_to(self.x, y.shape)

        def tensor(a: np.ndarray) -> Tensor:  # (T, n) -> (T, n, 1) float32 on the device
            return to_device(np.asarray(a, dtype=np.float32)[..., None], self.device)

        take = np.take_along_axis
        return Episode(tensor(take(x, points, 1)), tensor(take(y, points, 1)), tensor(x), tensor(y),
                       to_device(plan, self.device))
