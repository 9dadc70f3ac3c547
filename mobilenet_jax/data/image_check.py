"""Whether an image file is one training can use: it decodes in full, and its size, read from
its header before anything is decoded, is neither too small to crop nor a decompression bomb.

`check_images` checks a folder's files in parallel and names every bad one.
"""

from __future__ import annotations

import concurrent.futures
import io
import logging
import re
import threading
import warnings

import tensorflow as tf
import tqdm
from PIL import Image

from mobilenet_jax.paths import to_path

# A side of 1 leaves the eval crop (S / (S + 32) of the shorter side) and every train crop empty.
# 2 works at any image_size >= 32 (S / (S + 32) >= 1/2), measured for 300 crop seeds at
# crop_min_area 0.001, 0.08 and 1, PNG and JPEG, 2x2 to 2x1000.
MIN_IMAGE_SIDE = 2
# PIL's decompression-bomb bound (its default Image.MAX_IMAGE_PIXELS): 0.25 GiB as 8-bit RGB. A
# 20000x20000 PNG of 1.2 MB would otherwise be decoded to 1.2 GB, again at every crop.
MAX_IMAGE_PIXELS = 89_478_485
CHECK_THREADS = 16  # decoding releases the GIL; reading gs:// is mostly waiting
CHECK_PROGRESS_MIN = 1000  # images: smaller folders are checked without a progress bar
LISTED_BAD_IMAGES = 10  # a refusal names this many bad images, then counts the rest
# "{{function_node ...}} Invalid PNG data, size 46 [Op:DecodeImage]" -> "Invalid PNG data, size 46"
_TF_ERROR_DECORATION = re.compile(r"\{\{.*?\}\}|\[Op:\w+\]")
# Warning filters are process-wide: headers are read one at a time with PIL's warning silenced.
_HEADER_LOCK = threading.Lock()


def check_images(paths: list[str], setting: str, skip_bad: bool, offer_skip: bool) -> dict[str, str]:
    """{path: problem} of the images training cannot use (see `_image_problem`), read in parallel.

    Bad images raise a ValueError naming every one (and, with `offer_skip`, the
    config.skip_bad_images way out), or with `skip_bad` are logged and returned, for the caller
    to leave out.
    """
    with concurrent.futures.ThreadPoolExecutor(CHECK_THREADS) as pool:
        problems = pool.map(_image_problem, paths)
        progress = tqdm.tqdm(
            problems, total=len(paths), desc=f"checking {setting} images", unit="image",
            disable=len(paths) < CHECK_PROGRESS_MIN,
        )
        bad = {path: problem for path, problem in zip(paths, progress) if problem}
    if bad:
        listing = [f"{path}: {problem}" for path, problem in bad.items()]
        images = f"{len(bad)} image{'s' if len(bad) > 1 else ''} that training cannot use"
        if not skip_bad:
            shown = "; ".join(listing[:LISTED_BAD_IMAGES])
            more = f"; and {len(bad) - LISTED_BAD_IMAGES} more" if len(bad) > LISTED_BAD_IMAGES else ""
            skip = ", or set config.skip_bad_images=True to train without them" if offer_skip else ""
            raise ValueError(f"{setting} has {images} ({shown}{more}); remove or fix them{skip}")
        logging.warning("%s: leaving out %s: %s", setting, images, "; ".join(listing))
    return bad


def _image_problem(path: str) -> str | None:
    """Why training cannot use the image file at `path`, or None when it can.

    The header comes first (see `_header_problem`): an image of too many pixels is refused
    before it is decoded. The rest is decoded in full, by content as in training: a PNG named
    .jpg is fine; an empty, truncated or corrupt file, or one that is no image at all, is bad,
    and so is a side under MIN_IMAGE_SIDE.
    """
    try:
        contents = to_path(path).read_bytes()
        if not contents:
            return "empty file"
        problem = _header_problem(contents)
        if problem is None:
            height, width, _ = tf.io.decode_image(contents, channels=3, expand_animations=False).shape
            problem = _size_problem(width, height)
    except (OSError, tf.errors.OpError) as error:
        message = error.message if isinstance(error, tf.errors.OpError) else str(error)
        return _TF_ERROR_DECORATION.sub("", message).strip().splitlines()[0]
    return problem


def _header_problem(contents: bytes) -> str | None:
    """What is wrong with an image's size by its header, which PIL reads without decoding; None
    also when PIL cannot read the header (decoding then says why)."""
    with _HEADER_LOCK, warnings.catch_warnings():
        # PIL warns above its bound (MAX_IMAGE_PIXELS by default) and raises above twice it.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(contents)) as image:
                return _size_problem(*image.size)
        except Image.DecompressionBombError:
            return f"more than {MAX_IMAGE_PIXELS:,} pixels (a decompression-bomb bound, as PIL's)"
        except OSError:
            return None


def _size_problem(width: int, height: int) -> str | None:
    """What is wrong with an image of `width` x `height` pixels for training, or None."""
    if min(width, height) < MIN_IMAGE_SIDE:
        return f"{width}x{height} pixels, a side under {MIN_IMAGE_SIDE} leaves no crop"
    if width * height > MAX_IMAGE_PIXELS:
        return f"{width}x{height} pixels, more than {MAX_IMAGE_PIXELS:,} (a decompression-bomb bound, as PIL's)"
    return None
