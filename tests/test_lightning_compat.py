"""The Lightning internals behind ``mtlexp.lightning_compat`` still exist and mean what mtlexp assumes."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mtlexp.lightning_compat import count_optimizer_steps, is_last_batch, should_update_logs


class Probe(pl.LightningModule):
    """Manual optimisation that steps the optimizer by hand, as mtlexp's plain path does."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, bool, bool]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.global_step, is_last_batch(self.trainer), should_update_logs(self.trainer)))
        self.optimizers().optimizer.step()
        count_optimizer_steps(self.trainer, 2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_step_counting_last_batch_and_log_gating_behave_as_mtlexp_assumes(tmp_path):
    probe = Probe()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=2, default_root_dir=tmp_path)
    trainer.fit(probe, DataLoader(torch.zeros(3, 1), batch_size=1))
    assert [s[0] for s in probe.seen] == [0, 2, 4, 6, 8, 10]  # two counted steps per training_step
    assert trainer.global_step == 12
    assert [s[1] for s in probe.seen] == [False, False, True] * 2  # the epoch's last batch, known in advance
    assert any(s[2] for s in probe.seen) and not all(s[2] for s in probe.seen)


def test_early_stopping_says_stop_by_the_callbacks_own_rule():
    from pytorch_lightning.callbacks import EarlyStopping

    from mtlexp.lightning_compat import early_stopping_says_stop

    stopper = EarlyStopping(monitor="val/norm_loss", mode="min", patience=2, min_delta=0.05)
    # 0.87 and 0.86 improve on 0.9, but by less than min_delta: they count towards the patience.
    assert [early_stopping_says_stop(stopper, s) for s in (1.0, 0.9, 0.87, 0.86)] == [False, False, False, True]
    assert stopper.wait_count == 2 and float(stopper.best_score) == pytest.approx(0.9)
    assert early_stopping_says_stop(EarlyStopping(monitor="m", patience=5), float("nan"))  # not finite: stop
