"""Mutation testing: does the test suite notice a one-line bug in the math it is meant to hold?

For every module in ``TARGETS`` the tool makes one-line mutants (an operator swapped, a
comparison made off by one, a constant changed, a ``@torch.no_grad()`` or another decorator
dropped, a side-effect statement or an update ``x = f(x)`` removed, ``len(x)`` -> ``len(x) - 1``,
``min`` <-> ``max``, ``np.mean`` -> ``np.median``, ``.std`` -> ``.var``, a ``sqrt``/``abs``/``clamp``/
``detach`` dropped, ...), runs the tests that
execute the mutated line against each one, and counts the mutant **killed** when a test fails
(or the run times out) and **survived** when every test passes. A survivor is a bug the suite
would let through: look at it, and either write the test that catches it or convince yourself
it is an equivalent mutant (same behaviour).

How it works (cheap enough for a laptop's two cores):

1. the checkout's files (``git ls-files``) are copied to a scratch folder; the checkout itself
   is never modified, so you can keep working while it runs;
2. one *coverage pass* runs the mapped test files once under a line tracer and records which
   lines of the target modules each test executes (lines run while a module- or session-scoped
   fixture is set up count for every test of that file; lines run only at import, such as
   module constants, dataclass defaults and decorators, select every mapped test file of the
   module). Tests that fail on the unmutated code are reported and never used;
3. each mutant is written into the scratch copy and only the tests that execute its line run,
   fastest first, with ``-x`` and a timeout of ``max(--timeout, 4 x their measured time)``. The
   tool imports torch, diffusers and transformers once and forks a fresh child per mutant, so a
   mutant costs its tests' time, not the interpreter's start-up (``--no-fork`` starts a plain
   ``python -m pytest`` instead). A mutant no test executes is reported as *not covered* and
   counted as survived.

Usage (from the repository root, with the project's venv)::

    OMP_NUM_THREADS=1 python tools/mutation_test.py                       # every target, every mutant
    python tools/mutation_test.py --max-per-module 40 --seed 0            # a reproducible sample
    python tools/mutation_test.py --modules miniworld/minibench.py rewards/frames.py
    python tools/mutation_test.py --list                                  # the mutants, nothing run
    python tools/mutation_test.py --repo /tmp/old-checkout --out before   # score another checkout

It writes ``<out>.json`` (every mutant with its outcome, the test that killed it and the time)
and ``<out>.md`` (a score table per module and the surviving mutants), and prints the table.
The same ``--seed`` and ``--max-per-module`` on the same library code give the same mutants, so
two checkouts' scores compare. Mark a line ``# pragma: no mutate`` to leave it out (say why).
Not run in CI: a full run takes hours on two cores; see ``docs/testing.md``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: module -> the test files that exercise it (coverage then picks the tests inside them)
TARGETS: dict[str, list[str]] = {
    "distill/objectives/t2v_turbo.py": ["tests/test_objective.py", "tests/test_trainer.py"],
    "distill/losses.py": ["tests/test_objective.py", "tests/test_trainer.py"],
    "distill/ema.py": ["tests/test_objective.py", "tests/test_trainer.py"],
    "distill/trainer.py": ["tests/test_trainer.py", "tests/test_configs_valid.py", "tests/test_config.py"],
    "distill/data.py": ["tests/test_data.py", "tests/test_trainer.py"],
    "t2v_turbo/diffusion/schedule.py": ["tests/test_solver.py", "tests/test_objective.py", "tests/test_sampler.py"],
    "t2v_turbo/diffusion/solver.py": ["tests/test_solver.py", "tests/test_objective.py", "tests/test_sampler.py",
                                      "tests/test_pipeline.py"],
    "t2v_turbo/diffusion/boundary.py": ["tests/test_solver.py", "tests/test_objective.py", "tests/test_sampler.py",
                                        "tests/test_pipeline.py"],
    "miniworld/minibench.py": ["tests/test_minibench.py"],
    "rewards/frames.py": ["tests/test_frames.py", "tests/test_image_rewards.py", "tests/test_video_rewards.py",
                          "tests/test_objective.py"],
}

#: modules imported once by the parent before it forks a child per mutant (never a project module)
PRELOAD = (
    "numpy", "torch", "torch.nn.functional", "safetensors.torch", "av", "yaml", "pytest", "accelerate", "peft",
    "transformers", "diffusers", "open_clip",
)
PRELOAD_ATTRS = {
    "diffusers": ("UNet3DConditionModel", "AutoencoderKL", "DDIMScheduler", "LCMScheduler", "TextToVideoSDPipeline"),
    "transformers": ("CLIPTextModel", "CLIPTokenizer", "CLIPModel", "CLIPProcessor"),
}

BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
               ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
COMPARE_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                 ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
#: method or numpy/torch function name -> replacement name (a plausible wrong reduction or bound)
CALL_RENAMES = {"min": "max", "max": "min", "std": "var", "sum": "mean", "mean": "sum", "amin": "amax",
                "amax": "amin", "minimum": "maximum", "maximum": "minimum", "floor": "ceil", "ceil": "floor"}
#: builtins renamed when called by their bare name
BUILTIN_RENAMES = {"min": "max", "max": "min"}
#: ``np.mean`` -> ``np.median`` (a robust statistic where the mean is specified)
NUMPY_RENAMES = {"mean": "median"}
#: ``torch.f(x)`` / ``np.f(x)`` / ``math.f(x)`` / ``f(x)`` -> ``x``
DROPPED_FUNCTIONS = {"sqrt", "abs", "clamp", "clip", "exp", "log"}
#: ``x.f()`` -> ``x`` (argument-free tensor methods) and ``x.clamp(...)`` -> ``x``
DROPPED_METHODS = {"sqrt", "abs", "detach", "exp", "log"}
DROPPED_METHODS_WITH_ARGS = {"clamp", "clamp_", "clip"}
MODULE_NAMES = ("torch", "np", "numpy", "math", "F")
#: calls (and their arguments) never mutated: messages only
QUIET_CALLS = {"debug", "info", "warning", "warn", "error", "exception", "set_postfix", "set_description"}


@dataclasses.dataclass
class Mutant:
    id: str
    module: str
    line: int
    end_line: int
    operator: str
    original: str
    replacement: str
    #: lines whose execution means the mutant was executed
    trigger_lines: tuple[int, int]
    source: str = dataclasses.field(repr=False, default="")
    outcome: str = "pending"
    killed_by: str = ""
    seconds: float = 0.0
    tests_run: int = 0

    def record(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


# ---- mutant generation ------------------------------------------------------------------------
class _Source:
    """Source text addressed by ast positions (line numbers 1-based, columns in UTF-8 bytes)."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.bytes = [line.encode() for line in self.lines]

    def segment(self, node) -> str:
        return ast.get_source_segment(self.text, node) or ""

    def replace(self, line: int, col: int, end_line: int, end_col: int, new: str) -> str:
        head = self.bytes[line - 1][:col].decode()
        tail = self.bytes[end_line - 1][end_col:].decode()
        return "".join(self.lines[: line - 1]) + head + new + tail + "".join(self.lines[end_line:])

    def replace_node(self, node, new: str) -> str:
        return self.replace(node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, new)

    def line_text(self, line: int) -> str:
        return self.lines[line - 1] if 0 < line <= len(self.lines) else ""


def _name_of(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _is_string(node) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)))


class _MutantFinder(ast.NodeVisitor):
    """Walks a module and collects (node, operator, replacement source) mutation points."""

    def __init__(self, module: str, source: _Source):
        self.module, self.src = module, source
        self.found: list[Mutant] = []

    # -- helpers
    def _skip(self, node) -> bool:
        return "pragma: no mutate" in self.src.line_text(node.lineno)

    def _add(self, node, operator: str, new_source: str | None, replacement: str, trigger=None, span=None):
        if new_source is None or self._skip(node):
            return
        try:
            compile(new_source, self.module, "exec")
        except SyntaxError:
            return
        line, end_line = span or (node.lineno, node.end_lineno)
        original = " ".join(self.src.segment(node).split())
        index = sum(1 for m in self.found if m.line == line and m.operator == operator)
        mutant_id = f"{self.module}:{line}:{operator}:{index}"
        self.found.append(Mutant(mutant_id, self.module, line, end_line, operator, original[:120], replacement[:120],
                                 trigger or (line, end_line), new_source))

    def _expr(self, node, new_node, operator):
        new = "(" + ast.unparse(new_node) + ")"
        self._add(node, operator, self.src.replace_node(node, new), new)

    # -- things never mutated
    def visit_JoinedStr(self, node):
        return

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)

    def visit_arguments(self, node):
        for default in node.defaults + [d for d in node.kw_defaults if d is not None]:
            self.visit(default)

    def visit_Expr(self, node):
        if _is_string(node.value):
            return  # docstrings
        if isinstance(node.value, ast.Call) and _name_of(node.value.func) not in QUIET_CALLS:
            self._statement_to_pass(node, "statement removed")
        self.generic_visit(node)

    def visit_Call(self, node):
        name = _name_of(node.func)
        if name in QUIET_CALLS:
            return
        on_module = isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) and (
            node.func.value.id in MODULE_NAMES)
        if isinstance(node.func, ast.Attribute):
            if on_module and node.func.value.id in ("np", "numpy") and name in NUMPY_RENAMES:
                self._rename_call(node, NUMPY_RENAMES[name])
            if name in CALL_RENAMES:
                self._rename_call(node, CALL_RENAMES[name])
            if on_module and name in DROPPED_FUNCTIONS and node.args:
                self._expr(node, node.args[0], f"drop {name}()")
            elif not on_module and ((name in DROPPED_METHODS and not node.args and not node.keywords)
                                    or name in DROPPED_METHODS_WITH_ARGS):
                self._expr(node, node.func.value, f"drop .{name}()")
            if name == "no_grad" and on_module and not node.args:
                enabled = copy.deepcopy(node)
                enabled.func.attr = "enable_grad"
                self._expr(node, enabled, "no_grad -> enable_grad")
        elif name in BUILTIN_RENAMES:
            self._rename_call(node, BUILTIN_RENAMES[name])
        elif name == "len":
            self._expr(node, ast.BinOp(node, ast.Sub(), ast.Constant(1)), "len - 1")
        elif name in DROPPED_FUNCTIONS and node.args:
            self._expr(node, node.args[0], f"drop {name}()")
        self.generic_visit(node)

    def _rename_call(self, node, new_name):
        renamed = copy.deepcopy(node)
        if isinstance(renamed.func, ast.Attribute):
            renamed.func.attr = new_name
        else:
            renamed.func.id = new_name
        self._expr(node, renamed, f"{_name_of(node.func)} -> {new_name}")

    # -- statements
    def _statement_to_pass(self, node, operator):
        first = self.src.line_text(node.lineno)
        prefix = first.encode()[: node.col_offset].decode()
        last = self.src.bytes[node.end_lineno - 1][node.end_col_offset:].decode()
        if prefix.strip() or (last.strip() and not last.strip().startswith("#")):
            return  # not alone on its lines
        new = self.src.replace(node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, "pass")
        self._add(node, operator, new, "pass")

    def visit_AugAssign(self, node):
        self._statement_to_pass(node, "statement removed")
        self.generic_visit(node)

    def visit_Assign(self, node):
        if all(isinstance(t, (ast.Attribute, ast.Subscript)) for t in node.targets):
            self._statement_to_pass(node, "statement removed")
        elif len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and any(
            isinstance(n, ast.Name) and n.id == node.targets[0].id for n in ast.walk(node.value)
        ):
            self._statement_to_pass(node, "update removed")  # x = f(x) left out: x keeps its old value
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return
        self.generic_visit(node)

    def visit_Raise(self, node):
        self._statement_to_pass(node, "raise removed")  # the message is never mutated

    def visit_Assert(self, node):
        self.visit(node.test)

    def _decorated(self, node):
        body_start = node.body[0].lineno if node.body else node.lineno
        for decorator in node.decorator_list:
            if self._skip(decorator):
                continue
            at_line = decorator.lineno
            text = self.src.line_text(at_line)
            if not text.strip().startswith("@"):
                continue
            new = "".join(self.src.lines[: at_line - 1]) + "".join(self.src.lines[decorator.end_lineno:])
            self._add(decorator, "decorator removed", new, "", trigger=(body_start, node.end_lineno),
                      span=(at_line, decorator.end_lineno))

    def visit_FunctionDef(self, node):
        self._decorated(node)
        self.visit(node.args)
        for statement in node.body:
            self.visit(statement)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self._decorated(node)
        for statement in node.body:
            self.visit(statement)

    # -- expressions
    def visit_BinOp(self, node):
        swap = BINOP_SWAPS.get(type(node.op))
        if swap is not None and not (_is_string(node.left) or _is_string(node.right)):
            new = copy.deepcopy(node)
            new.op = swap()
            self._expr(node, new, f"{type(node.op).__name__} -> {swap.__name__}")
        self.generic_visit(node)

    def visit_Compare(self, node):
        for i, op in enumerate(node.ops):
            swap = COMPARE_SWAPS.get(type(op))
            if swap is not None:
                new = copy.deepcopy(node)
                new.ops[i] = swap()
                self._expr(node, new, f"{type(op).__name__} -> {swap.__name__}")
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self._expr(node, new, f"{type(node.op).__name__} -> {type(new.op).__name__}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, (ast.USub, ast.Not, ast.Invert)):
            self._expr(node, node.operand, f"drop {type(node.op).__name__}")
        self.generic_visit(node)

    def visit_Constant(self, node):
        value = node.value
        if isinstance(value, bool):
            new = repr(not value)
        elif isinstance(value, int):
            new = repr(1 if value == 0 else 0 if value == 1 else value + 1)
        elif isinstance(value, float):
            new = repr(1.0 if value == 0 else value * 2)
        else:
            return
        self._add(node, "constant", self.src.replace_node(node, new), new)


def find_mutants(root: Path, module: str) -> list[Mutant]:
    text = (root / module).read_text(encoding="utf-8")
    finder = _MutantFinder(module, _Source(text))
    finder.visit(ast.parse(text))
    return finder.found


def sample_mutants(mutants: list[Mutant], max_per_module: int | None, seed: int) -> list[Mutant]:
    if not max_per_module:
        return mutants
    by_module: dict[str, list[Mutant]] = {}
    for m in mutants:
        by_module.setdefault(m.module, []).append(m)
    chosen = []
    for module, group in by_module.items():
        rng = random.Random(f"{seed}:{module}")
        picked = group if len(group) <= max_per_module else rng.sample(group, max_per_module)
        chosen += sorted(picked, key=lambda m: (m.line, m.id))
    return chosen


# ---- the coverage pass (runs as a pytest plugin inside a child interpreter) -------------------
class _LineTracer:
    """Which target lines each test (or test file's broad fixtures, or the import) executes."""

    def __init__(self, targets: dict[str, str]):
        self.targets = targets  # absolute path -> module key
        self.key = "<import>"
        self.lines: dict[str, dict[str, set[int]]] = {}
        self.outcomes: dict[str, dict] = {}
        self.current_item = None

    def _local(self, frame, event, arg):
        if event == "line":
            module = self.targets[frame.f_code.co_filename]
            self.lines.setdefault(self.key, {}).setdefault(module, set()).add(frame.f_lineno)
        return self._local

    def _global(self, frame, event, arg):
        return self._local if frame.f_code.co_filename in self.targets else None

    def start(self):
        import threading

        sys.settrace(self._global)
        threading.settrace(self._global)


_TRACER: _LineTracer | None = None


def pytest_configure(config):
    """Plugin entry (``-p mutation_test``): active only when the tool sets MUTATION_TEST_TRACE."""
    global _TRACER
    if not os.environ.get("MUTATION_TEST_TRACE"):
        return
    root = Path(os.environ["MUTATION_TEST_ROOT"])
    modules = os.environ["MUTATION_TEST_MODULES"].split(",")
    _TRACER = _LineTracer({str((root / m).resolve()): m for m in modules})
    _TRACER.start()
    import importlib

    for module in modules:  # import-time lines (constants, defaults, decorators) under "<import>"
        importlib.import_module(module[:-3].replace("/", "."))


def _pytest_hooks():
    import pytest

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        if _TRACER is None:
            yield
            return
        _TRACER.current_item, _TRACER.key = item, item.nodeid
        yield
        _TRACER.key = "<between>"

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(fixturedef, request):
        if _TRACER is None or fixturedef.scope == "function" or _TRACER.current_item is None:
            yield
            return
        previous = _TRACER.key
        _TRACER.key = "file:" + _TRACER.current_item.nodeid.split("::")[0]
        yield
        _TRACER.key = previous

    def pytest_runtest_logreport(report):
        if _TRACER is None:
            return
        entry = _TRACER.outcomes.setdefault(report.nodeid, {"passed": True, "seconds": 0.0})
        entry["seconds"] += report.duration
        if report.failed:
            entry["passed"] = False

    def pytest_unconfigure(config):
        if _TRACER is None:
            return
        sys.settrace(None)
        out = {"outcomes": _TRACER.outcomes,
               "lines": {k: {m: sorted(v) for m, v in mods.items()} for k, mods in _TRACER.lines.items()}}
        Path(os.environ["MUTATION_TEST_TRACE"]).write_text(json.dumps(out))

    return pytest_runtest_protocol, pytest_fixture_setup, pytest_runtest_logreport, pytest_unconfigure


if os.environ.get("MUTATION_TEST_TRACE"):
    pytest_runtest_protocol, pytest_fixture_setup, pytest_runtest_logreport, pytest_unconfigure = _pytest_hooks()


@dataclasses.dataclass
class Coverage:
    outcomes: dict[str, dict]
    lines: dict[str, dict[str, list[int]]]
    #: module -> its test files (the fallback for lines that run only at import)
    test_files: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def passing(self) -> set[str]:
        return {t for t, o in self.outcomes.items() if o["passed"]}

    def tests_for(self, mutant: Mutant) -> list[str]:
        """Passing tests that execute the mutant's lines, fastest first; every mapped test when the
        lines run only at import; [] when nothing runs them."""
        lo, hi = mutant.trigger_lines
        passing, chosen = self.passing(), set()
        for key, modules in self.lines.items():
            hit = any(lo <= line <= hi for line in modules.get(mutant.module, ()))
            if not hit:
                continue
            if key.startswith("file:"):
                chosen |= {t for t in passing if t.split("::")[0] == key[5:]}
            elif key in passing:
                chosen.add(key)
        if not chosen and any(lo <= line <= hi for line in self.lines.get("<import>", {}).get(mutant.module, ())):
            files = set(self.test_files.get(mutant.module, ()))
            chosen = {t for t in passing if t.split("::")[0] in files}
        return sorted(chosen, key=lambda t: (self.outcomes[t]["seconds"], t))


def coverage_pass(work: Path, test_files: dict[str, list[str]], log: Path) -> Coverage:
    trace = work.parent / "coverage.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(work), str(Path(__file__).resolve().parent)]),
               MUTATION_TEST_TRACE=str(trace), MUTATION_TEST_ROOT=str(work), MUTATION_TEST_MODULES=",".join(test_files),
               PYTHONDONTWRITEBYTECODE="1")
    files = sorted({f for fs in test_files.values() for f in fs})
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "mutation_test", *files]
    with open(log, "w") as out:
        subprocess.run(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if not trace.is_file():
        raise SystemExit(f"the coverage pass wrote no {trace}; see {log}")
    data = json.loads(trace.read_text())
    return Coverage(data["outcomes"], data["lines"], test_files)


# ---- running mutants ------------------------------------------------------------------------
def copy_checkout(repo: Path, dest: Path) -> None:
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, check=True,
                                capture_output=True, text=True).stdout.splitlines()
    except (subprocess.CalledProcessError, FileNotFoundError):
        listed = [str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts]
    for rel in listed:
        src = repo / rel
        if src.is_file() and "__pycache__" not in Path(rel).parts:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _pytest_args(tests: list[str]) -> list[str]:
    return ["-x", "-q", "-rf", "-p", "no:cacheprovider", "--no-header", *tests]


class _Child:
    """One mutant's test run: a forked child of this process (``fork``) or a fresh interpreter."""

    def __init__(self, work: Path, tests: list[str], log: Path, fork: bool):
        self.process = None
        if not fork:
            env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
            with open(log, "w") as out:
                self.process = subprocess.Popen([sys.executable, "-m", "pytest", *_pytest_args(tests)], cwd=work,
                                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.pid = self.process.pid
            return
        self.pid = os.fork()
        if self.pid:
            return
        try:  # the child: its own process group (a timeout kills its subprocesses too), output to the log
            os.setpgid(0, 0)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(work)
            import threading

            from tqdm import tqdm

            tqdm.set_lock(threading.RLock())  # never share the parent's progress-bar lock
            sys.path.insert(0, str(work))
            os.environ["PYTHONPATH"] = str(work)
            sys.dont_write_bytecode = True
            import pytest

            code = int(pytest.main(_pytest_args(tests)))
        except BaseException:  # noqa: BLE001 - anything escaping pytest is a failed run
            code = 3
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        if self.process is not None:
            return self.process.poll()
        done, status = os.waitpid(self.pid, os.WNOHANG)
        return os.waitstatus_to_exitcode(status) if done else None

    def kill(self) -> None:
        """SIGKILL its process group (the child and whatever its tests started), then reap it."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.process is not None:
            self.process.wait()
        else:
            os.waitpid(self.pid, 0)


def _first_failure(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    for line in lines:
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0][:200]
    return lines[-1][:200] if lines else ""


def run_mutants(mutants, coverage, workers, originals, scratch, timeout, fork, progress):
    """Run every mutant's tests, ``len(workers)`` at a time, each worker in its own scratch copy."""
    pending = list(mutants)
    running: dict[_Child, tuple[Mutant, Path, float, float, Path]] = {}
    free = list(workers)
    while pending or running:
        while pending and free:
            mutant = pending.pop(0)
            tests = coverage.tests_for(mutant)
            if not tests:
                mutant.outcome = "not covered"
                progress(mutant)
                continue
            work = free.pop()
            log = scratch / "logs" / (mutant.id.replace("/", "_").replace(":", "_") + ".log")
            budget = max(timeout, 4 * sum(coverage.outcomes[t]["seconds"] for t in tests) + 20)
            mutant.tests_run = len(tests)
            (work / mutant.module).write_text(mutant.source, encoding="utf-8")
            running[_Child(work, tests, log, fork)] = (mutant, work, time.monotonic(), budget, log)
        time.sleep(0.05)
        for child, (mutant, work, started, budget, log) in list(running.items()):
            code = child.poll()
            elapsed = time.monotonic() - started
            if code is None and elapsed > budget:
                child.kill()
                mutant.outcome, mutant.killed_by = "timeout", f"no result after {budget:.0f} s"
            elif code == 0:
                mutant.outcome = "survived"
            elif code is not None:
                mutant.outcome, mutant.killed_by = "killed", _first_failure(log) or f"exit code {code}"
            else:
                continue
            mutant.seconds = round(elapsed, 2)
            (work / mutant.module).write_text(originals[mutant.module], encoding="utf-8")
            del running[child]
            free.append(work)
            progress(mutant)


# ---- report ---------------------------------------------------------------------------------
def summarise(mutants: list[Mutant]) -> dict:
    rows = {}
    for module in dict.fromkeys(m.module for m in mutants):
        group = [m for m in mutants if m.module == module]
        killed = sum(m.outcome in ("killed", "timeout") for m in group)
        rows[module] = {"mutants": len(group), "killed": killed,
                        "survived": sum(m.outcome == "survived" for m in group),
                        "not_covered": sum(m.outcome == "not covered" for m in group),
                        "score": round(killed / len(group), 3) if group else None}
    total = len(mutants)
    killed = sum(r["killed"] for r in rows.values())
    rows["total"] = {"mutants": total, "killed": killed, "survived": sum(r["survived"] for r in rows.values()),
                     "not_covered": sum(r["not_covered"] for r in rows.values()),
                     "score": round(killed / total, 3) if total else None}
    return rows


def to_markdown(summary: dict, mutants: list[Mutant], title: str) -> str:
    lines = [f"### {title}", "", "| module | mutants | killed | survived | not covered | score |", "|---|---|---|---|---|---|"]
    for module, r in summary.items():
        lines.append(f"| {module} | {r['mutants']} | {r['killed']} | {r['survived']} | {r['not_covered']} | "
                     f"{r['score']:.3f} |" if r["score"] is not None else f"| {module} | 0 | - | - | - | - |")
    survivors = [m for m in mutants if m.outcome in ("survived", "not covered")]
    if survivors:
        lines += ["", f"**Surviving mutants ({len(survivors)})**", "", "| mutant | outcome | original | mutated |",
                  "|---|---|---|---|"]
        for m in survivors:
            original = m.original.replace("|", "\\|")
            new = m.replacement.replace("|", "\\|") or "(removed)"
            lines.append(f"| `{m.module}:{m.line}` {m.operator} | {m.outcome} | `{original}` | `{new}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the checkout to test (default: the one holding this tool)")
    parser.add_argument("--modules", nargs="+", default=list(TARGETS),
                        help="modules to mutate, relative to the repository (default: every one of TARGETS)")
    parser.add_argument("--test-files", nargs="+", default=None,
                        help="the test files for every module (default: each module's files in TARGETS)")
    parser.add_argument("--max-per-module", type=int, default=None, help="sample at most N mutants per module")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--timeout", type=float, default=60.0, help="minimum seconds per mutant (default 60)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--no-fork", action="store_true", help="start a fresh interpreter per mutant")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--out", type=Path, default=Path("mutation_report"), help="writes OUT.json and OUT.md")
    parser.add_argument("--keep-scratch", action="store_true", help="keep the scratch copy and the logs")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    unknown = [m for m in args.modules if m not in TARGETS and not args.test_files]
    if unknown:
        parser.error(f"no test files known for {unknown}: pass --test-files, or add them to TARGETS")
    missing = [m for m in args.modules if not (repo / m).is_file()]
    if missing:
        print(f"not in {repo}, left out: {missing}", file=sys.stderr)
        args.modules = [m for m in args.modules if m not in missing]

    mutants = [m for module in args.modules for m in find_mutants(repo, module)]
    chosen = sample_mutants(mutants, args.max_per_module, args.seed)
    if args.list:
        for m in chosen:
            print(f"{m.id}\t{m.original}\t->\t{m.replacement or '(removed)'}")
        print(f"{len(chosen)} of {len(mutants)} mutants", file=sys.stderr)
        return 0

    scratch = Path(tempfile.mkdtemp(prefix="mutation-"))
    (scratch / "logs").mkdir()
    workers = []
    for i in range(max(1, args.jobs)):
        work = scratch / f"work{i}"
        copy_checkout(repo, work)
        workers.append(work)
    originals = {module: (workers[0] / module).read_text(encoding="utf-8") for module in args.modules}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    test_files = {module: [f for f in (args.test_files or TARGETS[module]) if (repo / f).is_file()]
                  for module in args.modules}
    started = time.monotonic()
    print(f"coverage pass ({scratch / 'logs' / 'coverage.log'}) ...", file=sys.stderr)
    coverage = coverage_pass(workers[0], test_files, scratch / "logs" / "coverage.log")
    failing = sorted(t for t, o in coverage.outcomes.items() if not o["passed"])
    if failing:
        print(f"{len(failing)} tests fail on the unmutated code and are not used: {failing}", file=sys.stderr)

    fork = not args.no_fork and hasattr(os, "fork")
    if fork:
        import importlib

        for name in PRELOAD:
            # an optional library that is missing or fails to import only costs start-up time
            with contextlib.suppress(Exception):
                module = importlib.import_module(name)
                for attr in PRELOAD_ATTRS.get(name, ()):
                    getattr(module, attr, None)
    from tqdm.auto import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: this process forks
    bar = tqdm(total=len(chosen), desc="mutants", unit="mutant")
    killed = [0]

    def progress(mutant):
        killed[0] += mutant.outcome in ("killed", "timeout")
        bar.update(1)
        bar.set_postfix(killed=killed[0])
        if mutant.outcome in ("survived", "not covered"):
            bar.write(f"{mutant.outcome}: {mutant.id}  {mutant.original!r} -> {mutant.replacement or '(removed)'!r}")

    run_mutants(chosen, coverage, workers, originals, scratch, args.timeout, fork, progress)
    bar.close()
    summary = summarise(chosen)
    title = f"Mutation score of {repo.name} ({len(chosen)} of {len(mutants)} mutants, seed {args.seed})"
    markdown = to_markdown(summary, chosen, title)
    report = {"repo": str(repo), "modules": args.modules, "seed": args.seed, "max_per_module": args.max_per_module,
              "mutants_total": len(mutants), "mutants_run": len(chosen), "seconds": round(time.monotonic() - started),
              "tests_failing_unmutated": failing, "summary": summary, "mutants": [m.record() for m in chosen]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    if args.keep_scratch:
        print(f"scratch copy and logs: {scratch}", file=sys.stderr)
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
