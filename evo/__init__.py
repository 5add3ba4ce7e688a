"""evo: population-based search over whole training scripts, scored by a trusted harness (`gpt`)."""

__version__ = "0.1.0"
