"""DenseNet-BC (Huang et al. 2017) for 32px inputs, as in kuangliu/pytorch-cifar
`models/densenet.py`, used for the LinR paper's Tables 2 and 3.

CIFAR stem: one 3x3 conv with 2k channels, stride 1, no max-pool. Dense layers
are bottlenecks BN-ReLU-1x1(4k)-BN-ReLU-3x3(k) whose output is concatenated in
front of their input; transitions are BN-ReLU-1x1(floor(C * reduction)) and a
2x2 average pool; a final BN-ReLU closes the last block. At 32px the features
are 4x4x1024 for DenseNet-121, the map the reference averages with a 4x4 pool
into Linear(1024, K) -- exactly the CAM head, so nothing is dropped and the
parameter count is the reference's (6.96M for 10 classes).
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from camjax.models.layers import cam_head, conv_and_norm


class DenseLayer(nn.Module):
    growth_rate: int
    conv: type
    norm: functools.partial

    @nn.compact
    def __call__(self, x):
        y = self.conv(4 * self.growth_rate, (1, 1), use_bias=False)(nn.relu(self.norm()(x)))
        y = self.conv(self.growth_rate, (3, 3), padding=1, use_bias=False)(nn.relu(self.norm()(y)))
        return jnp.concatenate([y, x], axis=-1)


class Transition(nn.Module):
    features: int
    conv: type
    norm: functools.partial

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, (1, 1), use_bias=False)(nn.relu(self.norm()(x)))
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class CifarDenseNet(nn.Module):
    """`width` is the growth rate k (named so that smoke configs shrink it);
    `stage_sizes` are the dense layers per block; DenseNet-121 is k=32,
    (6, 12, 24, 16)."""

    num_classes: int
    width: int = 32
    stage_sizes: Sequence[int] = (6, 12, 24, 16)
    reduction: float = 0.5
    dtype: str = 'float32'
    conv_impl: str = 'auto'

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        dtype = jnp.dtype(self.dtype)
        conv, norm = conv_and_norm(self.conv_impl, self.dtype, train)
        x = conv(2 * self.width, (3, 3), padding=1, use_bias=False)(x.astype(dtype))
        for stage, size in enumerate(self.stage_sizes):
            for _ in range(size):
                x = DenseLayer(self.width, conv, norm)(x)
            if stage < len(self.stage_sizes) - 1:
                x = Transition(int(x.shape[-1] * self.reduction), conv, norm)(x)
        return cam_head(nn.relu(norm()(x)), self.num_classes)
