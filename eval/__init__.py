"""Evaluation: VBench (generation, running, aggregation) and the mini world's MiniBench."""
