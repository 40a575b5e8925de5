"""Graph and layer-score pictures: valid PNGs, written atomically, inputs checked."""

import numpy as np
import pytest
import torch
from PIL import Image

from onp.errors import ONPInputError
from onp.graph.features import feature_index
from onp.graph.groups import trace_groups
from onp.graph.neuron_graph import build_neuron_graph
from onp.graph.plot import node_positions, save_graph_png, save_layer_scores_png
from onp.models.bundle import ModelSpec, make_classifier

SHAPE = (1, 8, 8)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    model = make_classifier(ModelSpec("plain_cnn", 10, SHAPE, arch_options={"width": 4}))
    groups = trace_groups(model, SHAPE)
    images = torch.rand(8, *SHAPE)
    triggered = images.clone()
    triggered[:, :, :2, :2] = 1.0
    return build_neuron_graph(model, groups, images, triggered), groups


def is_png(path):
    return path.read_bytes()[: len(PNG_MAGIC)] == PNG_MAGIC


def pixels(path) -> np.ndarray:
    """The picture as ``[H, W, 3]`` uint8, read back with Pillow."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_graph_png_with_and_without_scores(graph, tmp_path):
    data, groups = graph
    plain = save_graph_png(data, groups, tmp_path / "graph.png")
    mask = torch.arange(groups.num_nodes) % 3 != 0
    scored = save_graph_png(data, groups, tmp_path / "sub" / "mask.png", scores=mask, title="m")
    assert is_png(plain) and is_png(scored)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["graph.png", "mask.png"]
    first, second = pixels(plain), pixels(scored)
    assert min(first.shape[:2]) > 200  # a picture, not a stub
    assert len(np.unique(first.reshape(-1, 3), axis=0)) > 10  # nodes and edges drawn
    # the mask colours the nodes: the two pictures differ where the pruned nodes are
    assert first.shape == second.shape and (first != second).any(axis=2).mean() > 0.001


def test_layer_scores_png(graph, tmp_path):
    data, groups = graph
    path = save_layer_scores_png(
        data.x[:, feature_index("trigger_z")], groups, tmp_path / "z.png", "trigger response"
    )
    assert path == tmp_path / "z.png" and is_png(path)
    picture = pixels(path)
    assert min(picture.shape[:2]) > 200 and len(np.unique(picture.reshape(-1, 3), axis=0)) > 10


def test_bad_scores_leave_no_file(graph, tmp_path):
    data, groups = graph
    with pytest.raises(ONPInputError, match="one value per node"):
        save_layer_scores_png(torch.zeros(3), groups, tmp_path / "bad.png", "bad")
    with pytest.raises(ONPInputError, match=str(groups.num_nodes)):
        save_graph_png(data, groups, tmp_path / "bad.png", scores=torch.zeros(3))
    assert list(tmp_path.iterdir()) == []


def test_node_positions_put_layers_on_x_and_channels_on_y(graph):
    _, groups = graph
    positions = node_positions(groups)
    assert positions.shape == (groups.num_nodes, 2)
    assert positions[:, 0].tolist() == groups.node_group.float().tolist()
    first = positions[: groups.groups[0].size, 1]
    assert first[0] == 0.0 and first[-1] == 1.0 and (first[1:] > first[:-1]).all()
