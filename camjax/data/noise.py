"""Synthetic label noise on the training part (HNC paper, Sec. 4.5).

Only the training examples are corrupted: the validation part carved from
train and the test split keep their clean labels, so model selection sees a
clean validation set.
"""

import numpy as np

from camjax.errors import ConfigError

LABEL_NOISE_KINDS = ('none', 'symmetric', 'asymmetric')


def noisy_labels(labels, *, num_classes: int, kind: str, rate: float,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt integer class labels; a pure function of its arguments.

    Args:
      labels: (N,) ints in [0, num_classes).
      kind: 'none'; 'symmetric': each label flips with probability `rate` to
        one of the other num_classes - 1 classes, uniformly (a flipped label
        never keeps its class); 'asymmetric': each label flips with
        probability `rate` to (c + 1) mod num_classes.
      rate: flip probability in [0, 1].
      seed: the draws come from np.random.default_rng(seed) alone.

    Returns:
      (noisy (N,) int32, flipped (N,) bool), with noisy != labels exactly
      where flipped.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f'labels must be (N,) class indices, got shape {labels.shape}')
    if kind not in LABEL_NOISE_KINDS:
        raise ValueError(f'kind={kind!r} must be one of {LABEL_NOISE_KINDS}')
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f'rate={rate} must be in [0, 1]')
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f'labels must be in [0, {num_classes})')
    labels = labels.astype(np.int32)
    if kind == 'none' or rate == 0.0:
        return labels.copy(), np.zeros(labels.shape, bool)
    if num_classes < 2:
        raise ValueError('label noise needs at least 2 classes')
    rng = np.random.default_rng(seed)
    flipped = rng.random(labels.shape) < rate
    if kind == 'symmetric':
        # An offset in 1..K-1 reaches every other class exactly once.
        offset = rng.integers(1, num_classes, size=labels.shape)
    else:
        offset = np.ones(labels.shape, np.int64)
    noisy = np.where(flipped, (labels + offset) % num_classes, labels).astype(np.int32)
    return noisy, flipped


def training_label_noise(cfg, labels, *, num_classes: int, multilabel: bool) -> dict | None:
    """The dataset config's noise on the training part's labels (N,), as
    {'noisy', 'original', 'flipped'} arrays in the training part's order, or
    None without noise."""
    if cfg.label_noise == 'none':
        return None
    if multilabel:
        raise ConfigError(f'dataset.label_noise={cfg.label_noise!r} needs a single-label '
                          f'dataset; {cfg.name} is multi-label')
    original = np.asarray(labels, np.int32)
    noisy, flipped = noisy_labels(original, num_classes=num_classes, kind=cfg.label_noise,
                                  rate=cfg.label_noise_rate, seed=cfg.label_noise_seed)
    return {'noisy': noisy, 'original': original.copy(), 'flipped': flipped}
