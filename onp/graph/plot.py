"""Pictures of the neuron graph and of per-node scores (masks, trigger responses), as PNG files.

Figures are drawn on matplotlib's Agg canvas directly (no ``pyplot``, no global state, no
display) and written atomically, so a failed plot leaves no half-written file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch_geometric.data import Data

from onp.errors import ONPInputError
from onp.graph.features import feature_index
from onp.graph.groups import ChannelGroups
from onp.io import atomic_path

log = logging.getLogger(__name__)

DPI = 120
"""Resolution of the written PNGs (dots per inch)."""

EDGE_MAX_ALPHA = 0.6
"""Opacity of the strongest edge; an edge's opacity is its strength (0..1) times this."""

EDGE_WIDTH = 0.4
"""Line width of an edge, in points."""

NODE_AREA_BUDGET = 4000.0
"""Total marker area over all nodes (points^2): small graphs get big dots, large ones small dots."""

NODE_AREA_RANGE = (2.0, 60.0)
"""Smallest and largest marker area of one node (points^2)."""

GRAPH_FIGSIZE = (10.0, 6.0)
"""Width and height of the graph figure (inches)."""

STRIP_HEIGHT = 0.35
"""Height of one group's row in the layer-score figure (inches), plus :data:`STRIP_MARGIN`."""

STRIP_MARGIN = 1.5
"""Room for the title, labels and colorbar in the layer-score figure (inches)."""
CATEGORY_COLORS = ("#d9d9d9", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e")
"""Colours of categorical maps: the first (grey) for the ordinary category, e.g. "kept"."""

STRIP_WIDTH = 10.0
"""Width of the layer-score figure (inches)."""

COLORMAP = "viridis"


def _write_png(figure: Figure, path: str | Path) -> Path:
    """Render ``figure`` with Agg and write it to ``path`` atomically."""
    FigureCanvasAgg(figure)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    log.info("wrote %s", path)
    return path


def _per_node(values: torch.Tensor, groups: ChannelGroups, what: str) -> np.ndarray:
    """``values`` as a float numpy array ``[num_nodes]``, or :class:`ONPInputError`."""
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (groups.num_nodes,):
        raise ONPInputError(
            f"{what}: expected a tensor of shape [{groups.num_nodes}] (one value per node), "
            f"found {list(getattr(values, 'shape', [type(values).__name__]))}"
        )
    return values.detach().to("cpu", torch.float64).numpy()


def node_positions(groups: ChannelGroups) -> np.ndarray:
    """Drawing position of each node: x = group index, y = channel scaled to ``0..1``.

    Shapes:
        output: ``[num_nodes, 2]`` float (a one-channel group sits at ``y = 0.5``).
    """
    sizes = np.array([g.size for g in groups.groups], dtype=np.float64)
    group = groups.node_group.numpy()
    channel = groups.node_channel.numpy().astype(np.float64)
    span = np.maximum(sizes[group] - 1, 1)
    y = np.where(sizes[group] > 1, channel / span, 0.5)
    return np.stack([group.astype(np.float64), y], axis=1)


def _default_colors(data: Data) -> tuple[np.ndarray, str]:
    """The trigger response if the graph has one, else the relative weight norm."""
    if bool(data.x[:, feature_index("has_trigger")].any()):
        name = "trigger_z_abs"
    else:
        name = "weight_l1_rel"
    return data.x[:, feature_index(name)].detach().double().numpy(), name


def save_graph_png(
    data: Data,
    groups: ChannelGroups,
    path: str | Path,
    scores: torch.Tensor | None = None,
    title: str | None = None,
) -> Path:
    """Draw the neuron graph: layers left to right, channels bottom to top, edges by strength.

    Args:
        data: A graph from :func:`onp.graph.neuron_graph.build_neuron_graph`.
        groups: The channel groups it was built over.
        path: The PNG file to write (its folder is created).
        scores: Per-node values to color the nodes by (e.g. a pruning mask), or ``None`` to color
            by the ``trigger_z_abs`` feature when the graph has a trigger response, else by
            ``weight_l1_rel`` (default: ``None``).
        title: The figure title (default: a summary of the graph).

    Returns:
        ``path``.

    Shapes:
        scores: ``[num_nodes]``, any real values (bool is drawn as 0/1).

    Raises:
        ONPInputError: If ``data`` or ``scores`` do not fit ``groups``.
    """
    if data.num_nodes != groups.num_nodes:
        raise ONPInputError(
            f"neuron graph: has {data.num_nodes} nodes, its groups have {groups.num_nodes}"
        )
    if scores is None:
        colors, label = _default_colors(data)
    else:
        colors, label = _per_node(scores, groups, "scores"), "score"
    positions = node_positions(groups)
    edges = data.edge_index.numpy()
    strength = data.edge_attr.detach().double().flatten().numpy()
    rgba = np.zeros((edges.shape[1], 4))
    rgba[:, 3] = np.clip(strength, 0.0, 1.0) * EDGE_MAX_ALPHA

    figure = Figure(figsize=GRAPH_FIGSIZE)
    axes = figure.add_subplot()
    # LineCollection takes an [E, 2, 2] array; its annotation asks for a sequence.
    axes.add_collection(LineCollection(
        np.stack([positions[edges[0]], positions[edges[1]]], axis=1),  # type: ignore[arg-type]
        colors=rgba, linewidths=EDGE_WIDTH, zorder=1,
    ))
    area = float(np.clip(NODE_AREA_BUDGET / groups.num_nodes, *NODE_AREA_RANGE))
    dots = axes.scatter(positions[:, 0], positions[:, 1], c=colors, s=area, cmap=COLORMAP,
                        zorder=2, linewidths=0)
    figure.colorbar(dots, ax=axes, label=label)
    axes.set_xticks(range(len(groups.groups)))
    axes.set_xticklabels([f"{g.index}{'*' if g.coupled else ''}" for g in groups.groups])
    axes.set_xlim(-0.5, len(groups.groups) - 0.5)
    axes.set_ylim(-0.05, 1.05)
    axes.set_xlabel("channel group (forward order; * = coupled)")
    axes.set_ylabel("channel (scaled to 0..1)")
    axes.set_title(title or f"neuron graph: {groups.num_nodes} nodes, {edges.shape[1]} edges")
    return _write_png(figure, path)


def save_layer_scores_png(
    scores: torch.Tensor, groups: ChannelGroups, path: str | Path, title: str,
    categories: Sequence[str] | None = None,
) -> Path:
    """Draw per-node scores as a heatmap: one row per channel group, one column per channel.

    Cells right of a group's last channel are left blank.

    Args:
        scores: One value per node (e.g. a pruning mask or the trigger response).
        groups: The channel groups the nodes are numbered over.
        path: The PNG file to write (its folder is created).
        title: The figure title.
        categories: Names of the values ``0, 1, ...`` when the scores are categories: one
            colour each and a legend instead of a colour bar (default: continuous scores).

    Returns:
        ``path``.

    Shapes:
        scores: ``[num_nodes]``, any real values (bool is drawn as 0/1).

    Raises:
        ONPInputError: If ``scores`` does not have one value per node.
    """
    values = _per_node(scores, groups, "scores")
    width = max(g.size for g in groups.groups)
    grid = np.full((len(groups.groups), width), np.nan)
    grid[groups.node_group.numpy(), groups.node_channel.numpy()] = values

    height = STRIP_MARGIN + STRIP_HEIGHT * len(groups.groups)
    figure = Figure(figsize=(STRIP_WIDTH, height))
    axes = figure.add_subplot()
    if categories is None:
        image = axes.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=COLORMAP,
                            interpolation="nearest")
        figure.colorbar(image, ax=axes, label="score")
    else:
        palette = [CATEGORY_COLORS[i % len(CATEGORY_COLORS)] for i in range(len(categories))]
        axes.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=ListedColormap(palette),
                    vmin=-0.5, vmax=len(categories) - 0.5, interpolation="nearest")
        axes.legend(handles=[Patch(color=c, label=n) for c, n in zip(palette, categories,
                                                                     strict=True)],
                    loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(categories),
                    fontsize="small", frameon=False)
    axes.set_yticks(range(len(groups.groups)))
    axes.set_yticklabels([f"{g.index} {g.kind} {g.size}{' *' if g.coupled else ''}"
                          for g in groups.groups])
    axes.set_xlabel("channel")
    axes.set_ylabel("group, kind, size (* = coupled)")
    axes.set_title(title, pad=20 if categories is not None else 6)
    if not np.isfinite(values).all():
        log.warning("%s: %d scores are not finite; they are drawn blank", path,
                    int((~np.isfinite(values)).sum()))
    return _write_png(figure, path)
