"""The mini world's asset build: the teacher's loss weighting, decoder-only VAE fine-tuning, and a tiny
end-to-end build whose teacher stage resumes after its last finished phase."""

import json

import numpy as np
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


def test_flow_matching_loss_frame_difference_term_sees_only_what_changes_between_frames():
    g = torch.Generator().manual_seed(0)
    per_frame = torch.randn(2, 8, 1, 4, 4, generator=g)
    static = per_frame.expand(2, 8, 8, 4, 4)  # the same error in every frame
    assert ta.flow_matching_loss(static, 1.0) == ta.flow_matching_loss(static, 0.0) == static.square().mean()
    flicker = static * torch.tensor([1.0, -1.0] * 4).view(1, 1, 8, 1, 1)  # same size, sign flips every frame
    torch.testing.assert_close(ta.flow_matching_loss(flicker, 0.5), static.square().mean() * (1 + 0.5 * 4))


EPS_PHASES = (dict(steps=2, batch_size=2, lr=1e-3, loss_weighting="v", dropout=0.0, offset_noise=0.3, seed=1),)
FLOW_PHASES = (dict(steps=2, batch_size=2, lr=1e-3, seed=0), dict(steps=2, batch_size=2, lr=5e-4, seed=1))
FINE_PHASES = (dict(steps=2, batch_size=2, lr=1e-3, seed=2, trainable=("patch_embedding", "proj_out")),
               dict(steps=2, batch_size=2, lr=5e-4, seed=3))
STEPS = {"vae": 2, "vae_decoder": 2, "image_reward": 2, "video_reward": 2, "video_reward_variants": 2, "fine_vae": 2,
         "fine_vae_decoder": 2}
FINE_VAE = {**ta.FINE_VAE, "decoder_off_palette": 4}


@pytest.mark.slow  # > 10 s on 2 CPU cores
def test_tiny_build_writes_loadable_assets_and_resumes_the_teacher(tmp_path):
    from miniworld import train_rewards
    from miniworld.assets import load_teacher
    from miniworld.report import motions_under_fixed_noise
    from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
    from t2v_turbo.adapters.wan import WanAdapter
    from t2v_turbo.pipeline import TeacherPipeline

    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    tiny = dict(steps=STEPS, num_videos=8, fine_vae=FINE_VAE, fine_teacher_phases=FINE_PHASES)
    # the fine teacher starts from the coarse one's checkpoint: without it, the file is named
    with pytest.raises(FileNotFoundError, match="_flow_teacher_fp32.pt"):
        ta.build(resumed, stages=("fine_vae", "fine_teacher"), **tiny)
    assert not resumed.exists() or not any(resumed.iterdir())  # before anything is trained or written
    record = ta.build(resumed, teacher_phases=FLOW_PHASES[:1], **tiny)
    assert [p["lr"] for p in record["flow_teacher_phases"]] == [1e-3]
    assert set(record["video_reward"]["attribute_accuracy"]) == {"background", "colour", "shape", "motion"}
    assert record["video_reward_base"]["hard_negatives"] == {"captions": ["motion"], "videos": []}
    assert record["video_reward"]["hard_negatives"]["videos"] == ["background", "colour", "shape", "motion"]
    assert record["image_reward"]["hard_negatives"]["videos"] == ["background", "colour", "shape"]
    assert set(record["text_encoder"]["distances"]["motion"]) == {"right", "up", "down", "still"}
    first = record["flow_teacher_phases"][0]

    assert record["fine_teacher_init"] == {"coarse_teacher_phases": 1,
                                           "reinitialised": ["patch_embedding.weight", "proj_out.bias", "proj_out.weight"]}
    assert [p["trainable"] for p in record["fine_teacher_phases"]] == [["patch_embedding", "proj_out"], "all"]
    assert record["fine_vae_decoder"]["off_palette_clips"] == 4
    # the fine teacher resumes after its last finished phase too, from its own checkpoint
    fine_done = record["fine_teacher_phases"]
    record = ta.build(resumed, stages=("fine_teacher",), **{**tiny, "fine_teacher_phases": FINE_PHASES + (dict(FINE_PHASES[1], seed=4),)})
    assert record["fine_teacher_phases"][:2] == fine_done and record["fine_teacher_phases"][2]["seed"] == 4
    record = ta.build(resumed, stages=("teacher",), teacher_phases=FLOW_PHASES, **tiny)
    assert len(record["flow_teacher_phases"]) == 2 and record["flow_teacher_phases"][0] == first
    assert json.loads((resumed / "training_log.json").read_text())["flow_teacher_phases"][1]["lr"] == 5e-4

    # an uninterrupted build of both phases ends with the same weights as the interrupted one
    ta.build(straight, stages=ta.DEFAULT_STAGES, teacher_phases=FLOW_PHASES, **tiny)
    a, b = torch.load(resumed / "_flow_teacher_fp32.pt"), torch.load(straight / "_flow_teacher_fp32.pt")
    assert all(torch.equal(a["transformer"][k], b["transformer"][k]) for k in a["transformer"])

    # a lost checkpoint is named, not silently replaced by a fresh teacher
    (straight / "_flow_teacher_fp32.pt").unlink()
    with pytest.raises(FileNotFoundError, match="_flow_teacher_fp32.pt"):
        ta.build(straight, stages=("teacher",), teacher_phases=FLOW_PHASES, **tiny)

    # time-reversal pairs need the reversal of every training caption in the pool, which 8 videos lack: named
    with pytest.raises(ValueError, match="time-reversal pairs: the reversal of 'a "):
        ta.build(resumed, stages=("teacher",), teacher_phases=FLOW_PHASES + (dict(FLOW_PHASES[1], time_reversal_pairs=True),),
                 **tiny)

    # the written folders load through the public loaders: the fine flow teacher on the 16x16 VAE and the coarse
    # one on the 8x8 VAE, both with the text tower of the video reward's first phase, and the optional epsilon
    # teacher on the coarse VAE
    coarse = load_teacher(resumed / "coarse_teacher")
    assert coarse.latent_shape(1, 8, 32, 32) == (1, ta.LATENT_CHANNELS, 8, 8, 8)
    adapter = load_teacher(resumed / "teacher")
    assert isinstance(adapter, WanAdapter) and adapter.prediction_type == "flow"
    assert adapter.latent_shape(1, 8, 32, 32) == (1, 4, 8, 16, 16)
    video = TeacherPipeline(adapter)(["a red circle moving left on a black background"], num_inference_steps=2,
                                     guidance_scale=4.0, generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 3, 8, 32, 32)
    seen = motions_under_fixed_noise(TeacherPipeline(adapter), "a red circle moving left on a black background", steps=2)
    assert [ta.world.parse_caption(c).motion for c in seen] == list(ta.world.MOTIONS)
    assert all(motion in (*ta.world.MOTIONS, None) for motion, _ in seen.values())
    reward = train_rewards.build_video_reward(resumed / "_video_reward_base")
    tokens = ta.MiniWorldTokenizer()(["a red circle moving left on a black background"])
    hidden = adapter.text_encoder(tokens)[0]
    torch.testing.assert_close(hidden[0, tokens.argmax(-1)] @ reward.model.text_encoder.text_projection.float(),
                               reward.model.encode_text(tokens), rtol=1e-3, atol=1e-3)  # fp16 reward weights
    ta.build(resumed, stages=("eps_teacher",), eps_teacher_phases=EPS_PHASES, **tiny)
    eps_adapter = load_teacher(resumed / "eps_teacher")
    assert isinstance(eps_adapter, DiffusersT2VAdapter)
    assert eps_adapter.decode_latents(torch.randn(1, ta.LATENT_CHANNELS, 8, 8, 8)).shape == (1, 3, 8, 32, 32)
    assert train_rewards.build_video_reward(resumed / "video_reward").score(torch.zeros(1, 3, 8, 32, 32), ["a red circle moving left on a black background"]).shape == (1,)


def test_text_encoder_from_the_video_reward_is_its_text_tower():
    """The converted ``CLIPTextModel``'s end-of-text row times the tower's projection is the reward's text
    feature, and its hidden states are the tower's (what the teacher cross-attends to)."""
    from miniworld import train_rewards

    torch.manual_seed(0)
    model = train_rewards.build_video_reward(None).model
    with torch.no_grad():
        for p in model.text_encoder.parameters():
            p.normal_(0, 0.3)  # away from the near-identity init, so every weight's mapping matters
    encoder = ta.text_encoder_from_viclip(model.text_encoder)
    captions = ["a red circle moving left on a black background", "a white triangle staying still on a teal background"]
    tokens = ta.MiniWorldTokenizer()(captions)
    with torch.no_grad():
        out = encoder(tokens)
        torch.testing.assert_close(out.pooler_output @ model.text_encoder.text_projection, model.encode_text(tokens))
    assert encoder.config.hidden_act == "quick_gelu" and not any(p.requires_grad for p in encoder.parameters())
    distances = ta.text_distinctness(encoder)
    assert set(distances["distances"]) == {"background", "colour", "shape", "motion"}
    assert len(distances["distances"]["colour"]) == len(ta.world.COLOURS) - 1
    others = min(d for f in ("background", "colour", "shape") for d in distances["distances"][f].values())
    assert distances["motion_to_others_min_ratio"] == pytest.approx(min(distances["distances"]["motion"].values()) / others)


def test_viclip_tubelets_cover_consecutive_frames():
    from miniworld.train_rewards import video_model_config
    from rewards.viclip import build_viclip

    config = video_model_config()
    model = build_viclip(config)
    assert model.vision_encoder.conv1.weight.shape[2:] == (2, 8, 8)
    assert model.vision_encoder.temporal_positional_embedding.shape == (1, 4, 64)
    torch.manual_seed(0)
    video = torch.randn(2, 8, 3, 32, 32)
    with torch.no_grad():
        base = model.encode_video(video)
        swapped_inside = model.encode_video(video[:, [1, 0, 2, 3, 4, 5, 6, 7]])  # order inside the first tubelet
    assert base.shape == (2, 64) and not torch.allclose(base, swapped_inside)
    with pytest.raises(ValueError, match="tubelet_size"):
        build_viclip({**config, "vision": {**config["vision"], "tubelet_size": 3}})


def test_variant_sets_and_attribute_accuracy():
    from miniworld import train_rewards, world

    texts = sorted(world.all_captions())
    sets = train_rewards.variant_sets(texts, "motion")
    assert sets.shape == (len(texts), len(world.MOTIONS)) and torch.equal(sets[:, 0], torch.arange(len(texts)))
    for row in sets[:10]:
        attrs = [world.parse_caption(texts[i]) for i in row]
        assert len({a.motion for a in attrs}) == len(world.MOTIONS)
        assert len({(a.colour, a.shape, a.background) for a in attrs}) == 1
    with pytest.raises(ValueError, match="lack the motion variant"):
        train_rewards.variant_sets([t for t in texts if "moving up" not in t], "motion")

    fields = ("background", "colour", "shape", "motion")
    assert train_rewards.attribute_accuracy(torch.eye(len(texts)), texts) == {f: 1.0 for f in fields}
    # a reward blind to motion ties every motion variant: the first option wins, so motion is at chance (1/5)
    blind = torch.tensor([[float(world.strip_motion(a) == world.strip_motion(b)) for b in texts] for a in texts])
    accuracy = train_rewards.attribute_accuracy(blind, texts)
    assert accuracy["colour"] == accuracy["shape"] == accuracy["background"] == 1.0
    assert accuracy["motion"] == pytest.approx(1 / len(world.MOTIONS))


def test_variant_sets_of_motion_free_captions_pad_the_held_out_compositions():
    from miniworld import train_rewards, world

    texts = sorted({world.strip_motion(c) for c in world.all_captions() if not world.parse_caption(c).held_out})
    sets = train_rewards.variant_sets(texts, "shape")
    assert sets.shape == (len(texts), len(world.SHAPES)) and torch.equal(sets[:, 0], torch.arange(len(texts)))
    red_circle = texts.index("a red circle on a black background")
    assert [texts[i] for i in sets[red_circle] if i >= 0] == ["a red circle on a black background", "a red square on a black background"]
    assert sets[red_circle, -1] == -1  # red triangle is held out: no caption, padded
    padded = (sets < 0).sum(1)
    assert padded.max() == 1 and padded.sum() == 2 * 3 * len(world.BACKGROUNDS)  # per held-out pair: two seen shapes lose it
    gallery = sorted({world.strip_motion(c) for c in world.all_captions()})
    assert train_rewards.attribute_accuracy(torch.eye(len(gallery)), gallery, ("background", "colour", "shape"))["shape"] == 1.0


def test_variant_videos_change_one_field_and_never_render_a_held_out_composition():
    from miniworld import minibench, train_rewards, world

    attrs = [world.parse_caption(c) for c in ("a red circle moving left on a black background",
                                              "a blue square staying still on a teal background",
                                              "a yellow triangle moving up on a gray background")]
    fields = ("background", "colour", "shape", "motion")
    videos, chosen = train_rewards.variant_videos(attrs, fields, seed=0)
    assert videos.shape == (3, 4, world.NUM_FRAMES, world.HEIGHT, world.WIDTH, 3) and videos.dtype == np.uint8
    for source, row in zip(attrs, chosen):
        for field, variant in zip(fields, row):
            changed = [f for f in fields if getattr(variant, f) != getattr(source, f)]
            assert changed == [field] and not variant.held_out
    # each rendered variant is a ground-truth video of its own caption
    scores = minibench.evaluate(videos.reshape(-1, *videos.shape[2:]), [world.caption_of(a) for row in chosen for a in row])
    assert scores["overall"]["total"] >= 0.95
    again, _ = train_rewards.variant_videos(attrs, fields, seed=0)
    assert np.array_equal(videos, again)


def test_sample_ranking_loss_is_the_caption_cross_entropy_over_its_sample_and_variants():
    from miniworld.train_rewards import sample_ranking_loss

    g = torch.Generator().manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    samples, variants, captions = unit(4, 8), unit(4, 3, 8), unit(4, 8)
    loss = sample_ranking_loss(samples, variants, captions, 10.0)
    expected = 0.0
    for b in range(4):
        sims = torch.stack([samples[b] @ captions[b]] + [variants[b, k] @ captions[b] for k in range(3)])
        expected += -torch.log_softmax(10.0 * sims, 0)[0] / 4
    torch.testing.assert_close(loss, expected)
    # a sample that matches its caption far better than any variant costs almost nothing
    assert sample_ranking_loss(captions, -captions[:, None].expand(4, 3, 8), captions, 10.0) < 1e-6


def test_flow_teacher_tokens_cover_a_quarter_of_the_latent_frame_on_either_vae_grid():
    from diffusers import AutoencoderKL, WanTransformer3DModel

    for blocks, size, patch in (((16, 32, 64), 8, 2), ((16, 32), 16, 4)):
        vae = AutoencoderKL(**ta.vae_config(4, blocks))
        with torch.no_grad():
            latents = vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mode()
        assert latents.shape == (1, 4, size, size)
        config = ta.flow_transformer_config(4, 16, size)
        assert config["patch_size"] == (1, patch, patch)
        model = WanTransformer3DModel(**{**config, "num_layers": 1})
        with torch.no_grad():
            out = model(torch.randn(1, 4, 8, size, size), torch.tensor([500]), torch.randn(1, 5, 16)).sample
        assert out.shape == (1, 4, 8, size, size)


def test_off_palette_clips_paint_every_object_far_from_the_palette():
    clips = ta.off_palette_clips(6, seed=0)
    assert clips.shape == (6, ta.world.NUM_FRAMES, ta.world.HEIGHT, ta.world.WIDTH, 3) and clips.dtype == np.uint8
    palette = np.array(list(ta.world.COLOURS.values()), dtype=np.float64)
    visible = 0
    for clip in clips:
        frame = clip[0].reshape(-1, 3).astype(np.float64)
        background = np.median(frame, axis=0)
        inside = frame[np.linalg.norm(frame - background, axis=1) > 60]
        if len(inside) < 50:  # r >= 5 px: an object this small is one painted close to its background
            continue
        visible += 1
        colour = np.median(inside, axis=0)  # fully covered pixels dominate
        assert np.linalg.norm(palette - colour, axis=1).min() >= 95
    assert visible >= 4
    assert np.array_equal(clips, ta.off_palette_clips(6, seed=0)) and not np.array_equal(clips, ta.off_palette_clips(6, seed=1))


def test_time_reversal_rows_pair_each_caption_with_its_reversal():
    captions = sorted(["a red circle moving left on a black background", "a red circle moving right on a black background",
                       "a blue square staying still on a teal background", "a green triangle moving up on a gray background",
                       "a green triangle moving down on a gray background"])
    rows = ta.time_reversal_rows(captions)
    assert [ta.world.time_reversed_caption(c) for c in captions] == [captions[i] for i in rows]
    assert torch.equal(rows[rows], torch.arange(len(captions)))  # reversing twice is the identity
    without_right = [c for c in captions if "moving right" not in c]
    with pytest.raises(ValueError, match="reversal of 'a red circle moving left on a black background'"):
        ta.time_reversal_rows(without_right)


def test_time_reversed_pairs_repeat_the_batch_backwards_under_the_reversed_captions():
    g = torch.Generator().manual_seed(0)
    latents, labels = torch.randn(6, 8, 8, 4, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    half = ta._draw_flow_batch(latents, labels, 3, caption_dropout=0.5, shift=2.0, g=g)
    x0, rows, dropped, sigma, eps = ta.with_time_reversed_pairs(*half, reversed_rows=torch.tensor([1, 0, 2]))
    assert x0.shape == (6, 8, 8, 4, 4) and eps.shape == x0.shape
    for k in range(8):  # frame k of a clip's reversal is frame 7 - k of the clip
        torch.testing.assert_close(x0[3:, :, k], x0[:3, :, 7 - k], rtol=0, atol=0)
        torch.testing.assert_close(eps[3:, :, k], eps[:3, :, 7 - k], rtol=0, atol=0)
    assert rows[3:].tolist() == [[1, 0, 2][r] for r in rows[:3].tolist()]
    assert torch.equal(dropped[3:], dropped[:3]) and torch.equal(sigma[3:], sigma[:3])
    # the pair's noisy inputs are each other's reversal, so only the caption tells their targets apart
    from t2v_turbo.diffusion.flow import flow_add_noise, flow_velocity

    noisy, target = flow_add_noise(x0, eps, sigma), flow_velocity(x0, eps)
    torch.testing.assert_close(noisy[3:], noisy[:3].flip(2), rtol=0, atol=0)
    torch.testing.assert_close(target[3:], target[:3].flip(2), rtol=0, atol=0)


def test_the_build_commands_stage_names_are_the_builds():
    """The CLI names the stages without importing torch; its copy must stay the build's."""
    from t2v_turbo.commands import miniworld_build

    assert miniworld_build.STAGES == ta.STAGES and miniworld_build.DEFAULT_STAGES == ta.DEFAULT_STAGES


def test_warm_start_keeps_the_blocks_of_a_teacher_on_another_latent_grid_and_trains_only_what_is_named():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    old = WanTransformer3DModel(**{**ta.flow_transformer_config(8, 16, 8), "num_layers": 1})
    torch.manual_seed(1)
    new = WanTransformer3DModel(**{**ta.flow_transformer_config(4, 16, 16), "num_layers": 1})
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    reinitialised = ta.warm_start_transformer(new, old.state_dict())
    # 4 x 16x16 latents in 4x4 patches against 8 x 8x8 in 2x2: only the patch's in and out projections change shape
    assert reinitialised == ["patch_embedding.weight", "proj_out.bias", "proj_out.weight"]
    for name, value in new.state_dict().items():
        assert torch.equal(value, fresh[name] if name in reinitialised else old.state_dict()[name]), name

    # a phase that trains only the new projections leaves every block as the old teacher had it
    before = {k: v.clone() for k, v in new.state_dict().items()}
    latents = torch.randn(6, 4, 8, 16, 16)
    table, labels, empty = torch.randn(3, 5, 16), torch.tensor([0, 1, 2, 0, 1, 2]), torch.zeros(5, 16)
    _, stats = ta.train_flow_teacher(new, latents, table, labels, empty, steps=2, batch_size=2,
                                     trainable=("patch_embedding", "proj_out"))
    changed = {k for k, v in new.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith(("patch_embedding", "proj_out")) for k in changed)
    assert stats["trainable"] == ["patch_embedding", "proj_out"]
    assert all(p.requires_grad for p in new.parameters())  # the next phase trains everything again
