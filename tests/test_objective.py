"""The T2V-Turbo objective on a tiny diffusers teacher: CD against the formulas, the mixed reward,
frame selection, the public-code weighting and the EMA target."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from distill.ema import EMATarget
from distill.losses import consistency_distance, pseudo_huber_loss
from distill.model import TrainedModel
from distill.objectives import RewardTerm, RunContext, T2VTurboObjective
from distill.objectives.t2v_turbo import ConsistencySettings, video_only_mask
from rewards.base import VideoReward
from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
from t2v_turbo.student import LoraSettings, StudentMeta, build_student
from t2v_turbo.testing import build_tiny_diffusers_t2v

FRAMES = 6


class ColourReward(VideoReward):
    """A small differentiable reward: a frozen linear map of each frame's mean colour, averaged."""

    def __init__(self, indices, granularity="frame", seed=0):
        super().__init__()
        self.indices = list(indices)
        self.granularity = granularity
        self.head = nn.Linear(3, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(1, 3, generator=torch.Generator().manual_seed(seed)))
        self.requires_grad_(False)
        self.calls = []

    def frame_indices(self, num_frames, generator=None):
        return self.indices

    def score(self, frames, prompts):
        self.calls.append(tuple(frames.shape))
        return self.head(frames.mean(dim=(3, 4)).transpose(1, 2)).squeeze(-1).mean(dim=1)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    folder = build_tiny_diffusers_t2v(tmp_path_factory.mktemp("teacher") / "tiny")
    return DiffusersT2VAdapter.from_pretrained(folder)


@pytest.fixture
def student(adapter):
    torch.manual_seed(0)
    unet = build_student(adapter, 256, LoraSettings(rank=4, alpha=4, dropout=0.0), train_guidance_layer=True)
    with torch.no_grad():  # move off the zero initialisations so the student differs from the teacher
        for name, p in unet.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return unet


def bound(adapter, student, rewards=(), **settings):
    """A T2V-Turbo objective with ``settings``, bound to ``student`` on ``adapter`` with ``rewards``."""
    objective = T2VTurboObjective(**settings)
    model = TrainedModel(student, StudentMeta.for_adapter(adapter, time_cond_proj_dim=256))
    objective.bind(RunContext(adapter, model, list(rewards), seed=0, device=torch.device("cpu")))
    return objective


def batch(adapter, size=2):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(size, 4, FRAMES, 8, 8, generator=g)
    prompts = ["a cat running", "a red car"] * (size // 2) + ["a dog"] * (size % 2)
    with torch.no_grad():
        text = adapter.encode_prompts(prompts)
        uncond = adapter.empty_prompt_embedding(size)
    return latents, text, uncond, prompts


def positions_drawing(objective, latent_shape, seed, wanted):
    """For each wanted DDIM index, the first global position whose draw picks it (a draw is a pure
    function of (seed, position), so this chooses which region of the schedule a sample lands in)."""
    found = {}
    for p in range(10_000):
        n = int(objective.draw([p], latent_shape, seed)[0][0])
        found.setdefault(n, p)
        if all(i in found for i in wanted):
            return [found[i] for i in wanted]
    raise AssertionError(f"no position draws {wanted}")


def test_draws_cover_every_ddim_index_and_the_w_interval(adapter, student):
    """n ~ U{0..N-1} (the last index too), w ~ U[w_min, w_max], eps ~ N(0, I), from (seed, position) alone."""
    objective = bound(adapter, student, num_ddim_timesteps=50, w_min=2.0, w_max=6.0)
    positions = list(range(3000))
    index, w, eps = objective.draw(positions, (1, 1, 2, 2), seed=7)
    # every one of the 50 indices is drawn, each about 3000 / 50 = 60 times (5 sigma band of a binomial)
    counts = torch.bincount(index, minlength=50)
    assert counts.shape == (50,) and int(counts.min()) > 0, counts
    assert int((counts - 60).abs().max()) < 5 * (3000 * 0.02 * 0.98) ** 0.5
    assert objective.grid[index].max() == 999 and objective.grid[index].min() == 19
    # w is uniform on [2, 6]: bounds, both ends reached, mean 4 and variance (6 - 2)^2 / 12
    assert 2.0 <= float(w.min()) < 2.01 and 5.99 < float(w.max()) <= 6.0
    assert abs(float(w.mean()) - 4.0) < 5 * (16 / 12 / 3000) ** 0.5
    assert abs(float(w.var()) - 16 / 12) < 0.1
    assert abs(float(eps.mean())) < 0.05 and abs(float(eps.std()) - 1.0) < 0.05
    # a pure function of (seed, position): a sample's draw does not depend on its batch
    sub_index, sub_w, sub_eps = objective.draw([11, 2999], (1, 1, 2, 2), seed=7)
    assert sub_index.tolist() == [int(index[11]), int(index[2999])] and torch.equal(sub_w, w[[11, 2999]])
    assert torch.equal(sub_eps, eps[[11, 2999]])
    assert not torch.equal(objective.draw([11], (1, 1, 2, 2), seed=8)[2][0], eps[11])


def test_cd_loss_and_gradient_follow_algorithm_1(adapter, student):
    """L_CD and its gradient recomputed from the formulas of the spec, with one sample at the boundary
    (n = 0: t_n = 0, where c_skip = 1 and the target is the DDIM-solved latent itself) and one at n = N - 1."""
    settings = ConsistencySettings()
    objective = bound(adapter, student, **dataclasses.asdict(settings))
    latents, text, uncond, prompts = batch(adapter)
    positions = positions_drawing(objective, latents.shape[1:], 5, [0, 49])
    grad_modes = []
    hook = student.register_forward_pre_hook(lambda m, args: grad_modes.append(torch.is_grad_enabled()))
    try:
        out = objective.loss(student, latents, text, uncond, prompts, positions, seed=5)
    finally:
        hook.remove()
    # the target runs without gradient, the student's prediction with it (one forward each)
    assert grad_modes == [False, True]
    params = [p for p in student.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.loss, params)

    index, w, eps = objective.draw(positions, latents.shape[1:], seed=5)
    t_nk = (index + 1) * 20 - 1  # k = 1000 // 50
    t_n = (t_nk - 20).clamp(min=0)
    assert t_nk.tolist() == [19, 999] and t_n.tolist() == [0, 979]
    abar = adapter.alphas_cumprod
    shape = (-1, 1, 1, 1, 1)
    a_nk, a_n = abar[t_nk].view(shape), abar[t_n].view(shape)
    z = a_nk.sqrt() * latents + (1 - a_nk).sqrt() * eps
    half = 128
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / (half - 1))
    emb = torch.cat([torch.sin(1000 * w[:, None] * freqs), torch.cos(1000 * w[:, None] * freqs)], 1)

    def unet_eps(unet, x, t, c, cond=None):
        return unet(x, t, encoder_hidden_states=c, timestep_cond=cond).sample

    def f(unet, x, t):
        x0 = (x - (1 - abar[t].view(shape)).sqrt() * unet_eps(unet, x, t, text, emb)) / abar[t].view(shape).sqrt()
        c_skip = 0.25 / ((10.0 * t) ** 2 + 0.25)
        c_out = 10.0 * t / ((10.0 * t) ** 2 + 0.25).sqrt()
        return c_skip.view(shape) * x + c_out.view(shape) * x0

    with torch.no_grad():
        e_c, e_u = unet_eps(adapter.unet, z, t_nk, text), unet_eps(adapter.unet, z, t_nk, uncond)
        eps_hat = (1 + w.view(shape)) * e_c - w.view(shape) * e_u
        x0_hat = (z - (1 - a_nk).sqrt() * eps_hat) / a_nk.sqrt()
        z_n = a_n.sqrt() * x0_hat + (1 - a_n).sqrt() * eps_hat
        target = f(student, z_n, t_n)
    # at t_n = 0 the consistency function is the identity: the target is z_hat_{t_n} exactly
    torch.testing.assert_close(target[0], z_n[0], atol=0, rtol=0)
    pred = f(student, z, t_nk)
    expected = (torch.sqrt((pred - target) ** 2 + 1e-6) - 1e-3).mean()
    assert out.cd_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(out.terms) == {"cd"} and out.rewards == {} and out.decoded == []
    # the gradient is d L_CD / d theta through the prediction only (the target is a constant)
    expected_grads = torch.autograd.grad(expected, params)
    # (float rounding of pred - target is amplified by the pseudo-Huber curvature 1/c near 0: compare norms)
    for got, want in zip(grads, expected_grads):
        assert want.norm() > 0
        assert (got - want).norm() <= 1e-3 * want.norm(), float((got - want).norm() / want.norm())


def test_mixed_objective_is_the_sum_of_its_terms_and_decodes_only_selected_frames(adapter, student):
    img = ColourReward([1, 4], seed=1)
    vid = ColourReward([0, 2, 4], granularity="clip", seed=2)
    objective = bound(adapter, student, [RewardTerm("img", img, 2.0), RewardTerm("vid", vid, 3.0)])
    decoded_frames = []
    hook = adapter.vae.decoder.register_forward_pre_hook(lambda m, args: decoded_frames.append(args[0].shape[0]))
    try:
        latents, text, uncond, prompts = batch(adapter)
        out = objective.loss(student, latents, text, uncond, prompts, [0, 1], seed=0, grad_norms=True)
    finally:
        hook.remove()
    # the union {0, 1, 2, 4} of the needed frames, for 2 samples, and nothing else
    assert out.decoded == [(2, 4)] and sum(decoded_frames) == 8
    assert img.calls[0] == (2, 3, 2, 16, 16) and vid.calls[0] == (2, 3, 3, 16, 16)
    # L = L_CD - 2 R_img - 3 R_vid, with the rewards recomputed on an independent decode of f_theta
    with torch.no_grad():
        cd_only = bound(adapter, student).loss(student, latents, text, uncond, prompts, [0, 1], seed=0)
        index, w, eps = objective.draw([0, 1], latents.shape[1:], seed=0)
        t = objective.grid[index]
        z = torch.sqrt(adapter.alphas_cumprod[t]).view(-1, 1, 1, 1, 1) * latents + torch.sqrt(
            1 - adapter.alphas_cumprod[t]
        ).view(-1, 1, 1, 1, 1) * eps
        from t2v_turbo.diffusion.solver import guidance_scale_embedding

        f = objective.consistency_fn(student, z, t, text, guidance_scale_embedding(w, 256))
        pixels = adapter.decode_latents(f)
        r_img = img.score(pixels[:, :, [1, 4]], prompts).mean()
        r_vid = vid.score(pixels[:, :, [0, 2, 4]], prompts).mean()
    assert out.cd_loss.item() == pytest.approx(cd_only.cd_loss.item(), rel=1e-6)
    assert out.rewards["img"].item() == pytest.approx(r_img.item(), rel=1e-4, abs=1e-6)
    assert out.rewards["vid"].item() == pytest.approx(r_vid.item(), rel=1e-4, abs=1e-6)
    expected = cd_only.cd_loss - 2.0 * r_img - 3.0 * r_vid
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert out.loss.item() == pytest.approx(sum(v.item() for v in out.terms.values()), rel=1e-6)
    assert set(out.reward_grad_norms) == {"img", "vid"} and all(v > 0 for v in out.reward_grad_norms.values())


def test_reward_gradient_reaches_lora_through_the_vae_decoder(adapter, student):
    reward = ColourReward([2, 3])
    objective = bound(adapter, student, [RewardTerm("img", reward, 1.0)], vae_gradient_checkpointing=True,
                      decode_chunk_size=1)
    decoder_inputs = []
    hook = adapter.vae.decoder.register_forward_pre_hook(lambda m, args: decoder_inputs.append(args[0].requires_grad))
    try:
        latents, text, uncond, prompts = batch(adapter)
        out = objective.loss(student, latents, text, uncond, prompts, [0, 1])
        out.terms["img"].backward()  # the reward term alone: its only path to the student is the decoder
    finally:
        hook.remove()
    assert decoder_inputs and all(decoder_inputs)  # chunks of 1 frame, recomputed in backward
    lora = {n: p.grad for n, p in student.named_parameters() if p.requires_grad}
    assert any(".lora_" in n for n in lora) and all(g is not None and g.abs().sum() > 0 for g in lora.values())
    frozen = [adapter.vae, adapter.unet, adapter.text_encoder, reward]
    assert all(p.grad is None for m in frozen for p in m.parameters())


def test_video_only_fraction_selects_by_position_and_weights_terms(adapter, student):
    assert video_only_mask(range(8), 0.25).tolist() == [False, False, False, True] * 2  # 1/4: p mod 4 == 3
    assert video_only_mask(range(5), 0.4).tolist() == [False, False, False, True, True]  # 2/5
    assert not video_only_mask(range(8), 0.0).any()
    with pytest.raises(ValueError, match="video_only_fraction=1.0"):
        video_only_mask([0], 1.0)
    img, vid = ColourReward([1]), ColourReward([0, 2, 4, 5], granularity="clip")
    latents, text, uncond, prompts = batch(adapter, size=4)
    positions = [4, 5, 6, 7]  # with 1/4 video-only: position 7 is the clip-only sample
    objective = bound(adapter, student, [RewardTerm("img", img, 2.0), RewardTerm("vid", vid, 3.0)],
                      video_only_fraction=0.25)
    out = objective.loss(student, latents, text, uncond, prompts, positions)
    assert out.video_only.tolist() == [False, False, False, True]
    assert sorted(out.decoded) == [(1, 4), (3, 1)]  # regular samples decode 1 frame, the clip sample 4
    assert img.calls == [(3, 3, 1, 16, 16)] and vid.calls == [(1, 3, 4, 16, 16)]
    # terms are sums over their samples divided by B = 4
    assert out.terms["cd"].item() == pytest.approx(0.75 * out.cd_loss.item(), rel=1e-6)
    assert out.terms["img"].item() == pytest.approx(-2.0 * 0.75 * out.rewards["img"].item(), rel=1e-6)
    assert out.terms["vid"].item() == pytest.approx(-3.0 * 0.25 * out.rewards["vid"].item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(sum(v.item() for v in out.terms.values()), rel=1e-6)
    # the CD part of the video-only sample is not computed: equal to CD on the three regular samples
    regular = bound(adapter, student).loss(student, latents[:3], text[:3], uncond[:3], prompts[:3], positions[:3])
    assert out.cd_loss.item() == pytest.approx(regular.cd_loss.item(), rel=1e-5)


def test_reward_max_noise_scores_only_the_quiet_samples(adapter, student):
    """Rewards score only samples with sigma_{t_{n+k}} <= reward_max_noise; their terms are still divided by B."""
    latents, text, uncond, prompts = batch(adapter, size=2)
    probe = bound(adapter, student)
    quiet_p, noisy_p = positions_drawing(probe, latents.shape[1:], 0, [5, 45])
    _, sigma = probe.coefficients(probe.grid[torch.tensor([5, 45])], 1)
    limit = float(sigma.mean())  # between the two samples' noise levels
    assert sigma[0] < limit < sigma[1]
    img = ColourReward([1])
    objective = bound(adapter, student, [RewardTerm("img", img, 2.0)], reward_max_noise=limit)
    out = objective.loss(student, latents, text, uncond, prompts, [quiet_p, noisy_p])
    assert img.calls == [(1, 3, 1, 16, 16)] and out.decoded == [(1, 1)]  # only the quiet sample is decoded
    assert out.terms["img"].item() == pytest.approx(-2.0 * out.rewards["img"].item() / 2, rel=1e-6)
    # its score is the unlimited objective's score of that sample alone
    alone = bound(adapter, student, [RewardTerm("img", img, 2.0)]).loss(
        student, latents[:1], text[:1], uncond[:1], prompts[:1], [quiet_p])
    assert out.rewards["img"].item() == pytest.approx(alone.rewards["img"].item(), rel=1e-5)
    # above every sample's noise: no reward term at all, the loss is CD alone
    none = bound(adapter, student, [RewardTerm("img", img, 2.0)], reward_max_noise=float(sigma[0]) / 2)
    quiet = none.loss(student, latents, text, uncond, prompts, [quiet_p, noisy_p])
    assert "img" not in quiet.terms and quiet.loss.item() == pytest.approx(quiet.terms["cd"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="reward_max_noise"):
        T2VTurboObjective(reward_max_noise=0.0)


def test_ema_update_and_target(adapter, student):
    ema = EMATarget(student, decay=0.9)
    theta0 = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    assert set(ema.shadow) == set(theta0) and all(torch.equal(ema.shadow[n], theta0[n]) for n in theta0)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if p.requires_grad:
                p.add_(1.0)
    ema.update(student)
    for n, p in student.named_parameters():
        if n in theta0:  # theta^- <- mu theta^- + (1 - mu) theta
            assert torch.allclose(ema.shadow[n], 0.9 * theta0[n] + 0.1 * p.detach(), atol=1e-6)
    # the target runs on theta^-, the student's weights are restored afterwards
    objective = bound(adapter, student, target="ema")
    latents, text, uncond, prompts = batch(adapter)
    online = objective.loss(student, latents, text, uncond, prompts, [0, 1])
    with_ema = objective.loss(student, latents, text, uncond, prompts, [0, 1], ema=ema)
    assert with_ema.cd_loss.item() != pytest.approx(online.cd_loss.item(), rel=1e-4)
    for n, p in student.named_parameters():
        if n in theta0:
            assert torch.equal(p.detach(), theta0[n] + 1.0)
    # a decay of 0 makes theta^- the online weights: the same loss as the online target
    ema0 = EMATarget(student, decay=0.0)
    assert objective.loss(student, latents, text, uncond, prompts, [0, 1], ema=ema0).cd_loss.item() == pytest.approx(
        online.cd_loss.item(), rel=1e-6)


def test_ema_decay_must_lie_in_0_1(student):
    for decay in (0.0, 1.0):
        assert EMATarget(student, decay).decay == decay
    for decay in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"`ema_decay`={decay} must lie in \\[0, 1\\]"):
            EMATarget(student, decay)


def test_distances_default_to_the_spec_constants():
    """Pseudo-Huber sqrt((x - y)^2 + c^2) - c with c = 0.001 by default, L2 (x - y)^2, both averaged."""
    pred, target = torch.tensor([0.0, 0.5, -2.0]), torch.tensor([0.1, 0.5, 1.0])
    huber = sum(math.sqrt(d * d + 1e-6) - 1e-3 for d in (-0.1, 0.0, -3.0)) / 3
    assert pseudo_huber_loss(pred, target).item() == pytest.approx(huber, rel=1e-6)
    assert consistency_distance(pred, target).item() == pytest.approx(huber, rel=1e-6)
    assert consistency_distance(pred, target, "l2").item() == pytest.approx((0.01 + 0 + 9) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="`loss_type`='l1' is not one of 'huber', 'l2'"):
        consistency_distance(pred, target, "l1")


def test_settings_errors_name_the_key():
    with pytest.raises(ValueError, match="objective.target='teacher'"):
        T2VTurboObjective(target="teacher")
    with pytest.raises(ValueError, match="objective.w_min=9 must not exceed objective.w_max=3"):
        T2VTurboObjective(w_min=9, w_max=3)
    with pytest.raises(ValueError, match="objective.huber_c=0 must be .* > 0; objective.video_only_fraction=1.5"):
        T2VTurboObjective(huber_c=0, video_only_fraction=1.5)


class WeightedColourReward(ColourReward):
    """ColourReward with per-frame weights (as InstructVideo's temporal attenuation weights frames)."""

    def frame_weights(self, indices, num_frames):
        return torch.tensor([1.0 + i for i in indices])

    def score(self, frames, prompts, frame_weights=None):
        per_frame = self.head(frames.mean(dim=(3, 4)).transpose(1, 2)).squeeze(-1)
        self.calls.append(None if frame_weights is None else frame_weights.tolist())
        if frame_weights is None:
            return per_frame.mean(dim=1)
        return (per_frame * frame_weights).sum(dim=1) / frame_weights.sum()


def test_objective_passes_the_rewards_frame_weights(adapter, student):
    reward = WeightedColourReward([1, 4], seed=3)
    objective = bound(adapter, student, [RewardTerm("img", reward, 1.0)])
    latents, text, uncond, prompts = batch(adapter)
    with torch.no_grad():
        out = objective.loss(student, latents, text, uncond, prompts, [0, 1], seed=0)
        index, w, eps = objective.draw([0, 1], latents.shape[1:], seed=0)
        t = objective.grid[index]
        from t2v_turbo.diffusion.solver import add_noise, extract, guidance_scale_embedding

        z = add_noise(latents, eps, extract(adapter.alphas_cumprod, t, latents.ndim))
        pixels = adapter.decode_latents(objective.consistency_fn(student, z, t, text, guidance_scale_embedding(w, 256)))
        expected = reward(pixels, prompts).mean()  # forward applies the same weights
    assert reward.calls[0] == [2.0, 5.0]
    assert out.rewards["img"].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
