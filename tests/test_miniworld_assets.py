"""The shipped mini-world assets load through the public loaders and generate videos of the right shape: the
first world (epsilon UNet3D teacher, ``miniworld/assets/``) and the mini world v2 (flow DiT teacher that follows
motion, ``miniworld/assets/v2/``), whose models are checked for the properties they were rebuilt for."""

import json

import pytest
import torch

from miniworld import assets, train_assets, world
from miniworld.tokenizer import MiniWorldTokenizer, build_hf_tokenizer, vocabulary
from miniworld.train_assets import TEACHER_PHASES

PROMPTS = ["a red triangle moving left on a black background", "a green square staying still on a teal background"]


def test_tokenizer_faces_agree_and_eos_is_largest():
    tok = MiniWorldTokenizer()
    ids = tok(PROMPTS)
    hf = build_hf_tokenizer()(PROMPTS, padding="max_length", max_length=tok.context_length, return_tensors="pt").input_ids
    assert torch.equal(ids, hf)
    assert tok.eos_id == max(vocabulary().values())
    assert (ids.argmax(1) == (ids == tok.eos_id).float().argmax(1)).all()  # argmax pooling finds [EOS]
    assert torch.equal(MiniWorldTokenizer(strip_motion=True)(PROMPTS[:1]), tok(["a red triangle on a black background"]))
    assert (tok(["a zebra"])[0, 2] == tok.unk_id).item()


def test_shipped_teacher_loads_and_samples():
    from diffusers import TextToVideoSDPipeline

    from t2v_turbo.pipeline import TeacherPipeline

    adapter = assets.load_teacher()
    assert adapter.vae_scale_factor != 0.18215  # set from the latent std of the mini world's VAE
    assert torch.equal(adapter.tokenizer(PROMPTS, padding="max_length", max_length=16, return_tensors="pt").input_ids,
                       MiniWorldTokenizer()(PROMPTS))
    video = TeacherPipeline(adapter)(PROMPTS, num_inference_steps=3, guidance_scale=4.0, generator=torch.Generator().manual_seed(0))
    assert video.shape == (2, 3, 8, 32, 32) and video.abs().max() <= 1.5
    stock = TextToVideoSDPipeline.from_pretrained(assets.TEACHER, torch_dtype=torch.float32)
    frames = stock(PROMPTS[0], num_inference_steps=2, height=32, width=32, num_frames=8, output_type="np").frames
    assert frames.shape == (1, 8, 32, 32, 3)


def test_shipped_teacher_takes_the_background_from_the_caption():
    """The same initial noise under three captions that differ only in the background gives each caption's
    background (the teacher trained on plain noise read it from the noise instead: 0.48 on MiniBench)."""
    from miniworld import minibench
    from t2v_turbo.pipeline import TeacherPipeline
    from t2v_turbo.video_io import to_uint8_videos

    pipe = TeacherPipeline(assets.load_teacher())
    hits = []
    for seed in range(3):
        for background in world.BACKGROUNDS:
            prompt = f"a green circle moving up on a {background} background"
            video = pipe([prompt], num_inference_steps=10, guidance_scale=4.0, generator=torch.Generator().manual_seed(seed))
            hits.append(minibench.analyse_video(to_uint8_videos(video)[0])["background"] == background)
    assert sum(hits) >= 8, hits


def test_shipped_rewards_load_and_prefer_the_right_caption():
    from rewards import build_reward

    image, video = build_reward("miniworld-image"), build_reward("miniworld-video")
    gt = world.to_pixels(world.sample_for_caption(PROMPTS[0]).video[None])
    wrong_colour = "a blue triangle moving left on a black background"
    wrong_motion = "a red triangle moving right on a black background"
    g = torch.Generator().manual_seed(0)
    assert image(gt, [PROMPTS[0]], g) > image(gt, [wrong_colour], g)
    # the video reward tells attributes apart on a 270-video gallery (one per caption); motion is its weak one
    from miniworld.train_rewards import _gallery, attribute_accuracy

    videos, captions = _gallery()
    with torch.no_grad():
        sim = video.model.encode_video(video.preprocess_clip(world.to_pixels(videos)), normalize=True) @ video.encode_prompts(captions).T
    accuracy = attribute_accuracy(sim, captions)
    assert accuracy["colour"] > 0.9 and accuracy["background"] > 0.9
    assert accuracy["motion"] > 0.4  # chance 0.2
    # the image reward cannot see motion: the motion phrase is dropped from its text
    assert torch.allclose(image.score(gt[:, :, :1], [PROMPTS[0]]), image.score(gt[:, :, :1], [wrong_motion]))


def test_training_log_records_times_and_retrieval():
    log = json.loads((assets.ASSETS / "training_log.json").read_text())
    assert log["vae"]["seconds"] > 0 and log["vae_decoder"]["seconds"] > 0
    phases = log["teacher_phases"]
    assert [p["steps"] for p in phases] == [p["steps"] for p in TEACHER_PHASES]
    assert all(p["seconds"] > 0 for p in phases)
    assert 0 <= log["video_reward"]["retrieval_text_to_video"]["held_out"] <= 1
    assert set(log["video_reward"]["attribute_accuracy"]) == {"background", "colour", "shape", "motion"}
    assert 0 <= log["image_reward"]["retrieval_text_to_frame"]["seen"] <= 1


def test_shipped_student_samples():
    folder = assets.STUDENT
    if not (folder / "student.json").is_file():
        pytest.fail(f"no shipped student in {folder}")
    pipe = assets.load_shipped_student()
    video = pipe(PROMPTS, num_inference_steps=4, guidance_scale=4.0, generator=torch.Generator().manual_seed(0))
    assert video.shape == (2, 3, 8, 32, 32)


def test_asset_size_is_small():
    total = sum(p.stat().st_size for p in assets.ASSETS.rglob("*") if p.is_file())
    assert total < 20 * 2**20, f"shipped mini-world assets (both worlds) are {total / 2**20:.1f} MiB"


def test_shipped_student_samples_through_the_cli_from_any_directory(tmp_path, monkeypatch):
    """The shipped student records its teacher as ``../teacher``, resolved beside the student."""
    from t2v_turbo.cli import main

    assert json.loads((assets.STUDENT / "student.json").read_text())["teacher_path"] == "../teacher"
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "video.gif"
    assert main(["sample", "--checkpoint", str(assets.STUDENT), "--prompt", PROMPTS[0], "--num-frames", "8",
                 "--steps", "4", "--guidance", "4.0", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_sample_folder_of_the_shipped_student_is_what_minibench_reads(tmp_path):
    """`sample --out DIR` with the student's own defaults (8 frames, 32x32, w = 4, lossless): MiniBench
    reads every file, and its scores equal those of the pipeline's videos in memory."""
    from miniworld import minibench
    from t2v_turbo.cli import main
    from t2v_turbo.pipeline import T2VTurboPipeline

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "videos"
    assert main(["sample", "--checkpoint", str(assets.STUDENT), "--prompts-file", str(prompts), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p}-0.mp4" for p in PROMPTS)
    from_files = minibench.evaluate_folder(out)
    assert not from_files["unreadable"] and from_files["overall"]["count"] == 2
    videos = T2VTurboPipeline.from_pretrained(assets.STUDENT)(PROMPTS, generator=torch.Generator().manual_seed(0))
    assert videos.shape == (2, 3, 8, 32, 32)
    in_memory = minibench.evaluate(videos, PROMPTS)
    assert from_files["overall"] == in_memory["overall"]  # lossless files: the same pixels, the same scores


# ---- the mini world v2 ------------------------------------------------------------------------
V2_TEACHER = assets.V2 / "teacher"
#: captions whose five motion variants the v2 teacher is checked on (a held-out composition among them)
MOTION_CAPTIONS = ["a red circle moving left on a black background", "a green square moving up on a teal background",
                   "a blue circle moving down on a gray background"]


def test_v2_teacher_is_a_flow_dit_on_the_fine_vae():
    from t2v_turbo.adapters.wan import WanAdapter
    from t2v_turbo.pipeline import TeacherPipeline

    adapter = assets.load_teacher(V2_TEACHER)
    assert isinstance(adapter, WanAdapter) and adapter.prediction_type == "flow"
    assert adapter.latent_shape(2, 8, 32, 32) == (2, 4, 8, 16, 16)
    assert list(adapter.unet.config.patch_size) == [1, 4, 4]  # 4x4 tokens a frame, as on the coarse grid
    video = TeacherPipeline(adapter)(PROMPTS, num_inference_steps=3, guidance_scale=4.0, generator=torch.Generator().manual_seed(0))
    assert video.shape == (2, 3, 8, 32, 32) and video.abs().max() <= 1.5


def test_v2_vae_round_trip_keeps_every_minibench_dimension():
    """The fine VAE's round trip of the 90 evaluation prompts' ground truth: the ceiling of every latent model
    is >= 0.95 on each MiniBench dimension (the coarse 8x8 grid's shape: 0.867), and >= 0.9 on the held-out
    compositions alone (coarse: held-out shape 0.733)."""
    from miniworld import minibench
    from miniworld.report import vae_roundtrip

    prompts = assets.evaluation_prompts()
    report = minibench.evaluate(vae_roundtrip(assets.load_teacher(V2_TEACHER), prompts), prompts)
    dimensions = ("background", "colour", "shape", "motion", "single_object", "temporal_consistency")
    assert min(report["overall"][d] for d in dimensions) >= 0.95
    assert min(report["held_out"][d] for d in dimensions) >= 0.9


@pytest.mark.parametrize("caption", MOTION_CAPTIONS)
def test_v2_teacher_follows_the_captioned_motion_from_one_initial_noise(caption):
    """The five motion variants of a caption sampled from the same x_T (50 Euler steps, CFG 4) move as their
    captions say: five different trajectories, each the captioned one (the first world's teacher gave one
    trajectory five times)."""
    from miniworld.report import motions_under_fixed_noise
    from t2v_turbo.pipeline import TeacherPipeline

    seen = motions_under_fixed_noise(TeacherPipeline(assets.load_teacher(V2_TEACHER)), caption)
    assert {c: motion for c, (motion, _) in seen.items()} == {c: world.parse_caption(c).motion for c in seen}


def test_v2_text_encoder_keeps_the_motion_words_as_apart_as_the_other_attributes():
    from transformers import CLIPTextModel

    from miniworld.train_assets import text_distinctness

    distinctness = text_distinctness(CLIPTextModel.from_pretrained(V2_TEACHER / "text_encoder"))
    assert distinctness["motion_to_others_min_ratio"] > 0.5  # the first world's encoder: 0.064
    assert min(distinctness["distances"]["motion"].values()) > 0.2


def test_v2_video_reward_tells_the_motion_apart():
    from miniworld.train_rewards import _gallery, attribute_accuracy
    from rewards import build_reward

    video = build_reward("miniworld-video", checkpoint=str(assets.V2 / "video_reward"))
    videos, captions = _gallery()
    with torch.no_grad():
        sim = video.model.encode_video(video.preprocess_clip(world.to_pixels(videos)), normalize=True) @ video.encode_prompts(captions).T
    accuracy = attribute_accuracy(sim, captions)
    assert accuracy["motion"] >= 0.9 and accuracy["colour"] > 0.9 and accuracy["background"] > 0.9


def test_v2_student_samples_with_its_own_defaults_and_the_training_log_records_the_build():
    from t2v_turbo.pipeline import T2VTurboPipeline

    pipe = T2VTurboPipeline.from_pretrained(assets.V2 / "student")
    assert pipe.adapter.prediction_type == "flow" and pipe.meta.num_inference_steps == 4
    video = pipe(PROMPTS, generator=torch.Generator().manual_seed(0))
    assert video.shape == (2, 3, 8, 32, 32)
    torch.testing.assert_close(assets.load_shipped_student(assets.V2 / "student", V2_TEACHER)(
        PROMPTS, num_inference_steps=4, guidance_scale=pipe.meta.guidance_scale, generator=torch.Generator().manual_seed(0)),
        T2VTurboPipeline.from_pretrained(assets.V2 / "student", fuse_lora=False)(PROMPTS, generator=torch.Generator().manual_seed(0)),
        rtol=0, atol=1e-5)
    log = json.loads((assets.V2 / "training_log.json").read_text())
    assert len(log["flow_teacher_phases"]) >= 16 and all(p["seconds"] > 0 for p in log["flow_teacher_phases"])
    assert log["fine_teacher_phases"][0]["trainable"] == ["patch_embedding", "proj_out"]
    assert len(log["fine_teacher_phases"]) == len(train_assets.FINE_TEACHER_PHASES)
    assert log["video_reward"]["attribute_accuracy"]["motion"] >= 0.9


def test_v2_teacher_scores_cache_was_measured_on_the_shipped_teacher():
    """The quick start shows the cached teacher row instead of sampling the teacher; the cache names the weights it
    was measured on, which must be the shipped ones (a rebuilt teacher needs a new cache:
    ``bench/miniworld_ablation.py --write-teacher-cache``)."""
    from miniworld.report import asset_fingerprint

    cache = json.loads(assets.teacher_scores_path(V2_TEACHER).read_text())
    assert f"teacher weights {asset_fingerprint(V2_TEACHER)}" in cache["settings"]
    assert cache["report"]["overall"]["count"] == 90 and cache["report"]["overall"]["motion"] >= 0.85
