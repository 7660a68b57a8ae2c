"""VGG backbones with the CAM head.

- `VGGGap`, VGG16-GAP (Zhou et al. 2016, "Learning Deep Features for
  Discriminative Localization", Sec. 2): VGG16's conv layers with pool5 removed
  (14x14 maps at 224px), an added 3x3 conv of 1024 units, then GAP and the CAM
  classifier.
- `CifarVGG`, the CIFAR VGG-19 of the LinR paper's Tables 2 and 3 (as in
  bearpaw/pytorch-classification `models/cifar/vgg.py`, Simonyan & Zisserman
  configuration E): at 32px the five max-pools leave a 1x1 map that the
  reference flattens into Linear(512, K). Here the last max-pool is dropped so
  the CAM keeps a 2x2x512 map; GAP of it feeds the same Linear(512, K), so the
  parameter count is unchanged.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from camjax.models.layers import cam_head, conv_and_norm

# 'M' is a 2x2 max-pool. VGG16 configuration D without the final pool5.
VGG16_NO_POOL5 = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M',
                  512, 512, 512, 'M', 512, 512, 512)
# VGG19 configuration E without the final pool: 2x2 features at 32px.
VGG19_NO_POOL5 = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M',
                  512, 512, 512, 512, 'M', 512, 512, 512, 512)


def _conv_stack(x, widths, *, batch_norm, train, dtype, conv_impl):
    """3x3 conv (+BN) + ReLU for each int in `widths`, 2x2 max-pool for 'M'.

    Convs before BN have no bias: BN subtracts the batch mean, so a bias there
    gets zero gradient (torchvision's VGG-BN keeps one; 1 float per channel).
    """
    conv, norm = conv_and_norm(conv_impl, dtype, train)
    conv = functools.partial(conv, kernel_size=(3, 3), padding=1)
    x = x.astype(dtype)
    for width in widths:
        if width == 'M':
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            continue
        x = conv(width, use_bias=not batch_norm)(x)
        if batch_norm:
            x = norm()(x)
        x = nn.relu(x)
    return x


class VGGGap(nn.Module):
    num_classes: int
    layers: Sequence = VGG16_NO_POOL5
    extra_conv: int = 1024  # 0 disables the CAM paper's added conv layer
    batch_norm: bool = False
    dtype: str = 'float32'
    conv_impl: str = 'auto'

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        widths = list(self.layers) + ([self.extra_conv] if self.extra_conv else [])
        x = _conv_stack(x, widths, batch_norm=self.batch_norm, train=train,
                        dtype=jnp.dtype(self.dtype), conv_impl=self.conv_impl)
        return cam_head(x, self.num_classes)


class CifarVGG(nn.Module):
    """CIFAR VGG (default: VGG-19, 2x2x512 features at 32px); registered as
    `vgg19` and, with `batch_norm=True`, `vgg19_bn`."""

    num_classes: int
    layers: Sequence = VGG19_NO_POOL5
    batch_norm: bool = False
    dtype: str = 'float32'
    conv_impl: str = 'auto'

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = _conv_stack(x, self.layers, batch_norm=self.batch_norm, train=train,
                        dtype=jnp.dtype(self.dtype), conv_impl=self.conv_impl)
        return cam_head(x, self.num_classes)
