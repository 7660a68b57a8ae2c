"""Softmax regression as a camjax model.

The features are the flattened input reshaped to (B, 1, 1, D), so the shared
CAM head gives exactly `logits = x W + b` and the textbook gradient
`dCE/dW = -x^T (y - y_hat)` applies (tests/test_basics.py)."""

import flax.linen as nn

from camjax.models.layers import cam_head


class SoftmaxRegression(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train  # no state
        features = x.reshape((x.shape[0], 1, 1, -1))
        return cam_head(features, self.num_classes)
