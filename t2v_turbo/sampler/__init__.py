"""Samplers, one algorithm per file (diffusers scheduler style)."""

from t2v_turbo.sampler.scheduling_ddim_cfg import DDIMCFGScheduler, DDIMCFGSchedulerOutput
from t2v_turbo.sampler.scheduling_t2v_turbo import T2VTurboScheduler, T2VTurboSchedulerOutput

__all__ = ["DDIMCFGScheduler", "DDIMCFGSchedulerOutput", "T2VTurboScheduler", "T2VTurboSchedulerOutput"]
