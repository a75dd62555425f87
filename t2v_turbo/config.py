"""Run configs: YAML files that are the whole record of a run.

A config is a nested mapping. A node that holds a ``_component_`` key names a dotted import
path (a class or a builder function); its other keys are that callable's keyword arguments.
``instantiate`` builds such a node, ``validate_component`` checks its keys against the
callable's signature without building anything, so a misspelt key is named before any
weights are loaded.

Command-line overrides are dotted ``key=value`` pairs (``optimizer.lr=2e-5``); the value is
parsed as YAML, so numbers, booleans, lists and ``null`` work. ``~key`` deletes a key.
An override of a key that does not exist is an error unless it is prefixed with ``+``
(``+reward.extra=1``), so that typos never silently add a new, ignored key.

A config is code: ``_component_`` calls what it names. So a component (from a file or an override)
must come from ``TRUSTED_MODULES`` (the project's packages, ``torch.optim``, ``bitsandbytes.optim``,
``diffusers``, ``transformers``, ``peft``), checked on the dotted name before anything is imported
and on the resolved object after; and a component may not set ``trust_remote_code: true``. The
opt-ins: ``T2V_TURBO_TRUSTED_MODULES=pkg,other.mod`` adds module prefixes;
``T2V_TURBO_TRUST_CONFIG=1`` (``t2v-turbo train --trust-config``) allows anything.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import re
import types
from pathlib import Path
from typing import Any, Mapping

import yaml

COMPONENT_KEY = "_component_"
#: module prefixes a ``_component_`` (and a student's ``teacher_adapter``) may come from without an opt-in
TRUSTED_MODULES = ("t2v_turbo", "distill", "rewards", "eval", "miniworld", "torch.optim", "bitsandbytes.optim",
                   "diffusers", "transformers", "peft")
#: opt-in: "1" lets a config call anything importable (``t2v-turbo train --trust-config`` sets it)
TRUST_CONFIG_ENV = "T2V_TURBO_TRUST_CONFIG"
#: opt-in: comma-separated module prefixes added to ``TRUSTED_MODULES``
TRUSTED_MODULES_ENV = "T2V_TURBO_TRUSTED_MODULES"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loading, plus floats without a dot (``1e-5``), which YAML 1.1 reads as strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A config is malformed: the message names the file, key and value at fault."""


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = parse_yaml(f)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is not None:
        # `_base_: other.yaml` (relative to this file) is merged under this file's keys.
        merged = load_yaml(path.parent / base)
        data = merge(merged, data)
    return data


def merge(base: Mapping, override: Mapping) -> dict:
    """Recursive dict merge; ``override`` wins, a ``_component_`` change replaces the node."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if (
            isinstance(value, Mapping)
            and isinstance(out.get(key), Mapping)
            and value.get(COMPONENT_KEY, out[key].get(COMPONENT_KEY)) == out[key].get(COMPONENT_KEY)
        ):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value``, ``+new.key=value`` and ``~key`` overrides to a copy of ``cfg``."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if item.startswith("--"):
            raise ConfigError(
                f"unknown flag {item!r}: config overrides are written key=value, e.g. optimizer.lr=1e-5"
            )
        if item.startswith("~"):
            parent, leaf = _walk(cfg, item[1:], create=False)
            if leaf not in parent:
                raise ConfigError(f"override {item!r}: no such key to delete (known here: {sorted(parent)})")
            del parent[leaf]
            continue
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        allow_new = key.startswith("+")
        key = key.lstrip("+")
        parent, leaf = _walk(cfg, key, create=allow_new)
        if not allow_new and leaf not in parent:
            raise ConfigError(
                f"override {key!r}: no such key in the config (known here: {sorted(parent)}); "
                f"write +{key}={raw} to add a new key"
            )
        parent[leaf] = parse_yaml(raw) if raw != "" else ""
    return cfg


def _walk(cfg: dict, dotted: str, create: bool) -> tuple[dict, str]:
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            if not create:
                raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} does not exist")
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is not a mapping")
    return node, parts[-1]


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    return apply_overrides(load_yaml(path), list(overrides or []))


def save_config(cfg: Mapping, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(dict(cfg), f, sort_keys=False)


def trusted_modules() -> tuple[str, ...] | None:
    """The module prefixes components may come from, or None when the user trusts the config fully."""
    if os.environ.get(TRUST_CONFIG_ENV, "").strip().lower() in ("1", "true", "yes"):
        return None
    extra = [m.strip() for m in os.environ.get(TRUSTED_MODULES_ENV, "").split(",") if m.strip()]
    return TRUSTED_MODULES + tuple(extra)


def _untrusted(module_name: Any, trusted: tuple[str, ...]) -> bool:
    return not isinstance(module_name, str) or not any(
        module_name == prefix or module_name.startswith(prefix + ".") for prefix in trusted)


def _refuse(reason: str, dotted: str, where: str, trusted: tuple[str, ...]) -> ConfigError:
    return ConfigError(
        f"{where} {dotted!r}: {reason}. A config may call only the modules {', '.join(trusted)}: a config or "
        f"checkpoint from someone else could run any code otherwise. If you trust it, pass --trust-config (or set "
        f"{TRUST_CONFIG_ENV}=1), or add a module prefix with {TRUSTED_MODULES_ENV}=<prefix>"
    )


def resolve_component(dotted: str, where: str = COMPONENT_KEY) -> Any:
    """Import ``package.module.Name`` (or ``package.module.Class.method``) and return the attribute.

    The longest importable module prefix is imported; the rest are attributes looked up in turn.
    The name, every module passed through and the module the result is defined in must be in
    ``trusted_modules()``; the name is checked before anything is imported. ``where`` names the
    config key in messages.
    """
    if not isinstance(dotted, str) or "." not in dotted:
        raise ConfigError(f"{where} must be a dotted import path, got {dotted!r}")
    trusted = trusted_modules()
    if trusted is not None and _untrusted(dotted, trusted):
        raise _refuse("not a trusted module", dotted, where, trusted)
    if trusted is not None and any(part.startswith("__") for part in dotted.split(".")):
        raise _refuse("a dunder attribute is not allowed", dotted, where, trusted)
    parts = dotted.split(".")
    module, error = None, None
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            module = importlib.import_module(module_name)
            break
        except ModuleNotFoundError as err:
            if err.name is None or not module_name.startswith(err.name):
                raise ConfigError(f"{where} {dotted!r}: importing {module_name!r} failed: {err}") from err
            error = error or err
        except ImportError as err:
            raise ConfigError(f"{where} {dotted!r}: importing {module_name!r} failed: {err}") from err
    if module is None:
        raise ConfigError(f"{where} {dotted!r}: cannot import module {parts[0]!r}: {error}") from error
    target = module
    for i, attr in enumerate(parts[cut:], start=cut):
        try:
            target = getattr(target, attr)
        except AttributeError as err:
            raise ConfigError(
                f"{where} {dotted!r}: {'.'.join(parts[:i])!r} has no attribute {attr!r}"
            ) from err
        if trusted is not None and isinstance(target, types.ModuleType) and _untrusted(target.__name__, trusted):
            raise _refuse(f"it reaches the untrusted module {target.__name__!r}", dotted, where, trusted)
    if trusted is not None and _untrusted(getattr(target, "__module__", None), trusted):
        raise _refuse(f"it resolves to an object of the untrusted module {getattr(target, '__module__', None)!r}",
                      dotted, where, trusted)
    return target


def validate_component(node: Mapping, where: str = "config", extra_kwargs: tuple[str, ...] = ()) -> list[str]:
    """Check the keys of a ``_component_`` node (recursively) against signatures.

    Returns a list of error messages (empty when the node is valid); nothing is built.
    ``extra_kwargs`` are keyword arguments the caller passes at build time.
    """
    errors: list[str] = []
    if COMPONENT_KEY not in node:
        for key, value in node.items():
            if isinstance(value, Mapping):
                errors += validate_component(value, f"{where}.{key}")
        return errors
    try:
        target = resolve_component(node[COMPONENT_KEY], f"{where}.{COMPONENT_KEY}")
    except ConfigError as err:
        return [str(err)]
    kwargs = {k: v for k, v in node.items() if k != COMPONENT_KEY}
    if kwargs.get("trust_remote_code") and trusted_modules() is not None:
        errors.append(f"{where}.trust_remote_code=true runs code from the model's folder; if you trust it, pass "
                      f"--trust-config (or set {TRUST_CONFIG_ENV}=1)")
    errors += signature_errors(target, kwargs, where, node[COMPONENT_KEY], extra_kwargs)
    for key, value in kwargs.items():
        if isinstance(value, Mapping):
            errors += validate_component(value, f"{where}.{key}")
    return errors


def signature_errors(
    target: Any, kwargs: Mapping[str, Any], where: str, label: str, extra_kwargs: tuple[str, ...] = ()
) -> list[str]:
    """Messages for ``kwargs`` that ``target`` does not accept and required arguments they miss.

    ``label`` names the callable in the messages; ``extra_kwargs`` are supplied by the caller.
    """
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    errors = []
    accepted = _accepted_keywords(target, sig)
    if accepted is not None:
        for key in kwargs:
            if key not in accepted:
                errors.append(
                    f"{where}.{key}: {label} takes no argument {key!r} "
                    f"(it takes: {', '.join(accepted)})"
                )
    bound_names = set(kwargs) | set(extra_kwargs)
    for name, param in sig.parameters.items():
        if (
            param.default is inspect.Parameter.empty
            and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
            and name not in bound_names
            and name != "self"
        ):
            errors.append(f"{where}: {label} needs argument {name!r}, which is missing")
    return errors


def _accepted_keywords(target: Any, sig: inspect.Signature) -> list[str] | None:
    """Keyword names ``target`` accepts, or None when it takes arbitrary ``**kwargs``.

    A class whose ``__init__`` forwards ``**kwargs`` to its base classes accepts the union of
    the named parameters along its MRO, up to the first ``__init__`` without ``**kwargs``.
    """
    names = [p for p in sig.parameters if p != "self"]
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return names
    if not inspect.isclass(target):
        return None
    names = []
    for klass in target.__mro__:
        if "__init__" not in vars(klass):
            continue
        if klass is object:
            return None
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


def with_signature_defaults(node: Mapping, exclude: tuple[str, ...] = ()) -> dict:
    """A ``_component_`` node with every keyword argument of its callable that the node leaves out added
    at its default (not ``exclude``, which the caller passes at build time), so a saved config records every
    value the run used. A node whose component cannot be resolved is returned unchanged (validation names it)."""
    try:
        sig = inspect.signature(resolve_component(node[COMPONENT_KEY]))
    except (ConfigError, TypeError, ValueError):
        return dict(node)
    out = dict(node)
    for name, param in sig.parameters.items():
        if (param.default is not inspect.Parameter.empty and name not in out and name not in exclude
                and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)):
            out[name] = copy.deepcopy(param.default)
    return out


def instantiate(node: Any, *args: Any, **kwargs: Any) -> Any:
    """Build a ``_component_`` node; nested component nodes are built first.

    Positional ``args`` and keyword ``kwargs`` are passed on top of the node's own keys
    (a key given both ways is an error, named).
    """
    if isinstance(node, list):
        return [instantiate(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    if COMPONENT_KEY not in node:
        return {k: instantiate(v) for k, v in node.items()}
    errors = validate_component(node, node[COMPONENT_KEY], extra_kwargs=tuple(kwargs))
    if errors:
        raise ConfigError("; ".join(errors))
    target = resolve_component(node[COMPONENT_KEY])
    node_kwargs = {k: instantiate(v) for k, v in node.items() if k != COMPONENT_KEY}
    clash = set(node_kwargs) & set(kwargs)
    if clash:
        raise ConfigError(f"{node[COMPONENT_KEY]}: {sorted(clash)} given both in the config and by the caller")
    return target(*args, **node_kwargs, **kwargs)


def key_errors(section: Any, allowed: Mapping[str, Any] | set[str], where: str) -> list[str]:
    """Messages for a plain (non-component) section: not a mapping, or keys not in ``allowed``."""
    if not isinstance(section, Mapping):
        return [f"{where}: expected a mapping, got {type(section).__name__} {section!r}"]
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        return [f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}"]
    return []


def check_keys(section: Mapping, allowed: Mapping[str, Any] | set[str], where: str) -> None:
    """Reject keys of a plain (non-component) section that are not in ``allowed``."""
    errors = key_errors(section, allowed, where)
    if errors:
        raise ConfigError(errors[0])
