"""The YAML schema of a table (format reference: docs/data.md): how to read the files, and what every column is.

A column is a numeric feature, a categorical feature, a label, the sample weight, or dropped. ``load_schema``
checks the file up front, so that a mistake names the schema file and the key rather than failing mid-parse.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtlexp.errors import MtlexpError
from mtlexp.specs import TaskSpec
from mtlexp.tasks import task_from_config


def auto_embedding_dim(num_values: int) -> int:
    """The ``auto`` embedding size of a categorical feature with ``num_values`` known values."""
    return max(1, min(16, round(1.6 * num_values**0.56)))


@dataclass(frozen=True)
class TableSchema:
    """A validated schema file: how to read the files, and the role of every column.

    :param source: the schema's file name (or ``schema``), for error messages.
    :param content: the parsed YAML, hashed into the cache key.
    """

    source: str
    content: dict[str, Any]
    columns: tuple[str, ...] | None = None
    header: bool = True
    delimiter: str = ","
    strip: bool = True
    missing: tuple[str, ...] = ("",)
    numeric: tuple[str, ...] = ()
    categorical: dict[str, int | str | None] = field(default_factory=dict)
    embedding_dim: int | str = 4
    tasks: dict[str, Any] = field(default_factory=dict)
    weight: str | None = None
    drop: tuple[str, ...] = ()
    known_leaks: dict[str, str] = field(default_factory=dict)

    @property
    def described(self) -> set[str]:
        """Every column the schema gives a role to."""
        named = {*self.numeric, *self.categorical, *self.drop, *self.known_leaks}
        named |= {str(node.get("column", name)) for name, node in self.tasks.items() if not node.get("product")}
        return named | ({self.weight} if self.weight else set())


_SCHEMA_KEYS = (
    "format", "columns", "numeric", "categorical", "embedding_dim", "tasks", "weight", "drop", "known_leaks"
)
_FORMAT_KEYS = ("header", "delimiter", "strip", "missing")


def _check_embedding_dim(value: Any, where: str) -> int | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise MtlexpError(f"{where}: expected a positive integer or 'auto', got {value!r}")


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise MtlexpError(f"{where}: expected a list of column names, got {value!r}")
    names = tuple(str(v) for v in value)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MtlexpError(f"{where}: column {twice[0]!r} is listed twice")
    return names


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` keeps the last of two equal keys; in a schema that silently merges two tasks."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_schema(schema: str | Path | Mapping[str, Any]) -> TableSchema:
    """Read and validate a schema (a YAML file, or the mapping itself); errors name the file and key."""
    if isinstance(schema, Mapping):
        source, content = "schema", json.loads(json.dumps(dict(schema), default=json_default))
    else:
        path = Path(schema)
        source = str(path)
        if not path.is_file():
            raise MtlexpError(f"data.schema: {path}: file not found")
        try:
            content = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise MtlexpError(f"{source}: {where}invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(content, dict):
        raise MtlexpError(f"{source}: expected a mapping of schema keys, got {type(content).__name__}")
    unknown = sorted(set(content) - set(_SCHEMA_KEYS))
    if unknown:
        raise MtlexpError(f"{source}: {unknown[0]}: unknown key; expected one of {list(_SCHEMA_KEYS)}")

    fmt = content.get("format") or {}
    if not isinstance(fmt, dict) or set(fmt) - set(_FORMAT_KEYS):
        bad = sorted(set(fmt) - set(_FORMAT_KEYS)) if isinstance(fmt, dict) else [fmt]
        raise MtlexpError(f"{source}: format.{bad[0]}: unknown key; expected one of {list(_FORMAT_KEYS)}")
    header, strip = fmt.get("header", True), fmt.get("strip", True)
    for key, value in (("header", header), ("strip", strip)):
        if not isinstance(value, bool):
            raise MtlexpError(f"{source}: format.{key}: expected true or false, got {value!r}")
    delimiter = fmt.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise MtlexpError(f"{source}: format.delimiter: expected one character, got {delimiter!r}")
    missing = fmt.get("missing", [""])
    missing = [missing] if isinstance(missing, str) else missing
    if not isinstance(missing, list):
        raise MtlexpError(f"{source}: format.missing: expected a list of strings, got {missing!r}")

    columns = _names(content.get("columns"), f"{source}: columns") or None
    if not header and columns is None:
        raise MtlexpError(f"{source}: columns: expected the list of column names (format.header is false)")
    numeric = _names(content.get("numeric"), f"{source}: numeric")
    embedding_dim = _check_embedding_dim(content.get("embedding_dim", 4), f"{source}: embedding_dim")
    raw_categorical = content.get("categorical") or {}
    if isinstance(raw_categorical, list):
        raw_categorical = {name: None for name in _names(raw_categorical, f"{source}: categorical")}
    if not isinstance(raw_categorical, dict):
        raise MtlexpError(f"{source}: categorical: expected a list or mapping of column names")
    categorical: dict[str, int | str | None] = {}
    for name, node in raw_categorical.items():
        node = node or {}
        if not isinstance(node, dict) or set(node) - {"embedding_dim"}:
            raise MtlexpError(f"{source}: categorical.{name}: expected null or {{embedding_dim: ...}}, got {node!r}")
        dim = node.get("embedding_dim")
        where = f"{source}: categorical.{name}.embedding_dim"
        categorical[str(name)] = None if dim is None else _check_embedding_dim(dim, where)

    tasks = content.get("tasks") or {}
    if not isinstance(tasks, dict):
        raise MtlexpError(f"{source}: tasks: expected a mapping {{name: {{kind: ..., column: ...}}}}, got {tasks!r}")
    for name, node in tasks.items():
        task_spec(str(name), node, source)  # validates kind and keys
    weight = content.get("weight")
    if weight is not None and not isinstance(weight, str):
        raise MtlexpError(f"{source}: weight: expected a column name, got {weight!r}")
    drop = _names(content.get("drop"), f"{source}: drop")
    leaks = content.get("known_leaks") or {}
    if isinstance(leaks, list):
        leaks = {name: "" for name in _names(leaks, f"{source}: known_leaks")}
    if not isinstance(leaks, dict):
        raise MtlexpError(f"{source}: known_leaks: expected a mapping {{column: note}}, got {leaks!r}")
    known_leaks = {str(k): str(v or "") for k, v in leaks.items()}

    # Each column has one role; a label is never also a feature.
    roles: dict[str, str] = {}
    for role, names in (("numeric", numeric), ("categorical", tuple(categorical)), ("drop", drop)):
        for name in names:
            if name in roles:
                raise MtlexpError(f"{source}: {role}: column {name!r} is also listed under {roles[name]}")
            roles[name] = role
    label_columns = {name: str(node.get("column", name)) for name, node in tasks.items()}
    for name, column in label_columns.items():
        if roles.get(column) in ("numeric", "categorical"):
            raise MtlexpError(
                f"{source}: tasks.{name}.column: {column!r} is also listed under {roles[column]}; "
                "a label column is never a feature"
            )
    if weight is not None and weight in roles:
        raise MtlexpError(f"{source}: weight: column {weight!r} is also listed under {roles[weight]}")
    for name in known_leaks:
        if roles.get(name) not in ("numeric", "categorical"):
            raise MtlexpError(f"{source}: known_leaks: {name!r} is not listed as a numeric or categorical feature")
    if columns is not None:
        for name in sorted(set(roles) | set(label_columns.values()) | ({weight} if weight else set())):
            if name not in columns:
                raise MtlexpError(
                    f"{source}: column {name!r} is not in the schema's columns list{did_you_mean(name, columns)}"
                )
    return TableSchema(
        source=source,
        content=content,
        columns=columns,
        header=header,
        delimiter=delimiter,
        strip=strip,
        missing=tuple(str(m) for m in missing),
        numeric=numeric,
        categorical=categorical,
        embedding_dim=embedding_dim,
        tasks={str(k): dict(v or {}) for k, v in tasks.items()},
        weight=weight,
        drop=drop,
        known_leaks=known_leaks,
    )


def task_spec(name: str, node: Any, source: str | None = None) -> TaskSpec:
    """A task spec from a schema's ``tasks`` entry; errors name the schema file ``source``."""
    try:
        return task_from_config(name, node)
    except MtlexpError as exc:
        raise MtlexpError(f"{source}: {exc}" if source else str(exc)) from None


def json_default(value: Any) -> Any:
    """JSON fallback for OmegaConf containers and paths."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    return str(value)


def did_you_mean(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
