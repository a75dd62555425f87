"""tools/mutation_test.py: the mutants it makes, and a whole run on a two-function package."""

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mutation_test.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("mutation_test_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


SOURCE = '''\
"""A module docstring is never mutated."""
import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)
SCALE = 2.0


@torch.no_grad()
def target(x):
    logger.warning(f"value {x + 1}")
    return x * SCALE


def total(values):
    return float(np.mean(values))  # pragma: no mutate


def consistency(areas):
    return 1.0 - min(1.0, areas.std() / areas.mean())
'''


def test_mutants_of_a_small_module(tmp_path):
    tool = load_tool()
    (tmp_path / "m.py").write_text(SOURCE)
    mutants = tool.find_mutants(tmp_path, "m.py")
    by_line = {}
    for m in mutants:
        by_line.setdefault(m.line, set()).add((m.operator, m.replacement))
        compile(m.source, "m.py", "exec")  # every mutant is a valid module differing from the original
        assert m.source != SOURCE
    assert by_line[8] == {("constant", "4.0")}
    assert ("decorator removed", "") in by_line[11]
    assert by_line[11] == {("decorator removed", "")}  # the decorator's own call is not mutated again
    assert 13 not in by_line  # a log message: neither the call nor its f-string
    assert by_line[14] == {("Mult -> Div", "(x / SCALE)")}
    assert 18 not in by_line  # pragma: no mutate
    assert by_line[22] >= {("Sub -> Add", "(1.0 + min(1.0, areas.std() / areas.mean()))"),
                           ("min -> max", "(max(1.0, areas.std() / areas.mean()))"),
                           ("std -> var", "(areas.var())"), ("mean -> sum", "(areas.sum())"),
                           ("Div -> Mult", "(areas.std() * areas.mean())")}
    removed = next(m for m in mutants if m.operator == "decorator removed")
    assert "@torch.no_grad()" not in removed.source and removed.trigger_lines == (13, 14)  # the body's lines
    assert len({m.id for m in mutants}) == len(mutants)


def test_a_run_kills_survives_and_reports_uncovered_mutants(tmp_path):
    tool = load_tool()
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "geometry.py").write_text(textwrap.dedent("""\
        def area(w, h):
            return w * h


        def perimeter(w, h):
            return 2 * (w + h)


        def unused(x):
            return x - 1
        """))
    (repo / "tests" / "test_geometry.py").write_text(textwrap.dedent("""\
        from pkg.geometry import area, perimeter


        def test_area():
            assert area(2, 3) == 6


        def test_perimeter_is_positive():  # a weak test: most wrong perimeters pass it
            assert perimeter(2, 3) > 0
        """))
    out = tmp_path / "report"
    assert tool.main(["--repo", str(repo), "--modules", "pkg/geometry.py", "--test-files", "tests/test_geometry.py",
                      "--no-fork", "--timeout", "60", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    outcome = {(m["line"], m["operator"]): m["outcome"] for m in report["mutants"]}
    assert outcome == {
        (2, "Mult -> Div"): "killed",
        (6, "Mult -> Div"): "survived",  # 2 / 5 > 0
        (6, "constant"): "survived",  # 3 * 5 > 0
        (6, "Add -> Sub"): "killed",  # 2 * (2 - 3) < 0
        (10, "Sub -> Add"): "not covered",
        (10, "constant"): "not covered",
    }
    killer = next(m for m in report["mutants"] if m["line"] == 2)
    assert killer["killed_by"].startswith("FAILED tests/test_geometry.py::test_area") and killer["tests_run"] == 1
    assert report["summary"]["total"] == {"mutants": 6, "killed": 2, "survived": 2, "not_covered": 2, "score": 0.333}
    markdown = out.with_suffix(".md").read_text()
    assert "| pkg/geometry.py | 6 | 2 | 2 | 2 | 0.333 |" in markdown and "`pkg/geometry.py:6` constant" in markdown
    assert (repo / "pkg" / "geometry.py").read_text().count("w * h") == 1  # the checkout itself is never touched
