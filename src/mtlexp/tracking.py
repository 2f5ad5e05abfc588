"""Experiment tracking with MLflow (``logger=mlflow``): a run's params, per-epoch metrics and results.

``MLflowLogger`` is Lightning's ``MLFlowLogger`` with mtlexp's defaults: a local SQLite store (one database
for every run started from the same folder, artifacts beside it), the run folder and the command-line
overrides as tags, and ``log_run_folder``, which ``train`` calls once ``metrics.json`` and the figures are
written, to upload them as artifacts. A run ends FINISHED only then; a failed job ends FAILED, an
interrupted one KILLED (``end_runs``, called by ``mtlexp.runner.run_job``). An http(s) tracking server is checked
at the logger's first use, before the first epoch, and one that does not answer within seconds stops the run.

mlflow is an optional extra (``pip install 'mtlexp[mlflow]'``) and takes seconds to import: nothing here
imports it before the logger is built, and no module on the default path imports this one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from mtlexp.errors import MtlexpError, first_line
from mtlexp.redact import redact

log = logging.getLogger(__name__)

KEY = "logger.mlflow"
DB_NAME = "mlflow.db"
ARTIFACTS_NAME = "mlartifacts"
# A tracking URI whose client contacts nothing until it is used (and it never is); see MLflowLogger.__init__.
_UNUSED_URI = "http://127.0.0.1:9"
# Characters MLflow refuses in param names.
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")
# Tag values beyond this are cut (MLflow refuses values over 8000 characters).
MAX_TAG = 5000
# Loggers of this process whose run mtlexp has not ended yet: ended by log_run_folder or end_runs.
_OPEN: list[MLflowLogger] = []
# How long the check before a run waits for a tracking server. MLflow's own requests retry an unreachable
# server for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES, docs/tracking.md): right for a server that blinks
# during a long run, not for a URI that was wrong from the start.
REACH_TIMEOUT_S = 5

# (logger name, level, why it is safe to raise it): what MLflow says that a user cannot act on.
_QUIET = (
    ("mlflow.store.db.utils", logging.WARNING, "'Creating initial MLflow database tables...' on a new store"),
    ("alembic", logging.WARNING, "the schema migrations MLflow runs on a new store"),
    ("mlflow.utils.git_utils", logging.ERROR, "'Failed to import Git' where git is not installed: the run then has "
     "no commit tag"),
)


# (warning message regex, why it is safe to hide)
_WARNINGS = (
    (r"The ``noload`` loader strategy is deprecated", "SQLAlchemy 2.1 about MLflow's own store code"),
)


def _quiet() -> None:
    for message, _why in _WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name, level, _why in _QUIET:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < level:
            logger.setLevel(level)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute), or None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(os.path.abspath(path)) if path and path != ":memory:" else None


@contextlib.contextmanager
def _store_lock(db: Path | None) -> Iterator[None]:
    """Hold a lock on a SQLite store while it is created and its experiment looked up or created: the jobs
    of a parallel sweep (hydra/launcher=joblib) start together, and each would create the tables."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; start parallel sweeps on an existing store
        fcntl = None  # type: ignore[assignment]
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _overrides(run_dir: Path) -> str | None:
    """The command-line overrides Hydra recorded for the run, as one line."""
    try:
        overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return redact(" ".join(map(str, overrides))) if isinstance(overrides, list) else None


class MLflowLogger(MLFlowLogger):
    """Lightning's MLflow logger with mtlexp's store, tags, run-folder artifacts and run status.

    Args:
        experiment_name: the MLflow experiment the run belongs to (created when missing).
        run_name: the run's name in the MLflow UI.
        tracking_uri: any MLflow tracking URI (``http://host:5000``, ``sqlite:////abs/mlflow.db``,
            ``databricks``); None: the SQLite store ``<store_dir>/mlflow.db``.
        store_dir: the folder of the default store (relative to the current folder); ignored when a
            ``tracking_uri`` is given.
        artifact_location: where a new experiment keeps its artifacts; None: ``mlartifacts/`` beside a
            SQLite database, the server's default otherwise.
        run_dir: the run folder, recorded as the tag ``mtlexp.run_dir`` (and its Hydra overrides as
            ``mtlexp.overrides``).
        tags: more tags for the run.
        log_model, prefix, run_id, synchronous: as in Lightning's ``MLFlowLogger``.
    """

    def __init__(
        self,
        experiment_name: str = "mtlexp",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        store_dir: str = "outputs",
        artifact_location: str | None = None,
        run_dir: str | None = None,
        tags: dict[str, Any] | None = None,
        log_model: bool | Literal["all"] = False,
        prefix: str = "",
        run_id: str | None = None,
        synchronous: bool | None = None,
    ) -> None:
        try:
            import mlflow  # noqa: F401 - the ~2 s import happens here, only when this logger is chosen
        except ImportError:
            raise MtlexpError(f"{KEY}: mlflow is not installed; pip install 'mtlexp[mlflow]'") from None
        _quiet()
        if not tracking_uri:
            tracking_uri = f"sqlite:///{Path(os.path.abspath(store_dir)) / DB_NAME}"
        self._db = _sqlite_path(tracking_uri)
        if artifact_location is None and self._db is not None:
            # MLflow's default next to a SQLite store is ./mlruns in whatever folder the run started from.
            artifact_location = (self._db.parent / ARTIFACTS_NAME).as_uri()
        tags = {str(k): redact(str(v))[:MAX_TAG] for k, v in (tags or {}).items()}
        if run_dir is not None:
            tags.setdefault("mtlexp.run_dir", os.path.abspath(run_dir))
            overrides = _overrides(Path(run_dir))
            if overrides:
                tags.setdefault("mtlexp.overrides", overrides[:MAX_TAG])
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            # Lightning makes its client in __init__, and a client creates its store (a new SQLite database:
            # seconds of migrations) at once. A client of a server that is never called costs nothing; the
            # real one is made at the first use (_mlflow_client), so a built but unused logger writes nothing.
            tracking_uri=_UNUSED_URI,
            tags=tags,
            log_model=log_model,
            prefix=prefix,
            artifact_location=artifact_location,
            run_id=run_id,
            synchronous=synchronous,
        )
        self._tracking_uri = tracking_uri
        self._client = None  # Lightning's, for _UNUSED_URI
        _OPEN.append(self)

    @property
    def _mlflow_client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            _check_reachable(self._tracking_uri)
            try:
                with _store_lock(self._db):  # a new SQLite store is created (tables, migrations) right here
                    self._client = MlflowClient(self._tracking_uri)
            except Exception as error:  # noqa: BLE001 - a store that cannot be opened or created, as one line
                raise MtlexpError(
                    f"{KEY}: cannot open the tracking store {self._tracking_uri}: {first_line(error)}") from None
        return self._client

    @_mlflow_client.setter
    def _mlflow_client(self, client: Any) -> None:
        self._client = client

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if not self._initialized and self._run_id is None and self._experiment_id is None:
            client = self._mlflow_client  # first: it takes the same lock to create the store
            with _store_lock(self._db):
                self._experiment_id = self._experiment_id_for(client, self._experiment_name)
        return super().experiment

    def _experiment_id_for(self, client: Any, name: str) -> str:
        """The experiment's id, creating the experiment when there is none (Lightning would create it with a
        warning, and fail when a parallel job created it first)."""
        from mlflow.exceptions import MlflowException

        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name, artifact_location=self._artifact_location)
            except MlflowException:  # created meanwhile by another job on the same server
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise MtlexpError(f"{KEY}.experiment_name: the experiment {name!r} is deleted in {self._tracking_uri}; "
                              f"restore it (mlflow experiments restore) or choose another name")
        return experiment.experiment_id

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        # MLflow refuses the whole batch over one name outside [/\w.\- :] (a task named "ctr@7d"); Lightning
        # cleans metric names only. Values are cut to 250 characters by Lightning (MLflow allows 6000).
        if isinstance(params, dict):
            params = {_BAD_NAME_CHARS.sub("_", str(k)): v for k, v in params.items()}
        super().log_hyperparams(params)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Lightning's end of fit, validate and test: a failure ends the run (FAILED); success does not, as
        ``train`` goes on (the best checkpoint's val and test metrics, then ``log_run_folder``)."""
        if status != "success":
            super().finalize(status)
        elif self._initialized and self._checkpoint_callback:
            self._scan_and_log_checkpoints(self._checkpoint_callback)  # log_model=true

    @rank_zero_only
    def log_run_folder(self, folder: str | os.PathLike[str]) -> None:
        """Upload the run folder's results as artifacts and end the run as FINISHED.

        ``metrics.json`` and ``provenance.json`` at the top, ``.hydra/config.yaml`` and ``overrides.yaml`` under
        ``hydra/`` (not ``.hydra/``: ``mtlexp report`` would take a copy with both for a run folder), and
        ``figures/``, each when present.
        """
        folder = Path(folder)
        uploads = [(folder / name, None) for name in ("metrics.json", "provenance.json")]
        uploads += [(folder / ".hydra" / name, "hydra") for name in ("config.yaml", "overrides.yaml")]
        try:
            client, run_id = self.experiment, self.run_id
            for path, artifact_path in uploads:
                if path.is_file():
                    client.log_artifact(run_id, str(path), artifact_path)
            if (folder / "figures").is_dir():
                client.log_artifacts(run_id, str(folder / "figures"), "figures")
            client.set_terminated(run_id, "FINISHED")
        except MtlexpError:
            raise
        except Exception as error:  # noqa: BLE001 - a store or server problem, as one line
            raise MtlexpError(
                f"{KEY}: could not upload the run folder to {self._tracking_uri}: {first_line(error)}") from None
        if self in _OPEN:
            _OPEN.remove(self)


def end_runs(status: str) -> None:
    """End the runs of this process that mtlexp has not ended yet with the job's outcome (FINISHED, FAILED or
    KILLED). A failure to reach the store is a warning: the job's own outcome stays what it was."""
    while _OPEN:
        logger = _OPEN.pop()
        if not logger._initialized or logger._run_id is None:  # no run was created (or not on this rank)
            continue
        try:
            logger.experiment.set_terminated(logger._run_id, status)
        except Exception as error:  # noqa: BLE001
            log.warning("%s: could not mark the run %s as %s: %s", KEY, logger._run_id, status, first_line(error))


def _check_reachable(uri: str) -> None:
    """Fail in seconds, naming the key, when an http(s) tracking server cannot be reached. Any HTTP answer
    counts, even 401 or 404: only a server that answers nothing is refused. Other stores are local files
    (sqlite, file) or reached by their own clients (databricks)."""
    if not uri.lower().startswith(("http://", "https://")):
        return
    import requests
    from mlflow.utils.credentials import get_default_host_creds

    # MLflow's TLS settings (MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_SERVER_CERT_PATH, client cert), so
    # that the check accepts exactly the servers the run's own requests would.
    creds = get_default_host_creds(uri)
    try:
        # stream: the answer's status is enough; a server without /health may send its whole UI page instead.
        requests.get(uri.rstrip("/") + "/health", timeout=REACH_TIMEOUT_S, verify=creds.verify,
                     cert=creds.client_cert_path, allow_redirects=False, stream=True).close()
    except requests.exceptions.Timeout:
        reason = f"no answer within {REACH_TIMEOUT_S} s"
    except requests.exceptions.SSLError as error:
        reason = f"TLS failed: {_os_reason(error)}"
    except requests.exceptions.RequestException as error:
        reason = _os_reason(error)
    else:
        return
    raise MtlexpError(f"{KEY}.tracking_uri: cannot reach the MLflow tracking server {uri} ({reason}); start the "
                      f"server, correct the URI, or give {KEY}.tracking_uri=null for the local store")


def _os_reason(error: BaseException) -> str:
    """The operating system's words at the bottom of a requests error ("Connection refused", "Name or service
    not known"), not the pages of urllib3 wrapping around them."""
    found = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", str(error))
    return found[-1].strip() if found else first_line(error)
