"""Fine-tuning recipes measured on the transfer sets, beside two anchors on the same data and weights.

For each set of `benchmarks.transfer_sets` and each recipe (overrides of configs/finetune.py) it
runs `python train.py` to the end and reads the run's metrics: the final evaluation accuracy, the
first logged training loss, the number of steps and the wall time. The anchors are the
linear-probe ceiling (logistic regression, scikit-learn, on the frozen pooled features of the
weights' own evaluation preprocessing) and, with --torch, `benchmarks.finetune_torch` (the
PyTorch tutorial's fine-tune of the same weights). Rows print as they finish, as a Markdown table.

    python -m benchmarks.transfer_sets /tmp/transfer
    python -m benchmarks.finetune_recipes --weights WEIGHTS --root /tmp/transfer --torch
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.machine import cpu_model
from benchmarks.transfer_sets import SETS

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 10
# Each recipe: overrides of configs/finetune.py. "default" is the config as it is.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # configs/finetune.py before these measurements: a random new classifier, BatchNorm frozen,
    # the backbone at a tenth of the classifier's rate, batch 64.
    "previous default": {
        "new_classifier_init": "random", "freeze_batch_stats": True, "backbone_lr_multiplier": 0.1,
        "batch_size": 64,
    },
    "frozen BatchNorm": {"freeze_batch_stats": True},
    "linear probe": {"trainable": "classifier/.*"},
}


def probe_accuracy(weights: str, folder: pathlib.Path) -> float:
    """Logistic regression on the weights' frozen pooled features: train on train/, score val/."""
    import jax
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    from mobilenet_jax.interop.pretrained import load_pretrained

    loaded = load_pretrained(weights)
    features = jax.jit(lambda x: loaded.model.clone(num_classes=0).apply(loaded.variables, x))

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        classes = sorted(p.name for p in (folder / name).iterdir())
        paths = [(p, label) for label, c in enumerate(classes) for p in sorted((folder / name / c).iterdir())]
        pooled = []
        for start in range(0, len(paths), 50):
            batch = [loaded.preprocessing(Image.open(p).convert("RGB")) for p, _ in paths[start:start + 50]]
            pooled.append(np.asarray(features(np.stack(batch))))
        return np.concatenate(pooled), np.array([label for _, label in paths])

    (x_train, y_train), (x_val, y_val) = split("train"), split("val")
    return float(LogisticRegression(max_iter=5000).fit(x_train, y_train).score(x_val, y_val))


def finetune(
    weights: str, folder: pathlib.Path, overrides: dict[str, Any], workdir: pathlib.Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run train.py with configs/finetune.py and `overrides` on `folder` (in the environment `env`,
    by default this process's); its result."""
    flags = [
        "--config=configs/finetune.py", f"--workdir={workdir}", f"--config.init_from={weights}",
        f"--config.folder_train_dir={folder / 'train'}", f"--config.folder_eval_dir={folder / 'val'}",
        f"--config.num_epochs={EPOCHS}", "--config.log_every_steps=1",
        *(f"--config.{key}={value}" for key, value in overrides.items()),
    ]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "train.py", *flags], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"train.py {' '.join(flags)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train_loss" in r]
    final = [r for r in rows if "eval_accuracy" in r][-1]
    return dict(eval_accuracy=final["eval_accuracy"], first_loss=train[0]["train_loss"], steps=final["step"],
                seconds=seconds)


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="pretrained weights (any reference init_from takes)")
    parser.add_argument("--root", required=True, type=pathlib.Path, help="where benchmarks.transfer_sets wrote the sets")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--torch", action="store_true", help="also run the PyTorch tutorial fine-tune")
    args = parser.parse_args(argv)
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_model()}, {EPOCHS} epochs, weights {args.weights}", flush=True)
    print(row(["set", "recipe", "eval accuracy", "first loss (ln K)", "steps", "seconds"]))
    print(row(["---"] * 6), flush=True)
    for name in args.sets:
        folder = args.root / name
        classes = len([p for p in (folder / "train").iterdir() if p.is_dir()])
        ln_k = f"({math.log(classes):.3f})"
        print(row([name, "linear-probe ceiling", f"{probe_accuracy(args.weights, folder):.3f}", "", "", ""]), flush=True)
        results = {}
        for recipe in args.recipes:
            with tempfile.TemporaryDirectory() as workdir:
                results[recipe] = finetune(args.weights, folder, RECIPES[recipe], pathlib.Path(workdir))
        if args.torch:
            from benchmarks.finetune_torch import finetune_torch

            results["PyTorch tutorial"] = finetune_torch(
                args.weights, str(folder / "train"), str(folder / "val"), epochs=EPOCHS
            )
        for recipe, r in results.items():
            cells = [name, recipe, f"{r['eval_accuracy']:.3f}", f"{r['first_loss']:.3f} {ln_k}", str(r["steps"]),
                     f"{r['seconds']:.0f}"]
            print(row(cells), flush=True)


if __name__ == "__main__":
    main()
