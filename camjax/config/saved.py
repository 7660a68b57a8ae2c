"""A trained run's saved config.json as the source of truth.

`mode=eval` rebuilds everything (model, preprocessing, dataset, label key)
from the evaluated run's config.json; only `evaluation.*` and the batching
and reader fields in EVAL_MAY_SET come from the command line. `refine` and
`sweep` take the model and the input definition (MODEL_AND_INPUT) from
`train.init_from`'s config.json, so the refined model sees the images it was
trained on.

An explicit command-line override of a field that comes from the saved run,
with a different value, is refused, naming every such field. A config file's
own values that differ are ignored, and the caller says so.
"""

import copy

from camjax.errors import ConfigError
from camjax.rundir import RunDir

EVAL_MAY_SET = ('mode', 'evaluation', 'train.eval_batch_size', 'train.per_device_eval_batch_size',
                'dataset.num_threads', 'dataset.num_workers',
                'dataset.prefetch', 'dataset.data_dir', 'dataset.on_bad_image')
MODEL_AND_INPUT = ('model', 'dataset.name', 'dataset.image_size', 'dataset.mean',
                   'dataset.std', 'dataset.label_key', 'dataset.data_dir',
                   'dataset.synthetic')


def _under(path: str, prefixes) -> bool:
    return any(path == p or path.startswith(p + '.') for p in prefixes)


def _leaves(tree, prefix=''):
    """{'a.b': value} of a config dict; `model` and non-dict values are leaves."""
    out = {}
    for key, value in tree.items():
        path = f'{prefix}{key}'
        if isinstance(value, dict) and path != 'model':
            out.update(_leaves(value, path + '.'))
        else:
            out[path] = value
    return out


def _same(a, b) -> bool:
    norm = lambda v: [norm(x) for x in v] if isinstance(v, (list, tuple)) else v  # noqa: E731
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return norm(a) == norm(b)


def _set(config, path: str, value) -> None:
    *parents, leaf = path.split('.')
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = copy.deepcopy(value)


def adopt(config, saved, *, fields, explicit: dict, where: str):
    """Copy `fields` (dotted paths or groups) of `saved` into a copy of
    `config`. Returns (config, ignored): the config file's differing values
    that were replaced. An explicit override (`explicit`: {'a.b': value})
    that contradicts `saved` is a ConfigError naming every such field."""
    saved_leaves = _leaves(saved.to_dict())
    cli_leaves = _leaves(config.to_dict())
    wanted = [p for p in saved_leaves if _under(p, fields)]
    contradictions, ignored = [], []
    for path in wanted:
        value, mine = saved_leaves[path], cli_leaves.get(path)
        if _same(value, mine):
            continue
        if any(_under(o, [path]) or _under(path, [o]) for o in explicit):
            contradictions.append(f'{path}={mine!r} (the run has {value!r})')
        else:
            ignored.append(path)
    if contradictions:
        raise ConfigError(f'{where} was trained with other values; these overrides contradict '
                          f'its config.json: {", ".join(contradictions)}')
    config = copy.deepcopy(config)
    for path in wanted:
        _set(config, path, saved_leaves[path])
    return config, ignored


def eval_config(workdir: str, config, *, explicit: dict):
    """The config that evaluates the run in `workdir`: its own config.json,
    with `evaluation.*` (and EVAL_MAY_SET) from `config`. `config` None means
    the saved config as it is (its evaluation group included)."""
    saved = RunDir(workdir).trained_config()
    if config is None:
        config = copy.deepcopy(saved)
        config.mode = 'eval'
        return config, []
    fields = [p for p in _leaves(saved.to_dict()) if not _under(p, EVAL_MAY_SET)]
    return adopt(config, saved, fields=fields, explicit=explicit, where=workdir)


def refine_config(config, *, explicit: dict):
    """`config` with the model and input definition of `train.init_from`'s
    config.json, when it has one (a bare checkpoint directory has not)."""
    saved = RunDir(config.train.init_from).saved_config()
    if saved is None:
        return config, []
    return adopt(config, saved, fields=MODEL_AND_INPUT, explicit=explicit,
                 where=config.train.init_from)
