"""Per-example host transforms (numpy, run by grain) and the on-device
normalization. Images travel host -> device as uint8 (4x less traffic than
float32) and are normalized inside the jitted step."""

import jax.numpy as jnp
import numpy as np
from PIL import Image


def to_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """(H,W[,1|3|4]) uint8 -> (size,size,3) uint8, resized bilinearly if needed."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return np.ascontiguousarray(image, dtype=np.uint8)


def _overlap(offset: int, n: int) -> tuple[slice, slice]:
    """(output, input) slices along an axis of length n for a crop whose
    output index i reads input index i + offset, where 0 <= i + offset < n
    (the rest is zero padding)."""
    lo, hi = max(0, -offset), min(n, n - offset)
    hi = max(lo, hi)
    return slice(lo, hi), slice(lo + offset, hi + offset)


def random_crop_flip(image: np.ndarray, rng: np.random.Generator, *, padding: int,
                     flip: bool) -> np.ndarray:
    """Random crop of the zero-padded image back to its size, then a random
    horizontal flip (the standard CIFAR augmentation, He et al. 2016).

    The padded image is never built: the crop's overlap with the image is
    copied once into a zeroed output (through a mirrored view when flipped),
    which gives the same array as pad + crop + flip at a fraction of the cost
    (np.pad's Python overhead dominated it on small images)."""
    h, w = image.shape[:2]
    if padding:
        dy, dx = rng.integers(0, 2 * padding + 1, size=2)
    flipped = flip and rng.random() < 0.5
    if not padding:
        return np.ascontiguousarray(image[:, ::-1] if flipped else image)
    out = np.zeros_like(image)
    (out_y, in_y), (out_x, in_x) = _overlap(int(dy) - padding, h), _overlap(int(dx) - padding, w)
    (out[:, ::-1] if flipped else out)[out_y, out_x] = image[in_y, in_x]
    return out


def pixels01(images):
    """uint8 images (or float pixel values in [0, 255]) -> float32 pixels in [0, 1]."""
    return images.astype(jnp.float32) / 255.0


def standardize(x, *, mean, std):
    """Pixels in [0, 1] -> (x - mean) / std per channel: the one input
    normalization (FGSM perturbs x in [0, 1], then standardizes)."""
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def normalize_images(images, *, mean, std):
    """uint8 (B,H,W,3) -> float32 ((x / 255) - mean) / std, on device."""
    return standardize(pixels01(images), mean=mean, std=std)
