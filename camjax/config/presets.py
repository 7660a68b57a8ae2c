"""Reusable pieces of experiment configs: dataset inputs, schedules and the
LinR refinement set-up. Each sets fields of a `base_config()` in place; the
configs/ files combine them."""


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


def cifar_step_schedule(config, *, learning_rate: float, weight_decay: float = 5e-4) -> None:
    """The CIFAR baseline schedule of the LinR experiments (bearpaw/pytorch-
    classification): 164 epochs, lr /10 at epochs 81 and 122, batch 128."""
    o = config.optimizer
    o.learning_rate, o.weight_decay, o.nesterov = learning_rate, weight_decay, False
    o.schedule, o.step_epochs = 'step', (81.0, 122.0)
    config.train.num_epochs, config.train.batch_size = 164.0, 128


def linr_refinement(config, *, variant: str, rounds: int, steps: int = -1,
                    linr_learning_rate: float = 1e-2, init_from: str = '') -> None:
    """Make `config` a LinR refinement (LinR paper, Algorithm 1) of the run in
    `init_from`: T = `rounds`, N_cls = N_LinR = `steps` (-1: one epoch),
    optimizer_cls SGD lr 3e-4 / momentum 0.9 / wd 5e-4, optimizer_linr SGD
    momentum 0.9 / no wd at `linr_learning_rate` (1e-2 or 1e-3 in the paper)."""
    config.mode = 'refine'
    r = config.refine
    r.variant, r.rounds, r.cls_steps, r.linr_steps = variant, rounds, steps, steps
    r.linr_optimizer.learning_rate = linr_learning_rate
    config.train.init_from = init_from


def cifar10_folder(dataset_cfg, root: str = 'data/cifar10') -> None:
    """CIFAR-10 as an image folder (train/<class>/*.jpg, test/<class>/*.jpg),
    e.g. ../shared/data's archive unpacked to data/cifar10, at 32px."""
    dataset_cfg.name = f'imagefolder:{root}'
    dataset_cfg.image_size = 32
    dataset_cfg.mean = (0.4914, 0.4822, 0.4465)
    dataset_cfg.std = (0.2470, 0.2435, 0.2616)
