"""LinRNL in plain PyTorch, written as the LinR paper's PyTorch code most
likely was, from a camjax CIFAR ResNet run's weights: the independent check of
whether a LinR collapse is the method's or camjax's (issue 22).

Nothing of camjax runs in the refinement. The camjax run's parameters and
BatchNorm statistics are copied into the PyTorch mirror of its network
(bench/step_throughput.py), the images are read with Pillow from the image
folder, and each step is, in `model.train()` mode throughout:

    a ~ Beta(alpha, alpha) (numpy, one per batch); y = x[randperm]
    with torch.no_grad(): p = softmax(model(x))     # batch statistics, updates the running ones
    P2 = a p + (1 - a) p[perm]
    loss = F.kl_div(F.log_softmax(model(a x + (1 - a) y)), P2, reduction=R)
    SGD(lr, momentum 0.9, no weight decay)

`kl_div(input=log P1, target=P2)` is D_KL(P2 || P1). R is PyTorch's default
'mean' (over all B x K elements, so 1/K of the per-example sum) or
'batchmean' (the KL per example, camjax's refine.reduction='sum'). The
training images get camjax's augmentation (zero-pad 4, random crop, flip).
Every --eval-every steps it prints the test accuracy (`model.eval()`), the
mean LinR loss and the collapse measures of camjax.training.collapse on the
clean batch, and at the end one summary line.

  python bench/linr_torch_reference.py --run ~/camjax-runs/cifar10_linr-baseline \\
      --data ~/camjax-data/cifar10 --lr 1e-2 --reduction batchmean --steps 351
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def read_folder(root: str, split: str):
    """(N, 32, 32, 3) uint8 images and (N,) labels of root/split/<class>/*."""
    from PIL import Image
    classes = sorted(os.listdir(os.path.join(root, split)))
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(root, split, name)
        for file in sorted(os.listdir(folder)):
            with Image.open(os.path.join(folder, file)) as im:
                images.append(np.asarray(im.convert('RGB')))
            labels.append(label)
    return np.stack(images), np.asarray(labels)


def augment(batch: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Zero-pad, random crop back to size, random horizontal flip (NHWC uint8)."""
    n, h, w, _ = batch.shape
    padded = np.pad(batch, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty_like(batch)
    for i, (dy, dx, flip) in enumerate(zip(rng.integers(0, 2 * pad + 1, n),
                                           rng.integers(0, 2 * pad + 1, n),
                                           rng.random(n) < 0.5, strict=True)):
        crop = padded[i, dy:dy + h, dx:dx + w]
        out[i] = crop[:, ::-1] if flip else crop
    return out


def collapse_measures(logits) -> dict:
    """camjax.training.collapse.measures, in torch."""
    import torch
    probs = torch.softmax(logits.float(), 1)
    counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1])
    mean = probs.mean(0)
    return {'top_class_share': float(counts.max()) / probs.shape[0],
            'mean_prediction_entropy': float(-(mean * mean.clamp_min(1e-30).log()).sum()),
            'mean_max_prob': float(probs.max(1).values.mean())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--run', required=True, help='camjax workdir of a CIFAR ResNet run')
    parser.add_argument('--step', type=int, default=-1, help='its checkpoint; -1 = newest')
    parser.add_argument('--data', required=True, help='CIFAR-10 image folder (train/, test/)')
    parser.add_argument('--lr', type=float, default=1e-2)
    parser.add_argument('--reduction', choices=('mean', 'batchmean'), default='batchmean')
    parser.add_argument('--alpha', type=float, default=0.75)
    parser.add_argument('--steps', type=int, default=351)
    parser.add_argument('--eval-every', type=int, default=50)
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from step_throughput import load_camjax_weights, torch_cifar_resnet

    from camjax.checkpoint import restore_model_variables

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    with open(os.path.join(args.run, 'config.json')) as f:
        saved = json.load(f)
    depth = int(saved['model']['name'].removeprefix('resnet'))
    mean = torch.tensor(saved['dataset']['mean']).view(1, 3, 1, 1)
    std = torch.tensor(saved['dataset']['std']).view(1, 3, 1, 1)
    variables = restore_model_variables(args.run, None if args.step < 0 else args.step)
    model = torch_cifar_resnet(depth, 10, width=saved['model'].get('width', 16))
    load_camjax_weights(model, variables['params'], variables['batch_stats'])

    train_x, _ = read_folder(args.data, 'train')
    test_x, test_y = read_folder(args.data, 'test')

    def tensor(batch_uint8):
        x = torch.from_numpy(np.ascontiguousarray(batch_uint8)).permute(0, 3, 1, 2).float()
        return (x / 255 - mean) / std

    def test_accuracy():
        model.eval()
        right = 0
        with torch.no_grad():
            for i in range(0, len(test_x), 500):
                right += int((model(tensor(test_x[i:i + 500])).argmax(1)
                              == torch.from_numpy(test_y[i:i + 500])).sum())
        model.train()
        return right / len(test_x)

    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=0.0)
    start_acc = test_accuracy()
    print(f'torch LinRNL: lr {args.lr}, kl_div reduction {args.reduction!r}, alpha '
          f'{args.alpha}, batch {args.batch_size}; step 0: test acc {start_acc:.4f}', flush=True)
    model.train()
    order, cursor, losses, started = rng.permutation(len(train_x)), 0, [], time.perf_counter()
    measures = {}
    for step in range(1, args.steps + 1):
        if cursor + args.batch_size > len(order):
            order, cursor = rng.permutation(len(train_x)), 0
        x = tensor(augment(train_x[order[cursor:cursor + args.batch_size]], rng))
        cursor += args.batch_size
        a = float(rng.beta(args.alpha, args.alpha))
        perm = torch.randperm(x.shape[0])
        with torch.no_grad():
            clean = model(x)
            p = torch.softmax(clean, 1)
            p2 = a * p + (1 - a) * p[perm]
        mixed = a * x + (1 - a) * x[perm]
        loss = F.kl_div(F.log_softmax(model(mixed), 1), p2, reduction=args.reduction)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        measures = collapse_measures(clean)
        if step % args.eval_every == 0 or step == args.steps:
            print(f'step {step}: test acc {test_accuracy():.4f} | LinR loss '
                  f'{np.mean(losses):.5f} | ' + ', '.join(f'{k} {v:.3f}'
                                                        for k, v in measures.items()),
                  flush=True)
            losses = []
    print(f'summary: lr {args.lr} reduction {args.reduction} steps {args.steps}: test acc '
          f'{start_acc:.4f} -> {test_accuracy():.4f} ({time.perf_counter() - started:.0f} s)',
          flush=True)


if __name__ == '__main__':
    main()
