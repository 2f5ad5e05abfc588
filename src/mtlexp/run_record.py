"""A run's ``metrics.json``: one typed record, and the one place that file is read and written.

Training runs, stacked runs and ``mtlexp eval`` write it; the job wrapper, the sweep summary, the HPO glue and
``mtlexp report`` read it. Free of torch (the report reads records, and must start quickly) and of pandas.

The file carries a ``schema`` version. Files without one are version 1 (every run before the key existed);
``RunRecord.from_json`` reads them into today's layout, so old run folders and ones copied from other
machines keep reading the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from mtlexp.io import read_json, write_json
from mtlexp.processes import is_gone

SCHEMA = 2  # 2: a replica's place in its stacked run moved from ``stack`` (a dict there) to ``replica``
FILE = "metrics.json"
STATUS = "status"  # the key in the file, and the column the report lists runs' states under


class Status(str, Enum):
    """What a run records about how far it got. ``STALE`` is never written: it is what a reader infers from a
    run that recorded ``RUNNING`` and whose process is gone (``RunRecord.state``)."""

    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    # Stopped by its study (hparams_search with a pruner) after an epoch that looked worse than the others
    # trials': not a failure, and not a result to compare either.
    PRUNED = "pruned"
    STALE = "stale"

    # A (str, Enum) formats as ``Status.OK`` on some Python versions; tables and messages want the value.
    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


Results = dict[str, dict[str, Any]]  # {task: {metric: value}}


@dataclass
class RunRecord:
    """Everything a run folder's ``metrics.json`` holds. A field left None is not written; keys this version
    does not know (a newer writer's, a hand-written file's) stay in ``extra`` and are written back."""

    schema: int = SCHEMA  # the layout of the file it was read from; it is always written in today's
    status: Status | None = None
    error: str | None = None
    # Who wrote the running record, so that a reader can tell a run still going from one killed without a word.
    pid: int | None = None
    host: str | None = None
    seed: int | None = None
    model: str | None = None
    model_class: str | None = None
    num_params: int | None = None
    val: Results | None = None  # the best checkpoint's (the one tested), not the last epoch's
    test: Results | None = None
    directions: dict[str, dict[str, str]] | None = None  # {task: {metric: max|min|zero}}
    val_norm_loss: float | None = None
    test_norm_loss: float | None = None
    best_epoch: int | None = None
    epochs_trained: int | None = None
    pruned_epoch: int | None = None  # the epoch after which its study pruned it (status pruned)
    best_checkpoint: str | None = None  # relative to the run folder when inside it
    ckpt_path: str | None = None  # mtlexp eval: the checkpoint it evaluated
    gates: dict[str, Any] | None = None
    gate_experts: dict[str, Any] | None = None
    gate_active: dict[str, Any] | None = None
    gate_hist: dict[str, Any] | None = None
    diagnostics: dict[str, Any] | None = None
    weighting: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    ddp: dict[str, Any] | None = None
    stack: int | None = None  # a stacked run's own record: how many replicas it trained ...
    replicas: list[str] | None = None  # ... and their folders, relative to its own
    replica: dict[str, Any] | None = None  # a replica's record: {replica: k, of: K, stacked_run: folder}
    duration_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def settled(self) -> bool:
        """Whether the run ended as it was asked to: ok, or pruned by its study (which a sweep does not count as
        a failure)."""
        return self.status in (Status.OK, Status.PRUNED)

    def validation_values(self) -> dict[str, Any]:
        """The validation metrics by the names a sweeper and the run's logs give them (``val/norm_loss``,
        ``val/<task>/<metric>``): what ``optimized_metric`` names."""
        names = {"val/norm_loss": self.val_norm_loss}
        for task, values in (self.val or {}).items():
            for name, value in (values or {}).items():
                if not isinstance(value, dict):
                    names[f"val/{task}/{name}"] = value
        return names

    def state(self) -> Status:
        """The status as a reader should take it: a record that names none never finished (failed), and one
        still running whose process is gone is stale (killed without a chance to record it; resume it from
        its ``last.ckpt``)."""
        if self.status is None:
            return Status.FAILED
        if self.status is Status.RUNNING and is_gone(self.pid, self.host):
            return Status.STALE
        return self.status

    def over(self, older: RunRecord | None) -> RunRecord:
        """This record, keeping what only ``older`` holds (a run's results over its running record: the pid
        and host stay)."""
        if older is None:
            return self
        mine = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "extra" and getattr(self, f.name) is not None}
        return dataclasses.replace(older, **mine, extra={**older.extra, **self.extra})

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the file, in today's layout."""
        known = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        known["schema"] = SCHEMA
        if self.status is not None:
            known[STATUS] = self.status.value
        return {**{k: v for k, v in known.items() if v is not None}, **self.extra}

    @classmethod
    def from_json(cls, data: Any) -> RunRecord:
        """A record from the JSON object of a file of any schema up to ``SCHEMA``. Raises ValueError for one
        that is not a record (not an object, an unknown status, a newer schema)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{FILE}: expected a JSON object, got {type(data).__name__}")
        values = dict(data)
        schema = values.pop("schema", 1)
        if not isinstance(schema, int) or isinstance(schema, bool) or not 1 <= schema <= SCHEMA:
            raise ValueError(f"{FILE}: schema {schema!r} is not one this mtlexp reads (1 to {SCHEMA}); "
                             "a newer mtlexp wrote it")
        if schema == 1 and isinstance(values.get("stack"), Mapping):
            values["replica"] = values.pop("stack")
        status = values.pop(STATUS, None)
        try:
            status = None if status is None else Status(status)
        except ValueError:
            raise ValueError(f"{FILE}: unknown {STATUS} {status!r}") from None
        names = {f.name for f in dataclasses.fields(cls)} - {"schema", STATUS, "extra"}
        return cls(schema=schema, status=status, **{k: v for k, v in values.items() if k in names},
                   extra={k: v for k, v in values.items() if k not in names})


def read_record(folder: str | Path) -> RunRecord | None:
    """The record in ``folder``, or None when it has none. Raises ValueError for a file that is not one."""
    path = Path(folder) / FILE
    return RunRecord.from_json(read_json(path)) if path.is_file() else None


def write_record(folder: str | Path, record: RunRecord) -> None:
    write_json(Path(folder) / FILE, record.to_json())


def update_record(folder: str | Path, **changes: Any) -> RunRecord:
    """Rewrite the record in ``folder`` with ``changes``, keeping whatever else it holds (a run's pid and host
    through to its end, its results when it fails late)."""
    record = dataclasses.replace(read_record(folder) or RunRecord(), **changes)
    write_record(folder, record)
    return record
