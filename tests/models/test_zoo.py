import pytest
import torch

from onp.errors import ONPInputError
from onp.models.layer_graph import infer_shapes, strip_final_softmax
from onp.models.layout import channels_last_copy
from onp.models.zoo import available_architectures, build_architecture, canonical_name

SHAPES = {
    "resnet": (1, 28, 28),
    "resnet20": (3, 32, 32),
    "preact_resnet18": (3, 32, 32),
    "vgg_bn": (1, 28, 28),
    "plain_cnn": (3, 32, 32),
    "deepid": (3, 55, 47),
    "layer_graph": (3, 8, 8),
}
# A small imported network: conv -> BN -> relu, a residual add, max pool, flatten, dense.
LAYER_GRAPH_NODES = [
    {"name": "conv", "op": "conv2d", "inputs": ["input"], "in_channels": 3, "out_channels": 4,
     "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1],
     "groups": 1, "bias": False},
    {"name": "bn", "op": "batchnorm", "inputs": ["conv"], "num_features": 4, "eps": 1e-3},
    {"name": "relu", "op": "activation", "inputs": ["bn"], "function": "relu"},
    {"name": "skip", "op": "add", "inputs": ["relu", "conv"]},
    {"name": "pool", "op": "maxpool", "inputs": ["skip"], "kernel_size": [2, 2],
     "stride": [2, 2], "padding": [0, 1, 0, 1]},
    {"name": "flat", "op": "flatten", "inputs": ["pool"]},
    {"name": "fc", "op": "dense", "inputs": ["flat"], "in_features": 64, "out_features": 7},
]
SMALL = {"preact_resnet18": {"width": 8},
         "layer_graph": {"nodes": LAYER_GRAPH_NODES, "output": "fc"}}


def test_every_architecture_has_a_shape_test():
    assert set(available_architectures()) == set(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_builds_runs_and_traces(name):
    model = build_architecture(name, 7, SHAPES[name], **SMALL.get(name, {})).eval()
    x = torch.rand(2, *SHAPES[name])
    assert model(x).shape == (2, 7)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), model(x))


def test_default_resnet_size_and_depth_rule():
    model = build_architecture("resnet", 10, (1, 28, 28))
    assert sum(p.numel() for p in model.parameters()) == 174_970  # 6 blocks, widths 16/32/64
    with pytest.raises(ONPInputError, match="6n\\+2"):
        build_architecture("resnet", 10, (1, 28, 28), depth=15)


def test_preact_width_multiplier_scales_channels():
    model = build_architecture("preact_resnet18", 10, (3, 32, 32), width=8)
    assert model.conv1.out_channels == 8 and model.linear.in_features == 64


def test_deepid_layer_sizes_match_the_csaw_net():
    model = build_architecture("deepid", 1283, (3, 55, 47))
    # p3 is 60 x 5 x 4 = 1200 features; conv_4 on p3 gives 80 x 4 x 3 = 960.
    assert model.fc_1.in_features == 1200 and model.fc_2.in_features == 960
    assert model.output.out_features == 1283


def test_a_layer_graph_that_does_not_fit_is_refused_naming_the_layer():
    nodes = [dict(node) for node in LAYER_GRAPH_NODES]
    nodes[-1]["in_features"] = 60
    with pytest.raises(ONPInputError, match="layer 'fc': takes 60 features, its input has 64"):
        build_architecture("layer_graph", 7, (3, 8, 8), nodes=nodes, output="fc")
    with pytest.raises(ONPInputError, match=r"output 'fc' gives shape \(7,\), expected \(5,\)"):
        build_architecture("layer_graph", 5, (3, 8, 8), nodes=LAYER_GRAPH_NODES, output="fc")
    bad = [*LAYER_GRAPH_NODES[:1], {"name": "x", "op": "lstm", "inputs": ["conv"]}]
    with pytest.raises(ONPInputError, match="unknown op 'lstm'"):
        build_architecture("layer_graph", 7, (3, 8, 8), nodes=bad, output="x")


def test_aliases_and_unknown_names():
    assert canonical_name("PreActResNet18") == "preact_resnet18"
    with pytest.raises(ONPInputError, match="unknown architecture 'nope'"):
        canonical_name("nope")


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_channels_last_copy_computes_the_same_function(name):
    torch.manual_seed(0)
    model = build_architecture(name, 7, SHAPES[name], **SMALL.get(name, {})).eval()
    copy = channels_last_copy(model)
    conv = next(p for p in copy.parameters() if p.ndim == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()  # really another layout, not the default one
    assert all(p.is_contiguous() for p in model.parameters())  # the original is left alone
    x = torch.rand(3, *SHAPES[name])
    torch.testing.assert_close(copy(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_conv_node_without_a_stride_steps_by_one_in_shape_and_module() -> None:
    nodes = [{"name": "conv", "op": "conv2d", "inputs": ["input"], "in_channels": 3,
              "out_channels": 2, "kernel_size": [3, 3]},
             {"name": "flat", "op": "flatten", "inputs": ["conv"]},
             {"name": "fc", "op": "dense", "inputs": ["flat"], "in_features": 2 * 6 * 6,
              "out_features": 4}]
    assert infer_shapes(nodes, (3, 8, 8))["conv"] == (2, 6, 6)
    net = build_architecture("layer_graph", 4, (3, 8, 8), nodes=nodes, output="fc")
    assert net(torch.rand(2, 3, 8, 8)).shape == (2, 4)


def test_only_a_final_softmax_nobody_reads_is_left_out() -> None:
    dense = {"name": "fc", "op": "dense", "inputs": ["input"], "in_features": 4,
             "out_features": 3}
    soft = {"name": "soft", "op": "activation", "inputs": ["fc"], "function": "softmax"}
    assert strip_final_softmax([dense, soft], "soft") == ([dense], "fc", "softmax")
    relu = {"name": "soft", "op": "activation", "inputs": ["fc"], "function": "relu"}
    assert strip_final_softmax([dense, relu], "soft") == ([dense, relu], "soft", None)
    reread = {"name": "add", "op": "add", "inputs": ["soft", "soft"]}
    assert strip_final_softmax([dense, soft, reread], "soft")[2] is None
