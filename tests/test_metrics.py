import math

import torch
import torch.nn.functional as F

from mtlexp.kinds import task_loss, task_metrics
from mtlexp.metrics import CrossEntropyScore
from mtlexp.specs import TaskSpec


def test_log_loss_matches_bce_and_normalises_by_prior_entropy():
    torch.manual_seed(0)
    probs, target = torch.rand(500), (torch.rand(500) < 0.3).long()
    metric, normalized = CrossEntropyScore(2), CrossEntropyScore(2, normalize=True)
    for part in (slice(0, 200), slice(200, 500)):
        metric.update(probs[part], target[part])
        normalized.update(probs[part], target[part])
    expected = F.binary_cross_entropy(probs.double(), target.double())
    torch.testing.assert_close(metric.compute(), expected)
    p = target.double().mean()
    prior_entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    torch.testing.assert_close(normalized.compute(), expected / prior_entropy)


def test_predicting_the_prior_has_norm_loss_one():
    target = torch.tensor([1, 0, 0, 0] * 50)
    metric = CrossEntropyScore(2, normalize=True)
    metric.update(torch.full((200,), 0.25), target)
    assert math.isclose(float(metric.compute()), 1.0, rel_tol=1e-6)


def test_regression_norm_loss_is_mse_over_variance():
    torch.manual_seed(0)
    y = torch.randn(300) * 5 + 2
    pred = y + torch.randn(300)
    metrics = task_metrics(TaskSpec("r", "regression"))
    metrics.update(pred, y)
    values = metrics.compute()
    mse = F.mse_loss(pred, y)
    torch.testing.assert_close(values["mse"], mse)
    torch.testing.assert_close(values["norm_loss"], mse / y.var(unbiased=False), rtol=1e-4, atol=1e-5)


def test_sample_weighted_loss():
    task = TaskSpec("b", "binary")
    logits, target = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    weighted = task_loss(task, logits, target, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(weighted, F.binary_cross_entropy_with_logits(logits[:1], target[:1]))
