"""bench: Reptile and the MAML family on the tasks of the Reptile paper, reproducibly.

From Python: `bench.load_learner(run_folder)` gives a run's meta-learned initialisation
with its evaluation's fine-tuning (`bench.learner`); `bench.runner.run(config, ...)` is
the harness `python -m bench run` calls.
"""

__version__ = "0.1.0"

__all__ = ["Learner", "load_learner"]


def __getattr__(name: str):
    # Loaded on first use, so that `import bench` (and the command line) stays free of torch.
    if name in __all__:
        from . import learner

        return getattr(learner, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
