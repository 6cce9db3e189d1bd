"""CUDA graphs: a meta-iteration's computation recorded once and replayed (`cuda_graph`).

The suite's networks are tiny, so on a GPU a meta-iteration is hundreds of kernels of a
few microseconds each, and launching them from Python costs far more than running
them. A CUDA graph records the kernels of one call once and replays them with a single
launch. This works here because every algorithm is a pure function of tensors whose
shapes stay the same from one meta-iteration to the next: the inputs are copied into
fixed buffers, the graph is replayed, and its outputs are fixed buffers too.

What the caller must know: the returned tensors are the graph's own output buffers,
overwritten by the next call. The runner reads them (the outer optimizer applies the
meta-gradient, the carried inner state is passed back in as the next call's input)
before it calls again, so nothing it keeps is overwritten while still needed.

The recording follows PyTorch's recipe (torch.cuda.graphs): a few calls on a side
stream first, so that lazy initialisation and the choice of kernels happen outside the
recording, then one recorded call. Those calls run on copies of the first call's
inputs and their results are discarded, so a graphed run computes what the plain one
does, up to the GPU's own run-to-run rounding differences (tests/test_gpu.py compares
them for every algorithm, in float64 to 1e-7 relative).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .errors import ConfigError

WARMUP = 2
"""Calls on a side stream before the recording (PyTorch's recipe asks for a few)."""


def check_device(device: torch.device) -> None:
    """cuda_graph = true needs a CUDA device: a one-line error otherwise."""
    if device.type != "cuda":
        raise ConfigError(f"cuda_graph=true records CUDA graphs, but the run is on {device.type}: "
                          "run it with --device cuda on a GPU machine or --set cuda_graph=false")


class GraphedFunction:
    """fn(*args) recorded as a CUDA graph at the first call and replayed at every call after.

    args and fn's result are nested tuples, lists and dicts of CUDA tensors. Every call
    must pass the same structure with the same shapes and dtypes (a meta-iteration's
    do); anything else is refused with a ValueError rather than replayed on wrong data.
    """

    def __init__(self, fn: Callable[..., Any], warmup: int = WARMUP):
        self.fn, self.warmup = fn, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.spec = self.out_spec = self.args = None
        self.replays = 0

    def __call__(self, *args: Any) -> Any:
        if self.graph is not None:
            args = _ordered_like(args, self.args)
        leaves, spec = tree_flatten(args)
        if self.graph is None:
            self._record(leaves, spec)
        else:
            self._check(leaves, spec)
        # One multi-tensor copy into the graph's input buffers (a tensor that already is
        # the buffer, like the carried state fed back, copies onto itself).
        torch._foreach_copy_(self.inputs, leaves)
        self.graph.replay()
        self.replays += 1
        return tree_unflatten(self.outputs, self.out_spec)

    def _check(self, leaves: list, spec) -> None:
        if spec != self.spec:
            raise ValueError(f"a graphed call's arguments changed structure: recorded {self.spec}, now {spec}")
        for i, (x, buf) in enumerate(zip(leaves, self.inputs)):
            if not isinstance(x, torch.Tensor) or x.shape != buf.shape or x.dtype != buf.dtype \
                    or x.device != buf.device:
                got = (tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"a graphed call's input {i} is {got}; recorded "
                                 f"{(tuple(buf.shape), buf.dtype, buf.device)}")

    def _record(self, leaves: list, spec) -> None:
        for i, x in enumerate(leaves):
            if not isinstance(x, torch.Tensor) or x.device.type != "cuda":
                raise ValueError(f"a graphed call's input {i} is not a CUDA tensor "
                                 f"({type(x).__name__}{' on ' + str(x.device) if isinstance(x, torch.Tensor) else ''})")
        self.spec = spec
        self.inputs = [x.detach().clone() for x in leaves]
        self.args = args = tree_unflatten(self.inputs, spec)
        side = torch.cuda.Stream(device=self.inputs[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.fn(*args)
        self.outputs, self.out_spec = tree_flatten(out)
        bad = [type(o).__name__ for o in self.outputs if not isinstance(o, torch.Tensor)]
        if bad:
            raise ValueError(f"a graphed function must return tensors only, got {', '.join(bad)}")
        self.graph = graph


def _ordered_like(obj: Any, template: Any) -> Any:
    """obj with every dict's keys in the order of the matching dict of `template` (when
    both hold the same keys): dicts equal but for their order, like an optimizer state
    as first built and as its step returns it, are then the same graph input."""
    if isinstance(obj, dict) and isinstance(template, dict) and obj.keys() == template.keys():
        return {k: _ordered_like(obj[k], template[k]) for k in template}
    if isinstance(obj, (list, tuple)) and type(obj) is type(template) and len(obj) == len(template):
        return type(obj)(_ordered_like(o, t) for o, t in zip(obj, template))
    return obj
