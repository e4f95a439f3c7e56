"""ImageNet backbones from torchvision architectures, with weights only from user-supplied files.

Nothing here downloads: ``weights`` is a path or s3:// URI of a torchvision-format state_dict
(for example ``resnet34-b627a593.pth`` or ``vgg19-dcbb9e9d.pth`` fetched by the user). Without
it the backbone keeps its random initialisation, and callers log that fact.
"""

from __future__ import annotations

import io
import logging

import torch
from torch import nn
from torchvision import models
from torchvision.models import vgg as vgg_models
from torchvision.models.resnet import BasicBlock

from pikfix.uri import read_uri_bytes

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Indices in torchvision's vgg19().features just after the ReLU that ends each stage (relu1_2 ... relu5_4).
VGG19_STAGE_ENDS = (3, 8, 17, 26, 35)
VGG19_STAGE_CHANNELS = (64, 128, 256, 512, 512)


def load_state_dict_file(uri: str) -> dict[str, torch.Tensor]:
    """Read a state_dict from a local path or an s3:// URI (never from the network otherwise)."""
    state = torch.load(io.BytesIO(read_uri_bytes(uri)), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def normalize_imagenet(rgb: torch.Tensor) -> torch.Tensor:
    """Map RGB in [0, 1] (N,3,H,W) to the ImageNet-normalised input the backbones expect."""
    mean = rgb.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = rgb.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb - mean) / std


def gray_to_rgb(luminance: torch.Tensor) -> torch.Tensor:
    """Repeat a one-channel image in [0, 1] to three channels (the paper feeds grey as RGB)."""
    return luminance.expand(-1, 3, -1, -1) if luminance.shape[1] == 1 else luminance


RESNET34_WIDTHS = (64, 128, 256, 512)
RESNET34_BLOCKS = (3, 4, 6, 3)


def _resnet34_layers(widths: tuple[int, ...]) -> tuple[nn.Module, list[nn.Sequential]]:
    """ResNet34's stem and four stages ([3, 4, 6, 3] BasicBlocks) at arbitrary widths.

    torchvision's ``resnet34`` fixes the widths at 64..512; the lite configuration needs the same
    layout narrower, so it is rebuilt here from torchvision's ``BasicBlock`` with the same module
    layout as the standard-width features below (``stem.0``, ``stem.1``, ``layerN.M.conv1`` ...), so
    state_dict keys are the same at every width.
    """
    stem = nn.Sequential(
        nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    layers: list[nn.Sequential] = []
    inplanes = widths[0]
    for index, (planes, count) in enumerate(zip(widths, RESNET34_BLOCKS, strict=True)):
        stride = 1 if index == 0 else 2
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        blocks = [BasicBlock(inplanes, planes, stride, downsample)]
        blocks += [BasicBlock(planes, planes) for _ in range(count - 1)]
        layers.append(nn.Sequential(*blocks))
        inplanes = planes
    for module in [stem, *layers]:
        for m in module.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return stem, layers


class ResNet34Features(nn.Module):
    """ResNet34 layer1..layer4 feature maps (strides 4, 8, 16, 32), as the similarity sub-net uses.

    ``widths`` narrows the network (same [3, 4, 6, 3] BasicBlock layout); ImageNet ``weights`` (a
    torchvision resnet34 state_dict file) only fit the standard widths.
    """

    channels: tuple[int, ...] = RESNET34_WIDTHS

    def __init__(self, weights: str | None = None, widths: tuple[int, ...] = RESNET34_WIDTHS) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) != 4:
            raise ValueError(f"ResNet34 needs four stage widths, got {widths}")
        if weights and widths != RESNET34_WIDTHS:
            raise ValueError(f"ImageNet ResNet34 weights need widths {RESNET34_WIDTHS}, not {widths}")
        if widths == RESNET34_WIDTHS:
            net = models.resnet34(weights=None)
            if weights:
                net.load_state_dict(load_state_dict_file(weights))
                log.info("ResNet34 ImageNet weights loaded from %s", weights)
            self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
            self.layer1, self.layer2, self.layer3, self.layer4 = (
                net.layer1,
                net.layer2,
                net.layer3,
                net.layer4,
            )
        else:
            self.stem, (self.layer1, self.layer2, self.layer3, self.layer4) = _resnet34_layers(widths)
        self.channels = widths
        self.pretrained = bool(weights)

    def forward(self, rgb01: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(normalize_imagenet(rgb01))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f1, f2, f3, f4]


class VGG19Features(nn.Module):
    """VGG19 feature maps at the end of each of its five stages (relu1_2 ... relu5_4).

    Used by the perceptual loss and by reference retrieval; ``stages`` picks how deep to run.
    """

    def __init__(self, weights: str | None = None, stages: int = 5) -> None:
        super().__init__()
        # Only the convolutional part: torchvision's vgg19() would also build (and randomly
        # initialise) a 120M-parameter classifier that is thrown away. Same layer indices and
        # state_dict keys as vgg19().features, same initialisation rule as torchvision's VGG.
        features = vgg_models.make_layers(vgg_models.cfgs["E"], batch_norm=False)
        for module in features.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        if weights:
            state = load_state_dict_file(weights)
            features_only = {
                k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
            }
            features.load_state_dict(features_only or state)
            log.info("VGG19 ImageNet weights loaded from %s", weights)
        last = VGG19_STAGE_ENDS[stages - 1]
        self.features = features[: last + 1]
        self.taps = VGG19_STAGE_ENDS[:stages]
        self.channels = VGG19_STAGE_CHANNELS[:stages]
        self.pretrained = bool(weights)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, rgb01: torch.Tensor) -> list[torch.Tensor]:
        x = normalize_imagenet(rgb01)
        out: list[torch.Tensor] = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                out.append(x)
        return out
