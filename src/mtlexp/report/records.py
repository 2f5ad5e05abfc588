"""Run folders read into tidy tables: one row per run, and one row per value a run measured.

A run folder says what the run was in ``.hydra/config.yaml`` (the composed config, flattened here to dotted
keys) and what it measured in ``metrics.json``; nothing else is read, and no training code runs, so old runs
and runs copied from other machines read the same. What tells configurations apart are the *swept keys*: the
config leaves whose value differs between the runs read together (the seed aside, which repeats a
configuration). Override lines are not parsed for values: they break on quoted and list values, and miss
what an ``experiment=`` file changed; they only order the swept keys as the sweep was typed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mtlexp.config import flat_config
from mtlexp.errors import MtlexpError
from mtlexp.models.names import model_name
from mtlexp.run_folder import run_overrides, swept_only
from mtlexp.run_record import FILE, STATUS, RunRecord, Status, read_record
from mtlexp.report.stats import metric_direction

if TYPE_CHECKING:  # pandas is imported where tables are built: the training path reads overrides from here
    import pandas as pd

# The layout of Study.runs and Study.values (and of report.csv); bump it when a column changes. 3: runs gained
# pruned_epoch.
RECORD_SCHEMA = 3

# Leaves that never tell configurations apart: the seed repeats one, ``stack`` packs seeds into one process,
# ``ckpt_path`` is where a run resumed from, paths and Hydra's settings are where it ran, and ``trial`` is which
# trial of a search's study it was (its number differs in every trial).
NOT_SWEPT = ("seed", "stack", "ckpt_path")
NOT_SWEPT_PREFIXES = ("paths.", "hydra.", "trial.")
# Nodes reported by their stable name (``model=esmm(mmoe)``) rather than by the dozen leaves two models differ in.
NAMED_NODES = ("model", "weighting")

ALL_GROUP = "(all)"  # the group of every run when nothing varies
UNKNOWN_GROUP = "(unknown)"  # runs whose config cannot be read: what they were is not known

RUN_COLUMNS = ["run", "group", "seed", STATUS, "error", "best_epoch", "epochs_trained", "pruned_epoch", "duration_s"]
VALUE_COLUMNS = ["split", "task", "metric", "direction", "value"]
SPLITS = ("val", "test")
ALL_TASKS = "*"  # the task of values that span all tasks (the normalised loss)


@dataclass(frozen=True)
class Study:
    """Runs read together.

    ``runs``: one row per run (every run, whatever its status): ``run`` (folder), ``group`` (the swept keys as
    ``key=value``, ``(all)`` when nothing varies), ``seed``, ``status`` (ok, pruned, failed, interrupted,
    running, stale), ``error``, ``best_epoch``, ``epochs_trained``, ``pruned_epoch`` (the epoch after which its
    study pruned it), ``duration_s``, then one column per swept key.
    ``values``: one row per (run, split, task, metric) of the ok runs: ``run``, ``group``, ``seed``, the swept
    keys, ``split``, ``task`` (``*`` for the normalised loss over all tasks), ``metric``, ``direction`` (which
    way it improves, ``stats.metric_direction``; missing when unknown), ``value``.
    ``swept``: the swept keys, as dotted config keys (``model``, ``data.correlation``), in the order the
    overrides name them, then in config order. A value is as the config has it (a list as a tuple); a key a
    run's config lacks is None. A run whose config cannot be read is in group ``(unknown)``, failed.
    ``others``: None, unless the runs were grouped by named keys only (``load_runs(group_by=...)``); then
    ``swept`` is those keys, and ``others`` holds, per group, every other key the runs differ in with the values
    the group's runs have (formatted, sorted; a key none of them sets is left out): one value is a setting of the
    group, several mean that the group pools runs of different configurations.
    """

    runs: pd.DataFrame
    values: pd.DataFrame
    swept: list[str]
    others: dict[str, dict[str, list[str]]] | None = None


@dataclass(frozen=True)
class _Folder:
    """What one run folder records about itself. ``config`` is None when it cannot be read (``problem`` says
    why); ``leaves`` is the config flattened to dotted keys."""

    run: Path
    record: RunRecord
    config: dict[str, Any] | None
    leaves: dict[str, Any] | None
    problem: str


def load_runs(run_dirs: Iterable[Path], group_by: Sequence[str] = ()) -> Study:
    """Read run folders (see ``find_runs``) into a ``Study``. ``group_by``: group the runs by these keys only
    (among those the runs differ in), not by every key that differs; the others are kept in ``Study.others``.
    Raises MtlexpError for a ``group_by`` key the runs do not differ in."""
    folders = [_read_folder(Path(run)) for run in run_dirs]
    swept = _swept_keys(folders)
    other_keys: list[str] = []
    if group_by:
        differing = list(dict.fromkeys([*swept, *_differing_keys(folders)]))
        unknown = [key for key in group_by if key not in differing]
        if unknown:
            raise MtlexpError(f"--group-by: {unknown[0]!r} is not a key these runs differ in; they differ in: "
                              f"{', '.join(differing) or 'nothing'}")
        swept, other_keys = list(group_by), [key for key in differing if key not in group_by]
    rows = []
    for folder in folders:
        setting = _setting(folder, swept)
        group = " ".join(f"{key}={format_value(value)}" for key, value in setting.items())
        rows.append({"run": str(folder.run), "group": UNKNOWN_GROUP if folder.config is None else group or ALL_GROUP,
                     "seed": _seed(folder), STATUS: (Status.FAILED if folder.problem else folder.record.state()).value,
                     "error": folder.problem or str(folder.record.error or ""),
                     **{key: getattr(folder.record, key)
                        for key in ("best_epoch", "epochs_trained", "pruned_epoch", "duration_s")},
                     **setting})
    import pandas as pd

    runs = _frame(rows, RUN_COLUMNS, swept)
    runs["seed"] = runs["seed"].astype("Int64")
    measured = [{"run": str(folder.run), **value} for folder, row in zip(folders, rows) if row[STATUS] == Status.OK
                for value in _measured(folder.record)]
    values = runs[["run", "group", "seed", *swept]].merge(pd.DataFrame(measured, columns=["run", *VALUE_COLUMNS]),
                                                         on="run", how="inner")
    values["value"] = values["value"].astype(float)
    others = _other_settings(folders, [row["group"] for row in rows], other_keys) if group_by else None
    return Study(runs=runs, values=values, swept=swept, others=others)


def format_value(value: Any) -> str:
    """A config value as a group spells it (``0.5``, ``mmoe``, ``[16, 32]``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def find_runs(roots: list[Path]) -> list[Path]:
    """Training run folders under ``roots``. ``mtlexp eval`` folders, which look alike, are left out, and so
    is the folder of a finished stacked run (``stack=K``): its replicas, in folders below it, are the runs."""
    found = {p.parent for root in roots for p in root.rglob(FILE) if (p.parent / ".hydra").is_dir()}
    return sorted(run for run in found if config_name(run) != "eval" and not _finished_stack(run))


def _finished_stack(run: Path) -> bool:
    """Whether ``run`` is a stacked run that finished, or was pruned (one that did not keeps its error, and is
    listed)."""
    try:
        record = read_record(run)
    except (OSError, ValueError):
        return False
    return record is not None and bool(record.replicas) and record.settled


def config_name(run: Path) -> str | None:
    """The primary config a run was composed from (``config`` for mtlexp train, ``eval`` for mtlexp eval)."""
    path = run / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    job = (yaml.safe_load(path.read_text()) or {}).get("hydra", {}).get("job", {})
    return job.get("config_name")


def run_state(metrics: Mapping[str, Any]) -> str:
    """The state of a run with this metrics.json content (``RunRecord.state``), for callers that hold the JSON."""
    return RunRecord.from_json(metrics).state().value


def _read_folder(run: Path) -> _Folder:
    config, problem = _read_config(run)
    try:
        record = read_record(run) or RunRecord()
    except (OSError, ValueError) as error:  # ValueError: not JSON, not UTF-8, or not a record
        record, problem = RunRecord(), f"{FILE} unreadable: {error}"
    leaves = None if config is None else {key: _frozen(value) for key, value in flat_config(config).items()}
    return _Folder(run, record, config, leaves, problem)


def _read_config(run: Path) -> tuple[dict[str, Any] | None, str]:
    path = run / ".hydra" / "config.yaml"
    if not path.is_file():
        return None, "no .hydra/config.yaml: the run's config is unknown"
    try:
        node = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        return None, f".hydra/config.yaml unreadable: {str(error).splitlines()[0]}"
    if not isinstance(node, dict):
        return None, ".hydra/config.yaml unreadable: not a mapping"
    return node, ""


def _frozen(value: Any) -> Any:
    """A config leaf as a value that can be compared and grouped on: a list as a tuple."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):  # an empty one (the others are flattened)
        return "{}"
    return value


def _swept_keys(folders: list[_Folder]) -> list[str]:
    """The config leaves that differ between the readable runs, a named node's leaves folded into its name; in
    the order the sweep's overrides name them, then in config order."""
    readable = [f for f in folders if f.leaves is not None]
    leaves = list(dict.fromkeys(key for f in readable for key in f.leaves))
    names = {node: [_node_name(f, node) for f in readable] for node in NAMED_NODES}

    # A key a run lacks counts as null: a key added to the config later, null by default, changes nothing
    # for the runs made before it.
    def varies(key: str, among: list[bool]) -> bool:
        return len({repr(f.leaves.get(key)) for f, used in zip(readable, among) if used}) > 1

    swept: list[str] = []
    for key in leaves:
        if _never_swept(key) or not varies(key, [True] * len(readable)):
            continue
        node = next((n for n in NAMED_NODES if key.startswith(f"{n}.")), None)
        if node is None:
            swept.append(key)
            continue
        if node not in swept and len(set(names[node])) > 1:
            swept.append(node)
        # A leaf that also varies between runs of one model (model=mmoe model.num_experts=4,8) is a key of its own.
        if any(varies(key, [n == name for n in names[node]]) for name in set(names[node])):
            swept.append(key)
    typed = list(dict.fromkeys(o.split("=", 1)[0].lstrip("+~") for f in folders for o in run_overrides(f.run)))
    return sorted(swept, key=lambda key: _typed_position(key, typed))


def _differing_keys(folders: list[_Folder]) -> list[str]:
    """Every key the readable runs differ in, unfolded: a named node by its name and each of its leaves that
    differs (``model``, ``model.num_experts``), but not its ``_target_`` and ``_name_``, which its name says."""
    readable = [f for f in folders if f.leaves is not None]
    keys = [node for node in NAMED_NODES if len({_node_name(f, node) for f in readable}) > 1]
    for key in dict.fromkeys(key for f in readable for key in f.leaves):
        named = any(key.startswith(f"{node}.") for node in NAMED_NODES)
        if _never_swept(key) or (named and key.rsplit(".", 1)[-1] in ("_target_", "_name_")):
            continue
        if len({repr(f.leaves.get(key)) for f in readable}) > 1:
            keys.append(key)
    return keys


def _other_settings(folders: list[_Folder], groups: list[str], keys: list[str]) -> dict[str, dict[str, list[str]]]:
    """Per group, the values its readable runs have of each of ``keys`` (a key none of them sets left out)."""
    seen: dict[str, dict[str, set[str]]] = {}
    for folder, group in zip(folders, groups):
        if folder.leaves is None:
            continue
        for key, value in _setting(folder, keys).items():
            seen.setdefault(group, {}).setdefault(key, set()).add(format_value(value))
    return {group: {key: sorted(values) for key, values in settings.items() if values != {"null"}}
            for group, settings in seen.items()}


def _never_swept(key: str) -> bool:
    return key in NOT_SWEPT or key.startswith(NOT_SWEPT_PREFIXES)


def _typed_position(key: str, typed: list[str]) -> int:
    """Where the overrides first name ``key`` or a node above it (``data=census`` names ``data.num_train``)."""
    return next((i for i, name in enumerate(typed) if key == name or key.startswith(f"{name}.")), len(typed))


def _node_name(folder: _Folder, node: str) -> str | None:
    """A named node's stable name: the model's as metrics.json records it, else as the config names it."""
    config = (folder.config or {}).get(node)
    if node == "model" and folder.record.model:
        return str(folder.record.model)
    if not isinstance(config, Mapping):
        return None
    if node == "model":
        return model_name(dict(config))
    return str(config.get("_name_") or str(config.get("_target_", "")).rsplit(".", 1)[-1]) or None


def _setting(folder: _Folder, swept: list[str]) -> dict[str, Any]:
    """The run's value of every swept key (None where its config lacks the key or cannot be read)."""
    leaves = folder.leaves or {}
    return {key: _node_name(folder, key) if key in NAMED_NODES else leaves.get(key) for key in swept}


def _seed(folder: _Folder) -> int | None:
    seed = (folder.config or {}).get("seed", folder.record.seed)
    try:
        return int(seed)
    except (TypeError, ValueError):
        return None


def _measured(record: RunRecord) -> list[dict[str, Any]]:
    """The values in a run's metrics.json, one dict per (split, task, metric)."""
    recorded = record.directions or {}
    # The normalised loss over all tasks is the mean of the tasks' own, so it improves the way theirs do.
    overall = next((d["norm_loss"] for d in recorded.values() if "norm_loss" in d), None)
    rows = []
    for split in SPLITS:
        for task, values in (getattr(record, split) or {}).items():
            rows += [{"split": split, "task": task, "metric": metric,
                      "direction": metric_direction(metric, recorded.get(task, {}).get(metric)), "value": value}
                     for metric, value in values.items() if _is_number(value)]
        norm_loss = getattr(record, f"{split}_norm_loss")
        if _is_number(norm_loss):
            rows.append({"split": split, "task": ALL_TASKS, "metric": "norm_loss",
                         "direction": metric_direction("norm_loss", overall), "value": norm_loss})
    return rows


def recorded_direction(values: pd.DataFrame, task: str, metric: str) -> str | None:
    """Which way a task's metric improves, as the runs in ``values`` record it; None when none says."""
    found = set(values.loc[(values["task"] == task) & (values["metric"] == metric), "direction"].dropna())
    if len(found) > 1:
        raise MtlexpError(f"the runs disagree on which way {task} {metric} improves: {', '.join(sorted(found))}")
    return next(iter(found), None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _frame(rows: list[dict[str, Any]], columns: list[str], swept: list[str]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=[*columns, *swept])
    for key in swept:
        values = [row[key] for row in rows]
        # pandas would turn an int column with a gap into floats (4 -> 4.0): keep such a column as the config has it.
        if any(v is None for v in values) or any(isinstance(v, tuple) for v in values):
            frame[key] = pd.Series(values, index=frame.index, dtype=object)
    return frame

