"""T2VTurboPipeline / TeacherPipeline on the tiny teacher, and against stock diffusers."""

import pytest
import torch

from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
from t2v_turbo.diffusion.solver import guidance_scale_embedding
from t2v_turbo.pipeline import T2VTurboPipeline, TeacherPipeline, load_student_pipeline
from t2v_turbo.student import LoraSettings, StudentMeta, build_student, save_student
from t2v_turbo.testing import build_tiny_diffusers_t2v, randomise_trainable

GEOMETRY = dict(num_frames=3, height=16, width=16)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return build_tiny_diffusers_t2v(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def adapter(teacher_dir):
    return DiffusersT2VAdapter.from_pretrained(teacher_dir)


@pytest.fixture(scope="module")
def student(adapter):
    return randomise_trainable(build_student(adapter, 256, lora=LoraSettings(rank=4, alpha=4)), seed=11).eval()


def test_student_pipeline_shapes_range_calls_and_determinism(adapter, student):
    pipe = T2VTurboPipeline(adapter, student)
    video = pipe(["a cat", "a red car"], num_inference_steps=4, generator=torch.Generator().manual_seed(0), **GEOMETRY)
    assert video.shape == (2, 3, 3, 16, 16)
    assert video.min() >= -1 and video.max() <= 1
    assert pipe.unet_calls == 4 and pipe.unet_evaluations == 8
    again = pipe(["a cat", "a red car"], num_inference_steps=4, generator=torch.Generator().manual_seed(0), **GEOMETRY)
    assert torch.equal(video, again)
    assert pipe.scheduler.timesteps.tolist() == [999, 759, 519, 279]


def test_sampling_runs_in_inference_mode_unless_the_network_is_in_training(adapter, student):
    """Inference mode by default (no autograd bookkeeping); a pipeline over a network in training
    (``inference_mode=False``, as the trainer's validation and online DPO build it) returns ordinary tensors that
    a training step can use, and the samples are the same either way."""
    kwargs = dict(num_inference_steps=2, generator=None, output_type="latent", **GEOMETRY)
    fast = T2VTurboPipeline(adapter, student)(["a cat"], **{**kwargs, "generator": torch.Generator().manual_seed(0)})
    plain = T2VTurboPipeline(adapter, student, inference_mode=False)(
        ["a cat"], **{**kwargs, "generator": torch.Generator().manual_seed(0)})
    assert torch.is_inference(fast) and not torch.is_inference(plain)
    torch.testing.assert_close(fast, plain, rtol=0, atol=0)
    teacher = TeacherPipeline(adapter, inference_mode=False)(["a cat"], guidance_scale=3.0, **{**kwargs, "generator": None})
    assert not torch.is_inference(teacher)
    assert torch.is_inference(TeacherPipeline(adapter)(["a cat"], guidance_scale=3.0, **kwargs))


def test_guidance_scale_reaches_the_student(adapter, student):
    pipe = T2VTurboPipeline(adapter, student)
    latents = [
        pipe("a cat", guidance_scale=w, generator=torch.Generator().manual_seed(0), output_type="latent", **GEOMETRY)
        for w in (2.0, 12.0)
    ]
    assert (latents[0] - latents[1]).abs().max() > 1e-4


@pytest.mark.parametrize("t", [999, 1])
def test_explicit_latents_and_timesteps(adapter, student, t):
    """One step from given latents, against the formulas written out: x0 = (z - sqrt(1 - abar) eps) / sqrt(abar),
    f = c_skip z + c_out x0 with c_skip = s^2 / ((a t)^2 + s^2), c_out = a t / sqrt((a t)^2 + s^2), s = 0.5,
    a = 10. At t = 1 (off the DDIM grid, so a warning) c_skip = 0.0025 is far from negligible."""
    pipe = T2VTurboPipeline(adapter, student)
    z = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    if t == 999:
        one_step = pipe("a dog", latents=z, timesteps=[t], output_type="latent", **GEOMETRY)
    else:
        with pytest.warns(UserWarning, match=r"timesteps \[1\] are not on the 50-point DDIM grid"):
            one_step = pipe("a dog", latents=z, timesteps=[t], output_type="latent", **GEOMETRY)
    assert pipe.unet_calls == 1
    # the embedding of w = 7.5 (held against diffusers' LCM pipeline in test_solver; an independent float32
    # rewrite of it differs by ~1e-3 rad at 1000 w = 7500, which 1 / sqrt(abar_999) = 15 amplifies in x0)
    w_emb = guidance_scale_embedding(torch.tensor([7.5]), 256)
    text = adapter.encode_prompts(["a dog"])
    with torch.no_grad():
        eps = student(z, torch.tensor([t]), encoder_hidden_states=text, timestep_cond=w_emb).sample
    abar = adapter.alphas_cumprod[t]
    x0 = (z - (1 - abar).sqrt() * eps) / abar.sqrt()
    c_skip = 0.25 / ((10.0 * t) ** 2 + 0.25)
    c_out = 10.0 * t / ((10.0 * t) ** 2 + 0.25) ** 0.5
    torch.testing.assert_close(one_step, c_skip * z + c_out * x0, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"`latents` has shape \(1, 4, 3, 8, 8\), expected \(2,"):
        pipe(["a", "b"], latents=z, **GEOMETRY)


def test_teacher_pipeline_equals_stock_diffusers(teacher_dir, adapter):
    from diffusers import TextToVideoSDPipeline

    stock = TextToVideoSDPipeline.from_pretrained(teacher_dir)
    stock.set_progress_bar_config(disable=True)
    prompts = ["a cat running", "a blue boat"]
    expected = stock(
        prompts, num_inference_steps=5, guidance_scale=7.5, generator=torch.Generator().manual_seed(3),
        output_type="latent", **GEOMETRY,
    ).frames
    pipe = TeacherPipeline(adapter)
    ours = pipe(prompts, num_inference_steps=5, guidance_scale=7.5, generator=torch.Generator().manual_seed(3), output_type="latent", **GEOMETRY)
    assert pipe.unet_calls == 5 and pipe.unet_evaluations == 20
    # same algorithm and random draws; alpha_bar float64-vs-float32 rounding only
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_load_student_pipeline_reproduces_the_in_memory_student(teacher_dir, adapter, student, tmp_path):
    from peft.tuners.lora import LoraLayer

    settings = LoraSettings(rank=4, alpha=4)
    save_student(tmp_path, student, StudentMeta.for_adapter(adapter, lora=settings))
    kwargs = dict(generator=torch.Generator().manual_seed(5), output_type="latent", **GEOMETRY)
    ours = T2VTurboPipeline(adapter, student)("a bird flying", **kwargs)

    def sample(pipe):
        return pipe("a bird flying", **dict(kwargs, generator=torch.Generator().manual_seed(5)))

    unmerged = load_student_pipeline(tmp_path, fuse_lora=False)
    saved, reloaded = student.state_dict(), unmerged.unet.state_dict()
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
    # two model instances: equal weights (bit for bit, above), outputs up to float reordering
    torch.testing.assert_close(sample(unmerged), ours, atol=1e-5, rtol=1e-5)
    fused = T2VTurboPipeline.from_pretrained(tmp_path)  # the diffusers idiom; LoRA merged by default
    assert not any(isinstance(m, LoraLayer) for m in fused.unet.modules())
    assert any(isinstance(m, LoraLayer) for m in unmerged.unet.modules())
    torch.testing.assert_close(sample(fused), ours, atol=1e-5, rtol=1e-5)  # W + (alpha/r) B A: float rounding only


def test_fuse_lora_merges_every_delta_into_the_base_weight(adapter, student):
    import copy

    from peft.tuners.lora import LoraLayer

    from t2v_turbo.student import fuse_lora

    fused = fuse_lora(copy.deepcopy(student))
    names = [n for n, m in student.named_modules() if isinstance(m, LoraLayer)]
    assert names and not any(isinstance(m, LoraLayer) for m in fused.modules())
    params = dict(student.named_parameters())
    for name in names:
        lora_a, lora_b = params[f"{name}.lora_A.default.weight"], params[f"{name}.lora_B.default.weight"]
        expected = params[f"{name}.base_layer.weight"] + (4 / 4) * lora_b @ lora_a  # W + (alpha / rank) B A, alpha = rank = 4
        assert type(fused.get_submodule(name)) is torch.nn.Linear
        torch.testing.assert_close(fused.get_submodule(name).weight, expected, atol=1e-7, rtol=0)


def test_student_meta_supplies_sampling_defaults_and_warns_outside_the_trained_range(adapter, student, tmp_path):
    settings = LoraSettings(rank=4, alpha=4)
    meta = StudentMeta.for_adapter(adapter, lora=settings, guidance_scale=3.0, num_inference_steps=2,
                                   guidance_range=[2.0, 6.0], num_frames=2, height=8, width=16, fps=4)
    save_student(tmp_path, student, meta)
    pipe = T2VTurboPipeline.from_pretrained(tmp_path)
    video = pipe("a cat", generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 3, 2, 8, 16) and pipe.unet_calls == 2
    explicit = T2VTurboPipeline(adapter, student)("a cat", num_inference_steps=2, guidance_scale=3.0, num_frames=2, height=8,
                                                 width=16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(video, explicit, atol=1e-5, rtol=1e-5)  # the defaults are the meta's values
    with pytest.warns(UserWarning, match=r"guidance scale 9 is outside the range the student was trained on \[2, 6\]"):
        pipe("a cat", guidance_scale=9.0, output_type="latent")
    frames = pipe("a cat", generator=torch.Generator().manual_seed(0), output_type="np", return_dict=True).frames
    assert frames.shape == (1, 2, 8, 16, 3) and frames.min() >= 0 and frames.max() <= 1  # diffusers' layout
    torch.testing.assert_close(torch.from_numpy(frames), (video.permute(0, 2, 3, 4, 1) + 1) / 2, atol=1e-6, rtol=0)


def test_sample_cli_student_file_and_prompt_folder(adapter, student, tmp_path):
    from t2v_turbo.cli import main
    from t2v_turbo.video_io import read_video

    ckpt = tmp_path / "student"
    save_student(ckpt, student, StudentMeta.for_adapter(adapter, lora=LoraSettings(rank=4, alpha=4)))
    small = ["--num-frames", "3", "--height", "16", "--width", "16", "--device", "cpu"]
    assert main(["sample", "--checkpoint", str(ckpt), "--prompt", "a cat", "--out", str(tmp_path / "a.mp4"), *small]) == 0
    frames = read_video(tmp_path / "a.mp4")
    assert frames.shape == (3, 16, 16, 3)
    # the file holds the pipeline's video: the same encoder on the same frames gives the same decode
    from t2v_turbo.video_io import write_video

    expected = T2VTurboPipeline(adapter, student)("a cat", generator=torch.Generator().manual_seed(0), fps=8, **GEOMETRY)[0]
    assert (frames == read_video(write_video(tmp_path / "expected.mp4", expected, fps=8))).all()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na red car on the street\n")
    out = tmp_path / "videos"
    assert main(["sample", "--checkpoint", str(ckpt), "--prompts-file", str(prompts), "--out", str(out), "--format", "gif",
                 "--batch-size", "1", "--num-samples", "2", *small]) == 0
    # the names MiniBench and VBench read: {prompt}-{i}
    assert sorted(p.name for p in out.iterdir()) == ["a cat-0.gif", "a cat-1.gif", "a red car on the street-0.gif",
                                                     "a red car on the street-1.gif"]


def test_sample_cli_teacher(teacher_dir, tmp_path, capsys):
    from t2v_turbo.cli import main

    small = ["--num-frames", "2", "--height", "16", "--width", "16", "--device", "cpu"]
    assert main(["sample", "--teacher", str(teacher_dir), "--prompt", "a dog", "--steps", "3", "--out", str(tmp_path / "t.gif"), *small]) == 0
    assert (tmp_path / "t.gif").is_file()
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\n")
    assert main(["sample", "--teacher", str(teacher_dir), "--prompts-file", str(prompts), "--out", str(tmp_path / "x.mp4"), *small]) == 2
    assert "t2v-turbo sample: error: --out " in capsys.readouterr().err
