"""``metrics.json`` as one typed record: round trips, files of older schemas, and the status spelled in one place."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mtlexp
from mtlexp.processes import this_host
from mtlexp.run_record import FILE, SCHEMA, STATUS, RunRecord, Status, read_record, update_record, write_record

LEGACY = sorted((Path(__file__).resolve().parent / "models" / "legacy_checkpoints").glob(f"*/{FILE}"))


def test_a_record_round_trips_through_its_file(tmp_path):
    record = RunRecord(status=Status.OK, seed=3, model="mmoe", val={"t": {"mse": 0.5}}, test={"t": {"mse": 0.6}},
                       directions={"t": {"mse": "min"}}, val_norm_loss=0.4, best_epoch=1, stack=2,
                       replicas=["replicas/seed_3"], extra={"added_later": [1, 2]})
    write_record(tmp_path, record)
    saved = json.loads((tmp_path / FILE).read_text())
    assert saved["schema"] == SCHEMA and saved[STATUS] == "ok" and saved["added_later"] == [1, 2]
    assert "test_norm_loss" not in saved  # not recorded, not written
    assert read_record(tmp_path) == record == RunRecord.from_json(record.to_json())


def test_an_update_keeps_what_the_record_held(tmp_path):
    write_record(tmp_path, RunRecord(status=Status.RUNNING, seed=0, pid=12, host="h"))
    update_record(tmp_path, status=Status.FAILED, error="ValueError: nan")
    assert read_record(tmp_path) == RunRecord(status=Status.FAILED, error="ValueError: nan", seed=0, pid=12, host="h")
    results = RunRecord(status=Status.OK, val={"t": {"mse": 1.0}}).over(read_record(tmp_path))
    assert (results.status, results.pid, results.error, results.val) == (Status.OK, 12, "ValueError: nan",
                                                                        {"t": {"mse": 1.0}})


@pytest.mark.parametrize("path", LEGACY, ids=[p.parent.name for p in LEGACY])
def test_a_metrics_json_without_a_schema_reads_as_version_1(path):
    record = read_record(path.parent)
    assert record.schema == 1 and record.status is None and record.extra == {}
    assert record.model and record.val and record.test
    assert record.state() is Status.FAILED  # it never said it finished; the report has always counted it so
    assert record.to_json()["schema"] == SCHEMA


def test_a_replica_record_of_schema_1_keeps_its_place_in_the_stacked_run():
    place = {"replica": 1, "of": 2, "stacked_run": "/runs/x"}
    record = RunRecord.from_json({STATUS: "ok", "seed": 5, "stack": place})
    assert record.replica == place and record.stack is None
    assert "stack" not in record.to_json()


@pytest.mark.parametrize(("data", "message"), [([1], "JSON object"), ({STATUS: "done"}, "unknown"),
                                               ({"schema": SCHEMA + 1}, "newer mtlexp")])
def test_what_is_not_a_record_is_a_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        RunRecord.from_json(data)


def test_a_running_record_whose_process_is_gone_is_stale():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = this_host()
    assert RunRecord(status=Status.RUNNING, pid=gone.pid, host=host).state() is Status.STALE
    assert RunRecord(status=Status.RUNNING, pid=os.getpid(), host=host).state() is Status.RUNNING
    assert RunRecord(status=Status.INTERRUPTED, pid=gone.pid, host=host).state() is Status.INTERRUPTED
    assert f"{Status.OK} {Status.STALE!s}" == "ok stale"


def test_only_the_record_module_spells_the_status_key_and_values():
    """Everything else names them through ``mtlexp.run_record``, so a reader and a writer cannot drift apart."""
    package = Path(mtlexp.__file__).parent
    spelled = {STATUS, *(s.value for s in Status)}
    # git's own subcommand, not the record's key
    allowed = {("provenance.py", STATUS)}
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "run_record.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in spelled:
                if (path.name, node.value) not in allowed:
                    found.append(f"{path.relative_to(package)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


def test_a_pruned_run_ended_as_asked_and_keeps_its_epoch(tmp_path):
    write_record(tmp_path, RunRecord(status=Status.PRUNED, pruned_epoch=2, val_norm_loss=0.7))
    record = read_record(tmp_path)
    assert record.state() is Status.PRUNED and record.pruned_epoch == 2
    assert record.settled and not record.ok
    assert [RunRecord(status=s).settled for s in Status] == [s in (Status.OK, Status.PRUNED) for s in Status]


def test_validation_values_are_named_as_optimized_metric_names_them():
    record = RunRecord(val={"income": {"auroc": 0.9, "gates": {"g": [0.5]}}, "age": {"mse": 2.0}}, val_norm_loss=0.4)
    assert record.validation_values() == {"val/norm_loss": 0.4, "val/income/auroc": 0.9, "val/age/mse": 2.0}
