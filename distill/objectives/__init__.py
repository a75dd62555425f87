"""Training objectives, each a ``_component_`` of the run config's ``objective:`` section (contract: base.py)."""

from distill.objectives.base import Objective, ObjectiveOutput, RunContext, TrainingBatch
from distill.objectives.instructvideo import InstructVideoObjective
from distill.objectives.preference import DPOObjective, OnlineDPOObjective, RWRObjective
from distill.objectives.rewarding import RewardTerm
from distill.objectives.t2v_turbo import T2VTurboObjective
from distill.objectives.vader import VADERObjective

__all__ = [
    "DPOObjective",
    "InstructVideoObjective",
    "Objective",
    "ObjectiveOutput",
    "OnlineDPOObjective",
    "RWRObjective",
    "RewardTerm",
    "RunContext",
    "T2VTurboObjective",
    "TrainingBatch",
    "VADERObjective",
]
