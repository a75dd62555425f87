"""Fault injection on run configs: every bad value is named at once, before anything heavy loads."""

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Literal

import pytest

from distill.trainer import resolve_run_config
from t2v_turbo.cli import main
from t2v_turbo.config import ConfigError, load_config

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def test_schema_checks_types_ranges_choices_and_nesting():
    from t2v_turbo.schema import Range, schema_defaults, schema_errors

    @dataclasses.dataclass
    class Inner:
        rate: Annotated[float, Range(gt=0, le=1)] = 0.5

    @dataclasses.dataclass
    class Outer:
        name: str
        steps: Annotated[int, Range(ge=1)] = 3
        mode: Literal["a", "b"] = "a"
        frames: Annotated[int, Range(ge=1)] | None = None
        sizes: list[Annotated[int, Range(ge=0)]] = dataclasses.field(default_factory=list)
        inner: Inner | None = dataclasses.field(default_factory=Inner)
        flag: bool = False

    assert schema_defaults(Outer) == {"steps": 3, "mode": "a", "frames": None, "sizes": [], "inner": {"rate": 0.5},
                                      "flag": False}
    valid = {"name": "x", "steps": 2, "frames": 4, "sizes": [0, 5], "inner": None, "flag": True}
    assert schema_errors(valid, Outer) == []
    errors = schema_errors({"steps": 0, "mode": "c", "frames": 0, "sizes": [1, -1], "inner": {"rate": 2.0, "x": 1},
                            "flag": "yes", "extra": 1}, Outer, "sec")
    assert errors == [
        "sec: unknown key(s) ['extra']; allowed keys are ['flag', 'frames', 'inner', 'mode', 'name', 'sizes', 'steps']",
        "sec: the key 'name' is required",
        "sec.steps=0 must be an integer >= 1",
        "sec.mode='c' must be one of 'a', 'b'",
        "sec.frames=0 must be null or an integer >= 1",
        "sec.sizes[1]=-1 must be an integer >= 0",
        "sec.inner: unknown key(s) ['x']; allowed keys are ['rate']",
        "sec.inner.rate=2.0 must be a finite number > 0 and <= 1",
        "sec.flag='yes' must be true or false",
    ]
    # bools are not integers, strings are not numbers, NaN is not finite; ints are numbers
    assert schema_errors({"name": "x", "steps": True}, Outer) == ["steps=True must be an integer >= 1"]
    assert schema_errors({"rate": "abc"}, Inner, "i") == ["i.rate='abc' must be a finite number > 0 and <= 1"]
    assert schema_errors({"rate": float("nan")}, Inner, "i") == ["i.rate=nan must be a finite number > 0 and <= 1"]
    assert schema_errors({"rate": 1}, Inner, "i") == []
    assert schema_errors({"other": 1}, Inner, "i", partial=True) == [] and schema_errors(5, Inner, "i") == [
        "i: expected a mapping, got int 5"]


ISSUE_VALUES = {  # the values of the hardening issue, each with what its message must say
    "train.max_grad_norm=-1": "train.max_grad_norm=-1 must be a finite number >= 0 (0 disables clipping)",
    "train.keep_checkpoints=-1": "train.keep_checkpoints=-1 must be an integer >= 1",
    "train.checkpoint_every=-1": "train.checkpoint_every=-1 must be an integer >= 0 (0 writes no checkpoints)",
    "train.max_steps=0": "train.max_steps=0 must be an integer >= 1",
    "train.log_every=0": "train.log_every=0 must be an integer >= 1",
    "train.gradient_accumulation_steps=0": "train.gradient_accumulation_steps=0 must be an integer >= 1",
    "objective.num_ddim_timesteps=0": "objective.num_ddim_timesteps=0 must be an integer >= 1",
    "optimizer.lr=abc": "optimizer.lr='abc' must be a finite number > 0",
    "dataloader.batch_size=0": "dataloader.batch_size=0 must be an integer >= 1",
    "seed=abc": "seed='abc' must be an integer >= 0",
    "objective.ema_decay=1.5": "objective.ema_decay=1.5 must be a finite number >= 0 and <= 1",
}


def test_every_bad_value_of_the_issue_is_named_at_once():
    with pytest.raises(ConfigError) as info:
        resolve_run_config(load_config(TINY, list(ISSUE_VALUES)))
    message = str(info.value)
    for expected in ISSUE_VALUES.values():
        assert expected in message, (expected, message)
    for override, expected in [("optimizer.lr=0", "optimizer.lr=0 must be a finite number > 0"),
                               ("optimizer.lr=-1e-4", "optimizer.lr=-0.0001 must be"),
                               ("train.max_steps=-5", "train.max_steps=-5 must be an integer >= 1"),
                               ("dataloader.batch_size=-2", "dataloader.batch_size=-2 must be"),
                               ("dataloader.batch_size=two", "dataloader.batch_size='two' must be an integer >= 1"),
                               ("optimizer.betas=[0.9, 1.5]",
                                "optimizer.betas[1]=1.5 must be a finite number >= 0 and < 1"),
                               ("objective.w_min=20", "objective.w_min=20 must not exceed objective.w_max=15.0")]:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            resolve_run_config(load_config(TINY, [override]))


def test_bad_values_stop_the_cli_before_the_teacher_loads(tmp_path, capsys):
    # the teacher folder does not exist: reaching the loader would report it instead
    code = main(["train", str(TINY), f"teacher.path={tmp_path / 'no_teacher'}", f"output_dir={tmp_path / 'run'}",
                 "logging.tensorboard=false", *ISSUE_VALUES])
    err = capsys.readouterr().err
    assert code == 2
    assert all(expected in err for expected in ISSUE_VALUES.values()), err
    assert "no_teacher" not in err and not (tmp_path / "run").exists()
