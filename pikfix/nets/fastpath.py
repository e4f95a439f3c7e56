"""Inference-only building blocks: the same functions as the modules' training graphs, computed with
fewer passes over memory.

Training needs autograd to keep every intermediate, so the modules concatenate and apply BatchNorm
as usual. In eval mode without autograd (``torch.inference_mode`` or ``no_grad``) there is nothing to
keep: BatchNorm is a fixed per-channel multiply-add, dense blocks can write into one preallocated
buffer, and a 1x1 convolution over channels-last memory is a matrix product whose rows are pixels,
which BLAS reads in place from a channel slice of that buffer. Results equal the training graph's up
to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def inference_path(module: nn.Module) -> bool:
    """True in eval mode without autograd, where the fast paths below may be used."""
    return not module.training and not torch.is_grad_enabled()


def is_channels_last(x: torch.Tensor) -> bool:
    """Channels innermost in memory (a channel slice of a channels-last tensor included)."""
    return x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1


def channel_buffer(like: torch.Tensor, channels: int) -> torch.Tensor:
    """An uninitialised (N, channels, H, W) tensor with the dtype, device and layout of ``like``."""
    n, _, h, w = like.shape
    layout = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    return torch.empty((n, channels, h, w), dtype=like.dtype, device=like.device, memory_format=layout)


def concat_channels(*parts: torch.Tensor) -> torch.Tensor:
    """``torch.cat(parts, dim=1)`` in the first part's layout. ``cat`` returns a contiguous (NCHW)
    result when a part is ambiguous (one channel), and the next channels-last conv copies it back."""
    out = channel_buffer(parts[0], sum(p.shape[1] for p in parts))
    start = 0
    for part in parts:
        out[:, start : start + part.shape[1]].copy_(part)
        start += part.shape[1]
    return out


def bn_affine(bn: nn.BatchNorm2d, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift), each (1,C,1,1), with eval-mode BN(x) = x * scale + shift (the same terms
    PyTorch's CPU kernel computes); None when BN has no running statistics or another dtype."""
    if bn.running_var is None or bn.running_mean is None or bn.weight is None or bn.bias is None:
        return None
    if bn.weight.dtype != dtype:
        return None
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)


def bn_relu(bn: nn.BatchNorm2d, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Eval-mode BN + ReLU as a multiply-add and a clamp. Into a new tensor by default, leaving ``x``
    (maybe a slice of a buffer) intact: the module would first copy a strided slice, the multiply-add
    reads it in place. ``inplace`` overwrites ``x``, for buffers nothing else reads."""
    affine = bn_affine(bn, x.dtype)
    if affine is None:
        return F.relu(bn(x), inplace=True)
    scale, shift = affine
    out = torch.addcmul(shift, x, scale, out=x) if inplace else torch.addcmul(shift, x, scale)
    return out.relu_()


def _is_pointwise(module: nn.Conv2d) -> bool:
    return (
        module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.padding == (0, 0)
        and module.dilation == (1, 1)
        and module.groups == 1
    )


def _pixel_rows(x: torch.Tensor) -> torch.Tensor | None:
    """A CPU channels-last (N,C,H,W) tensor, a channel slice of one included, as an (N*H*W, C)
    matrix view whose rows are pixels (row stride = the buffer's width); None otherwise."""
    if x.device.type != "cpu" or not is_channels_last(x):
        return None
    n, c, h, w = x.shape
    if x.stride(2) != w * x.stride(3) or (n > 1 and x.stride(0) != h * x.stride(2)):
        return None
    return x.permute(0, 2, 3, 1).reshape(n * h * w, c)


def conv(
    module: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``module(x)``, or with ``weight`` and ``bias`` (None: no bias) instead of the module's when
    ``weight`` is given. A plain 1x1 conv on a CPU channels-last input runs as one matrix product:
    BLAS reads a channel slice with its row stride, where the conv kernels would copy it (and
    single-threaded PyTorch would convert it to NCHW)."""
    if weight is None:
        weight, bias = module.weight, module.bias
    rows = _pixel_rows(x) if _is_pointwise(module) else None
    if rows is not None:
        n, c, h, w = x.shape
        kernel = weight.reshape(weight.shape[0], c).t()
        out = torch.mm(rows, kernel) if bias is None else torch.addmm(bias, rows, kernel)
        return out.view(n, h, w, -1).permute(0, 3, 1, 2)
    if module.padding_mode != "zeros":
        return module._conv_forward(x, weight, bias)
    return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)


def bn_relu_conv(block: nn.Sequential, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """A (BatchNorm, ReLU, Conv2d) block on ``x`` in inference; ``inplace`` may overwrite ``x``."""
    bn, _, conv_module = block
    return conv(conv_module, bn_relu(bn, x, inplace))
