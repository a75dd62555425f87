"""The documentation states the config layout the code reads: docs/training.md's section table and its
T2V-Turbo objective keys (names and defaults) against the schema dataclasses."""

import dataclasses
import re
import shlex
from pathlib import Path

import yaml

from distill.config_schema import RewardSpec, RunConfig
from distill.objectives import T2VTurboObjective
from t2v_turbo.student import LoraSettings

TRAINING_MD = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def section_table() -> dict[str, tuple[str, str]]:
    """section name -> (keys cell, notes cell) of the table under "The config, section by section"."""
    text = TRAINING_MD.read_text(encoding="utf-8").split("## The config, section by section", 1)[1]
    rows = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            if rows:
                break
            continue
        section, keys, notes = (cell.strip() for cell in line.strip().strip("|").split("|", 2))
        for name in re.findall(r"`(\w+)`", section):
            rows[name] = (keys, notes)
    return rows


def names_in(cell: str) -> set[str]:
    """The backticked names of a keys cell, leaving out what parentheses say about them (values, notes)."""
    return set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", cell)))


def field_names(schema) -> set[str]:
    return {f.name for f in dataclasses.fields(schema)}


def test_the_section_table_lists_every_section_and_every_key_of_the_plain_sections():
    rows = section_table()
    assert set(rows) == field_names(RunConfig)
    hints = {f.name: f for f in dataclasses.fields(RunConfig)}
    for name, (keys, _) in rows.items():
        if name in ("output_dir", "seed"):
            continue
        factory = hints[name].default_factory
        section = factory() if factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(section):
            assert names_in(keys) == field_names(type(section)), f"docs/training.md, section {name}"
        elif name == "rewards":
            listed = re.search(r"\{([^}]*)\}", keys).group(1)
            assert {k.strip() for k in listed.split(",")} == field_names(RewardSpec)
        else:  # a component node (teacher, data, model, objective, optimizer): its callable's arguments
            assert "`_component_`" in keys, f"docs/training.md, section {name}"
    lora = re.search(r"`lora: \{([^}]*)\}`", rows["model"][1]).group(1)
    assert {k.strip() for k in lora.split(",")} == field_names(LoraSettings)


def test_the_t2v_turbo_objective_keys_and_defaults_are_the_dataclass_fields():
    text = TRAINING_MD.read_text(encoding="utf-8")
    text = text.split("## The T2V-Turbo objective", 1)[1]
    keys = re.search(r"`objective: \{_component_: distill\.objectives\.T2VTurboObjective, ([^}]*)\}`", text).group(1)
    names = [re.sub(r"\s*\(.*\)", "", k).strip() for k in re.sub(r"\s+", " ", keys).split(",")]
    defaults = re.search(r"\(v1 defaults: ([^)]*)\)", text).group(1)
    values = [yaml.safe_load(v.strip()) for v in re.sub(r"\s+", " ", defaults).split(",")]
    fields = {f.name: f.default for f in dataclasses.fields(T2VTurboObjective)}
    assert sorted(names) == sorted(fields)
    assert dict(zip(names, values)) == {name: fields[name] for name in names}


README = Path(__file__).resolve().parents[1] / "README.md"


def shell_commands(markdown: Path) -> list[list[str]]:
    """The commands of a markdown file's ```bash blocks, as argument lists (continuations joined, comments and
    `&&` chains split)."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown.read_text(encoding="utf-8"), re.S)
    commands = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:cut])
            words = words[cut + 1:]
    return commands


def cli_arguments(words: list[str]) -> list[str] | None:
    """The arguments a command gives the t2v-turbo CLI (console script, python -m, accelerate launch), or None."""
    if words[:1] == ["t2v-turbo"]:
        return words[1:]
    for module in ("t2v_turbo.cli", "t2v_turbo"):
        if "-m" in words and words[words.index("-m") + 1] == module:
            return words[words.index("-m") + 2:]
    return None


def test_the_quick_start_installs_an_existing_extra_and_ci_runs_the_readme_test_command():
    commands = shell_commands(README)
    installs = [words for words in commands if words[:3] == ["pip", "install", "-e"]]
    assert installs, "README: no `pip install -e` in the quick start"
    setup = (README.parent / "setup.py").read_text(encoding="utf-8")
    extras = set(re.findall(r'^\s+"([\w-]+)": \[', setup.split("extras_require", 1)[1].split("}", 1)[0], re.M))
    for words in installs:
        for extra in re.findall(r"\[([\w,-]+)\]", words[3]):
            assert set(extra.split(",")) <= extras, f"README installs {words[3]}; setup.py's extras are {sorted(extras)}"
    test_command = ["python", "-m", "pytest", "-q", "tests"]
    assert test_command in commands
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert " ".join(test_command) in [line.strip() for line in ci.splitlines()]


def test_every_cli_command_in_the_readme_parses():
    from t2v_turbo.cli import build_parser

    commands = [args for args in map(cli_arguments, shell_commands(README)) if args is not None]
    assert ["quickstart", "--out", "runs/quickstart"] in commands  # the quick start
    for args in commands:
        try:
            build_parser().parse_args(args)
        except SystemExit:
            raise AssertionError(f"README: `t2v-turbo {' '.join(args)}` is not a valid command line") from None
