"""``evaluate(cfg)``: re-evaluate a checkpoint on a split, writing into its own run folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mtlexp.artefacts import summary_table
from mtlexp.components import build_components, build_trainer, count_parameters
from mtlexp.errors import MtlexpError
from mtlexp.models.names import model_name, upgrade_model_config
from mtlexp.run_record import RunRecord, Status, write_record

log = logging.getLogger(__name__)


def load_run_config(ckpt_path: Path) -> DictConfig:
    """The training run's config, as stored in an mtlexp checkpoint."""
    if not ckpt_path.is_file():
        raise MtlexpError(f"ckpt_path: no such file {str(ckpt_path)!r}")
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same one line
        raise MtlexpError(f"ckpt_path: {str(ckpt_path)!r} is not a readable checkpoint ({type(error).__name__})") from None
    stored = checkpoint.get("mtlexp", {}).get("config") if isinstance(checkpoint, dict) else None
    if not stored:
        raise MtlexpError(f"ckpt_path: {str(ckpt_path)!r} was not written by mtlexp train (no stored config)")
    cfg = OmegaConf.create(stored)
    cfg.model = upgrade_model_config(cfg.model)  # checkpoints of older versions name module paths
    return cfg


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    ckpt_path = Path(str(cfg.ckpt_path))
    output_dir = Path(cfg.paths.output_dir)
    if cfg.split not in ("val", "test"):
        raise MtlexpError(f"split: expected 'val' or 'test', got {cfg.split!r}")
    run_cfg = load_run_config(ckpt_path)
    run_cfg.data = OmegaConf.merge(run_cfg.data, cfg.get("data") or {})
    data, module = build_components(run_cfg)
    trainer = build_trainer(cfg, callbacks=[])
    run = trainer.validate if cfg.split == "val" else trainer.test
    run(module, datamodule=data, ckpt_path=str(ckpt_path), verbose=False)
    result = module.results[cfg.split]
    record = RunRecord(
        status=Status.OK,
        **{cfg.split: result["tasks"], f"{cfg.split}_norm_loss": result["norm_loss"]},
        gates=result.get("gates", {}),
        ckpt_path=str(ckpt_path.resolve()),
        seed=run_cfg.seed,
        model=model_name(run_cfg.model),
        num_params=count_parameters(module.model),
    )
    write_record(output_dir, record)
    metrics = record.to_json()
    log.info("\n%s", summary_table(metrics, data.tasks, splits=(cfg.split,)))
    log.info("run dir: %s", output_dir)
    return metrics
