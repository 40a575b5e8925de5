"""The GNN policy: per-node action logits and a pooled value, for sb3-contrib's MaskablePPO.

The observation (see :class:`envs.pruning_env.ChannelPruningEnv`) is a padded graph. The
features extractor unpads it into one ``torch_geometric`` batch, runs a few GATv2 layers and
returns, flattened, every node's embedding followed by a pooled graph embedding. The policy
then scores each node with one shared linear layer (so the logits follow the nodes: relabel the
nodes and the logits are relabelled the same way) and reads the value from the pooled part.

Why GATv2 (Brody, Alon & Yahav, ICLR 2022): a channel's role depends on *which* of its inputs
and outputs are strong, not on their plain sum; attention with the connection strength as an
edge feature lets the layer weigh neighbours by both, and GATv2's dynamic attention ranks
neighbours per query node, which GAT's static attention cannot. Messages go both ways along
each edge (upstream and downstream context both matter), and each layer is residual.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gymnasium as gym
import torch
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn
from torch_geometric.nn import GATv2Conv
from torch_geometric.utils import to_undirected


def padded_sizes(observation_space: gym.spaces.Space) -> tuple[int, int, int]:
    """``(max_nodes, num_features, max_edges)`` of a pruning environment's observation space.

    Raises:
        ValueError: If the space is not a ``Dict`` with a 2-D ``x`` and a 1-D ``edge_attr`` box.
    """
    if isinstance(observation_space, gym.spaces.Dict):
        x, edges = observation_space.get("x"), observation_space.get("edge_attr")
        if (x is not None and edges is not None and x.shape is not None and len(x.shape) == 2
                and edges.shape is not None and len(edges.shape) == 1):
            return int(x.shape[0]), int(x.shape[1]), int(edges.shape[0])
    raise ValueError("expected a pruning environment's Dict observation space with a 2-D 'x' "
                     f"and a 1-D 'edge_attr', found {observation_space}")


def unpad_graphs(
    observations: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn a batch of padded graphs into one disjoint-union graph.

    Shapes:
        observations: ``x [B, N, F]``, ``edge_index [B, 2, E]`` (any dtype), ``edge_attr
        [B, E]``, ``edge_mask [B, E]``.
        returns: ``x [B * N, F]``, ``edge_index [2, E']`` int64 (both directions of every real
        edge, node ``n`` of graph ``b`` numbered ``b * N + n``), ``edge_attr [E', 1]``.
    """
    x = observations["x"]
    batch, nodes, _ = x.shape
    edges = observations["edge_index"].long()
    offsets = (torch.arange(batch, device=x.device) * nodes).view(batch, 1, 1)
    keep = observations["edge_mask"].bool()
    edge_index = (edges + offsets).permute(1, 0, 2)[:, keep]
    edge_attr = observations["edge_attr"][keep].unsqueeze(1)
    edge_index, edge_attr = to_undirected(edge_index, edge_attr, num_nodes=batch * nodes)
    return x.reshape(batch * nodes, -1), edge_index, edge_attr


def standardize_nodes(observations: dict[str, torch.Tensor]) -> torch.Tensor:
    """Node features scaled per graph and column to mean 0, std 1 over the real nodes.

    Feature scales differ by orders of magnitude between columns and between models (a trigger
    response of 40 clean stds in one net, 4 in another); per-graph standardization makes the
    policy's first updates move every column alike and lets one policy serve several models.
    Padding rows stay 0.

    Shapes:
        observations: ``x [B, N, F]``, ``node_mask [B, N]``; returns ``[B, N, F]``.
    """
    x, real = observations["x"], observations["node_mask"].unsqueeze(-1)
    count = real.sum(1, keepdim=True).clamp(min=1.0)
    mean = (x * real).sum(1, keepdim=True) / count
    std = (((x - mean) * real) ** 2).sum(1, keepdim=True).div(count).sqrt()
    return (x - mean) / (std + 1e-6) * real


class GraphFeaturesExtractor(BaseFeaturesExtractor):
    """GATv2 encoder over the neuron graph.

    Args:
        observation_space: The environment's ``Dict`` observation space.
        hidden: Width of the node embeddings (default: 64).
        layers: Number of GATv2 layers (default: 3).
        heads: Attention heads per layer, averaged (default: 2).

    Shapes:
        output: ``[B, N * (hidden + F) + 2 * hidden]``: node embeddings ``[B, N, hidden]``
        flattened, the raw node features ``[B, N, F]`` flattened (the action head's skip
        path), then the mean- and max-pooled embedding of the real nodes.
    """

    def __init__(
        self, observation_space: gym.spaces.Dict, hidden: int = 64, layers: int = 3,
        heads: int = 2,
    ) -> None:
        nodes, features, _ = padded_sizes(observation_space)
        super().__init__(observation_space, features_dim=nodes * (hidden + features) + 2 * hidden)
        self.nodes, self.hidden, self.features = nodes, hidden, features
        self.encode = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        self.convs = nn.ModuleList(
            GATv2Conv(hidden, hidden, heads=heads, concat=False, edge_dim=1)
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embed each padded graph of the batch (see the class's ``Shapes:``)."""
        observations = {**observations, "x": standardize_nodes(observations)}
        x, edge_index, edge_attr = unpad_graphs(observations)
        h = self.encode(x)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(h + torch.relu(conv(h, edge_index, edge_attr)))
        batch = observations["x"].shape[0]
        h = h.view(batch, self.nodes, self.hidden)
        real = observations["node_mask"].view(batch, self.nodes, 1)
        mean = (h * real).sum(1) / real.sum(1).clamp(min=1.0)
        peak = h.masked_fill(real == 0, float("-inf")).amax(1)
        return torch.cat([h.flatten(1), observations["x"].flatten(1), mean, peak], dim=1)


class NodeScores(nn.Module):
    """Action head: one logit per node from its embedding and its raw features.

    Shared linear layers read both; the raw features enter through a skip path.

    The skip path lets PPO pick up a single telling feature (such as the trigger response)
    within a few updates, while the GNN part learns what the neighbourhood adds.

    Shapes:
        input: ``[B, N * (hidden + F) + 2 * hidden]`` (the extractor's output);
        output: ``[B, N]``.
    """

    def __init__(self, nodes: int, hidden: int, features: int) -> None:
        super().__init__()
        self.nodes, self.hidden, self.features = nodes, hidden, features
        self.score = nn.Linear(hidden, 1)
        self.skip = nn.Linear(features, 1, bias=False)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """One logit per node (see the class's ``Shapes:``)."""
        split = self.nodes * self.hidden
        per_node = latent[:, :split].view(-1, self.nodes, self.hidden)
        raw = latent[:, split : split + self.nodes * self.features].view(
            -1, self.nodes, self.features
        )
        return (self.score(per_node) + self.skip(raw)).squeeze(-1)


class PooledValue(nn.Module):
    """Value head: an MLP on the pooled graph embedding.

    Shapes:
        input: ``[B, N * (hidden + F) + 2 * hidden]``; output: ``[B, 1]``.
    """

    def __init__(self, nodes: int, hidden: int, features: int) -> None:
        super().__init__()
        self.start = nodes * (hidden + features)
        self.mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """The state value from the pooled graph embedding (see the class's ``Shapes:``)."""
        return self.mlp(latent[:, self.start :])


class GNNMaskablePolicy(MaskableActorCriticPolicy):
    """MaskablePPO policy whose action logits are per-node GNN scores.

    The GNN enters through ``policy_kwargs`` as the features extractor (default
    :class:`GraphFeaturesExtractor`); ``net_arch`` is empty so the extractor's output reaches
    the heads unchanged, and the two heads replace SB3's dense ones.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("features_extractor_class", GraphFeaturesExtractor)
        kwargs["net_arch"] = []
        kwargs["share_features_extractor"] = True
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        extractor = self.features_extractor
        if not isinstance(extractor, GraphFeaturesExtractor):
            raise TypeError("GNNMaskablePolicy needs a GraphFeaturesExtractor")
        sizes = (extractor.nodes, extractor.hidden, extractor.features)
        # SB3 annotates both heads as nn.Linear; any module mapping the latent will do.
        self.action_net = NodeScores(*sizes)  # type: ignore[assignment]
        self.value_net = PooledValue(*sizes)  # type: ignore[assignment]
        if self.ortho_init:  # SB3's gains: near-uniform first policy, unit-scale values
            self.action_net.apply(partial(self.init_weights, gain=0.01))
            self.value_net.apply(partial(self.init_weights, gain=1.0))
        # The heads changed after SB3 made the optimizer: make it again over all parameters.
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]  # as SB3's own _build
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )
