"""logger=mlflow: params, per-epoch metrics, the run folder as artifacts and the run status, read back from the
store; and the one-line error without mlflow."""

from __future__ import annotations

import base64
import importlib
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from mtlexp.config import register_configs
from mtlexp.errors import MtlexpError
from tests.conftest import cli_in_fork

# SQLAlchemy 2.1 about MLflow's store code (mtlexp hides it in its jobs, the tests read the store directly).
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
FAST = [
    "data.num_train=512", "data.num_val=256", "data.num_test=256", "data.batch_size=64",
    "trainer.max_epochs=2",
]
SIZES = ["data.num_train=512", "data.num_val=256", "data.num_test=256", "trainer.max_epochs=1"]
NOISE = ("Creating initial MLflow database tables", "Updating database tables", "alembic", "not found. Creating it",
         "Traceback")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One sweep of two jobs started in one folder, so into one store (outputs/mlflow.db), with CSV and TensorBoard
    too; the second job diverges during fit, after its MLflow run exists. One command for the whole file, in a
    forked child that finds MLflow's SQL store imported already."""
    pytest.importorskip("mlflow")
    folder = tmp_path_factory.mktemp("tracking")
    importlib.import_module("mtlexp.tracking")
    importlib.import_module("mlflow.store.tracking.sqlalchemy_store")
    return folder, cli_in_fork(["train", "-m", "logger=[default,mlflow]", "optimizer=sgd", "optimizer.momentum=0.9",
                                "optimizer.lr=0.01,1e6", *FAST, f"hydra.sweep.dir={folder / 'sweep'}"], folder,
                               env=without_mlflow_settings())


def without_mlflow_settings() -> dict[str, str]:
    """This environment without MLFLOW_* variables: the default store, not the user's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


def store(folder: Path):
    """The client of the default store of the runs started in ``folder``, and its runs (experiment mtlexp) by
    run folder."""
    from mlflow.tracking import MlflowClient

    db = folder / "outputs" / "mlflow.db"
    assert db.is_file()
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("mtlexp").experiment_id])
    return client, {Path(run.data.tags["mtlexp.run_dir"]).relative_to(folder).as_posix(): run for run in runs}


@pytest.mark.slow
def test_a_run_logs_params_metrics_and_its_folder_to_mlflow(sweep, tmp_path):
    folder, result = sweep
    for noise in NOISE:
        assert noise not in result.stdout + result.stderr, noise
    run_dir = folder / "sweep" / "0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok", result.stderr
    client, runs = store(folder)
    run = runs["sweep/0"]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "mmoe-seed0"
    assert run.data.tags["mtlexp.overrides"].startswith("logger=[default,mlflow] optimizer=sgd")
    assert run.data.params["model/_target_"] == "mtlexp.models.MMoE" and run.data.params["optimizer/lr"] == "0.01"
    assert run.data.params["seed"] == "0" and run.data.params["num_params"] == str(metrics["num_params"])

    # Per-epoch metrics: one point per epoch, as in the CSV log; val also gets the best checkpoint's, last.
    epochs = metrics["epochs_trained"]
    header, *rows = [line.split(",") for line in (run_dir / "csv" / "metrics.csv").read_text().splitlines()]
    in_csv = sum(bool(row[header.index("train/norm_loss")]) for row in rows)
    history = client.get_metric_history(run.info.run_id, "train/norm_loss")
    assert len(history) == in_csv == epochs
    assert [point.step for point in history] == sorted({point.step for point in history})
    val = client.get_metric_history(run.info.run_id, "val/norm_loss")
    assert len(val) == epochs + 1
    assert val[-1].value == pytest.approx(metrics["val_norm_loss"], rel=1e-5)
    assert "train/grad_cosine/task1-task2" in run.data.metrics  # "/" and "-" are kept

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"metrics.json", "provenance.json", "hydra", "figures"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "hydra")} == {"hydra/config.yaml",
                                                                                "hydra/overrides.yaml"}
    uploaded = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(uploaded).read_text()) == metrics
    # No copy that `mtlexp report` could take for a run folder (metrics.json + .hydra/) among the artifacts.
    assert not list((folder / "outputs").rglob(".hydra"))
    # The other loggers still write.
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_the_jobs_of_a_sweep_share_one_store_and_a_failed_job_ends_failed(sweep):
    folder, result = sweep
    assert result.returncode == 1 and "1 of 2 jobs failed" in result.stderr, result.stderr
    assert "training diverged" in result.stderr
    _, runs = store(folder)
    assert {name: run.info.status for name, run in runs.items()} == {"sweep/0": "FINISHED", "sweep/1": "FAILED"}
    assert runs["sweep/1"].data.params["optimizer/lr"] == "1000000.0"


@pytest.mark.slow
def test_the_job_outcome_ends_runs_that_lightning_left_open(sweep, tmp_path, capsys):
    """A failure after the trainer's calls (Lightning has ended nothing) ends FAILED; an interrupt ends KILLED."""
    from mtlexp.runner import run_job
    from mtlexp.tracking import MLflowLogger

    folder = sweep[0]
    MLflowLogger(store_dir=str(tmp_path / "unused"))  # building a logger writes nothing
    assert not (tmp_path / "unused").exists()

    def job(name: str, error: BaseException):
        def task(cfg) -> None:
            logger = MLflowLogger(experiment_name="outcomes", run_name=name, store_dir=str(folder / "outputs"))
            logger.log_hyperparams({"tasks/ctr@7d/kind": "binary"})  # a name MLflow refuses as it is
            logger.finalize("success")  # what Lightning says after fit: the run goes on
            raise error

        return task

    assert run_job(job("crash", RuntimeError("boom")), OmegaConf.create(), tmp_path / "crash") is False
    with pytest.raises(SystemExit):
        run_job(job("ctrl-c", KeyboardInterrupt()), OmegaConf.create(), tmp_path / "ctrl-c")
    assert "mtlexp: error: RuntimeError: boom" in capsys.readouterr().err
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("outcomes").experiment_id])
    assert {run.info.run_name: run.info.status for run in runs} == {"crash": "FAILED", "ctrl-c": "KILLED"}
    assert all(run.data.params == {"tasks/ctr_7d/kind": "binary"} for run in runs)


def test_without_mlflow_logger_mlflow_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    # The module imports without mlflow: only building the logger needs it.
    monkeypatch.delitem(sys.modules, "mtlexp.tracking", raising=False)
    importlib.import_module("mtlexp.tracking")
    from mtlexp.instantiate import build_all

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("mtlexp.conf", version_base="1.3"):
            cfg = compose("config", overrides=["logger=mlflow", f"paths.output_dir={tmp_path}"])
    finally:
        GlobalHydra.instance().clear()
    with pytest.raises(MtlexpError) as error:
        build_all(cfg.logger, "logger")
    assert str(error.value) == "logger.mlflow: mlflow is not installed; pip install 'mtlexp[mlflow]'"


@pytest.mark.slow
def test_an_unreachable_tracking_server_fails_in_seconds_naming_the_key(tmp_path):
    """MLflow's own requests would retry a server that is not there for about 4 minutes before failing."""
    pytest.importorskip("mlflow")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused, and no one else gets it
        uri = f"http://127.0.0.1:{closed.getsockname()[1]}"
        started = time.monotonic()
        result = cli_in_fork(["train", "logger=mlflow", f"logger.mlflow.tracking_uri={uri}", *SIZES,
                              f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"mtlexp: error: logger.mlflow.tracking_uri: cannot reach the MLflow tracking server {uri} (Connection "
        "refused); start the server, correct the URI, or give logger.mlflow.tracking_uri=null for the local store")
    assert "Traceback" not in result.stderr
    assert elapsed < 60  # the whole command, imports and data included
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


def files_holding(secret: bytes, folder: Path) -> list[str]:
    return [str(path) for path in folder.rglob("*") if path.is_file() and secret in path.read_bytes()]


@pytest.mark.slow
def test_a_password_in_a_uri_is_recorded_masked_everywhere(tmp_path):
    """A URI carrying a password, typed on the command line or read from the environment (oc.env), is recorded as
    scheme://user:***@host: the sweep and run folders (.hydra/, multirun.yaml, provenance.json, mtlexp.log, the
    loggers' params, checkpoints), the MLflow store, and what eval and report write from them; both still work.
    A sweep, because its launcher writes the overrides escaped (https\\://trainer\\:...)."""
    pytest.importorskip("mlflow")
    sweep, store = tmp_path / "sweep", tmp_path / "store"
    run_dir = sweep / "0"
    env = {**without_mlflow_settings(), "DATA_MIRROR": "https://reader:env-s3cret@data.example.org/census"}
    train = cli_in_fork(["train", "-m", "logger=[default,mlflow]",
                         f"logger.mlflow.tracking_uri=sqlite:///{store / 'mlflow.db'}",
                         "+logger.mlflow.tags.source=https://trainer:cli-s3cret@data.example.org/x",
                         "+logger.mlflow.tags.mirror=${oc.env:DATA_MIRROR}", *SIZES, f"hydra.sweep.dir={sweep}"],
                        tmp_path, env=env)
    assert train.returncode == 0, train.stderr
    assert "s3cret" not in train.stdout + train.stderr
    assert files_holding(b"s3cret", tmp_path) == []
    # Recorded, masked: the command line, Hydra's files, the params and tags MLflow keeps.
    masked = "https://trainer:***@data.example.org/x"
    assert "+logger.mlflow.tags.source=" + masked in json.loads((run_dir / "provenance.json").read_text())["command"]
    assert "- +logger.mlflow.tags.source=https\\://trainer\\:***@data.example.org/x" in (
        run_dir / ".hydra" / "overrides.yaml").read_text()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mtlexp").experiment_id])
    assert run.info.status == "FINISHED"  # the store was opened with the real URI
    assert run.data.tags["source"] == run.data.params["logger/mlflow/tags/source"] == masked
    assert run.data.tags["mirror"] == "https://reader:***@data.example.org/census"

    evaluate = cli_in_fork(["eval", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
                            f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["status"] == "ok"
    report = cli_in_fork(["report", str(sweep), "--no-figures"], tmp_path)
    assert report.returncode == 0, report.stderr
    assert files_holding(b"s3cret", tmp_path) == []


class _Server(BaseHTTPRequestHandler):
    """A tracking server that lets nobody in, and notes who asked: (path, Authorization header) per request."""

    seen: list[tuple[str, str | None]] = []

    def _answer(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        status, body = (200, b"OK") if self.path == "/health" else (403, b'{"error_code": "PERMISSION_DENIED"}')
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow
def test_the_tracker_gets_the_real_password_and_the_run_folder_the_masked_one(tmp_path):
    pytest.importorskip("mlflow")
    _Server.seen.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://trainer:s3cret@127.0.0.1:{server.server_address[1]}"
        result = cli_in_fork(["train", "logger=mlflow", f"logger.mlflow.tracking_uri={uri}", *SIZES,
                              f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1 and "PERMISSION_DENIED" in result.stderr, result.stderr
    real = "Basic " + base64.b64encode(b"trainer:s3cret").decode()
    assert any(path.startswith("/api/") and auth == real for path, auth in _Server.seen), _Server.seen
    assert "s3cret" not in result.stdout + result.stderr
    assert files_holding(b"s3cret", tmp_path) == []
