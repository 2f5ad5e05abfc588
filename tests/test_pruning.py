"""Finding a run's study trial (``mtlexp.pruning.open_trial``): what each way of not finding it says. The run
itself, pruned and not, stacked and not, is in tests/e2e/test_pruning.py."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mtlexp.errors import MtlexpError
from mtlexp.pruning import open_trial, trial_pruning

optuna = pytest.importorskip("optuna")
MEDIAN = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2}


def study(tmp_path, pruner=MEDIAN, directions=("minimize",)):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    made = optuna.create_study(study_name="s", storage=storage, directions=list(directions))
    made.set_user_attr("mtlexp_pruner", pruner)
    return storage, made


def test_a_running_trial_reports_to_its_study_with_the_pruner_the_study_keeps(tmp_path):
    storage, made = study(tmp_path)
    number = made.ask().number
    trial = open_trial("s", storage, number)
    assert trial.number == number and isinstance(trial.study.pruner, optuna.pruners.MedianPruner)
    trial.report(0.5, step=0)
    assert made.trials[number].intermediate_values == {0: 0.5}


def test_a_study_without_a_pruner_gives_no_trial_to_report_to(tmp_path):
    storage, made = study(tmp_path, pruner=None)
    assert open_trial("s", storage, made.ask().number) is None


@pytest.mark.parametrize("case, message", [
    ("trial", "trial.number: study 's' has no trial 7"),
    ("study", "trial.number: no study 'other' in sqlite:///{db}"),
    ("finished", "trial.number: trial 0 of study 's' is already complete"),
    ("objectives", "hydra.sweeper.pruner: study 's' has 2 objectives; Optuna prunes single-objective studies"),
    ("pruner", "hydra.sweeper.pruner._target_: 'builtins.print' is outside the allowed packages"),
])
def test_a_trial_that_cannot_be_reported_to_is_one_line_naming_the_key(tmp_path, case, message):
    storage, made = study(tmp_path, pruner={"_target_": "builtins.print"} if case == "pruner" else MEDIAN,
                          directions=("minimize", "maximize") if case == "objectives" else ("minimize",))
    trial = made.ask()
    if case == "finished":
        made.tell(trial, 1.0)
    with pytest.raises(MtlexpError) as error:
        open_trial("other" if case == "study" else "s", storage, 7 if case == "trial" else trial.number)
    assert str(error.value).startswith(message.format(db=tmp_path / "optuna.db"))


def test_a_trial_needs_its_study_named_and_a_single_metric_to_report(tmp_path):
    with pytest.raises(MtlexpError, match=r"^trial.storage: trial.number is set, so trial.study_name and trial.storage"):
        trial_pruning(OmegaConf.create({"trial": {"study_name": "s", "storage": None, "number": 0}}), dict)
    storage, made = study(tmp_path)
    cfg = OmegaConf.create({"trial": {"study_name": "s", "storage": storage, "number": made.ask().number},
                            "optimized_metric": None})
    with pytest.raises(MtlexpError, match=r"^optimized_metric: the study prunes, so the run reports one validation"):
        trial_pruning(cfg, dict)


def test_a_storage_that_cannot_be_opened_is_one_line_without_its_password(tmp_path):
    with pytest.raises(MtlexpError, match=r"^trial.storage: cannot open nonsense \(Could not parse"):
        open_trial("s", "nonsense", 0)
    with pytest.raises(MtlexpError) as error:
        open_trial("s", "postgresql://user:secret@127.0.0.1:1/db", 0)
    assert str(error.value).startswith("trial.storage: cannot open postgresql://user:***@127.0.0.1:1/db (")
    with pytest.raises(MtlexpError, match=r"^trial.storage: no SQLite database at "):
        open_trial("s", f"sqlite:///{tmp_path / 'missing.db'}", 0)
    assert not (tmp_path / "missing.db").exists()
