"""The one place config nodes become objects.

``build(node, key, **late)`` checks the node against its target's constructor signature (unknown keys,
value types) and turns constructor range errors into one-line messages that name the full config key
(``model.num_experts: expected an integer >= 1, got 0``). Dimensions that depend on the data (the feature
spec, the task specs) are passed as call-site arguments, never written in YAML. Targets are restricted to
the libraries mtlexp builds from.
"""

from __future__ import annotations

import collections.abc
import importlib.resources
import inspect
import types
import typing
from collections.abc import Sequence
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from mtlexp.errors import ConfigValueError, MtlexpError

# optuna.pruners: the pruner a search keeps in its study, built by the trials (mtlexp.pruning).
ALLOWED_TARGETS = ("mtlexp.", "torch.", "pytorch_lightning.", "torchmetrics.", "torchjd.", "optuna.pruners.")
# Keys that describe a node rather than configure its target (``_name_``: a model's stable name).
META_KEYS = ("_name_",)


def _without_meta(node: DictConfig) -> DictConfig:
    """The node without meta keys, at any depth (a nested model, ``model.bottom``, has a name too)."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in META_KEYS}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    plain = OmegaConf.to_container(node, resolve=True)
    stripped = strip(plain)
    return node if stripped == plain else OmegaConf.create(stripped)


def _resolve_target(target: str, key: str) -> Any:
    if not target.startswith(ALLOWED_TARGETS):
        raise MtlexpError(f"{key}._target_: {target!r} is outside the allowed packages {list(ALLOWED_TARGETS)}")
    try:
        return get_class(target)
    except Exception:  # noqa: BLE001 - a function target, or none at all
        try:
            return get_method(target)
        except Exception:  # noqa: BLE001
            raise MtlexpError(f"{key}._target_: cannot import {target!r}") from None


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a config value fits a constructor annotation (unknown annotations always fit)."""
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is collections.abc.Callable:  # a factory: a nested _target_ node, never a plain value
        return value is None
    if origin in (list, tuple, Sequence, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple, ListConfig)):
            return False
        args = typing.get_args(annotation)
        return not args or all(_matches(v, args[0]) for v in value)
    if inspect.isclass(annotation) and isinstance(value, (str, int, float, bool)):
        return isinstance(value, annotation)  # a component (a penalty) given as a plain value
    return True


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation) if a is not type(None))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _group_options(group: str) -> list[str]:
    """The options of a nested config group (``model/gate``), or [] when there is no such group."""
    folder = importlib.resources.files("mtlexp.conf").joinpath(group)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _check_types(node: DictConfig, key: str, target: type) -> None:
    """Wrongly typed plain values for a library class's constructor (``trainer.max_epochs=abc``)."""
    try:
        hints = typing.get_type_hints(target.__init__)
    except Exception:  # noqa: BLE001 - annotations that do not resolve at runtime: nothing to check against
        return
    for name in node:
        if str(name).startswith("_") or name not in hints or OmegaConf.is_missing(node, name):
            continue
        value = node[name]
        if isinstance(value, (str, int, float, bool)) and not _matches(value, hints[name]):
            raise MtlexpError(f"{key}.{name}: expected {_describe(hints[name])}, got {value!r}")


def check_node(node: DictConfig, key: str, late: Sequence[str] = ()) -> None:
    """Unknown keys and wrongly typed values of a ``_target_`` node, named by their full key."""
    target = _resolve_target(str(node.get("_target_")), key)
    if not inspect.isclass(target):
        return
    if not str(node._target_).startswith("mtlexp."):
        _check_types(node, key, target)  # library classes (Trainer, optimizers): value types only
        return
    signature = inspect.signature(target.__init__)
    hints = typing.get_type_hints(target.__init__)
    params = {n: p for n, p in signature.parameters.items() if n != "self"}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in node:
        if str(name).startswith("_"):
            continue
        if OmegaConf.is_missing(node, name):
            raise MtlexpError(f"{key}.{name}: required, but not set (add {key}.{name}=... to the command line)")
        if name not in params:
            if accepts_any:
                continue
            options = sorted(n for n in params if n not in late)
            raise MtlexpError(f"{key}.{name}: unknown key for {node._target_}; expected one of {options}")
        value = node[name]
        if isinstance(value, DictConfig):
            if "_target_" in value:  # a nested component (a model's gate factory or penalty)
                check_node(value, f"{key}.{name}")
            continue
        if not _matches(value, hints.get(name, inspect.Parameter.empty)):
            group = _group_options(f"{key}/{name}")
            if group:
                choice = f"{key}/{name}={value}" if value in group else f"{key}/{name}=<option>"
                raise MtlexpError(f"{key}.{name}: expected a {key}/{name} config, got {value!r}; choose one with "
                                  f"{choice} (options: {', '.join(group)})")
            raise MtlexpError(f"{key}.{name}: expected {_describe(hints[name])}, got {value!r}")


def build(node: DictConfig, key: str, **late: Any) -> Any:
    """Instantiate ``node`` (at config path ``key``) with the call-site arguments ``late``."""
    if node is None or "_target_" not in node:
        raise MtlexpError(f"{key}: expected a config node with a _target_, got {node!r}")
    check_node(node, key, tuple(late))
    name = node.get("_name_")
    node = _without_meta(node)
    try:
        # Late arguments are passed to the finished factory, not through instantiate(): Hydra would turn
        # dataclass arguments (the feature and task specs) into DictConfigs.
        factory = instantiate(node, _partial_=True) if late else None
        built = factory(**late) if late else instantiate(node)
        if name is not None and hasattr(type(built), "config_name"):
            built.config_name = str(name)
        return built
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, ConfigValueError):
            raise MtlexpError(f"{key}.{cause.field}: {cause.message}") from None
        if isinstance(cause, MtlexpError):
            raise cause from None
        raise MtlexpError(f"{key}: {cause or error}".replace("\n", " ")) from None
    except ConfigValueError as cause:
        raise MtlexpError(f"{key}.{cause.field}: {cause.message}") from None


def build_all(nodes: DictConfig | None, key: str) -> list[Any]:
    """Instantiate every ``_target_`` child of a dict node (callbacks, loggers); null children are off."""
    if not nodes:
        return []
    return [build(child, f"{key}.{name}") for name, child in nodes.items() if child is not None]
