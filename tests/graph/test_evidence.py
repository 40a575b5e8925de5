"""Backdoor evidence columns on nets whose right answer is known by construction."""

import torch
import torch.nn.functional as F
from torch import nn

from onp.graph.evidence import (
    channel_lipschitz_bound,
    class_margin,
    clp_scores,
    margin_contributions,
    scaled,
)
from onp.graph.features import feature_index, node_features
from onp.graph.groups import trace_groups

SHAPE = (1, 4, 4)
TARGET = 0


class TriggerNet(nn.Module):
    """Channel 0 fires only on pixels > 0.5 (the trigger) and drives class 0; channel 1 carries
    the clean images' class 1; channel 2 reaches no logit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([10.0, 1.0, -1.0]).view(3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([-5.0, 0.0, 0.2]))
            self.fc.weight.copy_(torch.tensor([[20.0, 0.0, 0.0], [0.0, 5.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([-1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    clean = torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(0)) * 0.3
    triggered = clean.clone()
    triggered[:, :, :2, :2] = 1.0
    return clean, triggered, torch.ones(32, dtype=torch.long)


def _conv_nodes(model: nn.Module) -> tuple[object, slice]:
    groups = trace_groups(model, SHAPE)
    [index] = [g.index for g in groups.groups if "conv" in g.producers]
    start = int(groups.offsets[index])
    return groups, slice(start, start + 3)


def test_the_net_is_what_it_claims() -> None:
    model, (clean, triggered, labels) = TriggerNet().eval(), _data()
    assert (model(clean).argmax(1) == labels).all()
    assert (model(triggered).argmax(1) == TARGET).all()


def test_backdoor_contribution_singles_out_the_trigger_channel_and_clean_the_clean_one() -> None:
    model, (clean, triggered, labels) = TriggerNet(), _data()
    groups, conv = _conv_nodes(model)
    targets = torch.full((len(triggered),), TARGET)
    features = node_features(model, groups, clean, triggered, clean_labels=labels,
                             trigger_targets=targets)
    backdoor = features[conv, feature_index("backdoor_contrib")]
    clean_part = features[conv, feature_index("clean_contribution")]
    assert backdoor.argmax() == 0 and backdoor[0] > 0
    # channel 0 is silent on clean images, channel 2 reaches no logit: both contribute nothing
    torch.testing.assert_close(clean_part[[0, 2]], torch.zeros(2))
    assert clean_part[1] > 0
    assert features[:, feature_index("backdoor_contrib")].abs().max() <= 1.0


def test_without_labels_the_contribution_columns_are_zero() -> None:
    model, (clean, triggered, _) = TriggerNet(), _data()
    groups, _ = _conv_nodes(model)
    features = node_features(model, groups, clean, triggered)
    for name in ("clean_contribution", "backdoor_contrib"):
        assert (features[:, feature_index(name)] == 0).all()


def test_contribution_is_the_first_order_margin_change_of_pruning() -> None:
    """dM/dm against a finite difference: scale channel c's output by 1 - d (float64)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    groups = trace_groups(model, SHAPE)  # traced in float32, then the same modules in float64
    model.double()
    images, labels = torch.rand(16, *SHAPE, dtype=torch.float64), torch.randint(0, 3, (16,))
    values = margin_contributions(model, groups, images, labels, batch_size=5)
    start = int(groups.offsets[[g.index for g in groups.groups if "0" in g.producers][0]])
    step = 1e-6
    with torch.no_grad():
        kept = class_margin(model(images), labels).mean()
        for channel in range(4):
            weight, bias = model[0].weight[channel].clone(), model[0].bias[channel].clone()
            model[0].weight[channel] *= 1 - step
            model[0].bias[channel] *= 1 - step
            shrunk = class_margin(model(images), labels).mean()
            model[0].weight[channel], model[0].bias[channel] = weight, bias
            estimate = float((kept - shrunk) / step)
            assert abs(estimate - float(values[start + channel])) < 1e-5 + 1e-4 * abs(estimate)
    assert all(p.grad is None for p in model.parameters())  # the weights got no gradient


def test_class_margin_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    expected = torch.tensor([2.0 - torch.log(torch.tensor(2.0)), 0.0 - torch.log(
        torch.exp(torch.tensor(1.0)) * 2)])
    torch.testing.assert_close(class_margin(logits, torch.tensor([0, 0])), expected)


def test_clp_scores_single_out_the_channel_with_the_large_kernel() -> None:
    conv = nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        conv.weight.fill_(0.1)
        conv.weight[2] *= 10
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    groups = trace_groups(model, (2, 6, 6))
    group = next(g for g in groups.groups if g.producers == ("0",))
    z = clp_scores(dict(model.named_modules()), group)
    assert z.argmax() == 2 and z[2] > 1.5
    torch.testing.assert_close(z[[0, 1, 3]], torch.full((3,), z[0].item(), dtype=torch.float64))
    # the bound of a constant 2x9 kernel 0.1 is its spectral norm, sqrt(18) * 0.1
    torch.testing.assert_close(channel_lipschitz_bound(conv)[0], torch.tensor(0.1 * 18 ** 0.5))


def test_scaled_divides_by_the_largest_magnitude() -> None:
    torch.testing.assert_close(scaled(torch.tensor([2.0, -4.0, 1.0])),
                               torch.tensor([0.5, -1.0, 0.25]))
    assert (scaled(torch.zeros(3)) == 0).all()
