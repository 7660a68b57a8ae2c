"""Optax optimizers and learning-rate schedules chosen by `config.optimizer`."""

import jax
import optax


def peak_learning_rate(cfg, *, batch_size: int) -> float:
    """`cfg.learning_rate`, or with `cfg.reference_batch_size` > 0 the linear
    scaling rule (Goyal et al., 2017): learning_rate x batch_size / reference,
    e.g. 0.1 per 256 images for the ImageNet ResNets (He et al., 2016)."""
    if cfg.reference_batch_size:
        return cfg.learning_rate * batch_size / cfg.reference_batch_size
    return cfg.learning_rate


def make_schedule(cfg, *, total_steps: int, steps_per_epoch: int,
                  batch_size: int) -> optax.Schedule:
    """Linear warmup from 0 over `warmup_epochs` to the peak learning rate
    (`peak_learning_rate` of the global `batch_size`), then constant, cosine
    decay to 0 at `total_steps`, or step decay by `step_factor` at each of
    `step_epochs`."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    lr = peak_learning_rate(cfg, batch_size=batch_size)
    if cfg.schedule == 'cosine':
        main = optax.cosine_decay_schedule(lr, decay_steps=max(total_steps - warmup, 1))
    elif cfg.schedule == 'step':
        boundaries = {int(round(e * steps_per_epoch)) - warmup: cfg.step_factor
                      for e in cfg.step_epochs}
        main = optax.piecewise_constant_schedule(lr, {b: f for b, f in boundaries.items()
                                                      if b > 0})
    else:
        main = optax.constant_schedule(lr)
    if warmup:
        main = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
    return jax.jit(main)  # one program for the loop's lr log line, not one per jnp op


def make_optimizer(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    """'sgd': momentum SGD (optionally Nesterov) with coupled L2 weight decay,
    i.e. grad += weight_decay * w before the momentum update, as in the
    ResNet/HNC/LinR papers' PyTorch training. 'adamw': decoupled decay."""
    if cfg.name == 'sgd':
        return optax.chain(
            optax.add_decayed_weights(cfg.weight_decay) if cfg.weight_decay else optax.identity(),
            optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay)
