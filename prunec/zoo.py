"""Built-in models that ship with prunec: no downloads, seeded, small.

Four things live here:

- architectures reused by the test zoo and the benchmarks: a CIFAR-style :class:`CifarResNet`
  (3 stages of basic blocks, widths 16/32/64, 1x1 conv + BN projection shortcuts so that every
  channel is prunable; ``resnet56()`` is 3 x 9 blocks), its 1-D counterpart
  :class:`ResNet1d` (``resnet56_1d()``, for 40-sample sequences) and :class:`VGG` (``vgg16()``:
  VGG-16 with batch norm for 32x32 inputs, a flatten -> linear classifier);
- :func:`mnist1d_data`: the MNIST-1D benchmark (Greydanus, 2020) generated locally with the
  ``mnist1d`` package (no download), split into fixed train / validation / test sets;
- :func:`digits_data`: scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, one
  channel, pixel values 0..16 scaled to 0..1) split into a fixed train and test set;
- :func:`default_model`: a small CIFAR-style ResNet trained at call time on those digits in a
  few seconds on CPU (> 95 % test accuracy), the model the README's main example prunes.

Everything is seeded and training runs on one thread, so two processes with the same torch
build give identical weights. Training runs once per process; later calls rebuild the model
from a cached state dict.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "BasicBlock", "CifarResNet", "VGG", "VGG16_CONFIG",
    "resnet56", "resnet20", "vgg16", "digits_data", "default_model", "evaluate",
    "ResNet1d", "resnet56_1d", "mnist1d_data",
]

VGG16_CONFIG: tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                       512, 512, 512, "M", 512, 512, 512, "M")


_CONV_NORM = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d)}


class BasicBlock(nn.Module):
    """Two kernel-3 conv-BN layers with a residual; a 1x1 conv + BN projection when shapes
    change. ``dims`` is 2 for images (Conv2d) and 1 for sequences (Conv1d)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dims: int = 2) -> None:
        super().__init__()
        conv, norm = _CONV_NORM[dims]
        self.conv1 = conv(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                conv(in_planes, planes, 1, stride, bias=False), norm(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet: a 3x3 stem, three stages of basic blocks, pooling, linear.

    Depth is ``6 * blocks_per_stage + 2`` (ResNet-20: 3, ResNet-56: 9). The first block of
    stages 2 and 3 halves the resolution.

    Args:
        blocks_per_stage: Basic blocks in each of the three stages.
        widths: Channels of the three stages.
        num_classes: Outputs of the classifier.
        in_channels: Image channels (3 for CIFAR, 1 for digits).
    """

    def __init__(self, blocks_per_stage: int = 9, widths: Sequence[int] = (16, 32, 64),
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            stages.append(_stage(in_planes, planes, blocks_per_stage, 1 if i == 0 else 2))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def _stage(in_planes: int, planes: int, blocks: int, stride: int, dims: int = 2) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride, dims)]
    layers += [BasicBlock(planes, planes, 1, dims) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG with batch norm for 32x32 inputs: conv-BN-ReLU stacks, max pools, flatten, linear.

    Args:
        config: Output channels per conv, ``"M"`` for a 2x2 max pool (see ``VGG16_CONFIG``).
        num_classes: Outputs of the classifier.
        in_channels: Image channels.
        width_mult: Scales every conv width (rounded, at least 8).
        image_size: Input resolution; the classifier sees ``C * (image_size / 2**pools)**2``.
    """

    def __init__(self, config: Sequence = VGG16_CONFIG, num_classes: int = 10,
                 in_channels: int = 3, width_mult: float = 1.0, image_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
                continue
            width = max(8, int(round(item * width_mult)))
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 for 32x32 images: 0.86 M parameters, 125.7 M MACs at 1x3x32x32 (125.5 M with
    option-A shortcuts as in the paper; the two 1x1 projections add 0.26 M)."""
    return CifarResNet(9, (16, 32, 64), num_classes, in_channels)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 for 32x32 images."""
    return CifarResNet(3, (16, 32, 64), num_classes, in_channels)


def vgg16(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> VGG:
    """VGG-16 with batch norm for 32x32 images (``width_mult`` < 1 for a lighter net)."""
    return VGG(VGG16_CONFIG, num_classes, in_channels, width_mult)


# --------------------------------------------------------------------------- 1-D ResNet
class ResNet1d(nn.Module):
    """:class:`CifarResNet` for sequences: a kernel-3 Conv1d stem, three stages of
    :class:`BasicBlock` (Conv1d form), global average pooling over time, a linear classifier.

    Depth is ``6 * blocks_per_stage + 2`` (``resnet56_1d``: 9). The first block of stages 2
    and 3 halves the length (40 -> 20 -> 10 for MNIST-1D).

    Args:
        blocks_per_stage: Basic blocks in each of the three stages.
        widths: Channels of the three stages.
        num_classes: Outputs of the classifier.
        in_channels: Input channels (1 for MNIST-1D).
    """

    def __init__(self, blocks_per_stage: int = 9, widths: Sequence[int] = (16, 32, 64),
                 num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm1d(widths[0])
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            stages.append(_stage(in_planes, planes, blocks_per_stage, 1 if i == 0 else 2, dims=1))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(out.mean(dim=2))


def resnet56_1d(num_classes: int = 10, in_channels: int = 1,
                blocks_per_stage: int = 9) -> ResNet1d:
    """1-D ResNet-56 (3 x 9 basic blocks, widths 16/32/64) for MNIST-1D: 0.29 M parameters,
    3.81 M MACs per 1x40 sequence. ``blocks_per_stage`` gives the smaller depths
    (3: ResNet-20)."""
    return ResNet1d(blocks_per_stage, (16, 32, 64), num_classes, in_channels)


# --------------------------------------------------------------------------- MNIST-1D
def mnist1d_data(num_samples: int = 30000, seed: int = 0, val_fraction: float = 0.1
                 ) -> tuple[torch.Tensor, ...]:
    """MNIST-1D as ``(x_train, y_train, x_val, y_val, x_test, y_test)``.

    The data are generated locally by ``mnist1d.data.make_dataset`` (10 one-dimensional digit
    templates, padded, scaled, sheared, translated and noised; 40 samples per sequence) with
    ``num_samples`` sequences and generator seed ``seed``; nothing is downloaded. The package's
    own 80 / 20 split gives the test set; the last ``val_fraction`` of its training part is the
    validation set (for selection decisions; keep the test set for final numbers). Sequences
    are ``float32`` of shape ``(N, 1, 40)``, labels ``int64`` in ``0..9``. The generator
    re-seeds numpy's and Python's global random states; they are restored afterwards.
    Results are cached per process; each call returns fresh tensors.

    Args:
        num_samples: Sequences generated in all (a multiple of 10; 1,000 per class of 10 is a
            usual size; generation takes about 0.6 s per 1,000 on one core).
        seed: Generator seed (same seed, same data).
        val_fraction: Share of the training part held out for validation, in ``[0, 1)``.

    Raises:
        ValueError: ``num_samples`` below 100 or ``val_fraction`` outside ``[0, 1)``.
        ImportError: when the ``mnist1d`` package is missing, with the pip command.
    """
    if int(num_samples) < 100:
        raise ValueError(f"mnist1d_data: num_samples must be >= 100, got {num_samples!r}.")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"mnist1d_data: val_fraction must be in [0, 1), got {val_fraction!r}.")
    return tuple(t.clone() for t in _mnist1d_cached(int(num_samples), int(seed), float(val_fraction)))


@functools.lru_cache(maxsize=4)
def _mnist1d_cached(num_samples: int, seed: int, val_fraction: float) -> tuple[torch.Tensor, ...]:
    import random

    import numpy as np
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # optional dependency: only the 1-D benchmarks need it
        raise ImportError("prunec.zoo.mnist1d_data needs the mnist1d package: "
                          "pip install mnist1d") from exc
    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:  # make_dataset seeds the global generators; the caller's streams must not change
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = torch.tensor(data["x"], dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data["y"], dtype=torch.int64)
    n_val = int(round(len(y) * val_fraction))
    n_train = len(y) - n_val
    x_test = torch.tensor(data["x_test"], dtype=torch.float32).unsqueeze(1)
    y_test = torch.tensor(data["y_test"], dtype=torch.int64)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], x_test, y_test


# --------------------------------------------------------------------------- digits
def digits_data(test_size: int = 360, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """scikit-learn's handwritten digits as ``(x_train, y_train, x_test, y_test)``.

    Images are ``float32`` tensors of shape ``(N, 1, 8, 8)`` scaled to ``[0, 1]``; labels are
    ``int64`` in ``0..9``. The split is a fixed seeded permutation (1,437 train / 360 test).

    Raises:
        ImportError: when scikit-learn is missing, with the pip command.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # optional dependency: only the default model needs it
        raise ImportError("prunec.zoo.digits_data needs scikit-learn: "
                          "pip install scikit-learn") from exc
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = order[:test_size], order[test_size:]
    return x[train], y[train], x[test], y[test]


def _digits_net() -> CifarResNet:
    # ResNet-14 (2 blocks per stage): small enough to train in seconds, deep enough to prune.
    return CifarResNet(2, (16, 32, 64), num_classes=10, in_channels=1)


@functools.lru_cache(maxsize=1)
@torch.enable_grad()  # callers may sit inside torch.no_grad()
def _trained_digits_state(epochs: int = 8, seed: int = 0) -> dict:
    """Train the digits ResNet once per process and return its state dict.

    Training runs on one thread: the tensors are tiny, so a second thread only adds
    synchronisation (and, on a busy machine, ten-fold slowdowns); it also makes the weights
    independent of the machine's thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_digits(epochs, seed)
    finally:
        torch.set_num_threads(threads)


def _train_digits(epochs: int, seed: int) -> dict:
    """AdamW with a one-cycle schedule, batches of 64, cross-entropy; returns the state."""
    torch.manual_seed(seed)
    x_train, y_train, _, _ = digits_data()
    model = _digits_net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(y_train) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y_train), generator=gen).split(64):
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def default_model() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """A trained digits classifier and example inputs: ``(model, (x,))``.

    The model is a CIFAR-style ResNet-14 (widths 16/32/64, one input channel) trained on
    :func:`digits_data` at first call (a few seconds on two CPU cores; > 95 % test accuracy),
    returned in eval mode. Each call returns a fresh module, so callers may mutate it.
    The example input is the first 8 test images, shape ``(8, 1, 8, 8)``.
    """
    model = _digits_net()
    model.load_state_dict(_trained_digits_state())
    model.eval()
    _, _, x_test, _ = digits_data()
    return model, (x_test[:8].clone(),)


@torch.no_grad()
def evaluate(model: nn.Module | object, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 256) -> float:
    """Top-1 accuracy of a callable classifier on ``(x, y)``, in ``[0, 1]``."""
    correct = 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        correct += int((model(xb).argmax(-1) == yb).sum())
    return correct / max(1, len(y))
