"""The PyTorch anchor for our fine-tuning measurements: the tutorial recipe a PyTorch user starts from.

It fine-tunes the same converted ImageNet weights on the same image folders
(benchmarks.transfer_sets) the way the official PyTorch tutorial "Transfer Learning for Computer
Vision" fine-tunes a convnet, so our JAX recipe's accuracy can be read against what a PyTorch user
would get: the weights in the PyTorch reference (`torch_weights.torch_reference_from_flax`), a
fresh `nn.Linear` classifier, ALL parameters trained by SGD (lr 0.001, momentum 0.9) with the rate
cut tenfold every 7 epochs, cross-entropy, BatchNorm in train mode (PyTorch's momentum 0.1),
RandomResizedCrop and horizontal flips drawn as torchvision draws them (written with PIL and
numpy). Departures from the tutorial: the batch size is a parameter (the tutorial's is 4); pixels
are normalised the weights' way (their `preprocessing`, not ImageNet mean and std) and evaluation
uses the weights' own preprocessing; the tutorial keeps its best epoch by validation accuracy,
here the last epoch is evaluated once, so the validation set chooses nothing.

    python -m benchmarks.finetune_torch WEIGHTS TRAIN_DIR VAL_DIR   # prints one JSON line
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import time
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mobilenet_jax.interop.preprocessing import Preprocessing
from mobilenet_jax.interop.pretrained import Pretrained, load_pretrained
from mobilenet_jax.interop.torch_weights import torch_reference_from_flax

THREADS = 2  # the benchmark machine's cores
LEARNING_RATE, MOMENTUM = 0.001, 0.9
STEP_EPOCHS, GAMMA = 7, 0.1
CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)

Example = tuple[Image.Image, int]  # an RGB image and its class index
Box = tuple[int, int, int, int]  # left, top, right, bottom


def class_names(root: str) -> list[str]:
    """The sub-folder names of `root`, sorted: class i is the i-th."""
    return sorted(path.name for path in pathlib.Path(root).iterdir() if path.is_dir())


def image_folder(root: str, classes: list[str]) -> list[Example]:
    """Every image under root/<class>/, loaded as RGB, with its class index."""
    return [
        (Image.open(path).convert("RGB"), label)
        for label, name in enumerate(classes)
        for path in sorted((pathlib.Path(root) / name).iterdir())
    ]


def random_crop_box(width: int, height: int, rng: np.random.Generator) -> Box:
    """torchvision's RandomResizedCrop box: 10 tries at a random area and log-uniform aspect ratio,
    then the central crop at the nearest allowed aspect ratio."""
    for _ in range(10):
        area = width * height * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    aspect = min(max(width / height, CROP_RATIO[0]), CROP_RATIO[1])
    w, h = min(width, round(height * aspect)), min(height, round(width / aspect))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def augment(image: Image.Image, crop_resize: Preprocessing, rng: np.random.Generator) -> np.ndarray:
    """A random resized crop (bilinear), flipped left-right with probability 1/2, normalised."""
    pixels = crop_resize(image.crop(random_crop_box(*image.size, rng)))
    return np.flip(pixels, axis=1) if rng.random() < 0.5 else pixels


def as_nchw(images: list[np.ndarray]) -> torch.Tensor:
    """NHWC float32 arrays as one NCHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)))


def batches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """`order` (example indices) in consecutive batches, the last one partial."""
    return (order[start : start + batch_size] for start in range(0, len(order), batch_size))


def anchor_model(pretrained: Pretrained, num_classes: int) -> nn.Module:
    """The weights in the PyTorch reference with a fresh `nn.Linear(features, num_classes)` head."""
    net = torch_reference_from_flax(pretrained.model, pretrained.variables)
    net.classifier = nn.Linear(net.classifier.in_features, num_classes)
    return net


def train_epoch(
    net: nn.Module, optimizer: torch.optim.Optimizer, examples: list[Example], crop_resize: Preprocessing,
    batch_size: int, rng: np.random.Generator,
) -> list[float]:
    """One shuffled pass of SGD steps over `examples`, BatchNorm in train mode; the step losses."""
    net.train()
    losses = []
    for batch in batches(rng.permutation(len(examples)), batch_size):
        images = as_nchw([augment(examples[i][0], crop_resize, rng) for i in batch])
        labels = torch.tensor([examples[i][1] for i in batch])
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def accuracy(net: nn.Module, examples: list[Example], preprocessing: Preprocessing, batch_size: int) -> float:
    """Top-1 accuracy in eval mode, each image through the weights' own preprocessing."""
    net.eval()
    correct = 0
    with torch.no_grad():
        for batch in batches(np.arange(len(examples)), batch_size):
            logits = net(as_nchw([preprocessing(examples[i][0]) for i in batch]))
            correct += sum(int(p == examples[i][1]) for p, i in zip(logits.argmax(1).tolist(), batch))
    return correct / len(examples)


def finetune_torch(
    weights: str, train_dir: str, val_dir: str, *, epochs: int = 10, batch_size: int = 32, seed: int = 0
) -> dict:
    """Fine-tune `weights` on train_dir by the tutorial recipe; eval_accuracy on val_dir, the first
    step's loss, the step count and the training seconds (loading and evaluation excluded)."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    classes = class_names(train_dir)
    train, val = image_folder(train_dir, classes), image_folder(val_dir, classes)
    pretrained = load_pretrained(weights)
    net = anchor_model(pretrained, len(classes))
    crop_resize = dataclasses.replace(
        pretrained.preprocessing, crop_fraction=1.0, resize="crop_then_resize", interpolation="bilinear"
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEP_EPOCHS, gamma=GAMMA)
    losses = []
    start = time.perf_counter()
    for _ in range(epochs):
        losses += train_epoch(net, optimizer, train, crop_resize, batch_size, rng)
        schedule.step()
    seconds = time.perf_counter() - start
    return {
        "eval_accuracy": accuracy(net, val, pretrained.preprocessing, batch_size),
        "first_loss": losses[0],
        "steps": len(losses),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, fine-tune, print the result as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("train_dir")
    parser.add_argument("val_dir")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = finetune_torch(
        args.weights, args.train_dir, args.val_dir, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
