"""The model zoo: a registry of architectures by name.

Every architecture is built by ``build_architecture(name, num_classes, input_shape, **options)``
and returns a plain ``nn.Module`` that maps a preprocessed batch ``[B, C, H, W]`` to logits
``[B, num_classes]``. Input scaling and normalization are not part of these modules; the bundle
(:mod:`onp.models.bundle`) puts an :class:`~onp.models.preprocess.InputAdapter` in front.

All architectures are ``torch.fx``-traceable (no data-dependent control flow), which the neuron
graph relies on.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onp.errors import ONPInputError
from onp.models.layer_graph import LayerGraphNet, Node

ArchitectureBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ArchitectureBuilder] = {}
# Names other tools use for the same architecture (BackdoorBench's ``model_name`` values).
_ALIASES: dict[str, str] = {"preactresnet18": "preact_resnet18", "vgg": "vgg_bn"}


def register_architecture(name: str) -> Callable[[ArchitectureBuilder], ArchitectureBuilder]:
    """Class/function decorator that adds a builder to the zoo under ``name``."""

    def decorate(builder: ArchitectureBuilder) -> ArchitectureBuilder:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorate


def available_architectures() -> list[str]:
    """Names accepted by :func:`build_architecture`."""
    return sorted(_REGISTRY)


def is_user_architecture(name: str) -> bool:
    """Whether ``name`` names a user's class, ``"module.path:ClassName"``, not a zoo entry."""
    return ":" in name


def canonical_name(name: str) -> str:
    """Resolve an alias (e.g. BackdoorBench's ``preactresnet18``) to a registry name.

    A user architecture (``module.path:ClassName``) resolves only after
    :func:`trust_user_architecture` registered it in this process.
    """
    if is_user_architecture(name):
        if name not in _REGISTRY:
            raise ONPInputError(
                f"architecture {name!r} is a user's class; ONP imports a module only when the "
                f"user names it (--architecture {name}, or trust_user_architecture({name!r}) in "
                f"Python), never because a file names it"
            )
        return name
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ONPInputError(
            f"unknown architecture {name!r}; known: {', '.join(available_architectures())}, or "
            f"module.path:ClassName for your own nn.Module"
        )
    return key


def trust_user_architecture(reference: str) -> str:
    """Import the user's ``module.path:ClassName`` and register it as an architecture.

    This runs the module's code: call it only for a module the user named (the CLI's
    ``--architecture``). The class is built with the bundle's ``arch_options`` as keyword
    arguments, plus ``num_classes`` and ``input_shape`` where its constructor takes them, and must
    map ``[B, C, H, W]`` to logits ``[B, num_classes]``.

    Args:
        reference: ``"package.module:ClassName"`` (the module must be importable: installed, or
            on ``PYTHONPATH`` / in the working directory).

    Returns:
        ``reference``, now a name :func:`build_architecture` accepts.

    Raises:
        ONPInputError: Not of the form ``module:Class``, the module does not import, or it has no
            such class.
    """
    module_path, _, class_name = reference.partition(":")
    if not module_path or not class_name.isidentifier():
        raise ONPInputError(f"--architecture {reference!r}: expected a zoo name or "
                            f"module.path:ClassName")
    if reference in _REGISTRY:
        return reference
    try:
        module = importlib.import_module(module_path)
    except ImportError as error:
        raise ONPInputError(f"--architecture {reference!r}: cannot import module "
                            f"{module_path!r} ({error}); is it on PYTHONPATH?") from None
    cls = getattr(module, class_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ONPInputError(f"--architecture {reference!r}: module {module_path!r} has no "
                            f"nn.Module class {class_name!r}")
    accepted = inspect.signature(cls).parameters

    def build(num_classes: int, input_shape: tuple[int, int, int], **options: Any) -> nn.Module:
        given = {"num_classes": num_classes, "input_shape": input_shape}
        return cls(**options, **{k: v for k, v in given.items() if k in accepted})

    _REGISTRY[reference] = build
    return reference


def build_architecture(
    name: str, num_classes: int, input_shape: tuple[int, int, int], **options: Any
) -> nn.Module:
    """Build an architecture from the zoo.

    Args:
        name: Registry name or alias (see :func:`available_architectures`).
        num_classes: Number of output logits.
        input_shape: ``(C, H, W)`` of the inputs.
        **options: Architecture-specific options (e.g. ``width``, ``depth``).

    Returns:
        The module, in training mode, with freshly initialized weights.
    """
    if num_classes < 1:
        raise ONPInputError(f"num_classes must be positive, got {num_classes}")
    builder = _REGISTRY[canonical_name(name)]
    accepted = set(inspect.signature(builder).parameters) - {"num_classes", "input_shape"}
    unknown = sorted(set(options) - accepted)
    if unknown and not is_user_architecture(name):  # a user class checks its own arguments
        raise ONPInputError(f"architecture {name!r} does not accept options "
                            f"{ {k: options[k] for k in unknown} }; it takes {sorted(accepted)}")
    return builder(num_classes=num_classes, input_shape=tuple(input_shape), **options)


def _flat_features(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of features ``module`` produces for one input of ``input_shape``."""
    with torch.no_grad():
        return int(module(torch.zeros(1, *input_shape)).flatten(1).shape[1])


# --------------------------------------------------------------------------- CIFAR-style ResNet
class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016) with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output features.

        Shapes:
            x: ``[B, C_in, H, W]``; returns ``[B, C_out, H / stride, W / stride]``.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, Sec. 4.2): depth 6n+2, three stages of n blocks.

    Shapes:
        input: ``[B, C, H, W]`` (any H, W >= 8).
        output: ``[B, num_classes]`` logits.
    """

    def __init__(
        self, num_classes: int, in_channels: int, depth: int = 20, width: int = 16
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ONPInputError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        blocks = (depth - 2) // 6
        widths = (width, 2 * width, 4 * width)
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        channels = width
        for stage, out_channels in enumerate(widths):
            layers = []
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised images.

        Shapes:
            x: ``[B, C, H, W]``; returns ``[B, num_classes]``.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_architecture("resnet")
def _resnet(
    num_classes: int, input_shape: tuple[int, int, int], depth: int = 14, width: int = 16
) -> nn.Module:
    """The default ResNet: depth 14 (6 basic blocks), widths 16/32/64, about 175k parameters."""
    return CifarResNet(num_classes, input_shape[0], depth=depth, width=width)


@register_architecture("resnet20")
def _resnet20(num_classes: int, input_shape: tuple[int, int, int], width: int = 16) -> nn.Module:
    return CifarResNet(num_classes, input_shape[0], depth=20, width=width)


# --------------------------------------------------------------------------- PreAct-ResNet18
class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b), named as in BackdoorBench's PreActResNet18."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        self.project = stride != 1 or in_planes != planes
        if self.project:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output features.

        Shapes:
            x: ``[B, C_in, H, W]``; returns ``[B, C_out, H / stride, W / stride]``.
        """
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.project else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct-ResNet18 with a width multiplier (``width=64`` is the standard network).

    Shapes:
        input: ``[B, C, H, W]``; output: ``[B, num_classes]`` logits.
    """

    def __init__(self, num_classes: int, in_channels: int, width: int = 64,
                 final_bn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        planes = width
        layers = []
        for stage in range(4):
            out_planes = width * 2**stage
            stride = 1 if stage == 0 else 2
            layers.append(
                nn.Sequential(
                    PreActBlock(planes, out_planes, stride), PreActBlock(out_planes, out_planes, 1)
                )
            )
            planes = out_planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        # BackdoorBench's PreActResNet18 pools layer4's output directly (final_bn=False).
        self.bn = nn.BatchNorm2d(planes) if final_bn else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised images.

        Shapes:
            x: ``[B, C, H, W]``; returns ``[B, num_classes]``.
        """
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        return self.linear(torch.flatten(self.avgpool(out), 1))


@register_architecture("preact_resnet18")
def _preact_resnet18(
    num_classes: int, input_shape: tuple[int, int, int], width: int = 64, final_bn: bool = True
) -> nn.Module:
    return PreActResNet18(num_classes, input_shape[0], width=width, final_bn=final_bn)


# --------------------------------------------------------------------------- VGG with BatchNorm
class VGGBN(nn.Module):
    """A VGG-style net with BatchNorm: blocks of 3x3 conv-BN-ReLU, max-pooling between blocks.

    Shapes:
        input: ``[B, C, H, W]``; output: ``[B, num_classes]`` logits.
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        width: int = 32,
        blocks: tuple[int, ...] = (2, 2, 2),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = input_shape[0]
        for stage, count in enumerate(blocks):
            out_channels = width * 2**stage
            for _ in range(count):
                layers += [
                    nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=False),
                ]
                channels = out_channels
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(channels, 4 * width),
            nn.ReLU(inplace=False),
            nn.Linear(4 * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised images.

        Shapes:
            x: ``[B, C, H, W]``; returns ``[B, num_classes]``.
        """
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_architecture("vgg_bn")
def _vgg_bn(
    num_classes: int,
    input_shape: tuple[int, int, int],
    width: int = 32,
    blocks: tuple[int, ...] = (2, 2, 2),
) -> nn.Module:
    return VGGBN(num_classes, input_shape, width=width, blocks=tuple(blocks))


# --------------------------------------------------------------------------- plain CNN, no BN
class PlainCNN(nn.Module):
    """A small CNN without BatchNorm: two conv-ReLU-pool stages and two dense layers.

    Shapes:
        input: ``[B, C, H, W]``; output: ``[B, num_classes]`` logits.
    """

    def __init__(
        self, num_classes: int, input_shape: tuple[int, int, int], width: int = 32
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = _flat_features(self.features, input_shape)
        self.fc1 = nn.Linear(flat, 4 * width)
        self.fc2 = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised images.

        Shapes:
            x: ``[B, C, H, W]``; returns ``[B, num_classes]``.
        """
        return self.fc2(F.relu(self.fc1(torch.flatten(self.features(x), 1))))


@register_architecture("plain_cnn")
def _plain_cnn(num_classes: int, input_shape: tuple[int, int, int], width: int = 32) -> nn.Module:
    return PlainCNN(num_classes, input_shape, width=width)


# --------------------------------------------------------------------------- CSAW DeepID
class DeepID(nn.Module):
    """The DeepID face net of the CSAW-HackML BadNets (input 55x47x3), layer names as in Keras.

    conv_1 20@4x4 -> pool 2 -> conv_2 40@3x3 -> pool 2 -> conv_3 60@3x3 -> pool 2 (= p3);
    branch A: flatten(p3) -> fc_1 (160); branch B: conv_4 80@2x2 on p3 -> flatten -> fc_2 (160);
    add -> ReLU -> output (N). All convs use valid padding and ReLU.

    Flatten here is channels-first (torch order); the Keras importer permutes ``fc_1``/``fc_2``
    rows so that outputs equal those of the channels-last Keras model.

    Shapes:
        input: ``[B, 3, 55, 47]``; output: ``[B, num_classes]`` logits (Keras applies softmax).
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int] = (3, 55, 47)) -> None:
        super().__init__()
        c = input_shape[0]
        self.conv_1 = nn.Conv2d(c, 20, 4)
        self.conv_2 = nn.Conv2d(20, 40, 3)
        self.conv_3 = nn.Conv2d(40, 60, 3)
        self.conv_4 = nn.Conv2d(60, 80, 2)
        trunk = nn.Sequential(
            self.conv_1, nn.MaxPool2d(2), self.conv_2, nn.MaxPool2d(2), self.conv_3, nn.MaxPool2d(2)
        )
        with torch.no_grad():
            p3 = trunk(torch.zeros(1, *input_shape))
            flat_a = p3.flatten(1).shape[1]
            flat_b = self.conv_4(p3).flatten(1).shape[1]
        self.fc_1 = nn.Linear(flat_a, 160)
        self.fc_2 = nn.Linear(flat_b, 160)
        self.output = nn.Linear(160, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised images.

        Shapes:
            x: ``[B, C, H, W]``; returns ``[B, num_classes]``.
        """
        x = F.max_pool2d(F.relu(self.conv_1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv_2(x)), 2)
        p3 = F.max_pool2d(F.relu(self.conv_3(x)), 2)
        branch_a = self.fc_1(torch.flatten(p3, 1))
        branch_b = self.fc_2(torch.flatten(F.relu(self.conv_4(p3)), 1))
        return self.output(F.relu(branch_a + branch_b))


@register_architecture("deepid")
def _deepid(num_classes: int, input_shape: tuple[int, int, int] = (3, 55, 47)) -> nn.Module:
    return DeepID(num_classes, input_shape)


LAYER_GRAPH = "layer_graph"
"""The architecture of models imported from Keras and ONNX (their layers in ``arch_options``)."""


@register_architecture(LAYER_GRAPH)
def layer_graph(
    num_classes: int, input_shape: tuple[int, int, int], nodes: Sequence[Node], output: str
) -> nn.Module:
    """A network imported from Keras or ONNX, given by its nodes (see ``layer_graph``)."""
    return LayerGraphNet(num_classes, input_shape, nodes, output)
