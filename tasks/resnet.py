"""Residual networks for CIFAR-10 (32×32 inputs, 10 classes).

- `resnet20`: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  arXiv:1512.03385, §4.2: a 3×3 stem with 16 channels, then 3 stages of n = 3 basic blocks with
  16, 32 and 64 channels (the first block of stages 2 and 3 halves the resolution), global
  average pooling and a 10-way linear layer: 6n + 2 = 20 layers, 269,722 parameters (the paper's
  0.27M). Shortcuts are **option A**, as in the paper's CIFAR experiments: the identity, and
  where the shape changes, the input subsampled by 2 and zero-padded in the channel dimension
  (no parameters).
- `resnet18`: the 18-layer ImageNet network of the same paper (stages of 2 basic blocks with
  64–512 channels) in its usual CIFAR form: a 3×3 stride-1 stem and no max-pool, so the first
  stage sees 32×32 maps; projection shortcuts (option B: 1×1 convolution + BatchNorm) where the
  shape changes. 11,173,962 parameters.

Both take `norm_layer` (like torchvision's models) so that a task can swap in its own
BatchNorm (`BatchStatsNorm2d` below) while a plain training loop uses nn.BatchNorm2d.
Initialisation: He-normal convolutions (fan-out, ReLU gain; He et al. 2015), BatchNorm γ = 1,
β = 0, PyTorch's default for the linear layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10
NormLayer = Callable[[int], nn.Module]


class BatchStatsNorm2d(nn.BatchNorm2d):
    """BatchNorm whose running statistics are kept by the caller, not by the module.

    Train mode normalises with the batch's statistics (nn.BatchNorm2d's training output) and,
    if `sink` is a dict, stores the batch's (mean, unbiased variance) there under `stat_name`,
    as nn.BatchNorm2d would fold them into its buffers; it never writes its running buffers.
    That in-place write is what breaks under torch.func transforms (vmap cannot write a
    per-worker statistic into an unbatched buffer), and keeping the statistics outside lets a
    task hold one set per worker as plain [w, C] tensors. Eval mode normalises with
    `running_mean`/`running_var`, which the caller passes through functional_call.
    """

    def __init__(self, num_features: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.sink: dict | None = None
        self.stat_name = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype:
            # mixed precision (bf16 autocast): normalise in the parameters' float32, the usual
            # rule for normalisation layers; torch.func's BN kernels also need equal dtypes
            x = x.to(self.weight.dtype)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        # native_batch_norm returns the batch mean and 1/sqrt(var + eps) it normalised with,
        # so the statistics cost no second pass over the activations
        out, mean, invstd = torch.native_batch_norm(x, self.weight, self.bias, None, None,
                                                    True, 0.0, self.eps)
        if self.sink is not None:
            n = x.numel() // x.shape[1]
            var = (invstd.detach().pow(-2) - self.eps) * (n / max(n - 1, 1))  # unbiased
            self.sink[self.stat_name] = (mean.detach(), var)
        return out


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class ShortcutA(nn.Module):
    """Option A: subsample by `stride` and zero-pad the new channels; no parameters."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # pad the channel dimension (the third from last): half of the new channels each side
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and ReLU, plus a shortcut (He et al. 2016, Fig. 2)."""

    def __init__(self, cin: int, cout: int, stride: int, norm_layer: NormLayer, option: str):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = norm_layer(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = norm_layer(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if option == "A":
                self.shortcut = ShortcutA(cin, cout, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), norm_layer(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv3x3 → stages of basic blocks → global average pool → linear."""

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], *, option: str,
                 norm_layer: NormLayer = nn.BatchNorm2d, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = conv3x3(3, widths[0])
        self.bn = norm_layer(widths[0])
        layers: list[nn.Module] = []
        cin = widths[0]
        for stage, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(cin, width, stride, norm_layer, option))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.stem(x)))
        out = self.layers(out)
        return self.fc(out.mean(dim=(2, 3)))


def resnet20(norm_layer: NormLayer = nn.BatchNorm2d) -> CifarResNet:
    """He et al. 2016 CIFAR ResNet-20, option A shortcuts: 269,722 parameters."""
    return CifarResNet((16, 32, 64), (3, 3, 3), option="A", norm_layer=norm_layer)


def resnet18(norm_layer: NormLayer = nn.BatchNorm2d) -> CifarResNet:
    """ResNet-18 (He et al. 2016) in CIFAR form (3×3 stem, no max-pool): 11,173,962 parameters."""
    return CifarResNet((64, 128, 256, 512), (2, 2, 2, 2), option="B", norm_layer=norm_layer)


MODELS: dict[str, Callable[..., CifarResNet]] = {"resnet20": resnet20, "resnet18": resnet18}
