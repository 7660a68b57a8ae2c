"""Data: named sources -> grain pipelines -> global batches on the mesh.
The only package that imports tfds or grain."""

from camjax.data.noise import LABEL_NOISE_KINDS, noisy_labels
from camjax.data.pipeline import EvalBatches, TrainBatches, eval_batches
from camjax.data.sources import Splits, check_dataset_name, default_data_dir, open_splits
from camjax.data.transforms import normalize_images

__all__ = ['LABEL_NOISE_KINDS', 'EvalBatches', 'Splits', 'TrainBatches', 'check_dataset_name',
           'default_data_dir', 'eval_batches', 'noisy_labels', 'normalize_images',
           'open_splits']
