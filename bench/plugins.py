"""Algorithms from other installed packages, run by the same harness as the built-in ones.

A package declares its algorithms as entry points in the group `bench.algorithms`, in
its pyproject.toml:

    [project.entry-points."bench.algorithms"]
    my-reptile = "my_package.algos:my_reptile"

and `python -m bench run --algo my-reptile` (and `sweep`, `variance`,
`bench.runner.run`) then meta-trains it with every episode, network, evaluation, checkpoint
and report of the suite. The function is an algorithm as `algorithms.base` defines one:
`fn(loss, params, inner_state, episodes, cfg) -> MetaStep`, a pure function of the task
loss, the initialisation (a dict of tensors), the carried inner optimizer state, a
meta-batch of episodes (tasks first) and the run's settings, returning the meta-gradient
on the scale of one inner step (Reptile's phi - W) with the state to carry and the scalars
to log (`loss`, `first_loss`). `algorithms.inner` has the functional inner loop (SGD and
Adam, batched over tasks or serial) the built-in algorithms use. Episodes hold the
support set's inner minibatches; an algorithm that also needs a query minibatch per task
(as FOMAML and MAML do) says so with the attribute `uses_query = True` on the function,
and then gets it as the built-in ones do (the run's `tail` and `query_shots` settings).
A plugin never replaces a built-in algorithm of the same name.

Entry points are the standard Python mechanism for this (`importlib.metadata`), so an
algorithm needs no change to the suite and no import by hand.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from algorithms import ALGORITHMS, QUERY_ALGORITHMS

from .errors import BenchError

GROUP = "bench.algorithms"
_loaded = False


def load_algorithms() -> dict:
    """ALGORITHMS with the installed packages' algorithms added (once per process); a plugin
    that cannot be loaded is a one-line error naming it."""
    global _loaded
    if not _loaded:
        for ep in entry_points(group=GROUP):
            if ep.name in ALGORITHMS:
                continue
            try:
                fn = ep.load()
            except Exception as e:  # any failure of someone else's import: one line, with its cause
                raise BenchError(f"cannot load algorithm {ep.name!r} ({ep.value}, entry point group {GROUP}): "
                                 f"{type(e).__name__}: {' '.join(str(e).split())[:200]}; fix or uninstall the "
                                 "package that declares it") from None
            if not callable(fn):
                raise BenchError(f"algorithm {ep.name!r} ({ep.value}) is not a function: an entry point in "
                                 f"{GROUP} must name fn(loss, params, inner_state, episodes, cfg) -> MetaStep")
            ALGORITHMS[ep.name] = fn
        _loaded = True
    return ALGORITHMS


def uses_query(algo: str) -> bool:
    """Whether `algo`'s meta-gradient takes a query ("tail") minibatch per task."""
    return algo in QUERY_ALGORITHMS or bool(getattr(ALGORITHMS.get(algo), "uses_query", False))
