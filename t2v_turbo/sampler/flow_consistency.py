"""Multistep consistency sampling of a flow student, on diffusers' ``FlowMatchLCMScheduler``.

Algorithm (LCM multistep, arXiv 2310.04378, Alg. 3, in flow variables): with sigmas
s_1 > ... > s_n and z ~ N(0, I),

    for i = 1..n:
        f = z - s_i v_theta(z, T s_i, w, c)                  the consistency function (x0 of the velocity)
        z = (1 - s_{i+1}) f + s_{i+1} noise   (i < n),      return f   (i = n, s_{n+1} = 0)

which is exactly ``FlowMatchLCMScheduler.step``, so that class is the sampler (no copy of it here);
this file only chooses its sigmas:

- ``spacing="t2v_turbo"``: the distillation grid's points ``multistep_timesteps(n, spacing="t2v_turbo")``
  (4 of N = 50: indices [999, 759, 519, 279]), sigma = shift((i + 1) / T), i.e. the sigmas the student
  was trained at. ``FlowMatchLCMScheduler.set_timesteps(sigmas=u)`` shifts the u it is given, so the
  unshifted u = (i + 1) / T are passed.
- ``spacing="lcm"``: ``FlowMatchLCMScheduler``'s own rule for ``num_inference_steps``:
  sigma = shift(linspace(1, shift(1 / T), n)) (diffusers shifts the end point twice). This is what a
  stock ``WanPipeline`` runs with the exported scheduler, so an export reproduces this spacing.
"""

from __future__ import annotations

import torch

from t2v_turbo.diffusion.schedule import check_sampling_timesteps, multistep_timesteps

SPACINGS = ("t2v_turbo", "lcm")


def flow_consistency_scheduler(adapter):
    """diffusers' ``FlowMatchLCMScheduler`` on ``adapter``'s training grid (T, flow shift)."""
    from diffusers import FlowMatchLCMScheduler

    return FlowMatchLCMScheduler(num_train_timesteps=adapter.num_train_timesteps, shift=adapter.flow_shift)


def set_flow_timesteps(
    scheduler,
    num_inference_steps: int | None = None,
    spacing: str = "t2v_turbo",
    num_ddim_timesteps: int = 50,
    timesteps: list[int] | None = None,
    device: str | torch.device | None = None,
) -> None:
    """Set ``scheduler`` (a ``FlowMatchLCMScheduler``) to ``num_inference_steps`` sigmas by ``spacing``,
    or to explicit descending grid indices ``timesteps`` (sigma = shift((i + 1) / T))."""
    if (num_inference_steps is None) == (timesteps is None):
        raise ValueError("pass exactly one of `num_inference_steps` and `timesteps`")
    if spacing not in SPACINGS:
        raise ValueError(f"`spacing`={spacing!r} is not one of {SPACINGS}")
    total = scheduler.config.num_train_timesteps
    if timesteps is None and spacing == "lcm":
        scheduler.set_timesteps(num_inference_steps, device=device)
    else:
        if timesteps is None:
            timesteps = multistep_timesteps(num_inference_steps, total, num_ddim_timesteps, "t2v_turbo")
        timesteps = check_sampling_timesteps(timesteps, total, num_ddim_timesteps)
        scheduler.set_timesteps(sigmas=[(t + 1) / total for t in timesteps], device=device)
    scheduler.set_begin_index(0)
