"""Variants of an experiment config, chosen on the command line:

    --config=configs/imagenet_hnc.py:resnet152,hnc_kd,smoke

A config file declares `OPTIONS = {'model': ('resnet101', 'resnet152'), ...}`
and calls `choose(arg, OPTIONS)`; each comma-separated word picks one value of
one option (the first value is the default), and the word `smoke` shrinks the
config with `smoke()` to 2 steps on small synthetic data, so a test can run
every config and none rots. Config files list their smoke variants in `SMOKE`.
A refine or sweep smoke variant leaves train.init_from empty: the caller trains
the same config for 2 steps first and points init_from at that run.
"""

import ml_collections

from camjax.errors import ConfigError
from camjax.models import model_fields


def choose(arg: str | None, options: dict[str, tuple[str, ...]]) -> tuple[dict[str, str], bool]:
    """Parse `arg` into {option: value} (defaults filled in) and the smoke flag."""
    chosen, smoke = {name: values[0] for name, values in options.items()}, False
    for word in filter(None, (arg or '').split(',')):
        if word == 'smoke':
            smoke = True
            continue
        owners = [name for name, values in options.items() if word in values]
        if not owners:
            valid = sorted({v for values in options.values() for v in values} | {'smoke'})
            raise ConfigError(f'unknown config variant {word!r} (choose from {valid})')
        chosen[owners[0]] = word
    return chosen, smoke


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """2 training steps on 32px synthetic data with a shallow, narrow float32
    model of the same family, the same loss terms (k capped for 12 classes) and
    the same optimizer; multi-label configs use the synthetic attributes.
    Checks wiring, not results."""
    d, t = config.dataset, config.train
    d.name, d.data_dir, d.image_size = 'synthetic', '', 32
    d.train_split, d.test_split = 'train', 'test'
    # Multi-label configs train on the synthetic objects' attributes.
    multilabel = config.loss[0]['name'] == 'weighted_sigmoid_ce'
    d.label_key = 'attributes' if multilabel else 'label'
    d.synthetic.num_train, d.synthetic.num_test = 96, 32
    d.val_fraction, d.num_threads, d.prefetch = 0.25, 1, 2
    d.crop_padding = min(d.crop_padding, 4)
    t.num_steps, t.batch_size, t.eval_batch_size = 2, 8, 16
    t.per_device_batch_size = t.per_device_eval_batch_size = 0
    t.log_every, t.eval_every, t.checkpoint_every = 1, 2, 2
    t.init_from, t.early_stopping_patience = '', 0
    # Refine / sweep: 2 steps as well (one classification + one LinR step, or
    # two LinR rounds without labels); init_from must then name a trained run.
    r = config.refine
    r.rounds, r.cls_steps, r.linr_steps = (2, 1, 1) if r.variant == 'linrnl' else (1, 1, 1)
    t.eval_negative_cam_k = min(t.eval_negative_cam_k, 5)
    fields = model_fields(config.model.name)
    # float32: bf16 is emulated on CPU and slow to compile; wiring is the same.
    shrink = {'width': 4, 'depth': 8, 'stage_sizes': (1, 1, 1, 1), 'extra_conv': 16,
              'layers': (8, 'M', 8), 'dtype': 'float32'}
    for key, value in shrink.items():
        if key in fields:
            config.model[key] = value
    config.loss = tuple({**term, 'k': min(term['k'], 5)} if 'k' in term else dict(term)
                        for term in config.loss)
    return config
