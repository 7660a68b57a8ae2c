"""CIFAR AlexNet of the LinR paper's Tables 2 and 3, as in
bearpaw/pytorch-classification `models/cifar/alexnet.py` (Krizhevsky 2014,
"One weird trick", with paddings adjusted for 32px and the FC layers removed):

  conv 64 11x11/4 pad 5 - ReLU - maxpool 2 - conv 192 5x5 pad 2 - ReLU - maxpool 2
  - conv 384 3x3 - ReLU - conv 256 3x3 - ReLU - conv 256 3x3 - ReLU [- maxpool 2]
  - Linear(256, K)

All convs have biases and no BatchNorm, as there. At 32px the last max-pool
would leave a 1x1 map, so it is dropped: the CAM features are the 2x2x256 map
after the last ReLU, and GAP of it feeds the same Linear(256, K), so the
parameter count is the reference's (2.47M for 10 classes).
"""


import flax.linen as nn
import jax.numpy as jnp

from camjax.models.layers import cam_head, conv_and_norm

# Channels of the five convs in units of `width` (64, 192, 384, 256, 256 at width 64).
_MULTIPLIERS = (1, 3, 6, 4, 4)


class CifarAlexNet(nn.Module):
    num_classes: int
    width: int = 64  # channels of the first conv; the others scale with it
    dtype: str = 'float32'
    conv_impl: str = 'auto'

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train  # no BatchNorm or dropout
        dtype = jnp.dtype(self.dtype)
        conv, _ = conv_and_norm(self.conv_impl, self.dtype, train=False)
        c1, c2, c3, c4, c5 = (m * self.width for m in _MULTIPLIERS)
        x = nn.relu(conv(c1, (11, 11), 4, padding=5)(x.astype(dtype)))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(conv(c2, (5, 5), padding=2)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(conv(c3, (3, 3), padding=1)(x))
        x = nn.relu(conv(c4, (3, 3), padding=1)(x))
        x = nn.relu(conv(c5, (3, 3), padding=1)(x))
        return cam_head(x, self.num_classes)
