"""Export a model, or check every export against the Flax model.

    python -m mobilenet_jax.export --weights WORKDIR_OR_FILE_OR_NAME --format tflite --out m.tflite
    python -m mobilenet_jax.export --weights W --format tflite --kind int8 --calibration digits --out m.tflite
    python -m mobilenet_jax.export --check --weights W --data digits

Formats and kinds: stablehlo (float32, int8), savedmodel (float32), tflite (float32, float16,
dynamic_int8, int8), onnx (float32, int8). `--calibration` and `--data` take "digits", an image
folder `root/<class>/*.jpg` or a prepared TFDS name ("name" or "name:split", looked up in
`--data-dir`). A model trained with --config.quantization=int8 needs no calibration for any
int8 kind: every format takes the activation ranges it trained with. The input size and
normalisation are the ones the weights record; `--image-size` and `--normalization` replace
them, and a model file that records none needs both.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from mobilenet_jax import weights
from mobilenet_jax.commands import COMMAND_ERRORS, CommandParser, exit_for_command
from mobilenet_jax.data.spec import NORMALIZATIONS
from mobilenet_jax.export.exporters import FORMATS, export
from mobilenet_jax.interop.preprocessing import check_size
from mobilenet_jax.paths import to_path

PROG = "python -m mobilenet_jax.export"
RANDOM_IMAGES = 8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    parser = CommandParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="a run's workdir, a model file, a TF-Slim, Keras or timm "
                        "file, or a registered name (see mobilenet_jax.pretrained.REGISTRY), local or gs://")
    parser.add_argument("--format", choices=sorted(FORMATS), help="export format")
    parser.add_argument("--kind", default="float32", help="float32, float16, dynamic_int8 or int8 (per format)")
    parser.add_argument("--out", help="output file (a directory for savedmodel)")
    parser.add_argument("--calibration", help="representative images for int8: digits, a folder or a TFDS name")
    parser.add_argument("--check", action="store_true", help="print the fidelity table of every export")
    parser.add_argument("--data", help="labelled images for --check (default: --calibration, else random images)")
    parser.add_argument("--data-dir", help="TFDS data folder of --calibration / --data names (default: TFDS's own)")
    parser.add_argument("--image-size", type=int, help="input size (default: the one the weights record)")
    parser.add_argument("--normalization", choices=list(NORMALIZATIONS),
                        help="input normalisation (default: the one the weights record)")
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
        images, labels = map(np.concatenate, zip(*datasets.eval_examples(data, deployable, args.data_dir, "--data" if args.data else "--calibration")))
    else:
        size = deployable.image_size
        images = np.random.default_rng(0).standard_normal((RANDOM_IMAGES, size, size, 3), np.float32)
    calibration = (
        datasets.calibration_images(args.calibration, deployable, data_dir=args.data_dir) if args.calibration else None
    )
    exports = [
        (name, kind) for name, kind in check.ALL_EXPORTS
        if calibration is not None or not FORMATS[name].kinds.needs_calibration(deployable, kind)
    ]
    results = check.check_exports(deployable, images, labels, calibration, exports)
    source = f"{len(images)} images of {data}" if data else f"{len(images)} random images"
    return f"{args.weights} at {deployable.image_size}x{deployable.image_size}, {source}\n{check.format_table(results)}"


def prepare_out(out: str, format_name: str, weights_ref: str) -> None:
    """Make the folder that will hold `out`, before any conversion; refuse an `out` that is a
    folder (except for savedmodel, which writes one) or the model file being exported, or a file
    recorded beside it."""
    path, source = to_path(out), to_path(weights_ref)
    model_file = os.fspath(source / weights.MODEL_FILE if source.is_dir() else source)
    suffixes = ("", weights.FIELDS_SUFFIX, weights.CLASS_NAMES_SUFFIX, weights.PREPROCESSING_SUFFIX)
    if os.fspath(path) in {model_file + suffix for suffix in suffixes}:
        raise ValueError(f"--out {out} would overwrite the weights being exported ({model_file}); pass another file")
    if format_name != "savedmodel" and path.is_dir():
        example = path / ("model" + FORMATS[format_name].suffix)
        raise IsADirectoryError(f"--out {out} is a folder; pass a file name, e.g. {example}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"cannot make the folder of --out {out} ({error}); pass a path in a writable folder") from error


def main(argv: list[str] | None = None) -> None:
    """Run the command; a mistake in its use ends in one line on stderr and exit status 2."""
    args = parse_args(argv)
    try:
        if args.image_size is not None:
            check_size(args.image_size, "--image-size")
        if args.check:
            print(run_check(args))
        else:
            prepare_out(args.out, args.format, args.weights)
            export(args.weights, args.format, args.out, kind=args.kind, calibration=args.calibration,
                   image_size=args.image_size, normalization=args.normalization, data_dir=args.data_dir)
            print(f"wrote {args.out}")
    except COMMAND_ERRORS as error:
        exit_for_command(PROG, error)


if __name__ == "__main__":
    main()
