"""Run configs: overrides, component resolution and validation, the schema of the trainer, the train CLI."""

from pathlib import Path

import pytest

from distill.trainer import DEFAULTS, resolve_run_config, validate_run_config
from t2v_turbo.cli import main
from t2v_turbo.config import (
    ConfigError,
    apply_overrides,
    instantiate,
    load_config,
    load_yaml,
    parse_yaml,
    resolve_component,
    validate_component,
)

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def test_overrides_parse_values_and_reject_unknown_keys():
    cfg = {"optimizer": {"lr": 1.0}, "train": {"max_steps": 1}}
    out = apply_overrides(cfg, ["optimizer.lr=2e-5", "train.max_steps=7", "+train.new=[1, 2]", "~optimizer.lr"])
    assert out == {"optimizer": {}, "train": {"max_steps": 7, "new": [1, 2]}} and cfg["optimizer"]["lr"] == 1.0
    assert apply_overrides(cfg, ["optimizer.lr=3e-3"])["optimizer"]["lr"] == pytest.approx(3e-3)
    with pytest.raises(ConfigError, match=r"override 'train.max_stepz': no such key.*\+train.max_stepz"):
        apply_overrides(cfg, ["train.max_stepz=3"])
    with pytest.raises(ConfigError, match="unknown flag '--lr'.*key=value"):
        apply_overrides(cfg, ["--lr"])


def test_yaml_reads_exponent_floats():
    assert parse_yaml("a: 1e-5\nb: 1.0e-5\nc: 10\nd: v1e5") == {"a": 1e-5, "b": 1e-5, "c": 10, "d": "v1e5"}


def test_resolve_component_handles_classmethods_and_names_what_is_missing(monkeypatch):
    from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter

    assert resolve_component("t2v_turbo.adapters.diffusers_t2v.DiffusersT2VAdapter.from_pretrained") == DiffusersT2VAdapter.from_pretrained
    with pytest.raises(ConfigError, match="'torch.optim' has no attribute 'AdamQ'"):
        resolve_component("torch.optim.AdamQ")
    monkeypatch.setenv("T2V_TURBO_TRUST_CONFIG", "1")  # outside the allowlist only a trusted config gets this far
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg'"):
        resolve_component("no_such_pkg.Thing")


def test_validate_component_follows_kwargs_to_base_classes():
    node = {"_component_": "distill.data.VideoCaptionFolder", "folder": "x", "num_framez": 4}
    (error,) = validate_component(node, "data")
    assert error.startswith("data.num_framez: distill.data.VideoCaptionFolder takes no argument 'num_framez'")
    assert "num_frames" in error  # a base-class argument is listed as accepted
    assert validate_component({"_component_": "torch.optim.AdamW", "lr": 1}, "optimizer", extra_kwargs=("params",)) == []
    optim = instantiate({"_component_": "torch.optim.SGD", "lr": 0.5}, params=[__import__("torch").zeros(1, requires_grad=True)])
    assert optim.defaults["lr"] == 0.5


def test_run_config_reports_every_unknown_key_at_once():
    cfg = load_config(TINY, ["+trainer.steps=3", "+train.max_stepz=1", "+objective.w_maxx=2",
                             "+data.num_framez=2", "+optimizer.lrr=1", "+rewards=[{name: hpsv2.1, weigth: 1}]"])
    with pytest.raises(ConfigError) as info:
        resolve_run_config(cfg)
    message = str(info.value)
    for expected in ["config: unknown key(s) ['trainer']", "train: unknown key(s) ['max_stepz']",
                     "objective.w_maxx: distill.objectives.T2VTurboObjective takes no argument 'w_maxx'",
                     "data.num_framez", "optimizer.lrr",
                     "rewards[0]: unknown key(s) ['weigth']"]:
        assert expected in message, (expected, message)


def test_run_config_checks_values_and_reward_names():
    errors = validate_run_config(resolve_run_config(load_config(TINY)) | {
        "objective": {"_component_": "distill.objectives.T2VTurboObjective", "target": "teacher"},
        "train": dict(DEFAULTS["train"], mixed_precision="fp8", device="gpu"),
        "validation": dict(DEFAULTS["validation"], format="avi"),
        "rewards": [{"name": "hpsv3", "weight": 1.0}, {"name": "viclip", "weight": 1.0, "args": {"strid": 2}}],
    })
    text = "\n".join(errors)
    assert "objective.target='teacher'" in text and "train.mixed_precision='fp8'" in text
    assert "train.device='gpu'" in text and "validation.format='avi'" in text
    assert "rewards[0].name: unknown reward 'hpsv3'" in text
    assert "rewards[1].args.strid: reward 'viclip' takes no argument 'strid'" in text
    missing = {k: v for k, v in load_yaml(TINY).items() if k != "data"}
    with pytest.raises(ConfigError, match="the section 'data' is required"):
        resolve_run_config(missing)


def test_eight_bit_adam_without_bitsandbytes_is_a_clear_error():
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    cfg = load_config(TINY, ["optimizer._component_=bitsandbytes.optim.AdamW8bit"])
    with pytest.raises(ConfigError, match=r"needs bitsandbytes \(pip install 't2v-turbo\[gpu\]'\)"):
        resolve_run_config(cfg)


def test_train_cli_rejects_bad_configs_with_the_key(tmp_path, capsys):
    assert main(["train", TINY, "train.max_stepz=3"]) == 2
    assert "override 'train.max_stepz': no such key" in capsys.readouterr().err
    assert main(["train", TINY, "+model.rnak=3", "+logging.tensorbord=true"]) == 2
    err = capsys.readouterr().err
    assert "model.rnak: distill.model.from_teacher takes no argument 'rnak'" in err
    assert "logging: unknown key(s) ['tensorbord']" in err


def test_train_cli_prints_the_resolved_config(capsys):
    assert main(["train", TINY, "optimizer.lr=2e-4", "--print-config"]) == 0
    printed = parse_yaml(capsys.readouterr().out)
    assert printed["optimizer"]["lr"] == pytest.approx(2e-4) and printed["objective"]["target"] == "online"


def test_train_cli_missing_teacher_folder(tmp_path, capsys):
    from t2v_turbo.testing import write_caption_folder

    missing = tmp_path / "no_teacher"
    videos = write_caption_folder(tmp_path / "videos", ["a cat running"])
    code = main(["train", TINY, f"teacher.path={missing}", f"data.folder={videos}", f"output_dir={tmp_path / 'run'}",
                 "logging.tensorboard=false"])
    assert code == 2
    assert f"no diffusers text-to-video model folder at {missing}" in capsys.readouterr().err
    # the data is read before the teacher loads: a missing dataset is named first
    assert main(["train", TINY, f"teacher.path={missing}", f"output_dir={tmp_path / 'run2'}", "logging.tensorboard=false"]) == 2
    assert "dataset folder not found: runs/tiny-videos" in capsys.readouterr().err


def test_mixed_precision_no_override_is_not_read_as_false():
    cfg = resolve_run_config(load_config(TINY, ["train.mixed_precision=no"]))
    assert cfg["train"]["mixed_precision"] == "no"
    assert not any("mixed_precision" in e for e in validate_run_config(cfg))
