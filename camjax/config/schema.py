"""The one schema of camjax configs, and its validation.

`base_config()` lists every field with its default; experiment files in
configs/ start from it and override. `validate()` rejects, before anything is
written: keys the schema does not know, wrong types, names missing from the
model / dataset / loss registries, out-of-range values and a global batch not
divisible by the device count. Every failure is a ConfigError naming the field.
"""

import ast
import difflib

import ml_collections

from camjax.errors import ConfigError

MODES = ('train', 'refine', 'sweep', 'eval', 'analyze', 'check')
LINR_VARIANTS = ('linr', 'linrc', 'linrnl', 'linrnm')
BATCHNORM_MODES = ('running', 'batch')
MIX_SPACES = ('probs', 'logits')
LOG_PROBS = ('exact', 'clipped')
MIX_PER = ('batch', 'example')
STATS_SOURCES = ('mixed', 'clean', 'both', 'none')
BAD_IMAGE_POLICIES = ('error', 'skip')
OPTIMIZERS = ('sgd', 'adamw')
SCHEDULES = ('constant', 'cosine', 'step')
# Validation metrics that can pick the best checkpoint, and which way is better.
# 'loss/<term>' (a configured loss term's value) is lower-is-better too.
SELECTION_METRICS = {'accuracy': 'higher', 'top5_accuracy': 'higher', 'loss': 'lower'}


def selection_direction(metric: str) -> str:
    """'higher' or 'lower': which values of validation `metric` are better."""
    return SELECTION_METRICS.get(metric, 'lower' if metric.startswith('loss/') else 'higher')


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mode = 'train'
    c.seed = 0

    c.dataset = d = ml_collections.ConfigDict()
    # 'synthetic' | 'tfds:<name>' | 'imagefolder:<dir>' | 'attrfolder:<dir>' (multi-label
    # attribute CSVs) | 'tinyimagenet:<dir>'; layouts in camjax/data/sources.py
    d.name = 'synthetic'
    d.data_dir = ''               # TFDS data dir; '' -> $CAMJAX_DATA_DIR or ~/.cache/camjax/tfds
    d.image_size = 64             # model input side; sources of another size are resized
    d.train_split = 'train'
    d.test_split = 'test'
    d.label_key = 'label'         # tfds feature: ClassLabel, or a sequence of them (multi-label)
    d.val_fraction = 0.1          # carved from train; model selection never sees test
    d.split_seed = 0              # order of the train/val carve for file-based (folder) sources
    d.label_noise = 'none'        # 'none' | 'symmetric' | 'asymmetric' (c -> c+1 mod K), train only
    d.label_noise_rate = 0.0      # flip probability in [0, 1]
    d.label_noise_seed = 0
    d.max_boxes = 4               # eval batches' 'bbox' rows per example; more boxes is an error
    d.box_key = 'bbox'            # tfds feature with ground-truth boxes, if present; '' = none
    d.boxes_file = ''             # imagefolder: box CSV name in each split dir; '' = none
    d.reshuffle_each_epoch = True  # False: one seeded order of the train split, every epoch
    d.crop_padding = 4            # random crop after zero padding; 0 disables
    d.random_flip = True
    d.mean = (0.5, 0.5, 0.5)      # per-channel normalization of [0,1] pixels, on device
    d.std = (0.25, 0.25, 0.25)
    d.num_threads = 2             # grain reader threads per process
    d.prefetch = 4                # batches prefetched per process (per worker with num_workers)
    d.num_workers = 0             # > 0: grain worker processes read and augment the training
    #                               batches, for hosts whose step outruns the reader threads
    d.on_bad_image = 'error'      # an undecodable image: 'error' names the file; 'skip'
    #                               replaces it deterministically and counts it
    d.synthetic = ml_collections.ConfigDict(dict(num_train=5000, num_test=1000, seed=0))

    # model.name picks the registry entry; every other key is that model's own field.
    c.model = ml_collections.ConfigDict(dict(name='resnet20'))

    # Loss terms, summed with their weights by camjax.objectives.
    c.loss = (dict(name='cross_entropy', weight=1.0),)

    c.optimizer = optimizer_group()

    c.train = t = ml_collections.ConfigDict()
    t.batch_size = 128            # global, across all devices and hosts
    t.eval_batch_size = 256
    t.per_device_batch_size = 0   # > 0: batch_size = this x the device count, resolved
    t.per_device_eval_batch_size = 0  # after jax.distributed starts (likewise eval_batch_size)
    t.grad_accum_steps = 1        # > 1: each step's gradient over this many microbatches of
    #                               batch_size / grad_accum_steps, in turn (less memory)
    t.mixup_alpha = 0.0           # > 0: mixup (Zhang et al. 2018), lam ~ Beta(a, a); 0 = off
    t.num_epochs = 10.0
    t.num_steps = 0               # > 0 overrides num_epochs
    t.log_every = 50
    t.eval_every = 0              # steps; 0 -> once per epoch
    t.checkpoint_every = 0        # steps; 0 -> once per epoch
    t.keep_checkpoints = 3
    t.skip_nonfinite_updates = False  # True: a step with a non-finite loss or update is
    #                                   skipped and counted; False: the run stops
    t.early_stopping_patience = 0  # evals without val improvement before stopping; 0 disables
    t.selection_metric = 'accuracy'  # val metric picking the best checkpoint: accuracy |
    #                                  top5_accuracy (higher is better) | loss | loss/<term> (lower)
    t.eval_negative_cam_k = 5     # evals report the peakiness of the top-k negative CAMs; 0 = off
    t.init_from = ''              # camjax workdir or checkpoint dir to start from (fine-tuning)
    t.init_from_step = -1         # -1: its newest checkpoint

    # mode='refine' / 'sweep': LinR refinement of the run in train.init_from
    # (LinR paper, Algorithm 1). Each round: cls_steps classification steps with
    # cls_optimizer on config.loss, then linr_steps LinR steps with linr_optimizer.
    c.refine = r = ml_collections.ConfigDict()
    r.variant = 'linr'            # linr | linrc (Eq. 9) | linrnl (no labels) | linrnm (Eq. 10)
    r.rounds = 10                 # T
    r.cls_steps = -1              # N_cls; -1: one epoch of the training split
    r.linr_steps = -1             # N_LinR; -1: one epoch of the training split
    r.alpha = 0.75                # a ~ Beta(alpha, alpha), b = 1 - a
    r.dis = 'kl'                  # kl (Eq. 7) | mse (Table 6)
    # Defaults: what the paper's PyTorch code most likely ran (README: LinR
    # refinement, "Why these defaults"): F.kl_div(log_softmax(model(mixed)), P2)
    # in model.train() mode.
    r.direction = 'p2_p1'         # p2_p1: D_KL(P2||P1), kl_div(log P1, P2) | p1_p2: D_KL(P1||P2)
    r.p2_gradient = False         # True removes the stop-gradient on P2 (Table 6 ablation)
    r.mix_space = 'probs'         # P2 = a f(x) + b f(y) of probabilities | 'logits': softmax of
    #                               a z_x + b z_y (Eq. 6 does not say which f)
    r.reduction = 'mean'          # over classes: mean (PyTorch kl_div's default) | sum (the KL)
    r.log_probs = 'exact'         # log-softmax from logits | 'clipped': log(max(p, 1e-12))
    r.mix_per = 'batch'           # one a per batch (as mixup's code) | 'example'
    r.p1_batchnorm = 'batch'      # BatchNorm in the mixed (P1) pass: batch | running statistics
    r.p2_batchnorm = 'batch'      # BatchNorm in the clean (P2) pass: batch | running statistics
    r.running_stats_from = 'both'  # passes that update the running statistics: mixed | clean |
    #                                 both | none (a pass must use batch statistics to update)
    r.reset_optimizer = False     # True: each phase starts its optimizer's state afresh
    r.collapse_guard = True       # end a LinR phase whose predictions collapsed (collapse.py)
    r.collapse_share = 0.9        # collapsed: top-class share of the clean batch >= this ...
    r.collapse_window = 50        # ... on this many consecutive LinR steps
    r.cls_optimizer = optimizer_group(learning_rate=3e-4, nesterov=False, schedule='constant')
    r.linr_optimizer = optimizer_group(learning_rate=1e-2, nesterov=False, weight_decay=0.0,
                                       schedule='constant')

    # mode='eval' evaluates the run in the workdir; mode='analyze' evaluates
    # `runs` (the first is the baseline) and writes report.html to the workdir.
    c.evaluation = e = ml_collections.ConfigDict()
    e.runs = ('',)                # analyze: workdirs of trained runs, baseline first
    e.groups = ()                 # analyze: one group label per run (seeds of one recipe);
    #                               () compares every run with the first (analysis/seeds.py)
    e.checkpoint = 'best'         # best (by validation) | latest
    e.split = 'test'
    e.fgsm_eps = (0.05, 0.1, 0.2, 0.3)  # on [0,1] pixels; () disables (HNC paper, Sec. 4.4)
    e.loc_theta = 0.2             # CAM box threshold tau = theta * max M (top-1 / GT-known loc)
    e.cam_threshold_step = 0.01   # MaxBoxAcc threshold sweep over [0, 1)
    e.positive_weights_only = False  # CAMs from max(W, 0): negative weights clamped
    e.sparsity_eps = 1e-3         # |w| below this counts as zero
    e.cam_grid_images = 6         # test images in the CAM grid; 0 disables
    e.landscape_batches = 1       # loss landscape: batches of seeded-sampled images; 0 disables
    e.landscape_steps = 11        # grid points per direction
    e.landscape_span = 1.0        # grid covers [-span, span] along each direction
    return c


PER_DEVICE = {'per_device_batch_size': 'batch_size',
              'per_device_eval_batch_size': 'eval_batch_size'}


def resolve_device_sizes(config, *, num_devices: int, explicit=()):
    """Set train.batch_size / eval_batch_size from their per-device fields
    (when > 0) for `num_devices`, the global device count. Config files
    never ask JAX for devices: that would start its backend before
    `jax.distributed.initialize`, which then fails on a pod. Idempotent: the
    per-device fields stay, so a saved config resolves to itself.
    `explicit` (command-line overrides, 'a.b' paths): a global size set
    there for a config that sizes it per device is a ConfigError, not
    silently replaced."""
    t = config.train
    for per_device, global_field in PER_DEVICE.items():
        _require(t[per_device] >= 0, f'train.{per_device} must be >= 0, got {t[per_device]}')
        if t[per_device] > 0:
            _require(f'train.{global_field}' not in explicit,
                     f'train.{global_field} is set on the command line, but the config sizes '
                     f'it per device (train.{per_device}={t[per_device]}); override '
                     f'train.{per_device} instead, or set it to 0')
            t[global_field] = t[per_device] * num_devices
    return config


def optimizer_group(**overrides) -> ml_collections.ConfigDict:
    """The fields of one optimizer (config.optimizer, refine.*_optimizer)."""
    o = ml_collections.ConfigDict()
    o.name = 'sgd'
    o.learning_rate = 0.1         # for the global batch, or for reference_batch_size
    o.reference_batch_size = 0    # > 0: lr = learning_rate x batch_size / this (linear scaling)
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
    o.update(overrides)
    return o


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


def config_paths(config, prefix='') -> list[str]:
    """Every dotted field path of `config`, groups included, and for
    `model` the fields of the model it names."""
    paths = []
    for key, value in config.items():
        path = _path(prefix, key)
        paths.append(path)
        if path == 'model' and isinstance(value, (ml_collections.ConfigDict, dict)):
            paths += [f'model.{f}' for f in sorted(_model_defaults(value.get('name')) or value)]
        elif isinstance(value, (ml_collections.ConfigDict, dict)):
            paths += config_paths(value, path)
    return paths


def did_you_mean(name: str, known) -> str:
    """"; did you mean 'x'?" for the closest of `known`, or ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f'; did you mean {close[0]!r}?' if close else ''


def unknown_key_message(path: str, known) -> str:
    return f'unknown config key {path!r}{did_you_mean(path, known)}'


def override_problem(config, path: str) -> str | None:
    """Why `--config.<path>` names no field of `config` (the config as its
    file built it, before the overrides), or None when it names one."""
    if '[' in path:  # indexing into a sequence: left to ml_collections
        return None
    parts = path.split('.')
    model = config.get('model')
    if len(parts) == 2 and parts[0] == 'model' and isinstance(model, ml_collections.ConfigDict) \
            and parts[1] not in model:
        name = model.get('name')
        problem = _model_key_problem(name, parts[1])
        if problem or _model_defaults(name) is not None:
            return problem or _unset_model_field(model, parts[1])
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, (ml_collections.ConfigDict, dict)):
            return f'{".".join(parts[:i])} is not a config group, so it has no field {part!r}'
        if part not in node:
            return unknown_key_message(path, config_paths(config))
        node = node[part]
    return None


def _unset_model_field(model, key: str) -> str:
    fields = ', '.join(f'{k!r}: {v!r}' for k, v in model.items())
    return (f'model.{key} is a field of model {model.get("name")!r} that the config file does '
            f'not set, so --config.model.{key} has nothing to override; set the whole group: '
            f'--config.model="{{{fields}, {key!r}: <value>}}"')


def _check_against(cfg, schema, prefix='', skip=()):
    for key in cfg.keys():
        path = _path(prefix, key)
        if key in skip:
            continue
        if key not in schema:
            raise ConfigError(unknown_key_message(path, config_paths(base_config())))
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


def _bare_model(name):
    """A bare flax Module of registered model `name` (no parameters are
    made), or None for an unregistered name."""
    from camjax.models import MODELS
    if not isinstance(name, str) or name not in MODELS:
        return None
    return MODELS[name](num_classes=1)


def _model_defaults(name) -> dict | None:
    """{field: default} of registered model `name`, its registry entry's
    bound values included (resnet8: depth=8), or None."""
    from camjax.models import model_fields
    module = _bare_model(name)
    return None if module is None else {f: getattr(module, f) for f in model_fields(name)}


def _model_key_problem(name, key: str) -> str | None:
    """Why `key` is not a field of model `name`, or None when it is one."""
    if key == 'num_classes':
        return ("unknown config key 'model.num_classes': a model's class count is not "
                'configured, it comes from the dataset (dataset.name)')
    defaults = _model_defaults(name)
    if defaults is None or key in defaults or key == 'name':
        return None
    return (f'unknown config key model.{key!r} for model {name!r} (its fields: '
            f'{sorted(defaults)}){did_you_mean(key, defaults)}')


def _check_model(model_cfg):
    from camjax.models import CONV_IMPLS, MODELS
    from camjax.models.resnet import CifarResNet
    name = model_cfg.get('name')
    _require(name in MODELS,
             f'model.name={name!r} is not a registered model (choose from {sorted(MODELS)})')
    defaults = _model_defaults(name)
    for key in model_cfg.keys():
        problem = _model_key_problem(name, key)
        _require(problem is None, problem)
        if key == 'name':
            continue
        value, default = model_cfg[key], defaults[key]
        _require(_type_ok(value, default),
                 f'model.{key} must be of type {type(default).__name__}, got {value!r}')
        if isinstance(default, (int, float)) and not isinstance(default, bool) and default > 0:
            _require(value > 0, f'model.{key} must be > 0, got {value!r}')
    fields = {**defaults, **{k: v for k, v in model_cfg.items() if k != 'name'}}
    if 'conv_impl' in fields:
        _require(fields['conv_impl'] in CONV_IMPLS,
                 f"model.conv_impl={fields['conv_impl']!r} must be one of {CONV_IMPLS}")
    if 'dtype' in fields:
        _require(_is_float_dtype(fields['dtype']),
                 f"model.dtype={fields['dtype']!r} must name a floating-point dtype "
                 "('float32', 'bfloat16', 'float16')")
    if isinstance(_bare_model(name), CifarResNet):
        _require((fields['depth'] - 2) % 6 == 0,
                 f"model.depth={fields['depth']} must be 6n+2 for {name!r} (a CIFAR ResNet)")


def _is_float_dtype(name) -> bool:
    import jax.numpy as jnp
    try:
        return jnp.issubdtype(jnp.dtype(name), jnp.floating)
    except TypeError:
        return False


def _check_onednn(num_devices: int) -> None:
    """conv_impl='onednn' needs its library built (on first use) and runs on
    one CPU device: XLA cannot split its custom calls over a sharded batch,
    so every device would convolve the whole batch."""
    from camjax.models import onednn_conv
    _require(num_devices == 1, f"model.conv_impl='onednn' runs on one CPU device, not "
             f"{num_devices}; use 'auto' or 'fast' for data parallelism")
    try:
        onednn_conv.load()
    except onednn_conv.OnednnUnavailable as e:
        raise ConfigError(f"model.conv_impl='onednn': {e}") from None


def validate(config, *, num_devices: int) -> None:
    """Raise ConfigError naming the first invalid field of `config`."""
    from camjax import objectives
    from camjax.data import LABEL_NOISE_KINDS, check_dataset_name

    schema = base_config()
    _check_against(config, schema, skip=('model', 'loss'))
    _require(config.mode in MODES, f'mode={config.mode!r} must be one of {MODES}')
    _check_model(config.model)
    if config.model.get('conv_impl') == 'onednn':
        _check_onednn(num_devices)
    objectives.validate_terms(config.loss)
    check_dataset_name(config.dataset.name)

    d, t = config.dataset, config.train
    _require(d.image_size >= 8, f'dataset.image_size must be >= 8, got {d.image_size}')
    _require(0.0 <= d.val_fraction < 1.0,
             f'dataset.val_fraction must be in [0, 1), got {d.val_fraction}')
    for field in ('mean', 'std'):
        _require(len(d[field]) == 3,
                 f'dataset.{field} must have 3 entries (R, G, B), got {tuple(d[field])}')
    _require(min(d.std) > 0, f'dataset.std must be > 0, got {tuple(d.std)}')
    kind = d.name.partition(':')[0]
    _require(d.label_noise in LABEL_NOISE_KINDS,
             f'dataset.label_noise={d.label_noise!r} must be one of {LABEL_NOISE_KINDS}')
    _require(0.0 <= d.label_noise_rate <= 1.0,
             f'dataset.label_noise_rate must be in [0, 1], got {d.label_noise_rate}')
    _require(d.label_noise != 'none' or d.label_noise_rate == 0,
             "dataset.label_noise_rate is set but dataset.label_noise='none'")
    _require(d.label_noise == 'none' or kind != 'attrfolder',
             'dataset.label_noise needs single-label data; attrfolder is multi-label')
    _require(d.crop_padding >= 0,
             f'dataset.crop_padding must be >= 0 (0 disables the random crop), '
             f'got {d.crop_padding}')
    _require(d.on_bad_image in BAD_IMAGE_POLICIES,
             f'dataset.on_bad_image={d.on_bad_image!r} must be one of {BAD_IMAGE_POLICIES}')
    _require(d.max_boxes >= 1, f'dataset.max_boxes must be >= 1, got {d.max_boxes}')
    for field in ('num_train', 'num_test'):
        _require(d.synthetic[field] > 0,
                 f'dataset.synthetic.{field} must be > 0, got {d.synthetic[field]}')
    for field in ('num_threads', 'prefetch', 'num_workers'):
        _require(d[field] >= 0, f'dataset.{field} must be >= 0, got {d[field]}')
    for path, value in (('seed', config.seed), ('dataset.split_seed', d.split_seed),
                        ('dataset.label_noise_seed', d.label_noise_seed),
                        ('dataset.synthetic.seed', d.synthetic.seed)):
        _require(value >= 0, f'{path} must be >= 0, got {value}')
    _require(not d.boxes_file or kind == 'imagefolder',
             'dataset.boxes_file is only for imagefolder datasets')
    _require(kind != 'tinyimagenet' or (d.train_split == 'train'
                                        and d.test_split in ('test', 'val')),
             "dataset.train_split/test_split: tinyimagenet reads train/ as 'train' and its "
             "labelled val/ as the test split ('test' or 'val')")
    _check_optimizer(config.optimizer, 'optimizer')
    for field in ('batch_size', 'eval_batch_size'):
        _require(t[field] > 0, f'train.{field} must be > 0, got {t[field]}')
    _require(t.num_steps >= 0, f'train.num_steps must be >= 0 (0: use num_epochs), '
             f'got {t.num_steps}')
    _require(t.num_epochs >= 0, f'train.num_epochs must be >= 0, got {t.num_epochs}')
    _require(t.num_steps > 0 or t.num_epochs > 0,
             'train.num_epochs or train.num_steps must be > 0')
    _check_selection_metric(t.selection_metric, config.loss)
    for field in ('batch_size', 'eval_batch_size'):
        _require(t[field] % num_devices == 0,
                 f'train.{field}={t[field]} is not divisible by the device count {num_devices}')
    _require(t.grad_accum_steps >= 1,
             f'train.grad_accum_steps must be >= 1, got {t.grad_accum_steps}')
    _require(t.batch_size % (t.grad_accum_steps * num_devices) == 0,
             f'train.batch_size={t.batch_size} must split into train.grad_accum_steps='
             f'{t.grad_accum_steps} microbatches that divide over {num_devices} device(s)')
    _require(0 <= t.mixup_alpha < float('inf'),
             f'train.mixup_alpha must be >= 0 (0 = no mixup), got {t.mixup_alpha}')
    _require(t.mixup_alpha == 0 or config.mode not in ('refine', 'sweep'),
             f'train.mixup_alpha={t.mixup_alpha} applies to mode=train; a refine run\'s '
             'classification phase does not mix (set it to 0)')
    for per_device, global_field in PER_DEVICE.items():
        _require(t[per_device] == 0 or t[global_field] == t[per_device] * num_devices,
                 f'train.{global_field}={t[global_field]} is not train.{per_device}='
                 f'{t[per_device]} x {num_devices} devices (resolve_device_sizes sets it)')
    for field in ('log_every', 'eval_every', 'checkpoint_every', 'early_stopping_patience',
                  'eval_negative_cam_k'):
        _require(t[field] >= 0, f'train.{field} must be >= 0, got {t[field]}')
    _require(t.keep_checkpoints >= 1, 'train.keep_checkpoints must be >= 1')
    _require(t.init_from_step >= -1,
             f'train.init_from_step must be a step >= 0, or -1 for the newest; '
             f'got {t.init_from_step}')
    _require(t.early_stopping_patience == 0 or d.val_fraction > 0,
             'train.early_stopping_patience needs a validation split (dataset.val_fraction > 0)')
    if config.mode in ('refine', 'sweep'):
        _check_refine(config)
    _check_evaluation(config)


def _check_selection_metric(metric: str, loss_terms) -> None:
    terms = [f'loss/{term["name"]}' for term in loss_terms]
    choices = [*SELECTION_METRICS, *terms]
    _require(metric in choices,
             f'train.selection_metric={metric!r} is not a validation metric (choose from '
             f'{choices}; accuracies are higher-is-better, losses lower-is-better)')


def parse_loss_terms(terms):
    """config.loss as the command line delivers it. ml_collections reads
    `--config.loss="(dict(name='hnc_kd', k=5),)"` as a string, since
    `dict(...)` is not a Python literal; such a string (or a tuple of them)
    becomes the terms it spells. `{'name': ...}` literals arrive parsed already.
    Anything but dicts of literals is a ConfigError."""
    if isinstance(terms, str):
        terms = (terms,)
    parsed = []
    for term in terms:
        if isinstance(term, str):
            parsed.extend(_terms_from_text(term))
        else:
            parsed.append(term)
    return tuple(parsed)


def _terms_from_text(text: str) -> list:
    try:
        node = ast.parse(text.strip(), mode='eval').body
    except SyntaxError:
        node = None
    items = node.elts if isinstance(node, (ast.Tuple, ast.List)) else [node]
    terms = []
    for item in items:
        if (isinstance(item, ast.Call) and isinstance(item.func, ast.Name)
                and item.func.id == 'dict' and not item.args):
            try:
                terms.append({kw.arg: ast.literal_eval(kw.value) for kw in item.keywords})
                continue
            except ValueError:
                pass
        elif isinstance(item, ast.Dict):
            try:
                terms.append(ast.literal_eval(item))
                continue
            except ValueError:
                pass
        raise ConfigError(f'loss: cannot read {text!r}; write each term as '
                          "dict(name='cross_entropy', weight=1.0) or {'name': 'cross_entropy'} "
                          'with literal values')
    return terms


def _check_evaluation(config) -> None:
    e = config.evaluation
    _require(e.checkpoint in ('best', 'latest'),
             f"evaluation.checkpoint={e.checkpoint!r} must be 'best' or 'latest'")
    _require(e.split in ('val', 'test'), f"evaluation.split={e.split!r} must be 'val' or 'test'")
    _require(all(0 <= x <= 1 for x in e.fgsm_eps),
             f'evaluation.fgsm_eps must lie in [0, 1] (pixel units), got {e.fgsm_eps}')
    _require(0 < e.loc_theta <= 1, f'evaluation.loc_theta must be in (0, 1], got {e.loc_theta}')
    _require(0 < e.cam_threshold_step < 1,
             f'evaluation.cam_threshold_step must be in (0, 1), got {e.cam_threshold_step}')
    for field in ('cam_grid_images', 'landscape_batches'):
        _require(e[field] >= 0, f'evaluation.{field} must be >= 0, got {e[field]}')
    _require(e.sparsity_eps >= 0, f'evaluation.sparsity_eps must be >= 0, got {e.sparsity_eps}')
    _require(e.landscape_steps >= 3,
             f'evaluation.landscape_steps must be >= 3, got {e.landscape_steps}')
    _require(e.landscape_span > 0, f'evaluation.landscape_span must be > 0, got {e.landscape_span}')
    if config.mode == 'analyze':
        _require(e.runs and all(e.runs),
                 'mode=analyze needs evaluation.runs: the workdirs of trained runs, baseline '
                 "first, e.g. --config.evaluation.runs=\"('runs/a','runs/b')\"")
        _require(not e.groups or (len(e.groups) == len(e.runs) and all(e.groups)),
                 f'evaluation.groups has {len(e.groups)} labels for {len(e.runs)} runs; give '
                 'one non-empty group label per run in evaluation.runs (runs of one recipe '
                 'over several seeds share a label), or () for none')


def _check_optimizer(o, where: str) -> None:
    _require(o.name in OPTIMIZERS, f'{where}.name={o.name!r} must be one of {OPTIMIZERS}')
    _require(o.schedule in SCHEDULES,
             f'{where}.schedule={o.schedule!r} must be one of {SCHEDULES}')
    _require(o.learning_rate > 0, f'{where}.learning_rate must be > 0, got {o.learning_rate}')
    _require(o.reference_batch_size >= 0,
             f'{where}.reference_batch_size must be >= 0 (0: learning_rate is for the global '
             f'batch), got {o.reference_batch_size}')
    _require(o.weight_decay >= 0, f'{where}.weight_decay must be >= 0, got {o.weight_decay}')
    for field in ('momentum', 'b1', 'b2'):
        _require(0 <= o[field] < 1, f'{where}.{field} must be in [0, 1), got {o[field]}')
    for field in ('eps', 'step_factor'):
        _require(o[field] > 0, f'{where}.{field} must be > 0, got {o[field]}')
    _require(all(e > 0 for e in o.step_epochs),
             f'{where}.step_epochs must be positive epochs, got {o.step_epochs}')
    _require(o.warmup_epochs >= 0, f'{where}.warmup_epochs must be >= 0, got {o.warmup_epochs}')


def _check_refine(config) -> None:
    from camjax import losses
    r = config.refine
    _require(config.train.init_from,
             f'mode={config.mode} needs train.init_from: the workdir (or checkpoint directory) '
             'of the trained run to refine')
    _require(r.variant in LINR_VARIANTS,
             f'refine.variant={r.variant!r} must be one of {LINR_VARIANTS}')
    _require(config.mode != 'sweep' or r.variant == 'linrnl',
             "mode='sweep' refines with LinRNL (LinR paper, Sec. 4.8); set "
             "refine.variant='linrnl'")
    _require(r.rounds > 0, f'refine.rounds (T) must be > 0, got {r.rounds}')
    for field in ('cls_steps', 'linr_steps'):
        _require(r[field] > 0 or r[field] == -1,
                 f'refine.{field} (N) must be > 0, or -1 for one epoch of the training split; '
                 f'got {r[field]}')
    _require(r.alpha > 0, f'refine.alpha must be > 0, got {r.alpha}')
    _require(r.dis in losses.LINR_DISTANCES,
             f'refine.dis={r.dis!r} must be one of {losses.LINR_DISTANCES}')
    _require(r.direction in losses.LINR_DIRECTIONS,
             f'refine.direction={r.direction!r} must be one of {losses.LINR_DIRECTIONS}')
    for field in ('p1_batchnorm', 'p2_batchnorm'):
        _require(r[field] in BATCHNORM_MODES,
                 f'refine.{field}={r[field]!r} must be one of {BATCHNORM_MODES}')
    for field, choices in (('mix_space', MIX_SPACES), ('reduction', losses.LINR_REDUCTIONS),
                           ('log_probs', LOG_PROBS), ('mix_per', MIX_PER),
                           ('running_stats_from', STATS_SOURCES)):
        _require(r[field] in choices, f'refine.{field}={r[field]!r} must be one of {choices}')
    for source, field in (('clean', 'p2_batchnorm'), ('mixed', 'p1_batchnorm')):
        _require(r.running_stats_from not in (source, 'both') or r[field] == 'batch',
                 f'refine.running_stats_from={r.running_stats_from!r} updates the running '
                 f'statistics from the {source} pass, but refine.{field}={r[field]!r} gives it '
                 "no batch statistics; set it to 'batch', or choose another source ('none')")
    _require(not r.reset_optimizer or all(
        o.schedule == 'constant' and o.warmup_epochs == 0
        for o in (r.cls_optimizer, r.linr_optimizer)),
        'refine.reset_optimizer restarts each phase\'s optimizer, its learning-rate schedule '
        "included; it needs schedule='constant' without warmup in refine.cls_optimizer and "
        'refine.linr_optimizer')
    _require(0 < r.collapse_share <= 1,
             f'refine.collapse_share must be in (0, 1], got {r.collapse_share}')
    _require(r.collapse_window > 0,
             f'refine.collapse_window must be > 0 steps, got {r.collapse_window}')
    _check_optimizer(r.cls_optimizer, 'refine.cls_optimizer')
    _check_optimizer(r.linr_optimizer, 'refine.linr_optimizer')
