"""A multi-objective search folder: its trials' objectives and its Pareto front, for ``mtlexp report``.

The sweeper ends a multi-objective search (``optimized_metric`` a list, with ``directions``) by writing
``best_trials.yaml`` into the search folder: the objectives' names and directions, and the Pareto front (each
trial's number, values, parameters, run folder and the command that reruns it). Every trial's values are read
from its run folder's metrics.json (the names are ``optimized_metric``'s, as the sweeper read them), so the
report sees the trials the front was chosen from, not only the front.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mtlexp.errors import MtlexpError
from mtlexp.run_record import FILE, read_record
from mtlexp.specs import MAX, MIN

if TYPE_CHECKING:
    import pandas as pd

BEST_TRIALS = "best_trials.yaml"
DIRECTIONS = {"maximize": MAX, "minimize": MIN}  # Optuna's names, as the sweeper writes them


@dataclass(frozen=True)
class Search:
    """A search folder's objectives (``metrics``, their ``directions`` as ``max``/``min``), ``trials`` (one row
    per trial folder that completed: ``run``, then a column per metric) and ``front`` (the Pareto front as the
    study gives it, sorted by the first value: ``number``, a column per metric, ``params``, ``run_dir``,
    ``command``)."""

    folder: Path
    metrics: list[str]
    directions: list[str]
    trials: pd.DataFrame
    front: pd.DataFrame


def read_search(folder: Path) -> Search | None:
    """The search in ``folder``; None when it has no best_trials.yaml. Raises MtlexpError, naming the file and
    the key, for one it cannot read."""
    path = Path(folder) / BEST_TRIALS
    if not path.is_file():
        return None
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise MtlexpError(f"{path}: unreadable ({str(error).splitlines()[0]})") from None
    if not isinstance(content, Mapping):
        raise MtlexpError(f"{path}: expected a mapping with optimized_metric, directions and trials")
    metrics, directions = content.get("optimized_metric"), content.get("directions")
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise MtlexpError(f"{path}: optimized_metric: expected a list of metric names, got {metrics!r}")
    if not isinstance(directions, list) or len(directions) != len(metrics) or not set(directions) <= set(DIRECTIONS):
        raise MtlexpError(f"{path}: directions: expected one of {sorted(DIRECTIONS)} per metric of optimized_metric, "
                          f"got {directions!r}")
    front = content.get("trials") or []
    if not isinstance(front, list) or not all(_front_entry(t, len(metrics)) for t in front):
        raise MtlexpError(f"{path}: trials: expected a list of {{number, values (one per metric), params, run_dir, "
                          "command}}")
    import pandas as pd

    front_rows = [{"number": int(t["number"]), **dict(zip(metrics, map(float, t["values"]))),
                   "params": dict(t.get("params") or {}), "run_dir": t.get("run_dir"), "command": t.get("command")}
                  for t in front]
    columns = ["number", *metrics, "params", "run_dir", "command"]
    return Search(Path(folder), metrics, [DIRECTIONS[d] for d in directions], _trial_values(Path(folder), metrics),
                  pd.DataFrame(front_rows, columns=columns))


def front_table(search: Search, with_command: bool = False) -> tuple[list[str], list[list[Any]]]:
    """The Pareto front as a table: a row per trial (its number, its values, its parameters as
    ``key=value``; ``with_command``: the command that reruns it)."""
    header = ["trial", *search.metrics, "params", *(["command"] if with_command else [])]
    rows = []
    for row in search.front.to_dict("records"):
        params = " ".join(f"{k}={v}" for k, v in row["params"].items())
        rows.append([row["number"], *(f"{row[m]:.4f}" for m in search.metrics), params or "-",
                     *([row["command"] or "-"] if with_command else [])])
    return header, rows


def _front_entry(trial: Any, objectives: int) -> bool:
    return (isinstance(trial, Mapping) and isinstance(trial.get("number"), int)
            and isinstance(trial.get("values"), list) and len(trial["values"]) == objectives
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in trial["values"]))


def _trial_values(folder: Path, metrics: list[str]) -> pd.DataFrame:
    """Each completed trial's objectives, from the metrics.json of the search's trial folders (``0``, ``1``,
    ...): a stacked trial's own record holds its replicas' means, the values the study was told."""
    import pandas as pd

    rows = []
    for run in sorted((p.parent for p in folder.glob(f"*/{FILE}") if p.parent.name.isdigit()),
                      key=lambda p: int(p.name)):
        try:
            record = read_record(run)
        except (OSError, ValueError):  # the report lists it with the other runs; here it has no values
            continue
        if record is None or not record.ok:
            continue
        values = record.validation_values()
        if all(isinstance(values.get(m), (int, float)) for m in metrics):
            rows.append({"run": str(run), **{m: float(values[m]) for m in metrics}})
    return pd.DataFrame(rows, columns=["run", *metrics])
