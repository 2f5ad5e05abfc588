import pytest
import torch

from mtlexp.data.synthetic import SyntheticDataModule
from mtlexp.errors import ConfigValueError

TASKS = {"task1": {"kind": "regression"}, "task2": {"kind": "regression"}}


def make(**kwargs):
    args = {"num_train": 4000, "num_val": 100, "num_test": 100, **kwargs}
    dm = SyntheticDataModule(TASKS, **args)
    dm.setup()
    return dm


def test_shapes_and_weight_cosine():
    dm = make(correlation=0.5, num_features=20)
    train = dm.splits["train"]
    assert train.numeric.shape == (4000, 20) and train.categorical.shape == (4000, 0)
    assert set(train.labels) == {"task1", "task2"}
    assert dm.describe()["weight_cosine"]["task1~task2"] == pytest.approx(0.5, abs=1e-6)


def test_correlation_one_gives_identical_task_weights_and_labels_up_to_noise():
    dm = make(correlation=1.0, noise_std=0.0)
    w = dm._w
    torch.testing.assert_close(w[0], w[1])
    train = dm.splits["train"]
    torch.testing.assert_close(train.labels["task1"], train.labels["task2"])


def test_measured_label_correlation_rises_with_p():
    measured = [make(correlation=p, seed=3).describe()["label_pearson"]["task1~task2"] for p in (0.0, 0.5, 0.9, 1.0)]
    assert measured == sorted(measured)
    assert measured[0] < 0.2 and measured[-1] > 0.95


def test_seeded_determinism_and_data_seed_apart_from_seed():
    a, b = make(seed=1), make(seed=1)
    assert a.fingerprint() == b.fingerprint()
    assert make(seed=2).fingerprint() != a.fingerprint()
    assert make(seed=1, data_seed=5).fingerprint() != a.fingerprint()


@pytest.mark.parametrize(
    "kwargs,field",
    [({"correlation": 1.5}, "correlation"), ({"num_train": 0}, "num_train"), ({"noise_std": -1.0}, "noise_std")],
)
def test_bad_values_name_the_argument(kwargs, field):
    with pytest.raises(ConfigValueError) as error:
        SyntheticDataModule(TASKS, **kwargs)
    assert error.value.field == field


def test_training_loader_batches_chunks_and_reshuffles_per_epoch():
    dm = make(batch_size=300, chunk_steps=4)
    loader = dm.train_dataloader()
    chunks = list(loader)
    assert len(chunks) == len(loader) == 4  # 14 batches of <=300 rows, 4 per chunk
    sizes = [b["numeric"].shape[0] for chunk in chunks for b in chunk]
    assert sum(sizes) == 4000 and max(sizes) == 300
    loader.set_epoch(0)
    first = next(iter(loader))[0]["numeric"]
    loader.set_epoch(1)
    assert not torch.equal(first, next(iter(loader))[0]["numeric"])
    loader.set_epoch(0)
    assert torch.equal(first, next(iter(loader))[0]["numeric"])
