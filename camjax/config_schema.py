"""The one schema of camjax configs, and its validation.

`base_config()` lists every field with its default; experiment files in
configs/ start from it and override. `validate()` rejects, before anything is
written: keys the schema does not know, wrong types, names missing from the
model / dataset / loss registries, out-of-range values and a global batch not
divisible by the device count. Every failure is a ConfigError naming the field.
"""

import ml_collections

from camjax.errors import ConfigError

MODES = ('train',)
OPTIMIZERS = ('sgd', 'adamw')
SCHEDULES = ('constant', 'cosine', 'step')


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mode = 'train'
    c.seed = 0

    c.dataset = d = ml_collections.ConfigDict()
    d.name = 'synthetic'          # 'synthetic' | 'tfds:<name>' | 'imagefolder:<dir>'
    d.data_dir = ''               # TFDS data dir; '' -> $CAMJAX_DATA_DIR or ~/.cache/camjax/tfds
    d.image_size = 64             # model input side; sources of another size are resized
    d.train_split = 'train'
    d.test_split = 'test'
    d.label_key = 'label'         # tfds feature: ClassLabel, or a sequence of them (multi-label)
    d.val_fraction = 0.1          # carved from train; model selection never sees test
    d.split_seed = 0              # order of the train/val carve for imagefolder sources
    d.crop_padding = 4            # random crop after zero padding; 0 disables
    d.random_flip = True
    d.mean = (0.5, 0.5, 0.5)      # per-channel normalization of [0,1] pixels, on device
    d.std = (0.25, 0.25, 0.25)
    d.num_threads = 2             # grain reader threads per process
    d.prefetch = 4                # batches prefetched per process
    d.synthetic = ml_collections.ConfigDict(dict(num_train=5000, num_test=1000, seed=0))

    # model.name picks the registry entry; every other key is that model's own field.
    c.model = ml_collections.ConfigDict(dict(name='resnet20'))

    # Loss terms, summed with their weights by camjax.objectives.
    c.loss = (dict(name='cross_entropy', weight=1.0),)

    c.optimizer = o = ml_collections.ConfigDict()
    o.name = 'sgd'
    o.learning_rate = 0.1         # for the global batch
    o.momentum = 0.9
    o.nesterov = True
    o.weight_decay = 5e-4         # sgd: coupled L2 (grad += wd * w); adamw: decoupled
    o.b1 = 0.9
    o.b2 = 0.999
    o.eps = 1e-8
    o.schedule = 'cosine'
    o.warmup_epochs = 0.0
    o.step_epochs = (5.0, 8.0)    # 'step': lr *= step_factor at each of these epochs
    o.step_factor = 0.1

    c.train = t = ml_collections.ConfigDict()
    t.batch_size = 128            # global, across all devices and hosts
    t.eval_batch_size = 256
    t.num_epochs = 10.0
    t.num_steps = 0               # > 0 overrides num_epochs
    t.log_every = 50
    t.eval_every = 0              # steps; 0 -> once per epoch
    t.checkpoint_every = 0        # steps; 0 -> once per epoch
    t.keep_checkpoints = 3
    t.early_stopping_patience = 0  # evals without val improvement before stopping; 0 disables
    t.selection_metric = 'accuracy'  # val metric that picks the best checkpoint (higher is better)
    t.eval_negative_cam_k = 5     # evals report the peakiness of the top-k negative CAMs; 0 = off
    t.init_from = ''              # camjax workdir or checkpoint dir to start from (fine-tuning)
    t.init_from_step = -1         # -1: its newest checkpoint
    return c


def imagenet_input(dataset_cfg, *, image_size: int = 224) -> None:
    """ImageNet-style input for a config's dataset section: 224px, no crop
    padding (resized photos; flips only) and the ImageNet channel statistics."""
    dataset_cfg.image_size = image_size
    dataset_cfg.crop_padding = 0
    dataset_cfg.mean = (0.485, 0.456, 0.406)
    dataset_cfg.std = (0.229, 0.224, 0.225)


def imagenet2012(dataset_cfg) -> None:
    """TFDS imagenet2012: its 'validation' split is the test set, 1% of train is
    carved for model selection, ImageNet-style input, 16 reader threads."""
    dataset_cfg.name = 'tfds:imagenet2012'
    dataset_cfg.test_split = 'validation'
    dataset_cfg.val_fraction = 0.01
    dataset_cfg.num_threads = 16
    imagenet_input(dataset_cfg)


def _path(prefix, key):
    return f'{prefix}.{key}' if prefix else key


def _type_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def _check_against(cfg, schema, prefix='', skip=()):
    for key in cfg.keys():
        path = _path(prefix, key)
        if key in skip:
            continue
        if key not in schema:
            raise ConfigError(f'unknown config key {path!r}')
        value, default = cfg[key], schema[key]
        if isinstance(default, ml_collections.ConfigDict):
            if not isinstance(value, (ml_collections.ConfigDict, dict)):
                raise ConfigError(f'{path} must be a config group, got {value!r}')
            _check_against(ml_collections.ConfigDict(value), default, path)
        elif not _type_ok(value, default):
            raise ConfigError(f'{path} must be of type {type(default).__name__}, got {value!r}')


def _require(condition, message):
    if not condition:
        raise ConfigError(message)


def _check_model(model_cfg):
    from camjax.models import MODELS, model_fields
    name = model_cfg.get('name')
    _require(name in MODELS,
             f'model.name={name!r} is not a registered model (choose from {sorted(MODELS)})')
    allowed = model_fields(name)
    for key in model_cfg.keys():
        _require(key == 'name' or key in allowed,
                 f'unknown config key model.{key!r} for model {name!r} '
                 f'(its fields: {sorted(allowed)})')


def validate(config, *, num_devices: int) -> None:
    """Raise ConfigError naming the first invalid field of `config`."""
    from camjax import objectives
    from camjax.data import check_dataset_name

    schema = base_config()
    _check_against(config, schema, skip=('model', 'loss'))
    _require(config.mode in MODES, f'mode={config.mode!r} must be one of {MODES}')
    _check_model(config.model)
    objectives.validate_terms(config.loss)
    check_dataset_name(config.dataset.name)

    d, o, t = config.dataset, config.optimizer, config.train
    _require(d.image_size >= 8, f'dataset.image_size must be >= 8, got {d.image_size}')
    _require(0.0 <= d.val_fraction < 1.0,
             f'dataset.val_fraction must be in [0, 1), got {d.val_fraction}')
    _require(len(d.mean) == 3 and len(d.std) == 3 and min(d.std) > 0,
             'dataset.mean and dataset.std must have 3 entries, std > 0')
    _require(o.name in OPTIMIZERS, f'optimizer.name={o.name!r} must be one of {OPTIMIZERS}')
    _require(o.schedule in SCHEDULES,
             f'optimizer.schedule={o.schedule!r} must be one of {SCHEDULES}')
    _require(o.learning_rate > 0, f'optimizer.learning_rate must be > 0, got {o.learning_rate}')
    _require(o.weight_decay >= 0, f'optimizer.weight_decay must be >= 0, got {o.weight_decay}')
    _require(all(e > 0 for e in o.step_epochs),
             f'optimizer.step_epochs must be positive epochs, got {o.step_epochs}')
    _require(o.warmup_epochs >= 0, f'optimizer.warmup_epochs must be >= 0, got {o.warmup_epochs}')
    _require(t.batch_size > 0 and t.eval_batch_size > 0, 'train.batch_size must be > 0')
    _require(t.num_steps > 0 or t.num_epochs > 0,
             'train.num_epochs or train.num_steps must be > 0')
    for field in ('batch_size', 'eval_batch_size'):
        _require(t[field] % num_devices == 0,
                 f'train.{field}={t[field]} is not divisible by the device count {num_devices}')
    for field in ('log_every', 'eval_every', 'checkpoint_every', 'early_stopping_patience',
                  'eval_negative_cam_k'):
        _require(t[field] >= 0, f'train.{field} must be >= 0, got {t[field]}')
    _require(t.keep_checkpoints >= 1, 'train.keep_checkpoints must be >= 1')
    _require(t.early_stopping_patience == 0 or d.val_fraction > 0,
             'train.early_stopping_patience needs a validation split (dataset.val_fraction > 0)')
