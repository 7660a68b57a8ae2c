"""Building blocks shared by every camjax model.

Every model ends in `CamHead`, so `logits = mean_hw(features) @ W + b` holds by
construction and a CAM `M = features @ W` is computable from the model output
and `params['classifier']` alone.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

# Parameter-tree name of the CAM classifier; losses and analyses locate W, b here.
CLASSIFIER = 'classifier'
CONV_IMPLS = ('auto', 'xla', 'fast', 'onednn')


def conv_class(impl: str):
    """The convolution module for `impl`: 'xla' (flax nn.Conv), 'fast'
    (FastConv: the same parameter tree and results to float32 rounding, with a
    weight gradient XLA:CPU runs faster, see fast_conv.py), 'onednn'
    (FastConv running float32 CPU convolutions in oneDNN through the XLA FFI, built
    on first use from the `onednn` extra, see onednn_conv.py) or 'auto' (the
    default: 'fast' on the CPU backend, 'xla' on GPU and TPU, whose own
    convolutions are fast). Asked when a model is traced, so after the
    backend is up."""
    if impl == 'auto':
        import jax
        impl = 'fast' if jax.default_backend() == 'cpu' else 'xla'
    if impl == 'xla':
        return nn.Conv
    if impl == 'fast':
        from camjax.models.fast_conv import FastConv
        return FastConv
    if impl == 'onednn':
        from camjax.models.fast_conv import FastConv
        return functools.partial(FastConv, cpu_kernels='onednn')
    raise ValueError(f'conv_impl must be one of {CONV_IMPLS}, got {impl!r}')


def conv_and_norm(impl: str, dtype: str, train: bool):
    """(conv, norm) module factories every model uses: `conv_class(impl)`
    computing in `dtype`, and BatchNorm with momentum 0.9 / eps 1e-5, the
    PyTorch defaults the papers trained with, using batch statistics when
    `train` and running ones otherwise."""
    dtype = jnp.dtype(dtype)
    conv = functools.partial(conv_class(impl), dtype=dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=dtype)
    return conv, norm


def cam_head(features, num_classes: int):
    """GAP + linear classifier, called inside a model's compact `__call__` so
    the classifier lands at `params['classifier']` of every model.

    Returns (logits (B,K), features (B,H,W,C)). The classifier runs in float32
    even under bf16 compute, so logits and CAMs keep full precision.
    """
    pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(num_classes, dtype=jnp.float32, name=CLASSIFIER)(pooled)
    return logits, features
