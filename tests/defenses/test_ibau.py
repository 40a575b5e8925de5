"""i-BAU: the implicit hypergradient against explicit Jacobians, and the defense end to end."""

from __future__ import annotations

import math

import torch
from torch import nn

from onp.defenses import build_defense, ibau
from onp.defenses.ibau import IBAUSettings, implicit_hypergradient, inner_objective

FAST = {"rounds": 2, "batch_size": 32}


def test_the_hypergradient_is_the_fixed_point_formula_with_explicit_jacobians() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    images, labels = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    settings = IBAUSettings(fixed_point_steps=4, inner_lr=0.3, penalty=0.05)
    delta = (torch.rand(1, 1, 2, 2) * 0.1).requires_grad_(True)
    carried = torch.tensor([1.0, 0, 1, 0, 0, 0]).view(-1, 1, 1, 1)
    outer = nn.functional.cross_entropy(model(images + carried * delta), labels)
    got = implicit_hypergradient(model, delta, outer, images, labels, settings)

    weights = list(model.parameters())
    sizes = [w.numel() for w in weights]

    def unflatten(flat):
        return [chunk.view_as(w) for chunk, w in zip(flat.split(sizes), weights, strict=True)]

    def phi(d, flat_w):  # the inner gradient-descent map, as a function of delta and weights
        w = unflatten(flat_w)
        params = {"1.weight": w[0], "1.bias": w[1]}
        logits = torch.func.functional_call(model, params, ((images + d),))
        inner = -nn.functional.cross_entropy(logits, labels) + settings.penalty * d.pow(2).sum()
        return d - settings.inner_lr * torch.autograd.grad(inner, d, create_graph=True)[0]

    def outer_of(d, flat_w):
        w = unflatten(flat_w)
        logits = torch.func.functional_call(model, {"1.weight": w[0], "1.bias": w[1]},
                                            ((images + carried * d),))
        return nn.functional.cross_entropy(logits, labels)

    flat = torch.cat([w.detach().flatten() for w in weights])
    d0 = delta.detach()
    j_delta, j_w = torch.autograd.functional.jacobian(phi, (d0, flat))[0:2]
    j_delta, j_w = j_delta.reshape(4, 4), j_w.reshape(4, -1)
    g_delta, g_w = torch.autograd.functional.jacobian(outer_of, (d0, flat))
    v = torch.zeros(4)
    for _ in range(settings.fixed_point_steps):
        v = j_delta.T @ v + g_delta.flatten()
    expected = g_w + j_w.T @ v
    torch.testing.assert_close(torch.cat([g.flatten() for g in got]), expected, rtol=1e-4,
                               atol=1e-6)


def test_the_inner_objective_ascends_the_loss_with_a_penalty() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    images, labels = torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])
    zero = torch.zeros(1, 1, 2, 2)
    ce = nn.functional.cross_entropy(model(images), labels)
    torch.testing.assert_close(inner_objective(model, zero, images, labels, 0.5), -ce)
    ones = torch.ones(1, 1, 2, 2)
    value = inner_objective(model, ones, images, labels, 0.5)
    torch.testing.assert_close(value, -nn.functional.cross_entropy(model(images + 1), labels) + 2)


def test_runs_on_both_nets_and_uses_only_defense_data(tiny_model, defense_set, checks,
                                                      held_in_spy) -> None:
    seen = held_in_spy(ibau)
    before = checks.state_of(tiny_model)
    result = build_defense("i-bau", FAST).repair(tiny_model, defense_set, seed=0)
    checks.assert_same_state(before, checks.state_of(tiny_model))
    checks.assert_repaired_shape(tiny_model, result.model)
    checks.assert_only_defense_data(seen, defense_set)
    after = result.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    info = result.info
    assert len(info["perturbation_norms"]) == 2 and all(n > 0 for n in info["perturbation_norms"])
    assert all(math.isfinite(a) for a in info["held_in_accuracy_by_round"])
