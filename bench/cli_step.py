"""camjax's real training step -- the one `python -m camjax.main` runs -- built
outside a run directory, for benchmarks.

`build(config, num_classes=...)` assembles, from a camjax config, the same
pieces `camjax.training.train.train_and_evaluate` assembles: the ('data',)
mesh, the model from the registry, the objective from `config.loss`, the
optimizer and learning-rate schedule from `config.optimizer`, the fresh
replicated state (`init_state`, seed `config.seed`) and the jitted step
(`make_train_step`: state replicated and donated, batch sharded on 'data',
the non-finite guard, gradient accumulation). It writes nothing and reads no
data; `synthetic_batches` makes device-resident global batches and
`time_rounds` times the step on them.

    import cli_step                      # with bench/ on sys.path
    config = cli_step.bench_config(model='resnet20', image_size=32, batch_size=128)
    cli = cli_step.build(config, num_classes=10)
    batches = cli.synthetic_batches(4)
    state, metrics = cli.step(cli.state, batches[0])
"""

import dataclasses
import os
import statistics
import sys
import time
from typing import Any

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from camjax import objectives, parallel  # noqa: E402
from camjax.config import schema  # noqa: E402
from camjax.config.presets import imagenet_input  # noqa: E402
from camjax.training.loop import Plan  # noqa: E402
from camjax.training.state import TrainState, model_from_config  # noqa: E402
from camjax.training.train import build_training  # noqa: E402

CE = (dict(name='cross_entropy'),)


def bench_config(*, model: str, image_size: int, batch_size: int, dtype: str = 'float32',
                 loss=CE, num_steps: int = 10_000, seed: int = 0, **model_fields):
    """A `base_config()` (validated later by `build`, as the CLI validates)
    for `model` at `image_size` with global batch `batch_size`, on the
    embedded synthetic dataset, which is never read unless the caller opens
    it. Images of 128 px and more get the ImageNet input preset (mean/std, no
    crop padding). The optimizer is the schema default: SGD with Nesterov
    momentum, coupled weight decay, a cosine schedule over `num_steps` (so the
    learning rate is nearly constant over a short benchmark)."""
    config = schema.base_config()
    config.seed = seed
    config.dataset.image_size = image_size
    if image_size >= 128:
        imagenet_input(config.dataset, image_size=image_size)
    dtype_field = {} if dtype == 'float32' else {'dtype': dtype}  # models without one: fp32
    config.model = dict(name=model, **dtype_field, **model_fields)
    config.loss = tuple(dict(term) for term in loss)
    config.train.batch_size = batch_size
    config.train.eval_batch_size = batch_size
    config.train.num_steps = num_steps
    return config


@dataclasses.dataclass
class CliStep:
    """What `build` returns. `step(state, batch) -> (state, metrics)` donates
    `state`: pass each returned state back in and never reuse an old one.
    `state` is the fresh initial state; `initial_state()` gives a new copy."""
    config: Any
    num_classes: int
    mesh: jax.sharding.Mesh
    model: Any
    objective: Any
    schedule: Any
    step: Any
    state: TrainState

    @property
    def batch_sharding(self):
        return parallel.batch_sharded(self.mesh)

    @property
    def global_batch(self) -> int:
        return self.config.train.batch_size

    def initial_state(self) -> TrainState:
        return jax.tree.map(lambda x: x.copy(), self.state)

    def host_batch(self, seed: int) -> dict:
        """One global batch as numpy: uint8 NHWC images (what the input
        pipeline yields) and int32 labels; the same for every device count."""
        rng = np.random.default_rng(seed)
        size, b = self.config.dataset.image_size, self.global_batch
        return {'image': rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8),
                'label': rng.integers(0, self.num_classes, b).astype(np.int32)}

    def synthetic_batches(self, count: int, *, seed: int = 0) -> list[dict]:
        """`count` different global batches (seeds seed, seed+1, ...), placed
        batch-sharded on the mesh now, so that no host transfer is timed."""
        batches = [jax.device_put(self.host_batch(seed + i), self.batch_sharding)
                   for i in range(count)]
        return jax.block_until_ready(batches)


def build(config, *, num_classes: int, num_train: int | None = None, mesh=None) -> CliStep:
    """The CLI's train step for `config` (see the module doc). `num_train`
    (training-set size) only sets the schedule's steps per epoch, as the loop
    does; default 100 batches. `mesh` defaults to every device, as the CLI's."""
    mesh = parallel.make_mesh() if mesh is None else mesh
    config.loss = schema.parse_loss_terms(config.loss)
    schema.resolve_device_sizes(config, num_devices=mesh.devices.size)
    schema.validate(config, num_devices=mesh.devices.size)
    objectives.validate_terms(config.loss, num_classes=num_classes, multilabel=False)
    plan = Plan.from_config(config.train, num_train or 100 * config.train.batch_size)
    model = model_from_config(config, num_classes=num_classes)
    objective = objectives.build_objective(config.loss)
    schedule, step, state = build_training(config, model, objective, plan=plan, mesh=mesh)
    return CliStep(config=config, num_classes=num_classes, mesh=mesh, model=model,
                   objective=objective, schedule=schedule, step=step, state=state)


def compile_step(cli: CliStep, batch) -> float:
    """Compile `cli.step` for `batch`'s shapes ahead of the timed rounds (it
    stays in jit's cache); returns the seconds it took."""
    t0 = time.perf_counter()
    cli.step.lower(cli.state, batch).compile()
    return time.perf_counter() - t0


class Stepper:
    """Threads the donated state through `cli.step`; `run(n)` runs n steps and
    blocks only once, at the end, on the last state and metrics, returning
    the seconds taken. `batches`: a list of device batches, used in rotation,
    or an iterator (an input pipeline), advanced once per step inside the
    timed window. `state` defaults to a copy of the initial state."""

    def __init__(self, cli: CliStep, batches, state: TrainState | None = None):
        self.cli, self._i = cli, 0
        if isinstance(batches, (list, tuple)):
            self._next = lambda: batches[self._i % len(batches)]
        else:
            self._next = lambda: next(batches)
        self.state = cli.initial_state() if state is None else state
        self.metrics = None

    def run(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            batch = self._next()
            self._i += 1
            self.state, self.metrics = self.cli.step(self.state, batch)
        jax.block_until_ready((self.state, self.metrics))
        return time.perf_counter() - t0


def summarize(seconds: list[float], *, images_per_round: int) -> dict:
    """{'median', 'min', 'max'} images/s over timed rounds (median of the
    per-round rates), and the rounds."""
    rates = [images_per_round / s for s in seconds]
    return {'median': statistics.median(rates), 'min': min(rates), 'max': max(rates),
            'rounds': len(rates)}


def device_label() -> str:
    """'<device_kind> (<platform> xN)' of the devices this process sees."""
    dev = jax.devices()[0]
    return f'{dev.device_kind} ({dev.platform} x{jax.device_count()})'
