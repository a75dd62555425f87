"""VBench for T2V-Turbo generators: prompt suite, file naming, generation, running VBench,
aggregation into the leaderboard's Quality / Semantic / Total, and reports.

Nothing here imports ``vbench`` at module import time: the package is optional (it pins an old
transformers), and only :mod:`eval.vbench.runner` touches it, when a run is requested.
"""

from eval.vbench.aggregate import DIMENSIONS, QUALITY_DIMENSIONS, SEMANTIC_DIMENSIONS, aggregate

__all__ = ["DIMENSIONS", "QUALITY_DIMENSIONS", "SEMANTIC_DIMENSIONS", "aggregate"]
