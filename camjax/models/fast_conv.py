"""`FastConv`: `flax.linen.Conv` with a faster weight gradient on XLA:CPU.

Why: on CPU a CIFAR ResNet-20 train step ran at ~0.4x PyTorch eager. Forward
and input gradient of XLA:CPU's convolutions are on par with PyTorch; the gap is
the weight gradient. XLA lowers it to one convolution whose "kernel" is the
whole output gradient (e.g. 32x32 window, 128 images deep), which XLA:CPU runs
slowly. Measured on a 2-core AMD EPYC (Zen 3), jax 0.10.2, batch 128, f32,
min over repeats (wall time; other loads share the machine):

  weight gradient of                 lax vjp   8-image chunks   as a dot
  3x3, 32x32x16->16                    33 ms       15 ms           -
  3x3/2, 32x32x16->32                  16 ms        8 ms           -
  3x3, 8x8x64->64                      15 ms       10 ms           -
  1x1, 16x16x64->64                    39 ms       19 ms          5 ms
  1x1/2, 16x16x32->64                 3.7 ms      2.7 ms        0.9 ms

(forward / input gradient of the first row: 8-11 ms each.) Tried and slower:
nine shifted-input^T @ grad matmuls (40-70 ms), im2col (67-116 ms), a
feature-grouped conv over chunks (~90 ms), chunks via `lax.scan` (>250 ms),
XLA flags for XNNPACK/YNNPACK/oneDNN (no gain). See bench/README.md.

So the weight gradient is the sum over chunks of `chunk` images of the same
convolution (one f32 accumulator, so bf16 loses nothing), and a plain matmul
for unpadded-or-padded 1x1 kernels. Forward and input gradient are lax's own.
The fast path is used on CPU only (`lax.platform_dependent`); elsewhere the
weight gradient is lax's. Same parameters and initializers as nn.Conv, so
checkpoints are interchangeable; results agree to float32 rounding.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DN = ('NHWC', 'HWIO', 'NHWC')


def _conv(x, k, strides, pads):
    return lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=_DN)


def _wgrad_cpu(x, g, kshape, strides, pads, chunk):
    """d<g, conv(x, k)>/dk in float32, in a form XLA:CPU runs fast."""
    if kshape == (1, 1):  # a plain matmul of the strided (padded) input with g
        xp = lax.pad(x, jnp.zeros((), x.dtype),
                     [(0, 0, 0), *[(lo, hi, 0) for lo, hi in pads], (0, 0, 0)])
        xs = xp[:, ::strides[0], ::strides[1]][:, :g.shape[1], :g.shape[2]]
        dk = lax.dot_general(xs, g, (((0, 1, 2), (0, 1, 2)), ((), ())),
                             preferred_element_type=jnp.float32)
        return dk[None, None]
    # lax's own formulation: a conv with the batch as contracted feature dim and g
    # as the kernel, padded so that the output is kshape ...
    dims = zip(pads, x.shape[1:3], kshape, strides, g.shape[1:3], strict=True)
    tpads = [(lo, (o - 1) * s + kk - n - lo) for (lo, _), n, kk, s, o in dims]

    def one(xc, gc):
        return lax.conv_general_dilated(xc, gc, (1, 1), tpads, rhs_dilation=strides,
                                        dimension_numbers=('CHWN', 'IHWO', 'HWNC'),
                                        preferred_element_type=jnp.float32)

    # ... cut into pieces of <= `chunk` images x `chunk` output channels: XLA:CPU
    # hands convs with more than 16 features to YNNPACK, which is 2-4x slower here.
    b, cout = x.shape[0], g.shape[-1]
    n = max(d for d in range(1, max(1, b // chunk) + 1) if b % d == 0)  # number of pieces
    # Piece i holds images i, i+n, ...: a sharded batch axis stays split in every piece.
    xs, gs = x.reshape(b // n, n, *x.shape[1:]), g.reshape(b // n, n, *g.shape[1:])
    return sum(jnp.concatenate([one(xs[:, i], gs[:, i, ..., o:o + chunk])
                                for o in range(0, cout, chunk)], axis=-1) for i in range(n))


def _conv_as_dot(x, k, strides, pads):
    """The same convolution as one matmul over gathered input patches (im2col).
    For outputs smaller than the kernel -- a ResNet's last stage on small
    images, 2x2 maps under a 3x3 kernel -- XLA:CPU's convolution emitter is
    pathologically slow: 3x3, 2x2x512->512, batch 128 takes 1.1 s forward
    (2 GFLOP/s) against 8 ms as patches @ kernel, and 2.2 s against 26 ms for
    both gradients. This made a ResNet-18 step at 64 px ~10x slower."""
    kh, kw, cin, cout = k.shape
    xp = lax.pad(x, jnp.zeros((), x.dtype),
                 [(0, 0, 0), *[(lo, hi, 0) for lo, hi in pads], (0, 0, 0)])
    oh = (xp.shape[1] - kh) // strides[0] + 1
    ow = (xp.shape[2] - kw) // strides[1] + 1
    cols = jnp.concatenate([xp[:, i:i + (oh - 1) * strides[0] + 1:strides[0],
                               j:j + (ow - 1) * strides[1] + 1:strides[1]]
                            for i in range(kh) for j in range(kw)], axis=-1)
    return lax.dot_general(cols, k.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())))


def output_below_kernel(in_hw, k_hw, strides, pads) -> bool:
    """Whether the conv's output is smaller than its kernel in a dimension."""
    return any((n + lo + hi - kk) // s + 1 < kk
               for n, kk, s, (lo, hi) in zip(in_hw, k_hw, strides, pads, strict=True))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def fast_conv(x, k, strides, pads, chunk=16):
    """NHWC/HWIO `lax.conv_general_dilated` with the fast weight gradient."""
    return _conv(x, k, strides, pads)


def _fwd(x, k, strides, pads, chunk):
    return _conv(x, k, strides, pads), (x, k)


def _bwd(strides, pads, chunk, res, g):
    x, k = res
    dx, = jax.linear_transpose(lambda x_: _conv(x_, k, strides, pads), x)(g)
    lax_dk = lambda x, g: jax.linear_transpose(lambda k_: _conv(x, k_, strides, pads), k)(g)[0]
    if any(getattr(jax.typeof(x).sharding, 'spec', ())):  # explicitly sharded: lax's
        return dx, lax_dk(x, g)
    cpu_dk = lambda x, g: _wgrad_cpu(x, g, k.shape[:2], strides, pads, chunk).astype(k.dtype)
    return dx, lax.platform_dependent(x, g, cpu=cpu_dk, default=lax_dk)


fast_conv.defvjp(_fwd, _bwd)


def default_chunk(features: int) -> int:
    """Weight-gradient piece size by the conv's output width: 16 up to 32
    channels, 32 beyond (a CIFAR ResNet's stages of 16, 32, 64 get 16, 16,
    32). Measured on a CIFAR ResNet-20 train step on 2 idle cores: +4-5%
    over 16 everywhere; the sum runs in another order, so gradients move by
    float32 rounding only (logits and BatchNorm statistics are unchanged)."""
    return 16 if features <= 32 else 32


class FastConv(nn.Module):
    """Drop-in for `nn.Conv` on NHWC inputs (2-D kernels, no dilation/groups);
    `cpu_kernels='onednn'` runs it in oneDNN on CPU (conv_impl='onednn')."""

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | int | Sequence = 'SAME'
    use_bias: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    chunk: int | None = None  # images and output channels per weight-gradient piece;
                              # None: `default_chunk(features)`
    cpu_kernels: str = 'xla'  # 'onednn': oneDNN's kernels on CPU (onednn_conv.py)

    @nn.compact
    def __call__(self, x):
        ks = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else self.kernel_size
        ks = tuple(ks)
        if x.ndim != 4 or len(ks) != 2:
            raise ValueError(f'FastConv takes NHWC inputs and 2-D kernels, got {x.shape}, {ks}')
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        pad = nn.linear.canonicalize_padding(self.padding, 2)
        if isinstance(pad, str):
            if pad not in ('SAME', 'VALID'):
                raise ValueError(f'FastConv supports SAME/VALID/explicit padding, got {pad!r}')
            pad = lax.padtype_to_pads(x.shape[1:3], ks, strides, pad)
        pads = tuple((int(lo), int(hi)) for lo, hi in pad)
        kernel = self.param('kernel', self.kernel_init, ks + (x.shape[-1], self.features),
                            self.param_dtype)
        bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.cpu_kernels == 'onednn':
            from camjax.models import onednn_conv
            y = onednn_conv.conv(x, kernel, strides, pads, self.chunk)
        elif output_below_kernel(x.shape[1:3], ks, strides, pads):  # plain autodiff of either
            y = lax.platform_dependent(x, kernel, cpu=functools.partial(
                _conv_as_dot, strides=strides, pads=pads), default=functools.partial(
                _conv, strides=strides, pads=pads))
        else:
            y = fast_conv(x, kernel, strides, pads, self.chunk or default_chunk(self.features))
        return y + bias if self.use_bias else y


# flax auto-names submodules after the class: 'Conv_0', ... as for nn.Conv, so
# parameter paths (and checkpoints) are the same whichever conv a model uses.
FastConv.__name__ = 'Conv'
