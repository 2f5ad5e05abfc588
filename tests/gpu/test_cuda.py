"""The CUDA path, on a GPU only (``gpu`` marker: skipped without CUDA; scripts/gpu_check.sh runs these)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._pytree import tree_map

from mtlexp.data.tensors import Chunk, ChunkedShuffleLoader, TensorTable
from mtlexp.train import train
from tests.models.test_contract import GATES, batch, make_model
from tests.stacking.test_stacked_weighting import assert_replicas_are_their_single_runs, stacked_and_single_runs

pytestmark = pytest.mark.gpu


def test_a_bf16_run_on_cuda_records_finite_metrics_close_to_float32(make_cfg):
    torch.cuda.reset_peak_memory_stats()
    bf16 = train(make_cfg("trainer=gpu", "trainer.precision=bf16-mixed"))
    assert torch.cuda.max_memory_allocated() > 0, "the run never touched the GPU"
    full = train(make_cfg("trainer=gpu"))
    assert bf16["status"] == full["status"] == "ok"
    for split in ("val", "test"):
        for task, values in full[split].items():
            for name, value in values.items():
                assert math.isfinite(bf16[split][task][name]), (split, task, name)
                # Two short epochs in bf16 autocast stay within 1e-3 of float32 on CPU (bf16-mixed there too).
                assert bf16[split][task][name] == pytest.approx(value, rel=1e-2), (split, task, name)


@pytest.mark.parametrize("gate", GATES)
def test_gates_weigh_experts_in_float32_under_bf16_autocast(gate):
    model = make_model("mmoe", gate).cuda().train()
    numeric, categorical, _ = batch(256)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(numeric.cuda(), categorical.cuda())
        assert torch.nn.functional.linear(numeric.cuda(), torch.ones(3, 6, device="cuda")).dtype == torch.bfloat16
    for name, weights in out.gates.items():
        assert weights.dtype == torch.float32, name
        # bf16 rows would miss 1 by ~1e-3; float32 rows by ~1e-7.
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)), rtol=0, atol=1e-5)


def test_a_stacked_run_on_cuda_is_each_replica_single_run_on_cuda(make_cfg):
    # Batched products (vmap) and single ones take other CUDA kernels: float32, summed in another order.
    runs = stacked_and_single_runs(make_cfg, "trainer=gpu", "weighting=uncertainty")
    assert_replicas_are_their_single_runs(runs, rel=2e-3)


@pytest.mark.parametrize("pinned", [False, True], ids=["pageable", "pinned"])
def test_a_training_chunk_reaches_cuda_with_its_values(pinned):
    generator = torch.Generator().manual_seed(0)
    table = TensorTable(numeric=torch.randn(4096, 6, generator=generator),
                        categorical=torch.randint(0, 5, (4096, 2), generator=generator),
                        labels={"a": torch.randn(4096, generator=generator)})
    chunks = list(ChunkedShuffleLoader(table, batch_size=256, chunk_steps=4, seed=0))
    # Every chunk is moved (non_blocking from pinned memory) before any is read back, as a fit queues them.
    sources = [Chunk(tree_map(lambda t: t.pin_memory(), batch) for batch in chunk) if pinned else chunk
               for chunk in chunks]
    moved = [source.to("cuda") for source in sources]
    for chunk, on_gpu in zip(chunks, moved):
        for batch_cpu, batch_gpu in zip(chunk, on_gpu):
            assert all(t.is_cuda for t in (batch_gpu["numeric"], batch_gpu["categorical"], batch_gpu["labels"]["a"]))
            torch.testing.assert_close(tree_map(lambda t: t.cpu(), batch_gpu), batch_cpu, rtol=0, atol=0)
