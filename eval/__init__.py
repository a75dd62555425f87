"""Evaluation: VBench (generation, running, aggregation). The mini world's MiniBench lives in ``miniworld.minibench``."""
