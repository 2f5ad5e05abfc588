"""Each weighting's defining property, on hand-built losses and gradients."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from mtlexp.errors import MtlexpError
from mtlexp.models import MMoE, SharedBottom
from mtlexp.models.base import MTLOutput
from mtlexp.specs import CategoricalFeature, FeatureSpec, TaskSpec
from mtlexp.weighting import (
    FAMO,
    DualBalancing,
    DynamicWeightAverage,
    EqualWeighting,
    ExcessMTL,
    GeometricLossStrategy,
    GradientAggregation,
    GradNorm,
    MoCo,
    MoDo,
    RandomGradientWeighting,
    RandomLossWeighting,
    SDMGrad,
    SmoothTchebycheff,
    StaticWeighting,
    StepInputs,
    UncertaintyWeighting,
)
from mtlexp.weighting.conflict import task_gradient_cosines

TASKS = [TaskSpec("a", "regression"), TaskSpec("b", "binary")]
TASKS3 = [*TASKS, TaskSpec("c", "regression")]
FEATURES = FeatureSpec(numeric=tuple(f"x{i}" for i in range(5)), categorical=(CategoricalFeature("c", 4, 2),))


class LinearTasks(nn.Module):
    """Task t's loss is ``g_t . shared + (t + 1) head_t^2``: its Jacobian on ``shared`` is exactly the rows
    ``g``, and each head is reached by its own task only."""

    def __init__(self, gradients: list[list[float]]) -> None:
        super().__init__()
        self.g = torch.tensor(gradients)
        self.shared = nn.Parameter(torch.zeros(self.g.shape[1]))
        self.head_params = nn.ParameterList(nn.Parameter(torch.tensor(1.0 + t)) for t in range(len(gradients)))

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.shared]

    def last_shared_layer(self) -> list[nn.Parameter]:
        return [self.shared]

    def losses(self) -> torch.Tensor:
        return torch.stack([
            self.g[t] @ self.shared + (t + 1) * self.head_params[t] ** 2 for t in range(len(self.head_params))
        ])


def step_inputs(model, losses, aux=None, step=0, recompute=None) -> StepInputs:
    return StepInputs(losses=losses, output=MTLOutput(logits={}, aux_loss=aux), model=model,
                      shared=model.shared_parameters(), backward=torch.Tensor.backward, step=step, epoch=0,
                      recompute_losses=recompute)


def grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def small_batch():
    torch.manual_seed(0)
    return torch.randn(16, 5), torch.randint(0, 4, (16, 1)), torch.randn(16), torch.randint(0, 2, (16,)).float()


def real_losses(model):
    x, c, ya, yb = small_batch()
    out = model(x, c)
    losses = torch.stack([
        nn.functional.mse_loss(out.logits["a"], ya),
        nn.functional.binary_cross_entropy_with_logits(out.logits["b"], yb),
    ])
    return out, losses


# --- loss weightings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("gate_aux", [False, True])
def test_equal_reproduces_the_plain_summed_loss_bit_for_bit(gate_aux):
    torch.manual_seed(1)
    model = MMoE(FEATURES, TASKS, num_experts=3)
    out, losses = real_losses(model)
    aux = (losses.sum() * 0.01) if gate_aux else None
    (losses.sum() + aux if aux is not None else losses.sum()).backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    out, losses = real_losses(model)
    aux = (losses.sum() * 0.01) if gate_aux else None
    result = EqualWeighting(TASKS).step(step_inputs(model, losses, aux))
    assert all(torch.equal(a, b) for a, b in zip(grads(model), expected))
    assert torch.equal(result.weights, torch.ones(2))


def test_static_weights_by_name_or_position_and_bad_weights_name_the_task():
    losses = torch.tensor([2.0, 3.0], requires_grad=True)
    model = LinearTasks([[1.0], [1.0]])
    result = StaticWeighting(TASKS, weights={"b": 0.5}).step(step_inputs(model, losses))
    assert result.weights.tolist() == [1.0, 0.5] and float(result.loss) == 3.5
    assert StaticWeighting(TASKS, weights=[2, 0]).fixed.tolist() == [2.0, 0.0]
    with pytest.raises(MtlexpError, match="weighting.weights: unknown task 'z'"):
        StaticWeighting(TASKS, weights={"z": 1.0})
    with pytest.raises(MtlexpError, match=r"expected 2 weights \(one per task"):
        StaticWeighting(TASKS, weights=[1.0])
    with pytest.raises(MtlexpError, match="weighting.weights.a: expected a finite number >= 0, got -1"):
        StaticWeighting(TASKS, weights=[-1, 1])
    with pytest.raises(MtlexpError, match="weighting.weights.b: expected a finite number >= 0, got nan"):
        StaticWeighting(TASKS, weights=[1, float("nan")])


def test_uncertainty_weights_are_one_over_two_sigma_squared_and_learn_the_variances():
    weighting = UncertaintyWeighting(TASKS)
    with torch.no_grad():
        weighting.log_variance.copy_(torch.tensor([0.0, math.log(4.0)]))  # sigma^2 = 1 and 4
    losses = torch.tensor([2.0, 3.0], requires_grad=True)
    result = weighting.step(step_inputs(LinearTasks([[1.0], [1.0]]), losses))
    assert torch.allclose(result.weights, torch.tensor([0.5, 0.125]))
    # d/ds [L e^-s / 2 + s / 2] = -L e^-s / 2 + 1/2: the variance grows while the loss exceeds it.
    assert torch.allclose(weighting.log_variance.grad, torch.tensor([-0.5, -3 / 8 + 0.5]))
    assert torch.allclose(losses.grad, result.weights)


def test_dwa_weights_follow_the_rate_of_the_last_two_epoch_losses():
    weighting = DynamicWeightAverage(TASKS, temperature=2.0)
    model, losses = LinearTasks([[1.0], [1.0]]), torch.tensor([1.0, 1.0], requires_grad=True)
    assert weighting.step(step_inputs(model, losses)).weights.tolist() == [1.0, 1.0]  # no history yet
    weighting.on_train_epoch_end(torch.tensor([1.0, 1.0]))
    assert weighting.current.tolist() == [1.0, 1.0]  # one epoch of history is not a rate
    weighting.on_train_epoch_end(torch.tensor([0.5, 0.9]))
    expected = 2 * torch.softmax(torch.tensor([0.5, 0.9]) / 2.0, dim=0)
    assert torch.allclose(weighting.step(step_inputs(model, losses)).weights, expected)
    assert weighting.current[1] > weighting.current[0]  # the task whose loss fell less weighs more
    restored = DynamicWeightAverage(TASKS)
    restored.load_state_dict(weighting.state_dict())
    restored.on_train_epoch_end(torch.tensor([0.25, 0.9]))
    assert torch.allclose(restored.current, 2 * torch.softmax(torch.tensor([0.5, 1.0]) / 2.0, dim=0))


def test_rlw_draws_weights_on_the_simplex_reproducibly_per_step():
    weighting = RandomLossWeighting(TASKS3, seed=7)
    model, losses = LinearTasks([[1.0]] * 3), torch.ones(3, requires_grad=True)
    draws = [weighting.step(step_inputs(model, losses, step=s)).weights for s in (0, 1, 0)]
    assert torch.allclose(draws[0].sum(), torch.tensor(1.0)) and (draws[0] > 0).all()
    assert torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], RandomLossWeighting(TASKS3, seed=8).step(step_inputs(model, losses)).weights)


def test_gradnorm_moves_weight_from_the_task_with_the_larger_gradient_norm():
    model = LinearTasks([[10.0, 0.0], [0.0, 1.0]])  # equal training rates, gradient norms 10 and 1
    weighting = GradNorm(TASKS, alpha=1.5)
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.01)
    for step in range(3):
        weighting.zero_grad()
        model.zero_grad()
        result = weighting.step(step_inputs(model, model.losses(), step=step))
        grad = weighting.task_weights.grad.clone()
        optimizer.step()
        weighting.on_after_optimizer_step()
    assert grad[0] > 0 > grad[1]  # |w_a 10 - target| shrinks by lowering w_a, |w_b 1 - target| by raising w_b
    assert result.weights[0] < 1 < result.weights[1]
    assert torch.allclose(weighting.task_weights.sum(), torch.tensor(2.0))
    # The model follows the weighted losses, not the GradNorm objective.
    assert torch.allclose(model.shared.grad, result.weights[0] * model.g[0] + result.weights[1] * model.g[1])


# --- gradient aggregation ------------------------------------------------------------------------------
def aggregate(name: str, gradients: list[list[float]], **kwargs):
    import torchjd.aggregation as aggregation

    model = LinearTasks(gradients)
    tasks = [TaskSpec(f"t{t}", "regression") for t in range(len(gradients))]
    weighting = GradientAggregation(tasks, aggregator=lambda: getattr(aggregation, name)(**kwargs))
    result = weighting.step(step_inputs(model, model.losses()))
    return model, result


def test_pcgrad_leaves_no_conflict_between_the_projected_gradients():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # conflicting: g1 . g2 < 0
    model, _ = aggregate("PCGrad", [g1.tolist(), g2.tolist()])
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    assert p1 @ g2 == pytest.approx(0.0, abs=1e-6) and p2 @ g1 == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(model.shared.grad, p1 + p2, atol=1e-6)
    assert model.shared.grad @ g1 >= 0 and model.shared.grad @ g2 >= 0
    agreeing, _ = aggregate("PCGrad", [[1.0, 0.0], [1.0, 1.0]])  # no conflict: the plain sum
    assert torch.allclose(agreeing.shared.grad, torch.tensor([2.0, 1.0]))


def test_mgda_returns_the_min_norm_point_of_the_convex_hull():
    g1, g2 = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    model, result = aggregate("MGDA", [g1.tolist(), g2.tolist()], epsilon=1e-6, max_iters=1000)
    alpha = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))  # argmin_a |a g1 + (1 - a) g2|
    assert torch.allclose(model.shared.grad, alpha * g1 + (1 - alpha) * g2, atol=1e-3)
    assert torch.allclose(result.weights, torch.tensor([alpha, 1 - alpha]), atol=1e-3)


def test_upgrad_update_conflicts_with_no_task():
    gradients = [[1.0, 0.0, 0.0], [-0.8, 1.0, 0.0], [-0.5, -0.9, 0.2]]
    model, result = aggregate("UPGrad", gradients)
    assert (torch.tensor(gradients) @ model.shared.grad >= -1e-6).all()
    assert (torch.tensor(gradients) @ torch.tensor(gradients).sum(0) < 0).any()  # whereas the sum conflicts


def test_task_owned_parameters_get_their_own_task_gradient_and_the_aux_loss_is_added_as_is():
    import torchjd.aggregation as aggregation

    model = LinearTasks([[1.0, 0.0], [-1.0, 1.0]])
    weighting = GradientAggregation(TASKS, aggregator=aggregation.UPGrad)
    aux = 3.0 * model.shared.sum() + model.head_params[0]
    weighting.step(step_inputs(model, model.losses(), aux=aux))
    assert model.head_params[0].grad == pytest.approx(2 * 1 * 1.0 + 1.0)  # its loss 1 h^2 at h=1, plus aux
    assert model.head_params[1].grad == pytest.approx(2 * 2 * 2.0)  # its loss 2 h^2 at h=2
    plain = LinearTasks([[1.0, 0.0], [-1.0, 1.0]])
    GradientAggregation(TASKS, aggregator=aggregation.UPGrad).step(step_inputs(plain, plain.losses()))
    assert torch.allclose(model.shared.grad - plain.shared.grad, torch.tensor([3.0, 3.0]))


def test_non_weighted_aggregators_report_least_squares_weights():
    model, result = aggregate("ConFIG", [[1.0, 0.0], [-0.5, 1.0]])
    direction = result.weights @ model.g
    assert torch.allclose(direction, model.shared.grad, atol=1e-5)


@pytest.mark.parametrize("name,kwargs", [("GradVac", {"beta": 0.5}), ("NashMTL", {"n_tasks": 2, "update_weights_every": 2})])
def test_stateful_aggregators_continue_from_a_saved_state(name, kwargs):
    import torchjd.aggregation as aggregation

    # Aligned gradients first (GradVac's similarity target rises; Nash-MTL solves for them), then less aligned
    # ones: what the aggregators do with those depends on the state the first steps left.
    schedule = [[[1.0, 0.0], [1.0, 0.1]]] * 3 + [[[1.0, 0.0], [0.5, 1.0]], [[1.0, 0.2], [0.3, 1.0]]]

    def fresh():
        return GradientAggregation(TASKS, aggregator=lambda: getattr(aggregation, name)(**kwargs))

    def run(weighting, step):
        model = LinearTasks(schedule[step])
        return weighting.step(step_inputs(model, model.losses(), step=step)).weights

    first = fresh()
    for step in range(3):
        run(first, step)
    keys = {key for values in first.state_dict()["_extra_state"].values() for key in values}
    assert "_phi_t" in keys or "prvs_alpha" in keys
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as Lightning loads a checkpoint to resume
    restored, untouched = fresh(), fresh()
    restored.load_state_dict(saved)
    assert not torch.allclose(run(untouched, 3), run(restored, 3), atol=1e-4)  # the state matters here
    restored.load_state_dict(saved)
    for step in (3, 4):
        continued = run(first, step)
        assert torch.allclose(run(restored, step), continued, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_task_jacobian_under_anomaly_detection_is_the_batched_one():
    """debug=default turns anomaly detection on, which the batched backward cannot run under."""
    from mtlexp.weighting.gradients import task_jacobian

    torch.manual_seed(0)
    model = MMoE(FEATURES, TASKS, num_experts=3, expert_hidden=[4])
    _, losses = real_losses(model)
    shared = list(model.shared_parameters())
    batched = task_jacobian(losses, shared, scale=4.0)
    with torch.autograd.detect_anomaly():
        looped = task_jacobian(losses, shared, scale=4.0)
    assert looped.shape == batched.shape == (2, sum(p.numel() for p in shared))
    assert torch.allclose(looped, batched, atol=1e-7)


def test_task_gradient_cosines_on_known_gradients():
    model = LinearTasks([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    cos = task_gradient_cosines(model.losses(), model.shared_parameters())
    assert torch.allclose(cos, torch.tensor([[1, 2 ** -0.5, -1], [2 ** -0.5, 1, -(2 ** -0.5)], [-1, -(2 ** -0.5), 1]]),
                          atol=1e-6)


def test_no_shared_parameters_means_each_task_keeps_its_own_gradient():
    import torchjd.aggregation as aggregation
    from mtlexp.models import SingleTask

    torch.manual_seed(0)
    model = SingleTask(FEATURES, TASKS)
    out, losses = real_losses(model)
    result = GradientAggregation(TASKS, aggregator=aggregation.MGDA).step(step_inputs(model, losses))
    assert result.weights.tolist() == [1.0, 1.0]
    got = grads(model)
    model.zero_grad(set_to_none=True)
    real_losses(model)[1].sum().backward()
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(got, grads(model)))


def test_shared_bottom_last_shared_layer_is_the_bottom_output_layer():
    model = SharedBottom(FEATURES, TASKS, bottom_hidden=[8, 4])
    assert [p.shape for p in model.last_shared_layer()] == [torch.Size([4, 8]), torch.Size([4])]


def test_under_a_loss_scale_the_aggregation_sees_unscaled_gradients_and_writes_scaled_ones():
    import torchjd.aggregation as aggregation

    def run(scale):
        model = LinearTasks([[1.0, 0.2], [-0.5, 1.0]])
        inputs = step_inputs(model, model.losses(), aux=0.5 * model.shared.sum())
        inputs.grad_scale = scale
        result = GradientAggregation(TASKS, aggregator=lambda: aggregation.NashMTL(n_tasks=2)).step(inputs)
        return result.weights, [p.grad for p in model.parameters()]

    weights, plain = run(1.0)
    scaled_weights, scaled = run(1024.0)
    assert torch.allclose(scaled_weights, weights, atol=1e-5)  # Nash-MTL's weights are not scale-invariant
    assert all(torch.allclose(s, 1024.0 * p, rtol=1e-4) for s, p in zip(scaled, plain))


# --- loss scalarizations -------------------------------------------------------------------------------
def test_gls_follows_the_gradient_of_the_geometric_mean_of_the_losses():
    torch.manual_seed(1)
    model = MMoE(FEATURES, TASKS, num_experts=3)
    _, losses = real_losses(model)
    geometric = losses.prod() ** 0.5
    geometric.backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    _, losses = real_losses(model)
    result = GeometricLossStrategy(TASKS).step(step_inputs(model, losses))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads(model), expected))
    assert float(result.loss) == pytest.approx(float(geometric.detach()))
    assert torch.allclose(result.weights, geometric.detach() / (2 * losses.detach()))  # inverse to the loss


def test_stch_tends_to_the_worst_relative_loss_as_mu_shrinks_after_its_warm_up():
    losses = torch.tensor([2.0, 3.0], requires_grad=True)
    model = LinearTasks([[1.0], [1.0]])
    sharp = SmoothTchebycheff(TASKS, mu=1e-3, warmup_epochs=0).step(step_inputs(model, losses))
    assert torch.allclose(sharp.weights, torch.tensor([0.0, 2 / 3.0]), atol=1e-6)  # T d log(L_b) only
    smooth = SmoothTchebycheff(TASKS, mu=1e3, warmup_epochs=0).step(step_inputs(model, losses))
    assert torch.allclose(smooth.weights, torch.tensor([1 / 2.0, 1 / 3.0]), atol=1e-3)  # the mean log-loss's
    weighting = SmoothTchebycheff(TASKS, mu=1e-3, warmup_epochs=1)
    assert torch.allclose(weighting.step(step_inputs(model, losses)).weights, 1 / losses.detach())  # sum of logs
    weighting.on_train_epoch_end(torch.tensor([4.0, 1.0]))  # the warm-up's mean losses become the reference
    result = weighting.step(step_inputs(model, torch.tensor([2.0, 0.9], requires_grad=True)))
    assert result.weights[0] == pytest.approx(0.0, abs=1e-6) and result.weights[1] > 1  # 0.9 / 1 is worse than 2 / 4
    restored = SmoothTchebycheff(TASKS, mu=1e-3, warmup_epochs=1)
    restored.load_state_dict(weighting.state_dict())
    assert torch.equal(restored.reference, torch.tensor([4.0, 1.0]))


def test_famo_moves_weight_towards_the_task_whose_loss_falls_slowest():
    model = LinearTasks([[1.0], [1.0]])
    weighting = FAMO(TASKS, lr=0.025, weight_decay=0.0)
    losses = torch.tensor([1.0, 1.0], requires_grad=True)
    first = weighting.step(step_inputs(model, losses, recompute=lambda: torch.tensor([0.5, 0.99])))
    # z uniform: the objective sum_t z_t log L_t / c has weight z_t / (c L_t) on task t, here 1/2 each.
    assert torch.allclose(first.weights, torch.tensor([0.5, 0.5]))
    weighting.on_after_optimizer_step()  # task a's loss halved on the batch, task b's hardly moved
    assert weighting.logits[1] > weighting.logits[0]
    saved = {key: value.clone() for key, value in weighting.state_dict().items()}
    for _ in range(3):
        weighting.step(step_inputs(model, losses, recompute=lambda: torch.tensor([0.5, 0.99])))
        weighting.on_after_optimizer_step()
    later = weighting.step(step_inputs(model, losses, recompute=lambda: losses.detach()))
    assert later.weights[1] > later.weights[0] and later.weights[1] / later.weights[0] > 1.05
    restored = FAMO(TASKS, lr=0.025, weight_decay=0.0)
    restored.load_state_dict(saved)
    for _ in range(3):
        restored.step(step_inputs(model, losses, recompute=lambda: torch.tensor([0.5, 0.99])))
        restored.on_after_optimizer_step()
    assert torch.equal(restored.logits, weighting.logits)


def test_excess_mtl_weighs_up_the_task_whose_gradient_stays_large_relative_to_its_start():
    weighting = ExcessMTL(TASKS, step_size=0.5)
    first = weighting.step(step_inputs(model := LinearTasks([[1.0, 0.0], [0.0, 1.0]]), model.losses()))
    assert first.weights.tolist() == [1.0, 1.0]  # the first step is the reference
    for _ in range(4):  # task a keeps its gradient, task b's excess risk shrinks (its gradient falls 10x)
        model = LinearTasks([[1.0, 0.0], [0.0, 0.1]])
        result = weighting.step(step_inputs(model, model.losses()))
    assert result.weights[0] > 1 > result.weights[1]
    assert float(result.weights.sum()) == pytest.approx(2.0)
    assert torch.allclose(model.shared.grad, result.weights @ model.g)  # a loss weighting: heads weighted too
    assert model.head_params[1].grad == pytest.approx(result.weights[1] * 2 * 2 * 2.0)


# --- gradient weightings without torchjd ---------------------------------------------------------------
def test_rgw_weighs_only_the_shared_gradients_at_random_and_keeps_each_head_its_task_gradient():
    model = LinearTasks([[1.0, 0.0], [-1.0, 1.0]])
    result = RandomGradientWeighting(TASKS, seed=3).step(step_inputs(model, model.losses(), step=5))
    drawn = RandomLossWeighting(TASKS, seed=3).random_weights(5)  # the same draw as RLW's
    assert torch.allclose(result.weights, drawn)
    assert torch.allclose(model.shared.grad, drawn @ model.g)
    assert model.head_params[0].grad == pytest.approx(2 * 1 * 1.0)  # unweighted, where RLW scales it
    assert model.head_params[1].grad == pytest.approx(2 * 2 * 2.0)


def test_db_mtl_rescales_every_log_loss_gradient_to_the_largest_and_ignores_loss_scale():
    def run(scale_b):
        model = LinearTasks([[3.0, 0.0], [0.0, 1.0]])
        losses = model.losses() * torch.tensor([1.0, scale_b])
        result = DualBalancing(TASKS, beta=0.0).step(step_inputs(model, losses))
        return model, result

    model, result = run(1.0)
    losses = model.losses().detach()  # 1 and 8 at the start: log-loss gradients g_t / L_t, norms 3 and 1/8
    log_grads = model.g / losses[:, None]
    norms = log_grads.norm(dim=1)
    assert torch.allclose(result.weights, norms.max() / norms)
    assert torch.allclose((result.weights[:, None] * log_grads).norm(dim=1), norms.max().expand(2))
    assert torch.allclose(model.shared.grad, result.weights @ log_grads)
    assert model.head_params[1].grad == pytest.approx(2 * 2 * 2.0 / 8)  # the head follows its log-loss
    scaled, _ = run(100.0)
    assert all(torch.allclose(a.grad, b.grad) for a, b in zip(scaled.parameters(), model.parameters()))


def test_db_mtl_averages_the_gradients_over_steps():
    weighting = DualBalancing(TASKS, beta=0.5)
    for g in ([[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]):
        model = LinearTasks(g)
        weighting.step(step_inputs(model, model.losses()))
    # m = g2 + 0.5 (m1 - g2) with m1 = 0.5 g1: a memory of both steps.
    logs = [torch.tensor(g) / torch.tensor([[1.0], [8.0]]) for g in ([[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]])]
    assert torch.allclose(weighting.memory, logs[1] + 0.5 * (0.5 * logs[0] - logs[1]))


def test_moco_tracks_the_loss_scaled_gradients_and_weighs_them_towards_the_min_norm_point():
    weighting = MoCo(TASKS)
    for step in range(60):
        model = LinearTasks([[3.0, 0.0], [0.0, 1.0]])  # losses 1 and 8: tracked rows -> [1, 0] and [0, 8]
        result = weighting.step(step_inputs(model, model.losses(), step=step))
    assert torch.allclose(weighting.tracked, torch.tensor([[1.0, 0.0], [0.0, 8.0]]), atol=1e-2)
    # Towards MGDA's 64/65 on the smaller tracked gradient (the softmax steps approach it slowly).
    assert result.weights[0] > 0.6 and float(result.weights.sum()) == pytest.approx(1.0)
    assert torch.allclose(model.shared.grad, result.weights @ weighting.tracked)
    assert model.head_params[0].grad == pytest.approx(2.0)  # heads keep their own gradient


def test_modo_learns_its_weights_from_two_independent_samples_and_applies_earlier_ones():
    weighting = MoDo(TASKS, gamma=0.1, rho=0.1)
    samples = [[[1.0, 0.0], [0.5, 1.0]], [[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]]]
    applied = []
    for step, g in enumerate(samples):
        model = LinearTasks(g)
        applied.append(weighting.step(step_inputs(model, model.losses(), step=step)).weights)
        assert torch.allclose(model.shared.grad, applied[-1] @ model.g)
    uniform = torch.tensor([0.5, 0.5])
    assert torch.equal(applied[0], uniform) and torch.equal(applied[1], uniform)  # nothing learned before a pair
    g0, g1 = torch.tensor(samples[0]), torch.tensor(samples[1])
    expected = uniform - 0.1 * (g0 @ g1.T @ uniform + 0.1 * uniform)  # G_0 G_1^T: a product of two samples
    expected = expected - (expected.sum() - 1) / 2  # its projection on the simplex (both stay positive here)
    assert torch.allclose(applied[2], expected)


def test_sdmgrad_descends_the_min_norm_objective_at_lam_0_and_tends_to_the_mean_gradient_as_lam_grows():
    def run(lam):
        weighting = SDMGrad(TASKS, lam=lam)
        for step in range(6):
            model = LinearTasks([[2.0, 0.0], [0.0, 1.0]])
            result = weighting.step(step_inputs(model, model.losses(), step=step))
        return model, result

    model, result = run(0.0)
    # The authors' inner solver (20 projected momentum-SGD steps of size 5) is coarse: it lowers MGDA's
    # min-norm objective from the uniform weights' without reaching its minimum (weights 0.2, 0.8 here).
    assert float(result.weights.sum()) == pytest.approx(1.0) and (result.weights >= 0).all()
    assert (result.weights @ model.g).norm() < (torch.tensor([0.5, 0.5]) @ model.g).norm()
    assert torch.allclose(model.shared.grad, result.weights @ model.g, atol=1e-6)
    _, pulled = run(0.3)
    assert float(pulled.weights.sum()) == pytest.approx(1.0) and pulled.weights[0] > 0.2
    _, mean = run(1e6)
    assert torch.allclose(mean.weights, torch.tensor([0.5, 0.5]), atol=1e-5)


def test_sdmgrad_keeps_finite_simplex_weights_when_the_two_samples_point_apart():
    # Consecutive batches whose task gradients are anti-aligned: the two-sample product has a negative diagonal
    # (a shared-bottom run on the synthetic pair reached this and its weights became NaN).
    weighting = SDMGrad(TASKS)
    for step, rows in enumerate([[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]], [[1.0, 0.1], [0.1, 1.0]]]):
        model = LinearTasks(rows)
        result = weighting.step(step_inputs(model, model.losses(), step=step))
        assert torch.isfinite(result.weights).all() and float(result.weights.sum()) == pytest.approx(1.0)
        assert (result.weights >= 0).all() and torch.isfinite(model.shared.grad).all()


@pytest.mark.parametrize("make", [
    lambda: DualBalancing(TASKS), lambda: MoCo(TASKS), lambda: MoDo(TASKS, gamma=0.1), lambda: SDMGrad(TASKS),
    lambda: ExcessMTL(TASKS, step_size=0.5),
], ids=["db_mtl", "moco", "modo", "sdmgrad", "excess_mtl"])
def test_gradient_memories_shaped_at_the_first_step_survive_a_checkpoint(make):
    schedule = [[[1.0, 0.0], [0.5, 1.0]], [[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]], [[1.0, 0.2], [0.3, 1.0]]]

    def run(weighting, step):
        model = LinearTasks(schedule[step])
        weighting.step(step_inputs(model, model.losses(), step=step))
        return model.shared.grad

    first = make()
    for step in range(2):
        run(first, step)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    restored = make()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for step in (2, 3):
        assert torch.allclose(run(restored, step), run(first, step))


def test_with_nothing_shared_a_gradient_weighting_leaves_every_task_its_own_gradient():
    from mtlexp.models import SingleTask

    torch.manual_seed(0)
    model = SingleTask(FEATURES, TASKS)
    _, losses = real_losses(model)
    result = MoCo(TASKS).step(step_inputs(model, losses))
    assert result.weights.tolist() == [1.0, 1.0]
    got = grads(model)
    model.zero_grad(set_to_none=True)
    real_losses(model)[1].sum().backward()
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(got, grads(model)))


@pytest.mark.parametrize("make,message", [
    (lambda: SmoothTchebycheff(TASKS, mu=0), "mu: expected a number > 0, got 0"),
    (lambda: SmoothTchebycheff(TASKS, warmup_epochs=1.5), "warmup_epochs: expected an integer >= 0, got 1.5"),
    (lambda: FAMO(TASKS, lr=-1), "lr: expected a number > 0, got -1"),
    (lambda: FAMO(TASKS, weight_decay=-1), "weight_decay: expected a number >= 0, got -1"),
    (lambda: ExcessMTL(TASKS, step_size=0), "step_size: expected a number > 0, got 0"),
    (lambda: DualBalancing(TASKS, beta=1.0), r"beta: expected a number in \[0, 1\), got 1.0"),
    (lambda: MoCo(TASKS, beta=0), r"beta: expected a number in \(0, 1\], got 0"),
    (lambda: MoCo(TASKS, rho=-0.1), "rho: expected a number >= 0, got -0.1"),
    (lambda: MoDo(TASKS, gamma=0), "gamma: expected a number > 0, got 0"),
    (lambda: SDMGrad(TASKS, num_iters=0), "num_iters: expected an integer >= 1, got 0"),
    (lambda: SDMGrad(TASKS, lam=-1), "lam: expected a number >= 0, got -1"),
])
def test_new_methods_reject_bad_hyperparameters_in_one_line(make, message):
    with pytest.raises(MtlexpError, match=message):
        make()


def test_project_to_simplex_matches_the_closest_point_on_known_cases():
    from mtlexp.weighting.gradients import project_to_simplex

    assert torch.allclose(project_to_simplex(torch.tensor([0.3, 0.7])), torch.tensor([0.3, 0.7]))
    assert torch.allclose(project_to_simplex(torch.tensor([2.0, 0.0])), torch.tensor([1.0, 0.0]))
    assert torch.allclose(project_to_simplex(torch.tensor([0.5, 0.5, -3.0])), torch.tensor([0.5, 0.5, 0.0]))
    assert torch.allclose(project_to_simplex(torch.tensor([1.0, 1.0, 1.0])), torch.full((3,), 1 / 3))

