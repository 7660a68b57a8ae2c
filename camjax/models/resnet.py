"""ResNets (He et al. 2016): the CIFAR family (3 stages, depth 6n+2) and the
ImageNet family (18/50/101/152). NHWC; every model returns (logits, features).
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from camjax.models.layers import cam_head, conv_and_norm


class BasicBlock(nn.Module):
    filters: int
    strides: int
    conv: type
    norm: functools.partial
    shortcut: str  # 'A' zero-pad identity (He et al. CIFAR) or 'B' 1x1 projection

    @nn.compact
    def __call__(self, x):
        y = self.conv(self.filters, (3, 3), self.strides, padding=1, use_bias=False)(x)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.filters, (3, 3), 1, padding=1, use_bias=False)(y)
        y = self.norm()(y)
        if x.shape[-1] != self.filters or self.strides != 1:
            if self.shortcut == 'A':
                x = x[:, ::self.strides, ::self.strides, :]
                pad = self.filters - x.shape[-1]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
            else:
                x = self.conv(self.filters, (1, 1), self.strides, use_bias=False)(x)
                x = self.norm()(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    filters: int
    strides: int
    conv: type
    norm: functools.partial
    shortcut: str = 'B'
    expansion = 4

    @nn.compact
    def __call__(self, x):
        out = self.filters * self.expansion
        y = nn.relu(self.norm()(self.conv(self.filters, (1, 1), use_bias=False)(x)))
        y = self.conv(self.filters, (3, 3), self.strides, padding=1, use_bias=False)(y)
        y = nn.relu(self.norm()(y))
        y = self.norm()(self.conv(out, (1, 1), use_bias=False)(y))
        if x.shape[-1] != out or self.strides != 1:
            x = self.norm()(self.conv(out, (1, 1), self.strides, use_bias=False)(x))
        return nn.relu(x + y)


class CifarResNet(nn.Module):
    """He et al. 2016, Sec. 4.2: 3x3 stem, 3 stages of n basic blocks with
    widths (w, 2w, 4w), option-A shortcuts; depth = 6n + 2.

    `stem_stride=2` halves the resolution once more, for 64x64 inputs on a
    small compute budget (the offline default).
    """

    num_classes: int
    depth: int = 20
    width: int = 16
    stem_stride: int = 1
    dtype: str = 'float32'
    conv_impl: str = 'auto'

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if (self.depth - 2) % 6:
            raise ValueError(f'CIFAR ResNet depth must be 6n+2, got {self.depth}')
        n = (self.depth - 2) // 6
        dtype = jnp.dtype(self.dtype)
        conv, norm = conv_and_norm(self.conv_impl, self.dtype, train)
        x = conv(self.width, (3, 3), self.stem_stride, padding=1, use_bias=False)(x.astype(dtype))
        x = nn.relu(norm()(x))
        for stage in range(3):
            for block in range(n):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * 2**stage, strides, conv, norm, 'A')(x)
        return cam_head(x, self.num_classes)


class ImageNetResNet(nn.Module):
    """He et al. 2016, Table 1: 7x7/2 stem + 3x3/2 max-pool, 4 stages,
    projection shortcuts."""

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    width: int = 64
    dtype: str = 'float32'
    conv_impl: str = 'auto'

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        dtype = jnp.dtype(self.dtype)
        conv, norm = conv_and_norm(self.conv_impl, self.dtype, train)
        block_cls = Bottleneck if self.bottleneck else BasicBlock
        x = conv(self.width, (7, 7), 2, padding=3, use_bias=False)(x.astype(dtype))
        x = nn.relu(norm()(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, size in enumerate(self.stage_sizes):
            for block in range(size):
                strides = 2 if stage > 0 and block == 0 else 1
                x = block_cls(self.width * 2**stage, strides, conv, norm, shortcut='B')(x)
        return cam_head(x, self.num_classes)


IMAGENET_STAGES = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False),
                   50: ((3, 4, 6, 3), True), 101: ((3, 4, 23, 3), True),
                   152: ((3, 8, 36, 3), True)}
