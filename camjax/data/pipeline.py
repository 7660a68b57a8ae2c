"""grain input pipelines that yield global batches sharded on the ('data',) mesh.

Each process builds `global_batch / process_count` rows of each global batch,
and the per-process batches become one global jax.Array with
`jax.make_array_from_process_local_data`.

Training (`TrainBatches`): the stream is a function of (seed, step) only, not
of the process or device count. One seeded global shuffle of the whole
training split (a new order each epoch) is the stream; global batch g is its
positions [g*B, (g+1)*B); augmentation randomness is a function of (seed,
stream position). Every process can read the whole split (sources.py), and
each reads and augments only the rows of each global batch that its devices
hold on the mesh: with P processes and the mesh's usual process-major device
order, process p reads positions [g*B + p*B/P, g*B + (p+1)*B/P).

Evaluation (`EvalBatches`): each process reads its own shard of the split
(sources.py), padded so that all run the same number of steps.

Training batches: {'image': uint8 (B,S,S,3), 'label'}. Eval batches add
'mask' (0 on padding and on replaced images) and, when the source has
ground-truth boxes, 'bbox': int32 (B, dataset.max_boxes, 4) rows (x0, y0, x1,
y1), inclusive pixel indices in the model input resolution S =
dataset.image_size, -1 rows for padding (boxes.py).

Images that could not be decoded and were replaced (dataset.on_bad_image=
'skip', folders.ImageFolderSource) travel as a per-example 'bad_image' flag
through grain's reader threads; the batch iterators take it out of each batch
before it goes to the devices and add it up on the host in `bad_images`
(this process's count, no device sync).
"""

import math

import grain
import jax
import numpy as np
from absl import flags

from camjax.data.boxes import padded_boxes
from camjax.data.sources import ProcessShard
from camjax.data.transforms import random_crop_flip, to_rgb


def _global(local_batch: dict, sharding) -> dict:
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                        local_batch)


def _label(label):
    """int32 class index, or the float32 multi-hot vector of multi-label data."""
    return np.int32(label) if np.ndim(label) == 0 else np.asarray(label, np.float32)


def _bad_image(example) -> np.uint8:
    """1 for an example whose undecodable image was replaced, else 0 (sources
    without the flag never replace)."""
    return np.uint8(example.get('bad_image', 0))


def _take_bad_images(local_batch: dict) -> int:
    """Removes the batch's 'bad_image' flags and returns how many are set."""
    return int(np.sum(local_batch.pop('bad_image')))


def _read_options(cfg):
    return grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch)


class _GlobalBatches:
    """Iterates grain's per-process batches as global ones, taking out and
    counting their 'bad_image' flags on the way (`bad_images`)."""

    def __init__(self, iterator, sharding):
        self._iterator, self._sharding = iterator, sharding
        self.bad_images = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self._iterator)
        self.bad_images += _take_bad_images(batch)
        return _global(batch, self._sharding)


def train_dataset(source, *, cfg, global_batch: int, seed: int, slice_index: int = 0,
                  slice_count: int = 1) -> grain.MapDataset:
    """The training stream as a lazy grain MapDataset of local batches: element g
    is slice `slice_index` of `slice_count` equal slices of global batch g, i.e.
    stream positions [g*B + i*b, g*B + (i+1)*b) with B = global_batch,
    b = B / slice_count, i = slice_index. The stream is one seeded shuffle of
    the whole `source` per epoch (a new order each epoch), augmented with
    randomness that is a function of (seed, position), so the slices of
    global batch g for every slice_count concatenate to the same batch."""
    if global_batch % slice_count or not 0 <= slice_index < slice_count:
        raise ValueError(f'slice {slice_index} of {slice_count} of a global batch of '
                         f'{global_batch}')

    def augment(example, rng):
        image = to_rgb(example['image'], cfg.image_size)
        image = random_crop_flip(image, rng, padding=cfg.crop_padding, flip=cfg.random_flip)
        return {'image': image, 'label': _label(example['label']),
                'bad_image': _bad_image(example)}

    # random_map seeds each element by its index here, the stream position,
    # before batching and slicing; all of it is index arithmetic, so a process
    # reads and augments only its own slice (and nothing is materialized).
    # reshuffle_each_epoch=False: the first epoch's seeded order in every epoch
    # (the course notes' "without shuffling"); augmentation still varies.
    stream = (grain.MapDataset.source(source).seed(seed).shuffle()
              .repeat(None, reseed_each_epoch=cfg.reshuffle_each_epoch).random_map(augment))
    local_batch = global_batch // slice_count
    return stream.batch(local_batch, drop_remainder=True)[slice_index::slice_count]


def process_slice(sharding, global_batch: int) -> tuple[int, int]:
    """(slice_index, slice_count): which equal slice of each global batch this
    process must supply to `jax.make_array_from_process_local_data(sharding,
    ...)`, which lays out a process's local rows as the sorted global rows of its
    devices. With jax.devices()' process-major order on the ('data',) mesh that is
    (process_index, process_count); computed from the sharding so that it
    matches the mesh whatever its device order."""
    rows = set()
    for index in sharding.addressable_devices_indices_map((global_batch,)).values():
        rows.update(range(*index[0].indices(global_batch)))
    start, local = min(rows), len(rows)
    if global_batch % local or start % local or rows != set(range(start, start + local)):
        raise ValueError(f'this process holds rows {sorted(rows)} of a global batch of '
                         f'{global_batch}: not one contiguous equal slice (the mesh must '
                         "order each process's devices together along the batch axis)")
    return start // local, global_batch // local


class TrainBatches(_GlobalBatches):
    """Endless, seeded, augmented global training batches: `train_dataset`'s
    stream, this process's slice of each global batch.

    `source` is the whole training split, or a sources.ProcessShard of it
    (Splits.train), whose whole split (`.full`) is read: every process reads
    the same stream and keeps its own rows, so global batch g is a function of
    (seed, g) alone, the same for any process count. Shuffled with a new
    order every epoch; augmentation randomness is a function of (seed,
    position). `get_state()` -- a small dict saved with each checkpoint, the
    number of global batches taken -- restores the stream exactly, whatever
    the reader threads or worker processes before and after.
    `cfg.num_workers` > 0 reads and augments in that many grain worker
    processes (`mp_prefetch`), each with `cfg.num_threads` reader threads;
    the batches are the same. `bad_images`: how many images of this process's
    slices of the batches yielded since this iterator was created or restored
    were undecodable and replaced. `close()` stops the worker processes.
    """

    def __init__(self, source, *, cfg, global_batch: int, seed: int, sharding):
        source = source.full if isinstance(source, ProcessShard) else source
        index, count = process_slice(sharding, global_batch)
        self._dataset = train_dataset(source, cfg=cfg, global_batch=global_batch, seed=seed,
                                      slice_index=index, slice_count=count)
        self._cfg, self._taken = cfg, 0
        super().__init__(self._open(0), sharding)

    def _open(self, start: int):
        """An iterator over the stream from global batch `start` on."""
        stream = self._dataset[start:].to_iter_dataset(_read_options(self._cfg))
        if self._cfg.num_workers:
            # grain reads an absl flag in mp_prefetch; outside `app.run` (the
            # library API) none has been parsed, and the defaults are right.
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            stream = stream.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self._cfg.num_workers, per_worker_buffer_size=self._cfg.prefetch))
        return iter(stream)

    def __next__(self) -> dict:
        batch = super().__next__()
        self._taken += 1
        return batch

    def get_state(self) -> dict:
        return {'next_index': self._taken}

    def set_state(self, state: dict) -> None:
        self.close()
        self._taken = int(state['next_index'])
        self._iterator = self._open(self._taken)
        self.bad_images = 0

    def close(self) -> None:
        close = getattr(self._iterator, 'close', None)
        if close is not None:
            close()


class EvalBatches(_GlobalBatches):
    """Every example of `source` exactly once, in order (with `indices`: those
    examples, in that order), as global batches with a 'mask' that is 0 on
    padding and on replaced undecodable images, which so count in no metric.
    All processes yield the same number of batches, as a collective step over
    the mesh requires. `bad_images`: how many replaced images the batches
    yielded so far held."""

    def __init__(self, source, *, cfg, global_batch: int, global_size: int, sharding,
                 indices=None):
        process_count = jax.process_count()
        local_batch = global_batch // process_count
        num_batches = math.ceil(math.ceil(global_size / process_count) / local_batch)
        size = len(source) if indices is None else len(indices)
        pad = {'image': np.zeros((cfg.image_size, cfg.image_size, 3), np.uint8),
               'label': np.zeros_like(_label(source[0]['label'])) if size else np.int32(0),
               'mask': np.float32(0), 'bad_image': np.uint8(0)}
        # An attribute, not a peek at an example, so that every process agrees
        # even where its share is empty.
        has_boxes = getattr(source, 'has_boxes', None)
        if has_boxes is None:
            has_boxes = bool(size) and 'boxes' in source[0]
        if has_boxes:
            pad['bbox'] = np.full((cfg.max_boxes, 4), -1, np.int32)

        def load(position):
            if position >= size:
                return pad
            example = source[position if indices is None else int(indices[position])]
            bad = _bad_image(example)
            out = {'image': to_rgb(example['image'], cfg.image_size),
                   'label': _label(example['label']), 'mask': np.float32(1 - bad),
                   'bad_image': bad}
            if has_boxes:
                h, w = np.shape(example['image'])[:2]
                out['bbox'] = padded_boxes(example['boxes'], height=h, width=w,
                                           size=cfg.image_size, max_boxes=cfg.max_boxes)
            return out

        dataset = (grain.MapDataset.range(num_batches * local_batch).map(load)
                   .batch(local_batch))
        super().__init__(iter(dataset.to_iter_dataset(_read_options(cfg))), sharding)


eval_batches = EvalBatches  # the name the loops call it by
