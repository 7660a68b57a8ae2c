"""The start-up summary: one line per split saying what the model will see.

A split's stored images may differ from what the model gets: they are
resized to dataset.image_size and grayscale / RGBA become RGB (transforms.
to_rgb). Resizing 28 px MNIST to 64 px costs ~5x the compute for the same
accuracy, so it is said up front. The stored size is that of the split's
first image (folders may mix sizes; the line says so with 'e.g.').
"""

import numpy as np

CHANNELS = {1: 'grayscale', 2: 'grayscale+alpha', 3: 'RGB', 4: 'RGBA'}


def describe_split(name: str, source, *, size: int, dataset_name: str, num_classes: int,
                   multilabel: bool, count: int) -> str:
    if hasattr(source, 'stored_format'):  # image files: their header, before decoding to RGB
        h, w, channels = source.stored_format(0)
    else:
        image = np.asarray(source[0]['image'])
        h, w = image.shape[:2]
        channels = 1 if image.ndim == 2 else image.shape[-1]
    labels = f'{num_classes} {"labels (multi-label)" if multilabel else "classes"}'
    parts = [f'{name}: {dataset_name}', f'{count} images', labels,
             f'stored e.g. {h}x{w} {CHANNELS.get(channels, f"{channels}-channel")}']
    parts.append(f'resized to {size}x{size}' if (h, w) != (size, size)
                 else f'used at {size}x{size}')
    if channels != 3:
        parts.append(f'{CHANNELS.get(channels, f"{channels}-channel")} -> RGB')
    return ', '.join(parts)


def describe_splits(splits, cfg) -> list[str]:
    """One line per split of `splits` (opened from dataset config `cfg`)."""
    lines = []
    for name in ('train', 'val', 'test'):
        source = getattr(splits, name)
        if source is None or len(source) == 0:
            continue
        lines.append(describe_split(name, source, size=cfg.image_size, dataset_name=cfg.name,
                                    num_classes=splits.num_classes, multilabel=splits.multilabel,
                                    count=splits.sizes[name]))
    return lines
