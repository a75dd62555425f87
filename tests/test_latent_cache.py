"""Cached latents and text embeddings (``distill.latent_cache``, ``t2v-turbo cache``): what is stored, resume,
refusal of a cache of another configuration, the trainer without encoders, and the loss equal to the video path's."""

import gc
import json
import weakref
from pathlib import Path

import pytest
import torch

from distill.latent_cache import (
    CachedLatents,
    CacheMismatchError,
    check_cache_source,
    pad_rows,
    shard_name,
    trim_trailing_zero_rows,
    write_cache,
)
from distill.trainer import TrainingRecipe, resolve_run_config
from t2v_turbo.adapters.base import sample_posterior
from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
from t2v_turbo.config import ConfigError, instantiate, load_config
from t2v_turbo.testing import build_tiny_diffusers_t2v, write_caption_folder

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
CAPTIONS = ["a cat running", "a red car on the street", "a bird flying in the sky", "a dog on the beach"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_assets")
    return {"teacher": build_tiny_diffusers_t2v(root / "teacher"), "videos": write_caption_folder(root / "videos", CAPTIONS),
            "root": root}


def tiny_config(assets, output_dir, *overrides):
    return resolve_run_config(load_config(TINY_CONFIG, [
        f"teacher.path={assets['teacher']}", f"data.folder={assets['videos']}", f"output_dir={output_dir}",
        "logging.tensorboard=false", *overrides]))


def reset_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def cache(assets):
    """A cache of the tiny config's 4 clips, 2 epochs of clip draws, in shards of 3 items (2 shards)."""
    cfg = tiny_config(assets, assets["root"] / "run", "validation.prompts=[a cat running,a quiet lake]")
    folder = assets["root"] / "cache"
    try:
        write_cache(cfg, folder, shard_size=3, batch_size=2, epochs=2, device="cpu", progress=False)
    finally:
        reset_accelerate()
    return {"folder": folder, "cfg": cfg}


def test_sample_posterior_draws_each_sample_from_its_own_generator():
    mean, std = torch.randn(3, 2, 2, 4, 4), torch.rand(3, 2, 2, 4, 4)
    seeds = [5, 6, 7]
    z = sample_posterior(mean, std, [torch.Generator().manual_seed(s) for s in seeds])
    for b, seed in enumerate(seeds):  # z_b = mean_b + std_b * eps_b, eps_b ~ N(0, I) from generator b alone
        eps = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(z[b], mean[b] + std[b] * eps, rtol=0, atol=0)
    # a sample's draw does not depend on the batch it is in
    alone = sample_posterior(mean[1:2], std[1:2], [torch.Generator().manual_seed(6)])
    assert torch.equal(alone[0], z[1])
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        sample_posterior(mean, std, [torch.Generator(), torch.Generator()])


def test_encode_video_samples_the_per_frame_posterior(assets):
    adapter = DiffusersT2VAdapter.from_pretrained(assets["teacher"])
    pixels = torch.rand(1, 3, 3, 16, 16) * 2 - 1
    mean, std = adapter.encode_video_posterior(pixels)
    # oracle: diffusers' posterior of each frame, scaled by the VAE's scaling factor
    for t in range(3):
        dist = adapter.vae.encode(pixels[:, :, t]).latent_dist
        torch.testing.assert_close(mean[:, :, t], dist.mean * adapter.vae_scale_factor, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(std[:, :, t], dist.std * adapter.vae_scale_factor, atol=1e-6, rtol=1e-6)
    z = adapter.encode_video(pixels, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0)))


def test_trailing_zero_rows_are_trimmed_and_padded_back():
    embedding = torch.zeros(6, 3)
    embedding[:2] = torch.randn(2, 3)
    embedding[3, 1] = 0.5  # a zero row inside the prompt stays
    trimmed = trim_trailing_zero_rows(embedding)
    assert trimmed.shape == (4, 3)
    assert torch.equal(pad_rows(trimmed, 6), embedding)
    assert trim_trailing_zero_rows(torch.zeros(5, 3)).shape == (1, 3)


def test_the_cache_holds_each_clip_posterior_and_caption_embedding(assets, cache):
    manifest = json.loads((cache["folder"] / "manifest.json").read_text())
    assert manifest["complete"] and manifest["cached_items"] == 4 and manifest["skipped"] == []
    assert manifest["geometry"] == {"num_frames": 4, "fps": 8, "height": 16, "width": 16}
    assert manifest["latent_shape"] == [4, 4, 8, 8] and manifest["epochs"] == 2
    assert manifest["teacher"] == cache["cfg"]["teacher"] and manifest["data"] == cache["cfg"]["data"]
    assert sorted(p.name for p in cache["folder"].glob("shard-*")) == [shard_name(0), shard_name(1)]
    dataset = CachedLatents(cache["folder"])
    source = instantiate(cache["cfg"]["data"])
    adapter = DiffusersT2VAdapter.from_pretrained(assets["teacher"])
    assert len(dataset) == 4 and (dataset.num_frames, dataset.height, dataset.width, dataset.fps) == (4, 16, 16, 8)
    for epoch in (0, 1, 2):  # epoch 2 reads cached epoch 0 again
        dataset.set_epoch(epoch)
        source.set_epoch(epoch % 2)
        for index in range(4):
            sample = dataset[index]
            mean, std = adapter.encode_video_posterior(source.load(index)[None])
            torch.testing.assert_close(sample["posterior_mean"], mean[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(sample["posterior_std"], std[0], atol=1e-5, rtol=1e-5)
            assert sample["caption"] == CAPTIONS[index]
            text = adapter.encode_prompts([CAPTIONS[index]])[0]
            torch.testing.assert_close(sample["text_embedding"], text, atol=1e-5, rtol=1e-5)
    dataset.set_epoch(0)
    first = [dataset[i]["posterior_mean"] for i in range(4)]
    dataset.set_epoch(1)
    # random clip starts: epochs cache other clips of the same videos
    assert any(not torch.allclose(first[i], dataset[i]["posterior_mean"]) for i in range(4))
    torch.testing.assert_close(dataset.uncond_embedding, adapter.empty_prompt_embedding(1)[0], atol=1e-6, rtol=1e-6)
    assert sorted(dataset.prompt_embeddings) == ["a cat running", "a quiet lake"]


def test_an_interrupted_cache_continues_with_its_missing_shards(assets, cache, tmp_path):
    import shutil

    folder = tmp_path / "cache"
    shutil.copytree(cache["folder"], folder)
    kept = (folder / shard_name(0)).read_bytes()
    (folder / shard_name(1)).unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ValueError, match="incomplete"):
        CachedLatents(folder)
    try:
        write_cache(cache["cfg"], folder, shard_size=3, batch_size=2, epochs=2, device="cpu", progress=False)
    finally:
        reset_accelerate()
    assert (folder / shard_name(0)).read_bytes() == kept  # not encoded again
    assert json.loads((folder / "manifest.json").read_text())["complete"]
    rewritten, original = CachedLatents(folder), CachedLatents(cache["folder"])
    torch.testing.assert_close(rewritten[3]["posterior_mean"], original[3]["posterior_mean"], atol=1e-6, rtol=1e-6)


def test_a_cache_of_another_configuration_is_refused_by_name(assets, cache, tmp_path):
    other = tiny_config(assets, tmp_path / "run", "data.num_frames=2", "validation.prompts=[a cat running,a quiet lake]")
    with pytest.raises(CacheMismatchError) as refused:
        write_cache(other, cache["folder"], shard_size=3, batch_size=2, epochs=2, device="cpu", progress=False)
    reset_accelerate()
    assert "data.num_frames: the cache has 4, this run has 2" in str(refused.value)
    assert "geometry.num_frames" in str(refused.value)
    # `train --latent-cache` checks the data node the cache was made from, the trainer the teacher before it loads
    with pytest.raises(CacheMismatchError, match="data.fps: the cache has 8, this run has 4"):
        check_cache_source(cache["folder"], dict(cache["cfg"]["data"], fps=4))
    check_cache_source(cache["folder"], cache["cfg"]["data"])
    cfg = tiny_config(assets, tmp_path / "run", f"teacher.path={tmp_path / 'another-teacher'}")
    cfg["data"] = {"_component_": "distill.latent_cache.CachedLatents", "path": str(cache["folder"])}
    recipe = TrainingRecipe(cfg)
    try:
        with pytest.raises(ConfigError, match="teacher.path: the cache has"):
            recipe.setup()
    finally:
        recipe.cleanup()
    # validation prompts the cache does not hold (the text encoder is not loaded to encode them)
    cfg = tiny_config(assets, tmp_path / "run2", "validation.every=5", "validation.prompts=[a green tree]")
    cfg["data"] = {"_component_": "distill.latent_cache.CachedLatents", "path": str(cache["folder"])}
    recipe = TrainingRecipe(cfg)
    try:
        with pytest.raises(ConfigError, match="validation.prompts: 'a green tree' is not among"):
            recipe.setup()
    finally:
        recipe.cleanup()


def test_a_video_that_cannot_be_decoded_is_skipped_and_counted(assets, tmp_path):
    videos = write_caption_folder(tmp_path / "videos", CAPTIONS[:2])
    (videos / "clip9.mp4").write_bytes(b"not an mp4")
    (videos / "clip9.txt").write_text("a broken video")
    cfg = tiny_config(assets, tmp_path / "run", f"data.folder={videos}")
    try:
        manifest = write_cache(cfg, tmp_path / "cache", shard_size=8, device="cpu", progress=False)
    finally:
        reset_accelerate()
    assert manifest["cached_items"] == 2
    assert manifest["skipped"] == [["clip9.mp4", "cannot decode"]]
    dataset = CachedLatents(tmp_path / "cache")
    assert len(dataset) == 2 and dataset.invalid_items == [("clip9.mp4", "cannot decode")]
    assert {dataset[i]["caption"] for i in range(2)} == set(CAPTIONS[:2])


def first_batch_loss(cfg):
    recipe = TrainingRecipe(cfg)
    recipe.setup()
    try:
        batch = next(iter(recipe.dataloader))
        prepared = recipe.prepare_batch(batch)
        with torch.no_grad():
            out = recipe.compute_loss(batch)
        return batch, prepared, out, recipe
    finally:
        recipe.cleanup()


def test_the_latent_path_gives_the_video_path_loss(assets, cache, tmp_path):
    """Same config, same seed: the first batch holds the same samples at the same positions; the cached posterior
    is sampled with the same per-sample draws, so latents, embeddings and the loss agree (float tolerance: the VAE
    and text encoder ran on other batches when the cache was written)."""
    video_cfg = tiny_config(assets, tmp_path / "video")
    cached_cfg = tiny_config(assets, tmp_path / "cached")
    cached_cfg["data"] = {"_component_": "distill.latent_cache.CachedLatents", "path": str(cache["folder"])}
    video_batch, video, video_out, _ = first_batch_loss(video_cfg)
    cached_batch, cached, cached_out, recipe = first_batch_loss(cached_cfg)
    assert "pixels" in video_batch and "posterior_mean" in cached_batch and "pixels" not in cached_batch
    assert video.positions == cached.positions and video.prompts == cached.prompts
    torch.testing.assert_close(cached.latents, video.latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached.text_embedding, video.text_embedding, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached.uncond_embedding, video.uncond_embedding, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached_out.loss, video_out.loss, atol=1e-6, rtol=1e-4)
    # nothing of the encoders was kept: no rewards and no validation decode pixels here
    assert recipe.adapter.text_encoder is None and recipe.adapter.vae is None
    assert set(recipe.adapter.modules()) == {"unet"}


def test_the_trainer_keeps_only_the_decoder_when_a_reward_needs_pixels(assets, cache, tmp_path):
    from rewards.testing import TINY_REWARD_KWARGS

    cfg = tiny_config(assets, tmp_path / "run", "train.max_steps=1", "train.checkpoint_every=0")
    cfg["data"] = {"_component_": "distill.latent_cache.CachedLatents", "path": str(cache["folder"])}
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in TINY_REWARD_KWARGS["hpsv2.1"](tmp_path / "hps").items()}
    cfg["rewards"] = [{"name": "hpsv2.1", "weight": 1.0, "args": {**args, "frame_selection": {"num_frames": 2}}}]
    recipe = TrainingRecipe(cfg)
    held = {}
    release = recipe._release_cached_encoders

    def observed_release():  # weak references to the recipe's own encoders, taken just before it lets them go
        held.update(text=weakref.ref(recipe.adapter.text_encoder), vae_encoder=weakref.ref(recipe.adapter.vae.encoder))
        held["decoder_params"] = sum(p.numel() for n, p in recipe.adapter.vae.named_parameters()
                                     if n.startswith(("decoder.", "post_quant_conv.")))
        release()

    recipe._release_cached_encoders = observed_release
    recipe.setup()
    try:
        adapter = recipe.adapter
        assert adapter.text_encoder is None and adapter.vae.encoder is None and adapter.vae.quant_conv is None
        assert sum(p.numel() for p in adapter.vae.parameters()) == held["decoder_params"] > 0
        gc.collect()
        assert held["text"]() is None and held["vae_encoder"]() is None  # nothing else kept them alive
        out, _, skip = recipe.train_step(next(iter(recipe.dataloader)))
        assert skip is None and "hpsv2.1" in out.rewards and torch.isfinite(out.loss)
        with pytest.raises(RuntimeError, match="VAE encoder was released"):
            adapter.encode_video(torch.zeros(1, 3, 4, 16, 16))
        with pytest.raises(RuntimeError, match="'a green tree' is not among the 2 cached prompts"):
            adapter.encode_prompts(["a green tree"])
        torch.testing.assert_close(adapter.encode_prompts(["a cat running"])[0], cache_prompt(cache, "a cat running"))
    finally:
        recipe.cleanup()


def cache_prompt(cache, prompt):
    return CachedLatents(cache["folder"]).prompt_embeddings[prompt]


def test_cache_and_train_commands(assets, cache, tmp_path, capsys):
    from t2v_turbo.cli import main

    overrides = [f"teacher.path={assets['teacher']}", f"data.folder={assets['videos']}", "logging.tensorboard=false"]
    assert main(["cache", str(TINY_CONFIG), *overrides, "data.num_frames=2", "--out", str(cache["folder"]),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "t2v-turbo cache: error:" in err and "data.num_frames: the cache has 4, this run has 2" in err
    reset_accelerate()
    assert main(["train", str(TINY_CONFIG), *overrides, "--latent-cache", str(cache["folder"]), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "_component_: distill.latent_cache.CachedLatents" in printed and str(cache["folder"]) in printed
    assert main(["train", str(TINY_CONFIG), *overrides, "data.fps=4", "--latent-cache", str(cache["folder"])]) == 2
    assert "data.fps: the cache has 8, this run has 4" in capsys.readouterr().err
