r"""How far a train-mode float32 gradient is from float64, in each memory layout.

One backward pass of cross-entropy through a freshly built ResNet (as in ``onp.models.zoo``) in
train mode, on random 28×28 images, in the default layout, channels-last and float64. Prints
``||g - g64|| / ||g64||`` over all parameters for each float32 layout: the whole-gradient
error that matters to SGD (elementwise maxima reach a few % in either layout, from units that
sit at a ReLU kink). Run it with ``OMP_NUM_THREADS=1`` and ``2``.

Example::

    python benchmarks/train_gradient_error.py --batch 64
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from onp.models.layout import channels_last_copy
from onp.models.zoo import build_architecture


def flat_gradient(model: nn.Module) -> torch.Tensor:
    """Every parameter's gradient, float64, in one vector."""
    return torch.cat([p.grad.double().flatten() for p in model.parameters()
                      if p.grad is not None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_architecture("resnet", 5, (1, 28, 28)).train()
    x, y = torch.rand(args.batch, 1, 28, 28), torch.randint(0, 5, (args.batch,))
    nets = {"default": copy.deepcopy(model), "channels_last": channels_last_copy(model),
            "float64": copy.deepcopy(model).double()}
    for name, net in nets.items():
        inputs = x.double() if name == "float64" else x
        nn.functional.cross_entropy(net(inputs), y).backward()
    exact = flat_gradient(nets["float64"])
    for name in ("default", "channels_last"):
        error = (flat_gradient(nets[name]) - exact).norm() / exact.norm()
        print(f"{torch.get_num_threads()} threads, batch {args.batch}, {name}: "
              f"whole-gradient relative error {error.item():.2e}")


if __name__ == "__main__":
    main()
