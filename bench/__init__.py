"""bench: Reptile and the MAML family on the tasks of the Reptile paper, reproducibly."""

__version__ = "0.1.0"
