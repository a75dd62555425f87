"""Wan (flow) students end to end on tiny random-weight teachers: the multistep flow sampler against
its formula, the CLI training step with CD + image + video rewards resumed bit-exactly, and the
exports loaded by stock diffusers in a subprocess that imports nothing of ours."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from t2v_turbo.adapters.wan import WanAdapter
from t2v_turbo.config import load_config, save_config
from t2v_turbo.diffusion.flow import shift_sigmas
from t2v_turbo.diffusion.solver import guidance_scale_embedding
from t2v_turbo.pipeline import T2VTurboPipeline, TeacherPipeline, load_student_pipeline
from t2v_turbo.student import LoraSettings, StudentMeta, build_student, save_student
from t2v_turbo.testing import build_tiny_wan, write_caption_folder

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY = {"num_frames": 9, "height": 32, "width": 32}
CAPTIONS = ["a cat running", "a red car on the street", "a bird flying in the sky", "a dog on the beach"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return build_tiny_wan(tmp_path_factory.mktemp("wan") / "teacher", seed=0)


@pytest.fixture(scope="module")
def adapter(teacher_dir):
    return WanAdapter.from_pretrained(teacher_dir, fps=8, **GEOMETRY)


@pytest.fixture(scope="module")
def student_dir(adapter, tmp_path_factory):
    """A LoRA student with random (non-zero) LoRA B and guidance weights, saved as a student folder."""
    lora = LoraSettings(rank=4, alpha=8.0, dropout=0.0, target_modules="attention")
    unet = build_student(adapter, 256, lora=lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name or "cond_proj" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    meta = StudentMeta.for_adapter(adapter, lora=lora, guidance_scale=4.0)
    return save_student(tmp_path_factory.mktemp("student") / "student", unet, meta)


def test_flow_sampler_steps_are_the_consistency_formula(adapter, student_dir):
    pipe = load_student_pipeline(student_dir)
    latents = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    out = pipe(["a cat running", "a red car"], guidance_scale=4.0, latents=latents, output_type="latent",
               generator=torch.Generator().manual_seed(2), **GEOMETRY)
    # T2V-Turbo spacing on the flow grid: indices [999, 759, 519, 279] -> sigma = shift((i + 1) / 1000)
    expected = shift_sigmas(torch.tensor([1.0, 0.76, 0.52, 0.28], dtype=torch.float64), 3.0).float()
    torch.testing.assert_close(pipe.scheduler.sigmas, torch.cat([expected, torch.zeros(1)]))
    # the loop written out: f = z - s v; z <- (1 - s') f + s' noise; return the last f
    text = adapter.encode_prompts(["a cat running", "a red car"])
    w = guidance_scale_embedding(torch.full((2,), 4.0), 256)
    z, g = latents.clone(), torch.Generator().manual_seed(2)
    sigmas = expected.tolist() + [0.0]
    with torch.no_grad():
        for s, s_next in zip(sigmas, sigmas[1:]):
            v = adapter.predict(pipe.unet, z, torch.full((2,), 1000 * s), text, timestep_cond=w)
            f = z - s * v
            z = (1 - s_next) * f + s_next * torch.randn(z.shape, generator=g)
    torch.testing.assert_close(out, z, atol=1e-5, rtol=1e-5)
    assert pipe.unet_calls == 4 and pipe.unet_evaluations == 8


def test_lcm_spacing_is_flow_match_lcm_rule_and_teacher_pipeline_runs(adapter, student_dir):
    pipe = load_student_pipeline(student_dir, spacing="lcm")
    pipe(["a cat"], num_inference_steps=4, output_type="latent", generator=torch.Generator().manual_seed(0), **GEOMETRY)
    # diffusers' rule: shift(linspace(1, shift(1/T), n)), the end point shifted twice
    unshifted = torch.linspace(1.0, float(shift_sigmas(torch.tensor(0.001, dtype=torch.float64), 3.0)), 4)
    torch.testing.assert_close(pipe.scheduler.sigmas[:-1], shift_sigmas(unshifted.double(), 3.0).float())
    teacher = TeacherPipeline(adapter)
    videos = teacher(["a cat"], num_inference_steps=3, guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
                     **GEOMETRY)
    assert type(teacher.scheduler).__name__ == "UniPCMultistepScheduler"
    assert videos.shape == (1, 3, 9, 32, 32) and teacher.unet_calls == 3 and teacher.unet_evaluations == 6


def test_student_pipeline_rejects_frames_off_the_wan_rule(adapter, student_dir):
    pipe = T2VTurboPipeline(adapter, adapter.build_student_unet())
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        pipe(["a cat"], num_frames=8, height=32, width=32)


STOCK_CHECK = textwrap.dedent('''
    import json, sys
    import torch
    from diffusers import WanPipeline, WanTransformer3DModel

    folder, teacher, steps, guidance = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    ref = torch.load(folder + "/reference.pt")
    call = dict(prompt=["a cat running"], num_inference_steps=steps, guidance_scale=guidance, latents=ref["latents"],
                output_type="latent", height=32, width=32, num_frames=9)
    result = {}
    stock = WanPipeline.from_pretrained(folder + "/diffusers")
    result["scheduler"] = type(stock.scheduler).__name__
    torch.manual_seed(11)
    result["diffusers"] = (stock(**call).frames - ref["ours"]).abs().max().item()
    base = WanPipeline.from_pretrained(teacher)
    base.scheduler = type(stock.scheduler).from_pretrained(folder + "/lora", subfolder="scheduler")
    torch.manual_seed(11)
    result["base"] = (base(**call).frames - ref["ours"]).abs().max().item()
    base.load_lora_weights(folder + "/lora")
    torch.manual_seed(11)
    result["lora"] = (base(**call).frames - ref["ours"]).abs().max().item()
    merged = WanTransformer3DModel.from_pretrained(folder + "/merged")
    base.unload_lora_weights()
    base.transformer = merged
    torch.manual_seed(11)
    result["merged"] = (base(**call).frames - ref["ours"]).abs().max().item()
    result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("t2v_turbo", "distill", "rewards"))
    print(json.dumps(result))
''')


def stock_scheduler_reproducing(folder, teacher_dir, steps, guidance_scale) -> str:
    """Run STOCK_CHECK on the exports in ``folder`` (a process that imports nothing of ours), check that each
    export reproduces ``reference.pt`` and the base model alone does not; the export's scheduler class."""
    env = {"PYTHONPATH": "", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", STOCK_CHECK, str(folder), str(teacher_dir), str(steps),
                          str(guidance_scale)], capture_output=True, text=True, cwd=folder, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["modules"] == []
    assert result["diffusers"] < 1e-4 and result["lora"] < 1e-4 and result["merged"] < 1e-4, result
    assert result["base"] > 1e-2  # the LoRA changes the output
    return result["scheduler"]


@pytest.mark.slow
def test_exports_in_stock_diffusers_reproduce_our_sampler(teacher_dir, student_dir, tmp_path):
    """diffusers / lora (pytorch_lora_weights.safetensors) / merged exports, run by stock WanPipeline
    with FlowMatchLCMScheduler (guidance 1, the scale folded in), equal our sampler (spacing "lcm")."""
    from t2v_turbo.export import export_student

    pipe = load_student_pipeline(student_dir, spacing="lcm")
    latents = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(11)  # WanPipeline steps its scheduler without a generator: the global RNG
    ours = pipe(["a cat running"], guidance_scale=4.0, latents=latents, output_type="latent", **GEOMETRY)
    torch.save({"latents": latents, "ours": ours}, tmp_path / "reference.pt")
    for fmt in ("diffusers", "lora", "merged"):
        export_student(student_dir, tmp_path / fmt, fmt, guidance_scale=4.0)
    record = json.loads((tmp_path / "diffusers" / "export.json").read_text())
    assert record["folded_guidance_scale"] == 4.0 and record["run_with"]["guidance_scale"] == 1.0
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert stock_scheduler_reproducing(tmp_path, teacher_dir, steps=4, guidance_scale=1.0) == "FlowMatchLCMScheduler"


@pytest.mark.slow
def test_a_fine_tuned_full_step_model_exports_for_stock_diffusers(teacher_dir, adapter, tmp_path):
    """A full-step Wan model with LoRA (what DPO, RWR and VADER train on a flow teacher), exported as lora /
    merged / diffusers and run by stock WanPipeline with the teacher's scheduler and CFG, equals our sampler."""
    from t2v_turbo.export import export_student

    lora = LoraSettings(rank=4, alpha=8.0, dropout=0.0, target_modules="attention")
    unet = build_student(adapter, None, lora=lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    meta = StudentMeta.for_adapter(adapter, lora=lora, time_cond_proj_dim=None, guidance_scale=5.0,
                                   num_inference_steps=3)
    folder = save_student(tmp_path / "model", unet, meta)
    pipe = load_student_pipeline(folder)
    latents = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    ours = pipe(["a cat running"], num_inference_steps=3, guidance_scale=5.0, latents=latents, output_type="latent",
                **GEOMETRY)
    torch.save({"latents": latents, "ours": ours}, tmp_path / "reference.pt")
    for fmt in ("diffusers", "lora", "merged"):
        export_student(folder, tmp_path / fmt, fmt)
    record = json.loads((tmp_path / "lora" / "export.json").read_text())
    assert record["folded_guidance_scale"] is None and record["run_with"]["guidance_scale"] == 5.0
    assert "guidance_scale=5" in (tmp_path / "merged" / "README.md").read_text()
    assert stock_scheduler_reproducing(tmp_path, teacher_dir, steps=3, guidance_scale=5.0) == "UniPCMultistepScheduler"


def test_diffusers_export_needs_stock_wan_components(tmp_path):
    from t2v_turbo.export import export_student

    custom = build_tiny_wan(tmp_path / "custom", seed=1, vae="per_frame", text_encoder="clip")
    adapter = WanAdapter.from_pretrained(custom, num_frames=8, height=32, width=32)
    lora = LoraSettings(rank=2, alpha=2.0, target_modules="attention")
    folder = save_student(tmp_path / "student", build_student(adapter, 256, lora=lora),
                          StudentMeta.for_adapter(adapter, lora=lora))
    with pytest.raises(ValueError, match="a T5 text encoder; this teacher has AutoencoderKL and CLIPTextModel"):
        export_student(folder, tmp_path / "out", "diffusers")
    export_student(folder, tmp_path / "merged", "merged", guidance_scale=3.0)
    assert (tmp_path / "merged" / "diffusion_pytorch_model.safetensors").is_file()


def _train_config(assets, tmp_path, output, *overrides):
    from rewards.testing import TINY_REWARD_KWARGS

    hps = TINY_REWARD_KWARGS["hpsv2.1"](tmp_path / "hps")
    hps = {k: str(v) if not isinstance(v, dict) else v for k, v in hps.items()}
    cfg = load_config(ROOT / "configs" / "tiny_wan.yaml", [
        f"teacher.path={assets['teacher']}", f"data.folder={assets['videos']}", f"output_dir={output}",
        "logging.tensorboard=false", "train.checkpoint_every=1", "train.keep_checkpoints=5", "train.log_every=1",
        "model.lora.dropout=0.1", *overrides])
    cfg["rewards"] = [
        {"name": "hpsv2.1", "weight": 1.0, "args": {**hps, "frame_selection": {"num_frames": 2}}},
        {"name": "viclip", "weight": 2.0, "args": {"config": "tiny", "checkpoint": None, "stride": 1}},
    ]
    path = output.parent / f"{output.name}.yaml"
    save_config(cfg, path)
    return path


@pytest.mark.slow
def test_cd_and_rewards_step_through_the_cli_resumes_bit_exactly(teacher_dir, tmp_path):
    from safetensors.torch import load_file

    from distill.trainer import TrainingRecipe
    from t2v_turbo.cli import main

    assets = {"teacher": teacher_dir, "videos": write_caption_folder(tmp_path / "videos", CAPTIONS)}
    full = _train_config(assets, tmp_path, tmp_path / "full", "train.max_steps=2")
    cut = _train_config(assets, tmp_path, tmp_path / "cut", "train.max_steps=1")
    assert main(["train", str(full)]) == 0
    assert main(["train", str(cut)]) == 0
    resumed = _train_config(assets, tmp_path, tmp_path / "cut", "train.max_steps=2")
    assert main(["train", str(resumed), "--resume", "latest"]) == 0
    a = load_file(tmp_path / "full" / "student" / "student.safetensors")
    b = load_file(tmp_path / "cut" / "student" / "student.safetensors")
    assert set(a) == set(b) and "condition_embedder.time_embedder.cond_proj.weight" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert a["condition_embedder.time_embedder.cond_proj.weight"].abs().sum() > 0  # the guidance layer trained
    # one step by hand: both rewards scored, only latent frames 0..1 decoded (frame_window 5)
    recipe = TrainingRecipe(load_config(full, ["train.max_steps=1", f"output_dir={tmp_path / 'one'}"]))
    recipe.setup()
    try:
        out = recipe.train_step(next(iter(recipe.dataloader)), grad_norms=True)[0]
    finally:
        recipe.cleanup()
    assert set(out.rewards) == {"hpsv2.1", "viclip"} and out.cd_loss is not None
    assert out.decoded_latent_frames == [2] and all(n > 0 for n in out.reward_grad_norms.values())


def test_sample_and_export_commands_for_wan(teacher_dir, student_dir, tmp_path, capsys):
    from t2v_turbo.cli import main

    geometry = ["--num-frames", "9", "--height", "32", "--width", "32", "--steps", "2"]
    assert main(["sample", "--checkpoint", str(student_dir), "--prompt", "a cat", "--out", str(tmp_path / "s.gif"),
                 "--guidance", "4", *geometry]) == 0
    assert main(["sample", "--teacher", str(teacher_dir), "--prompt", "a cat", "--out", str(tmp_path / "t.gif"),
                 "--guidance", "5", *geometry]) == 0
    assert (tmp_path / "s.gif").is_file() and (tmp_path / "t.gif").is_file()
    assert main(["export", str(student_dir), "--format", "merged", "--out", str(tmp_path / "m"),
                 "--guidance-scale", "3"]) == 0
    assert json.loads((tmp_path / "m" / "export.json").read_text())["folded_guidance_scale"] == 3.0
    card = (tmp_path / "m" / "README.md").read_text()
    assert "WanTransformer3DModel.from_pretrained" in card and "guidance w = 3 is folded" in card


@pytest.mark.slow
def test_gpu_bench_smoke_path_on_cpu():
    import importlib.util
    import math

    spec = importlib.util.spec_from_file_location("bench_wan_gpu", ROOT / "bench" / "bench_wan_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--device", "cpu", "--tiny", "--steps", "1"])
    assert result["rewards"] == ["hpsv2.1", "internvideo2"] and result["decoded_latent_frames"] == [3]
    assert result["video_shape"] == [1, 3, 9, 32, 32] and all(math.isfinite(x) for x in result["losses"])
