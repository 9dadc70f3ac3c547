"""Export a model, or check every export against the Flax model.

    python -m mobilenet_jax.export --weights WORKDIR_OR_FILE_OR_NAME --format tflite --out m.tflite
    python -m mobilenet_jax.export --weights W --format tflite --kind int8 --calibration digits --out m.tflite
    python -m mobilenet_jax.export --check --weights W --data digits

Formats and kinds: stablehlo (float32, int8), savedmodel (float32), tflite (float32, float16,
dynamic_int8, int8), onnx (float32, int8). `--calibration` and `--data` take "digits", an image
folder `root/<class>/*.jpg` or a prepared TFDS name ("name" or "name:split", looked up in
`--data-dir`). A model trained with --config.quantization=int8 needs no calibration for the
stablehlo int8 kind: it uses the activation ranges it trained with.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mobilenet_jax.export.exporters import FORMATS, export, uses_trained_ranges
from mobilenet_jax.export.runtime import MissingRuntimeError

RANDOM_IMAGES = 8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        prog="python -m mobilenet_jax.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="run workdir, mobilenet_v1.msgpack model file or pretrained name")
    parser.add_argument("--format", choices=sorted(FORMATS), help="export format")
    parser.add_argument("--kind", default="float32", help="float32, float16, dynamic_int8 or int8 (per format)")
    parser.add_argument("--out", help="output file (a directory for savedmodel)")
    parser.add_argument("--calibration", help="representative images for int8: digits, a folder or a TFDS name")
    parser.add_argument("--check", action="store_true", help="print the fidelity table of every export")
    parser.add_argument("--data", help="labelled images for --check (default: --calibration, else random images)")
    parser.add_argument("--data-dir", help="TFDS data folder of --calibration / --data names (default: TFDS's own)")
    parser.add_argument("--image-size", type=int, help="input size (default: the run's, else 224)")
    parser.add_argument("--normalization", help="input normalisation (default: the run's, else imagenet)")
    args = parser.parse_args(argv)
    if not args.check and not (args.format and args.out):
        parser.error("--format and --out are required unless --check is given")
    return args


def run_check(args: argparse.Namespace) -> str:
    """The fidelity table of every export of `--weights` (int8 kinds only with calibration)."""
    from mobilenet_jax.export import check, datasets
    from mobilenet_jax.export.source import load_weights

    deployable = load_weights(args.weights, image_size=args.image_size, normalization=args.normalization)
    data = args.data or args.calibration
    labels = None
    if data:
        images, labels = map(np.concatenate, zip(*datasets.eval_examples(data, deployable, args.data_dir)))
    else:
        size = deployable.image_size
        images = np.random.default_rng(0).standard_normal((RANDOM_IMAGES, size, size, 3), np.float32)
    calibration = (
        datasets.calibration_images(args.calibration, deployable, data_dir=args.data_dir) if args.calibration else None
    )
    trained = uses_trained_ranges(deployable)  # a quantization-aware model: the JAX int8 needs no calibration
    exports = [
        (name, kind) for name, kind in check.ALL_EXPORTS
        if calibration is not None or kind != "int8" or (trained and name == "stablehlo")
    ]
    results = check.check_exports(deployable, images, labels, calibration, exports)
    source = f"{len(images)} images of {data}" if data else f"{len(images)} random images"
    return f"{args.weights} at {deployable.image_size}x{deployable.image_size}, {source}\n{check.format_table(results)}"


def main(argv: list[str] | None = None) -> None:
    """Run the command; expected failures print one line and exit with status 2."""
    args = parse_args(argv)
    try:
        if args.check:
            print(run_check(args))
        else:
            export(args.weights, args.format, args.out, kind=args.kind, calibration=args.calibration,
                   image_size=args.image_size, normalization=args.normalization, data_dir=args.data_dir)
            print(f"wrote {args.out}")
    except (ValueError, FileNotFoundError, MissingRuntimeError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
