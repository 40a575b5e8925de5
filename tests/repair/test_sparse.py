"""Prune-and-regrow: masks built by hand-checkable rules, sparsity kept, seed used, regrowth."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from onp.data.types import DatasetMeta, ImageSet
from onp.errors import ONPInputError
from onp.graph.groups import trace_groups
from onp.graph.mask import bake_mask, full_mask, masked
from onp.models.bundle import ModelSpec, make_classifier
from onp.repair.compact import load_compact, save_compact
from onp.repair.importance import channel_importance
from onp.repair.sparse import (
    SparseConfig,
    chosen_nodes,
    prune_and_regrow,
    refit_rounds,
    select_mask,
)
from onp.signal.probe import SYNTHESIZED, BackdoorProbe

SHAPE = (1, 12, 12)


def _toy(n: int, seed: int) -> ImageSet:
    """Class = the quadrant holding a bright square."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.rand(n, *SHAPE, generator=generator) * 0.3
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[i, 0, 1 + 5 * row : 4 + 5 * row, 1 + 5 * col : 4 + 5 * col] += 0.6
    return ImageSet(images.clamp(0, 1), labels, DatasetMeta("toy", ("a", "b", "c", "d"), SHAPE))


def _probe(images: ImageSet) -> BackdoorProbe:
    keep = images.labels != 0
    stamped = images.images[keep].clone()
    stamped[:, :, -2:, -2:] = 1.0
    return BackdoorProbe(stamped, torch.zeros(int(keep.sum()), dtype=torch.long),
                         images.labels[keep], False, SYNTHESIZED)


def _model(arch: str = "plain_cnn", options: dict | None = None):
    torch.manual_seed(0)
    model = make_classifier(ModelSpec(arch, 4, SHAPE, arch_options=options or {"width": 4}))
    return model, trace_groups(model, SHAPE)


def test_select_mask_prunes_the_lowest_share_per_group_protected_first() -> None:
    _, groups = _model()  # groups of 4, 8 and 16 channels: nodes 0-3, 4-11, 12-27
    scores = torch.arange(28, dtype=torch.float64)
    chosen = chosen_nodes(groups, ("conv",), True)  # the linear group is left alone
    protected = torch.zeros(28, dtype=torch.bool)
    protected[[3, 20]] = True  # the best conv channel of group 0, and one linear unit
    mask = select_mask(scores, groups, chosen, 0.5, protected)
    # group 0: quota 2 = protected node 3 + the lowest other (0); group 1: the lowest 4 (4-7);
    # group 2 is not chosen, but its protected node 20 stays pruned.
    assert torch.nonzero(~mask).flatten().tolist() == [0, 3, 4, 5, 6, 7, 20]


def test_select_mask_keeps_one_channel_per_group() -> None:
    _, groups = _model()
    scores = torch.rand(28, generator=torch.Generator().manual_seed(0)).double()
    protected = torch.zeros(28, dtype=torch.bool)
    protected[:4] = True  # a whole group protected
    mask = select_mask(scores, groups, chosen_nodes(groups, ("conv", "linear"), True), 0.9,
                       protected)
    for keep in groups.split(mask):
        assert keep.any()
    assert int((~mask[4:12]).sum()) == 7  # round(0.9 * 8) = 7, one left


def test_weight_importance_ranks_filters_by_l1_norm() -> None:
    model, groups = _model()
    with torch.no_grad():
        conv = model.net.features[0]
        norms = torch.tensor([3.0, 1.0, 4.0, 2.0]).view(4, 1, 1, 1)
        conv.weight.copy_(norms.expand_as(conv.weight))
    scores = channel_importance(model, groups, torch.empty(0), "weight")
    assert torch.argsort(scores[:4]).tolist() == [1, 3, 0, 2]
    torch.testing.assert_close(scores[:4].mean(), torch.tensor(1.0, dtype=torch.float64))


def test_activation_importance_finds_a_dead_channel() -> None:
    model, groups = _model()
    with torch.no_grad():
        model.net.features[0].weight[2].zero_()
        model.net.features[0].bias[2] = -1.0  # never positive: a dormant channel
    scores = channel_importance(model, groups, _toy(32, 0).images, "activation")
    assert int(torch.argmin(scores[:4])) == 2 and float(scores[2]) == 0.0


def _run(arch: str, options: dict, config: SparseConfig, seed_mask=None):
    model, groups = _model(arch, options)
    fit, held = _toy(96, 1), _toy(48, 2)
    seed_mask = full_mask(groups) if seed_mask is None else seed_mask
    original = copy.deepcopy(model.state_dict())
    result = prune_and_regrow(model, groups, fit, held, _probe(held), seed_mask, config, seed=0)
    for key, value in model.state_dict().items():  # the input model is left alone
        torch.testing.assert_close(value, original[key])
    return model, groups, result


def test_rounds_keep_the_sparsity_and_the_protected_seed() -> None:
    model, groups = _model()
    seed = full_mask(groups)
    seed[[1, 6, 14]] = False
    config = SparseConfig(sparsity=0.25, rounds=3, batch_size=32, group_kinds=("conv",))
    _, groups, result = _run("plain_cnn", {"width": 4}, config, seed)
    assert len(result.masks) == len(result.rounds) == 3
    for mask, record in zip(result.masks, result.rounds, strict=True):
        assert not mask[[1, 6, 14]].any()  # the learned seed stays pruned in every round
        assert int((~mask[:4]).sum()) == 1 and int((~mask[4:12]).sum()) == 2  # 25% per group
        assert int((~mask[12:]).sum()) == 1  # the linear group: only its seed channel
        assert record.pruned == int((~mask).sum()) == 4
    utilities = [r.utility for r in result.rounds]
    assert result.best_round == utilities.index(max(utilities))
    assert torch.equal(result.mask, result.masks[result.best_round])


def test_seed_channels_regrow_once_unprotected_and_the_mask_is_baked() -> None:
    model, groups = _model()
    scores = channel_importance(model, groups, _toy(96, 1).images, "weight")
    seed = full_mask(groups)
    seed[int(torch.argmax(scores[4:12])) + 4] = False  # the strongest channel of group 1
    config = SparseConfig(sparsity=0.25, rounds=2, batch_size=32, importance="weight",
                          protect_rounds=1, group_kinds=("conv",))
    _, groups, result = _run("plain_cnn", {"width": 4}, config, seed)
    assert result.rounds[0].regrown == 0
    assert result.rounds[1].regrown >= 1 and bool(result.masks[1][~seed].all())
    baked = result.model
    pruned_filters = baked.net.features[3].weight[~result.mask[4:12]]
    assert bool((pruned_filters == 0).all())
    x = _toy(8, 3).images
    with torch.no_grad():
        plain = baked(x)
        with masked(baked, groups, result.mask):
            torch.testing.assert_close(baked(x), plain)  # the hooks have nothing left to do


def test_pruned_batchnorm_statistics_are_frozen_in_a_resnet() -> None:
    model, groups = _model("resnet", {"width": 4, "depth": 8})
    config = SparseConfig(sparsity=0.5, rounds=1, batch_size=32, coupled=False)
    _, groups, result = _run("resnet", {"width": 4, "depth": 8}, config)
    bn = dict(result.model.named_modules())["net.layer1.0.bn1"]
    fresh = dict(model.named_modules())["net.layer1.0.bn1"]
    group = next(g for g in groups.groups if "net.layer1.0.bn1" in g.mask_points)
    keep = groups.split(result.mask)[group.index]
    assert (~keep).sum() == 2
    torch.testing.assert_close(bn.running_var[~keep], fresh.running_var[~keep])
    assert not torch.allclose(bn.running_var[keep], fresh.running_var[keep])


def test_compact_copy_is_smaller_and_computes_the_same(tmp_path) -> None:
    model, groups = _model("resnet", {"width": 4, "depth": 8})
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
    mask = torch.rand(groups.num_nodes, generator=torch.Generator().manual_seed(1)) > 0.4
    save_compact(model, groups, mask, tmp_path / "small")
    small = load_compact(tmp_path / "small")
    x = _toy(4, 5).images
    with torch.no_grad(), masked(model, groups, mask):
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    (tmp_path / "small" / "widths.json").write_text("{}")
    with pytest.raises(ONPInputError, match="version"):
        load_compact(tmp_path / "small")


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ONPInputError, match="sparsity"):
        SparseConfig(sparsity=1.0)
    with pytest.raises(ONPInputError, match="protect_rounds"):
        SparseConfig(protect_rounds=0)
    with pytest.raises(ONPInputError, match="importance"):
        SparseConfig(importance="taylor")


def test_stamped_distill_weight_is_checked() -> None:
    with pytest.raises(ONPInputError, match="stamped_distill_weight"):
        SparseConfig(stamped_distill_weight=1.5)


def test_refit_retraces_the_kept_rounds_on_more_images() -> None:
    """Refit leaves the first pass (rounds, masks, kept round) as it was. Retracing the kept
    rounds on the fitting images alone gives the kept checkpoint back exactly; with the held-in
    images added (what ``refit`` does) the weights differ."""
    common = dict(sparsity=0.25, rounds=3, batch_size=32, group_kinds=("conv",),
                  lr_schedule="constant", lr=0.05, distill_weight=0.0,
                  stamped_distill_weight=0.0)
    model, groups, plain = _run("plain_cnn", {"width": 4}, SparseConfig(**common))
    _, _, refit = _run("plain_cnn", {"width": 4}, SparseConfig(**common, refit=True))
    drop_time = [{k: v for k, v in r.to_json().items() if k != "seconds"} for r in plain.rounds]
    assert drop_time == [{k: v for k, v in r.to_json().items() if k != "seconds"}
                         for r in refit.rounds]
    assert refit.best_round == plain.best_round
    assert all(torch.equal(a, b) for a, b in zip(plain.masks, refit.masks, strict=True))
    kept = plain.best_round + 1
    again = refit_rounds(model, groups, _toy(96, 1), plain.masks[:kept], [None] * kept,
                         SparseConfig(**common), 0, None)
    bake_mask(again, groups, plain.mask)
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)
    assert any(not torch.equal(value, refit.model.state_dict()[key])
               for key, value in plain.model.state_dict().items() if value.is_floating_point())
