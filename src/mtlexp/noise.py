"""Output a user cannot act on, silenced in every process that runs a job (joblib workers included).

Each entry names what it hides and why it is safe to hide; everything else Lightning says stays.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, why it is safe to hide)
_WARNINGS = (
    (r".*isinstance\(treespec, LeafSpec\).*", "Lightning 2.6 on torch 2.13, about torch's own pytree API"),
    (r"The dirpath has changed from", "a resumed run writes to a folder of its own on purpose"),
    (r"Be aware that when using `ckpt_path`, callbacks used to create",
     "mtlexp eval restores the model and data, never the training callbacks"),
    (r"torch.distributed.nn.functional.all_gather is deprecated",
     "Lightning's all_gather on torch >= 2.13; mtlexp calls it through LightningModule.all_gather"),
    (r"It is recommended to use `self.log\(.*sync_dist=True\)`",
     "MTLModule reduces every value across DDP ranks itself before it logs it (module._log_split)"),
)


class _NoTips(logging.Filter):
    """Lightning's advertisements (litlogger, litmodels) on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def silence() -> None:
    for message, _why in _WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())
