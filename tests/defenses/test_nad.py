"""Neural Attention Distillation: the attention map by hand, the points by tracing, the pull."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from onp.defenses import build_defense, nad
from onp.defenses.nad import attention_map, attention_points
from onp.models.bundle import ModelSpec, make_classifier

FAST = {"teacher_epochs": 2, "teacher_lr": 0.05, "epochs": 2, "batch_size": 32}


def test_attention_map_sums_powers_over_channels_and_normalizes_over_positions() -> None:
    features = torch.tensor([[[[1.0, 0.0]], [[0.0, -2.0]]]])  # [1, 2 channels, 1, 2]
    expected = torch.tensor([1.0, 4.0]) / (math.sqrt(17.0) + nad.ATTENTION_EPS)
    torch.testing.assert_close(attention_map(features, 2.0).flatten(), expected)


def test_attention_points_end_the_last_three_resolutions(tiny_models, checks) -> None:
    model = tiny_models["resnet"]
    sizes = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: sizes.__setitem__(n, out.shape[2:]))
             for n, m in model.named_modules() if n]
    points = attention_points(model, torch.rand(2, *checks.shape))
    model(torch.rand(2, *checks.shape))
    for hook in hooks:
        hook.remove()
    assert len(points) == 3
    assert [tuple(sizes[p]) for p in points] == [(12, 12), (6, 6), (3, 3)]  # low to high


def test_runs_on_both_nets_and_uses_only_defense_data(tiny_model, defense_set, checks,
                                                      held_in_spy) -> None:
    seen = held_in_spy(nad)
    before = checks.state_of(tiny_model)
    result = build_defense("nad", FAST).repair(tiny_model, defense_set, seed=0)
    checks.assert_same_state(before, checks.state_of(tiny_model))
    checks.assert_repaired_shape(tiny_model, result.model)
    checks.assert_only_defense_data(seen, defense_set)
    info = result.info
    assert list(info["weighted_points"]) == [info["attention_points"][-1]]  # beta (0, 0, 5000)
    assert len(info["losses"]) == 2 and all(math.isfinite(v) for v in info["losses"])


def _distance(student, teacher, point: str, images: torch.Tensor) -> float:
    maps = []
    for net in (student, teacher):
        out = {}
        hook = dict(net.named_modules())[point].register_forward_hook(
            lambda _m, _i, o, out=out: out.__setitem__("x", o))
        with torch.no_grad():
            net.eval()(images)
        hook.remove()
        maps.append(attention_map(out["x"], 2.0))
    return float(F.mse_loss(*maps))


def test_distillation_pulls_the_students_attention_to_the_teachers(tiny_models, defense_set,
                                                                   checks) -> None:
    """A teacher unlike the student (a fresh net): the attention loss moves the student's maps
    towards it; with every beta at 0 the same training does not."""
    student = tiny_models["plain_cnn"]
    torch.manual_seed(5)
    teacher = make_classifier(ModelSpec("plain_cnn", checks.classes, checks.shape,
                                        arch_options={"width": 8})).eval()
    images = defense_set.images[:64]
    point = attention_points(student, images[:2])[-1]
    before = _distance(student, teacher, point, images)
    after = {}
    for beta in (0.0, 500.0):
        defense = build_defense("nad", {**FAST, "lr": 0.01, "late_lr": 0.01, "augment": False})
        trained = copy.deepcopy(student)
        defense._distil(trained, teacher, defense_set, [(point, beta)] if beta else [], 0)
        after[beta] = _distance(trained, teacher, point, images)
    assert after[500.0] < 0.5 * before
    assert after[0.0] > 0.5 * before
