"""VGG16-GAP (Zhou et al. 2016, "Learning Deep Features for Discriminative
Localization", Sec. 2): VGG16's conv layers with pool5 removed (14x14 maps at
224px), an added 3x3 conv of 1024 units, then GAP and the CAM classifier."""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from camjax.models.layers import cam_head, conv_class

# 'M' is a 2x2 max-pool. VGG16 configuration D without the final pool5.
VGG16_NO_POOL5 = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M',
                  512, 512, 512, 'M', 512, 512, 512)


class VGGGap(nn.Module):
    num_classes: int
    layers: Sequence = VGG16_NO_POOL5
    extra_conv: int = 1024  # 0 disables the CAM paper's added conv layer
    batch_norm: bool = False
    dtype: str = 'float32'
    conv_impl: str = 'xla'

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        dtype = jnp.dtype(self.dtype)
        conv = functools.partial(conv_class(self.conv_impl), kernel_size=(3, 3), padding=1,
                                 dtype=dtype)
        x = x.astype(dtype)
        widths = list(self.layers) + ([self.extra_conv] if self.extra_conv else [])
        for width in widths:
            if width == 'M':
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            x = conv(width, use_bias=not self.batch_norm)(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=dtype)(x)
            x = nn.relu(x)
        return cam_head(x, self.num_classes)
