"""The mini world's asset build: the teacher's loss weighting, decoder-only VAE fine-tuning, and a tiny
end-to-end build whose teacher stage resumes after its last finished phase."""

import json

import pytest
import torch

from miniworld import train_assets as ta


def test_v_loss_weight_turns_the_epsilon_error_into_the_v_error():
    g = torch.Generator().manual_seed(0)
    abar = torch.tensor([0.9, 0.3, 0.0047], dtype=torch.float64)[:, None]
    x0, eps, eps_hat = (torch.randn(3, 16, generator=g, dtype=torch.float64) for _ in range(3))
    z = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    x0_hat = (z - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    v_hat = abar.sqrt() * eps_hat - (1 - abar).sqrt() * x0_hat
    weighted = ta.v_loss_weight(abar[:, 0]) * (eps_hat - eps).square().mean(1)
    torch.testing.assert_close((v_hat - v).square().mean(1), weighted)


def test_offset_noise_is_one_constant_per_sample_and_channel():
    latents = torch.zeros(64, 4, 8, 8, 8)
    offset = ta.offset_noise_like(latents, 0.3, torch.Generator().manual_seed(0))
    assert offset.shape == latents.shape
    per_channel = offset[:, :, :1, :1, :1]
    assert torch.equal(offset, per_channel.expand_as(offset))  # constant over frames and pixels
    assert abs(per_channel.std().item() - 0.3) < 0.05


def test_decoder_finetuning_changes_only_the_decoder():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**ta.vae_config())
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    videos, _, _ = ta.training_pool(4)
    _, stats = ta.finetune_vae_decoder(vae, videos, steps=2, batch_size=4)
    changed = {k for k, v in vae.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("post_quant_conv.") for k in changed) and any(k.startswith("decoder.") for k in changed)
    assert all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)  # encoder + quant_conv untouched
    assert stats["steps"] == 2 and not any(p.requires_grad for p in vae.parameters())


PHASES = (
    dict(steps=2, batch_size=2, lr=1e-3, loss_weighting="uniform", dropout=0.1, seed=0),
    dict(steps=2, batch_size=2, lr=1e-3, loss_weighting="v", dropout=0.0, offset_noise=0.3, seed=1),
)
STEPS = {"vae": 2, "vae_decoder": 2, "image_reward": 2, "video_reward": 2}


@pytest.mark.slow  # > 10 s on 2 CPU cores
def test_tiny_build_writes_loadable_assets_and_resumes_the_teacher(tmp_path):
    from miniworld import train_rewards
    from miniworld.assets import load_teacher

    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    record = ta.build(resumed, steps=STEPS, num_videos=8, teacher_phases=PHASES[:1])
    assert [p["loss_weighting"] for p in record["teacher_phases"]] == ["uniform"]
    assert set(record["video_reward"]["attribute_accuracy"]) == {"background", "colour", "shape", "motion"}
    first = record["teacher_phases"][0]

    record = ta.build(resumed, steps=STEPS, num_videos=8, stages=("teacher",), teacher_phases=PHASES)
    assert len(record["teacher_phases"]) == 2 and record["teacher_phases"][0] == first
    assert json.loads((resumed / "training_log.json").read_text())["teacher_phases"][1]["dropout"] == 0.0

    # an uninterrupted build of both phases ends with the same weights as the interrupted one
    ta.build(straight, steps=STEPS, num_videos=8, stages=("vae", "vae_decoder", "teacher"), teacher_phases=PHASES)
    a, b = torch.load(resumed / "_teacher_fp32.pt"), torch.load(straight / "_teacher_fp32.pt")
    for part in ("unet", "text_encoder"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])

    # a lost checkpoint is named, not silently replaced by a fresh teacher
    (straight / "_teacher_fp32.pt").unlink()
    with pytest.raises(FileNotFoundError, match="_teacher_fp32.pt"):
        ta.build(straight, steps=STEPS, num_videos=8, stages=("teacher",), teacher_phases=PHASES)

    # the written folders load through the public loaders
    adapter = load_teacher(resumed / "teacher")
    z = torch.randn(1, 4, 8, 8, 8)
    assert adapter.decode_latents(z).shape == (1, 3, 8, 32, 32)
    assert train_rewards.build_video_reward(resumed / "video_reward").score(torch.zeros(1, 3, 8, 32, 32), ["a red circle moving left on a black background"]).shape == (1,)


def test_variant_sets_and_attribute_accuracy():
    from miniworld import train_rewards, world

    texts = sorted(world.all_captions())
    sets = train_rewards.variant_sets(texts, "motion")
    assert sets.shape == (len(texts), len(world.MOTIONS)) and torch.equal(sets[:, 0], torch.arange(len(texts)))
    for row in sets[:10]:
        attrs = [world.parse_caption(texts[i]) for i in row]
        assert len({a.motion for a in attrs}) == len(world.MOTIONS)
        assert len({(a.colour, a.shape, a.background) for a in attrs}) == 1
    with pytest.raises(ValueError, match="lack motion variants"):
        train_rewards.variant_sets([t for t in texts if "moving up" not in t], "motion")

    fields = ("background", "colour", "shape", "motion")
    assert train_rewards.attribute_accuracy(torch.eye(len(texts)), texts) == {f: 1.0 for f in fields}
    # a reward blind to motion ties every motion variant: the first option wins, so motion is at chance (1/5)
    blind = torch.tensor([[float(world.strip_motion(a) == world.strip_motion(b)) for b in texts] for a in texts])
    accuracy = train_rewards.attribute_accuracy(blind, texts)
    assert accuracy["colour"] == accuracy["shape"] == accuracy["background"] == 1.0
    assert accuracy["motion"] == pytest.approx(1 / len(world.MOTIONS))
