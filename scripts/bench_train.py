#!/usr/bin/env python
"""Training throughput of mtlexp against a lean pure-PyTorch loop of the same model, in the same run.

The workload is the MMoE paper's synthetic setting: d=100 numeric inputs, MMoE with 8 experts of 16 units
and towers of 8, two regression tasks, ``torch.optim.Adam(fused=True)`` at lr 1e-3 on both sides.

* mtlexp side: the real config (Hydra compose API on ``mtlexp.conf``, ``logger=csv``), the real components
  (``mtlexp.components.build_components`` / ``build_trainer``), checkpointing and validation on, per-step logging
  and train-split metrics as the module does them, ``data.chunk_steps`` from the config. A callback
  (:class:`EpochTimer`) stamps every training epoch and times the validation loop and every checkpoint
  write apart.
* lean side: the same model class (``mtlexp.models.MMoE``) on the same training tensors, a plain loop:
  a random permutation per epoch, an index gather per batch, the sum of the task MSEs, ``zero_grad`` /
  ``backward`` / ``step``; no metrics, no logging, no validation.

What is timed (design.md, "Settled" -> "Benchmark"). A training epoch of mtlexp is the wall time from one
``on_train_epoch_start`` to the next (``on_train_end`` after the last epoch): every step, the per-step
logging, the metric updates and the epoch-end hooks, including the module's ``on_train_epoch_end`` with the
train-split metric compute (Lightning calls ordinary callbacks' ``on_train_epoch_end`` *before* the module's,
so that hook cannot close the window). The validation loop and the checkpoint writes inside the window are
timed exactly (by wrapping ``val_loop.run`` and ``trainer.save_checkpoint``), subtracted, and reported apart.
The first epoch of every fit is a warm-up and is not counted.

Noise. This is a small shared machine, so the lean epochs run *interleaved* with mtlexp's in the same fit:
the timing callback runs one lean epoch next to every mtlexp epoch, outside the timed window (before each
mtlexp epoch in even rounds, after it in odd rounds), so both sides see the same machine state. Each batch
size gets ``--rounds`` fresh fits; a side's figure is its median samples/s over all its timed epochs, and
the ratio is mtlexp's median over the lean loop's median. Both sides use ``torch.set_num_threads(--threads)``
(default: torch's own choice, one per core) and the same ``torch.use_deterministic_algorithms`` state
(mtlexp's ``trainer.deterministic: true`` sets it for the process).

Usage::

    .venv/bin/python scripts/bench_train.py                  # 200k samples, batch 128 and 1024
    .venv/bin/python scripts/bench_train.py --tensorboard    # also mtlexp with CSV + TensorBoard loggers
    .venv/bin/python scripts/bench_train.py --quick          # a smoke test (seconds), not a measurement
    .venv/bin/python scripts/bench_train.py --accelerator gpu  # both sides on the GPU (trainer=gpu), synchronised

Then every model config (and MMoE with each sparse gate) is trained through mtlexp at batch 1024 on the same
data, printing its samples/s and its ratio to MMoE's (no lean loop: this axis compares architectures), and
MMoE with every weighting config, with its ratio to equal weighting.

The last line printed is ``ratio_b128=<x> ratio_b1024=<y>`` (one entry per ``--batch-sizes`` value).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from mtlexp.config import register_configs, validate_run
from mtlexp.data.base import MTLDataModule
from mtlexp.instantiate import build_all
from mtlexp.models import MMoE
from mtlexp.models.names import model_configs
from mtlexp.components import build_components, build_trainer, count_parameters
from mtlexp.record import flat_config

# The model: MMoE, 8 experts x 16, towers 8 (the repository's conf/model/mmoe.yaml).
MODEL = {"num_experts": 8, "expert_hidden": [16], "tower_hidden": [8]}
CENSUS_BATCH = 1024  # experiment=paper_census_group1
ARCH_BATCH = 1024  # the per-architecture figures
ARCHITECTURES = model_configs()
WEIGHTINGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "weighting").glob("*.yaml"))
DEFAULT_CENSUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "census-income"


# --- the lean side -----------------------------------------------------------------------------------
class LeanLoop:
    """A hand-written training loop of the same model on the same tensors; ``epoch()`` appends its seconds."""

    def __init__(self, data: MTLDataModule, batch_size: int, lr: float, seed: int,
                 device: torch.device = torch.device("cpu")) -> None:
        torch.manual_seed(seed)
        self.device = device
        self.model = MMoE(data.features, data.tasks, **MODEL).to(device)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, fused=True)
        self.names = [t.name for t in data.tasks]
        table = data.splits["train"]
        self.x, self.c = table.numeric.to(device), table.categorical.to(device)
        self.y = torch.stack([table.labels[n] for n in self.names], dim=1).to(device)  # (N, T): one gather per batch
        losses = {"regression": F.mse_loss, "binary": F.binary_cross_entropy_with_logits}
        self.losses = [losses[t.kind] for t in data.tasks]
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.seconds: list[float] = []

    def epoch(self) -> None:
        model, optimizer, names, batch_size = self.model, self.optimizer, self.names, self.batch_size
        with torch.enable_grad():
            start = time.perf_counter()
            order = torch.randperm(self.x.shape[0], generator=self.generator).to(self.device)
            for first in range(0, order.numel(), batch_size):
                index = order[first : first + batch_size]
                x, c, y = self.x[index], self.c[index], self.y[index]
                logits = model(x, c).logits
                loss = sum(fn(logits[name], y[:, i]) for i, (name, fn) in enumerate(zip(names, self.losses)))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            synchronize()
            self.seconds.append(time.perf_counter() - start)


def synchronize() -> None:
    """Wait for the GPU's queued work (no-op on CPU), so that a wall-clock stamp includes it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# --- the mtlexp side ---------------------------------------------------------------------------------
class EpochTimer(pl.Callback):
    """Stamps each training epoch; times the validation loop and the checkpoint writes inside it apart.

    ``on_train_epoch_start`` closes the previous epoch and opens the next; ``on_train_end`` closes the last.
    ``between`` (the lean loop's epoch) runs between two windows, never inside one: before every epoch when
    ``between_first``, else after every epoch.
    """

    def __init__(self, between: Callable[[], None] | None = None, between_first: bool = True) -> None:
        self.between, self.between_first = between, between_first
        self.starts: list[float] = []
        self.stops: list[float] = []
        self.val: list[float] = []  # validation loop per epoch, checkpoint writes excluded
        self.ckpt: list[float] = []  # checkpoint writes per epoch (inside validation or not)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        val_loop = trainer.fit_loop.epoch_loop.val_loop
        run_val, save = val_loop.run, trainer.save_checkpoint

        def timed_val(*args: Any, **kwargs: Any) -> Any:
            synchronize()
            start, ckpt_before = time.perf_counter(), self._ckpt_now()
            try:
                return run_val(*args, **kwargs)
            finally:
                synchronize()
                if self.val:
                    self.val[-1] += time.perf_counter() - start - (self._ckpt_now() - ckpt_before)

        def timed_save(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return save(*args, **kwargs)
            finally:
                if self.ckpt:
                    self.ckpt[-1] += time.perf_counter() - start

        val_loop.run = timed_val  # instance attributes: only this trainer is affected
        trainer.save_checkpoint = timed_save

    def _ckpt_now(self) -> float:
        return self.ckpt[-1] if self.ckpt else 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize()
        if self.starts:
            self.stops.append(time.perf_counter())
        if self.between is not None and (self.between_first or self.starts):
            self.between()
        self.val.append(0.0)
        self.ckpt.append(0.0)
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize()
        self.stops.append(time.perf_counter())
        if self.between is not None and not self.between_first:
            self.between()

    def train_seconds(self) -> list[float]:
        """Training time of each epoch: its window minus validation and checkpoint writes."""
        assert len(self.stops) == len(self.starts), "the fit did not finish"
        return [b - a - v - c for a, b, v, c in zip(self.starts, self.stops, self.val, self.ckpt)]


def compose_config(
    args: argparse.Namespace, batch_size: int, logger: str, output_dir: Path, census: Path | None = None,
    model: Sequence[str] = ("model=mmoe",),
) -> DictConfig:
    """The synthetic case, or with ``census`` the census-income case (group 1, all 199,523 training rows)."""
    if census is None:
        data = ["data=synthetic", f"data.num_train={args.samples}", f"data.num_val={args.val_samples}",
                "data.num_test=2"]  # the test split is never used here
    else:
        data = ["experiment=paper_census_group1", f"data.path={census}", f"data.cache_dir={output_dir / 'cache'}"]
    overrides = [
        *data,
        *model,
        "optimizer=adam",
        "callbacks=no_early_stopping",  # every epoch runs; checkpointing stays on
        f"logger={logger}",
        f"seed={args.seed}",
        f"data.batch_size={batch_size}",
        f"trainer.max_epochs={1 + args.epochs}",
        "trainer.enable_progress_bar=false",
        *(["trainer=gpu"] if args.accelerator == "gpu" else []),
    ]
    if args.chunk_steps is not None:
        overrides.append(f"data.chunk_steps={args.chunk_steps}")
    GlobalHydra.instance().clear()
    with initialize_config_module("mtlexp.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    sizes = {k: (v if isinstance(v, int) else list(v)) for k, v in cfg.model.items() if k in MODEL}
    if tuple(model) == ("model=mmoe",):
        assert sizes == MODEL and cfg.model._target_ == "mtlexp.models.MMoE", f"conf/model/mmoe.yaml changed: {sizes}"
    assert cfg.optimizer.fused is True, "the benchmark expects the fused Adam of conf/optimizer/adam.yaml"
    return cfg


def run_mtlexp(
    cfg: DictConfig, args: argparse.Namespace, batch_size: int, lean_first: bool, with_lean: bool = True
) -> dict[str, Any]:
    """One fit through mtlexp's own code path (as ``mtlexp.train.train`` does it, minus the final test), with
    the lean loop's epochs interleaved (unless ``with_lean`` is off)."""
    validate_run(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    # Lightning's deterministic=True switches this on for the whole process: the same state for both sides.
    deterministic = cfg.trainer.deterministic  # true, false, or "warn" (trainer=gpu), as Lightning reads it
    torch.use_deterministic_algorithms(deterministic in (True, "warn"), warn_only=deterministic == "warn")
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    data, module = build_components(cfg)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    lean = LeanLoop(data, batch_size, float(cfg.optimizer.lr), int(cfg.seed), device) if with_lean else None
    timer = EpochTimer(between=lean.epoch if lean else None, between_first=lean_first)
    trainer = build_trainer(cfg, [*build_all(cfg.get("callbacks"), "callbacks"), timer])
    for logger in trainer.loggers:
        logger.log_hyperparams({"num_params": count_parameters(module.model), **flat_config(cfg)})
    threads = torch.get_num_threads()
    trainer.fit(module, datamodule=data)
    assert torch.get_num_threads() == threads, "the fit changed torch's thread count"
    seconds = timer.train_seconds()
    epochs = int(cfg.trainer.max_epochs)
    assert len(seconds) == epochs and (lean is None or len(lean.seconds) == epochs), seconds
    return {
        "rows": len(data.splits["train"]),
        "val_rows": len(data.splits["val"]),
        "mtlexp": seconds[1:],  # the first epoch is the warm-up, on both sides
        "lean": lean.seconds[1:] if lean else [],
        "num_params": count_parameters(module.model),
        "val": timer.val[1:],
        "ckpt": timer.ckpt[1:],
        "chunk_steps": data.chunk_steps,
        "loggers": "+".join(type(lg).__name__.replace("Logger", "") for lg in trainer.loggers),
    }


# --- driver ------------------------------------------------------------------------------------------
def bench_batch_size(args: argparse.Namespace, batch_size: int, workdir: Path) -> dict[str, dict[str, Any]]:
    variants = {"mtlexp": "csv", **({"mtlexp+tb": "default"} if args.tensorboard else {})}
    results: dict[str, dict[str, Any]] = {}
    for round_ in range(args.rounds):
        names = list(variants) if round_ % 2 == 0 else list(variants)[::-1]
        for name in names:
            cfg = compose_config(args, batch_size, variants[name], workdir / f"{name}-b{batch_size}-r{round_}")
            out = run_mtlexp(cfg, args, batch_size, lean_first=round_ % 2 == 0)
            result = results.setdefault(name, {"mtlexp": [], "lean": [], "val": [], "ckpt": []})
            for key in ("mtlexp", "lean", "val", "ckpt"):
                result[key] += out[key]
            result.update({k: out[k] for k in ("chunk_steps", "loggers", "rows", "val_rows")})
            if args.verbose:
                n = out["rows"]
                pairs = ", ".join(f"{n / m:,.0f}/{n / lean:,.0f}" for m, lean in zip(out["mtlexp"], out["lean"]))
                print(f"  [b{batch_size} round {round_} {name}] samples/s mtlexp/lean per timed epoch: {pairs}")
    return results


def bench_census(args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, Any]]:
    """The census case: one fit per round at the paper experiment's batch size, lean epochs interleaved."""
    result: dict[str, Any] = {"mtlexp": [], "lean": [], "val": [], "ckpt": []}
    for round_ in range(args.rounds):
        cfg = compose_config(args, CENSUS_BATCH, "csv", workdir / f"census-r{round_}", census=args.census)
        out = run_mtlexp(cfg, args, CENSUS_BATCH, lean_first=round_ % 2 == 0)
        for key in ("mtlexp", "lean", "val", "ckpt"):
            result[key] += out[key]
        result.update({k: out[k] for k in ("chunk_steps", "loggers", "rows", "val_rows")})
    return {"mtlexp": result}


def bench_axis(args: argparse.Namespace, workdir: Path, cases: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Each case (overrides on top of MMoE) through mtlexp at ``ARCH_BATCH``, rounds in alternating order;
    samples/s is the median over a case's timed epochs."""
    results: dict[str, dict[str, Any]] = {name: {"seconds": []} for name in cases}
    for round_ in range(args.rounds):
        for name in (list(cases) if round_ % 2 == 0 else list(cases)[::-1]):
            cfg = compose_config(args, ARCH_BATCH, "csv", workdir / f"{name}-r{round_}", model=cases[name])
            out = run_mtlexp(cfg, args, ARCH_BATCH, lean_first=True, with_lean=False)
            results[name]["seconds"] += out["mtlexp"]
            results[name].update(rows=out["rows"], num_params=out["num_params"])
    return results


def architecture_cases() -> dict[str, list[str]]:
    """Every model config, and MMoE with each sparse gate."""
    cases = {name: [f"model={name}"] for name in ARCHITECTURES}
    cases.update({f"mmoe+{gate}": ["model=mmoe", f"model/gate={gate}"] for gate in ("topk", "dselect_k")})
    return cases


def weighting_cases() -> dict[str, list[str]]:
    """MMoE with every weighting config."""
    return {name: ["model=mmoe", f"weighting={name}"] for name in WEIGHTINGS}


def report_axis(results: dict[str, dict[str, Any]], axis: str, baseline: str) -> None:
    speed = {name: r["rows"] / statistics.median(r["seconds"]) for name, r in results.items()}
    print(f"{axis} through mtlexp, batch {ARCH_BATCH} ({next(iter(results.values()))['rows']:,} samples, "
          "median over timed epochs):")
    print(f"  {axis[:-1]:22s} {'parameters':>10s} {'samples/s':>11s} {'vs ' + baseline:>9s}")
    for name, r in results.items():
        flag = f"  < 0.5 x {baseline}" if speed[name] < 0.5 * speed[baseline] else ""
        print(f"  {name:22s} {r['num_params']:10,d} {speed[name]:11,.0f} {speed[name] / speed[baseline]:9.2f}{flag}")


def report(args: argparse.Namespace, batch_size: int, results: dict[str, dict[str, Any]], title: str = "") -> float:
    first = results["mtlexp"]
    n = first["rows"]
    steps = -(-n // batch_size)
    print(f"{title}batch {batch_size}: {n:,} samples, {steps} steps/epoch, data.chunk_steps={first['chunk_steps']}, "
          f"{len(first['mtlexp'])} timed epochs per side and variant")
    print(f"  {'variant':28s} {'lean samples/s':>15s} {'mtlexp samples/s':>17s} {'ratio':>6s} "
          f"{'(best/best)':>11s} {'validation s':>13s} {'checkpoint s':>13s}")
    ratio = float("nan")
    for name, r in results.items():
        lean, mine = n / statistics.median(r["lean"]), n / statistics.median(r["mtlexp"])
        best = min(r["lean"]) / min(r["mtlexp"])
        if name == "mtlexp":
            ratio = mine / lean
        label = f"{name} ({r['loggers']})"
        print(f"  {label:28s} {lean:15,.0f} {mine:17,.0f} {mine / lean:6.3f} {best:11.3f} "
              f"{statistics.median(r['val']):13.3f} {statistics.median(r['ckpt']):13.3f}")
    val, train = statistics.median(first["val"]), statistics.median(first["mtlexp"])
    print(f"  mtlexp per epoch (medians): training {train:.3f} s; validation {val:.3f} s ({first['val_rows']:,} "
          f"samples); validation and checkpoint writes (best.ckpt + "
          "last.ckpt) are outside the ratio")
    return ratio


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200_000, help="training samples per epoch (default 200000)")
    parser.add_argument("--val-samples", type=int, default=10_000, help="validation samples (default 10000)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per fit, after one warm-up (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="fits per batch size (default 2; order alternates)")
    parser.add_argument("--batch-sizes", default="128,1024", help="comma-separated (default 128,1024)")
    parser.add_argument("--chunk-steps", type=int, default=None, help="override data.chunk_steps (default: config)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own, one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu",
                        help="where both sides train (gpu: trainer=gpu and the lean loop on cuda; default cpu)")
    parser.add_argument("--tensorboard", action="store_true", help="also run mtlexp with CSV + TensorBoard loggers")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script, not a figure")
    parser.add_argument("--verbose", action="store_true", help="print every fit's per-epoch figures")
    parser.add_argument("--census", type=Path, default=None,
                        help=f"folder with the UCI census-income files (default {DEFAULT_CENSUS} where it exists)")
    parser.add_argument("--no-census", action="store_true", help="skip the census case")
    parser.add_argument("--no-architectures", action="store_true", help="skip the samples/s of every architecture")
    parser.add_argument("--no-weightings", action="store_true", help="skip the samples/s of every weighting")
    args = parser.parse_args(argv)
    if args.census is None and not args.no_census and not args.quick and DEFAULT_CENSUS.is_dir():
        args.census = DEFAULT_CENSUS.resolve()
    if args.no_census:
        args.census = None
    if args.quick:
        args.samples, args.val_samples, args.epochs, args.rounds = 2048, 256, 1, 1
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if args.threads is None:
        args.threads = torch.get_num_threads()
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("--accelerator gpu: torch sees no CUDA device")
    if args.samples < 2 or args.epochs < 1 or args.rounds < 1 or args.threads < 1 or not args.batch_sizes:
        parser.error("--samples >= 2, --epochs >= 1, --rounds >= 1, --threads >= 1 and a batch size are required")
    return args


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*does not have many workers.*", ".*smaller than the logging interval.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message=message)
    register_configs()
    torch.set_num_threads(args.threads)
    print("mtlexp training benchmark: MMoE 8 experts x 16, towers 8, d=100, 2 regression tasks, Adam(fused=True)")
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs; torch {torch.__version__} with {args.threads} "
          f"thread(s); pytorch-lightning {pl.__version__}; python {platform.python_version()}")
    if args.accelerator == "gpu":
        print(f"both sides on the GPU: {torch.cuda.get_device_name()}")
    quick = " [--quick: a smoke test, not a measurement]" if args.quick else ""
    print(f"{args.samples:,} training samples; per fit 1 warm-up + {args.epochs} timed epochs on each side, lean "
          f"epochs interleaved; {args.rounds} fit(s) per batch size{quick}", flush=True)
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="mtlexp-bench-") as tmp:
        census_ratio = None
        if args.census is not None:
            census = bench_census(args, Path(tmp))
            census_ratio = report(args, CENSUS_BATCH, census, title="census-income group 1 (MMoE, embeddings of 4), ")
        # --quick runs two cases per axis: it checks the script, not the figures.
        if not args.no_architectures:
            cases = architecture_cases()
            cases = {k: cases[k] for k in ("mmoe", "shared_bottom")} if args.quick else cases
            report_axis(bench_axis(args, Path(tmp), cases), "architectures", "mmoe")
            sys.stdout.flush()
        if not args.no_weightings:
            cases = weighting_cases()
            cases = {k: cases[k] for k in ("equal", "upgrad")} if args.quick else cases
            report_axis(bench_axis(args, Path(tmp), cases), "weightings", "equal")
            sys.stdout.flush()
        for batch_size in args.batch_sizes:
            ratios[batch_size] = report(args, batch_size, bench_batch_size(args, batch_size, Path(tmp)))
            sys.stdout.flush()
    if census_ratio is not None:
        print(f"census_ratio={census_ratio:.3f}")
    print(" ".join(f"ratio_b{b}={r:.3f}" for b, r in ratios.items()), flush=True)


if __name__ == "__main__":
    main()
