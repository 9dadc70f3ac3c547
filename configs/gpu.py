"""ImageNet on one machine with 8 GPUs: bfloat16, 256 images per GPU, the default recipe.

python train.py --config=configs/gpu.py --workdir=...   # or configs/gpu.py:sgd
"""

import ml_collections

from configs import default


def get_config(recipe: str = "rmsprop") -> ml_collections.ConfigDict:
    """The default config for 8 GPUs in one host; learning_rate stays per 256 images."""
    config = default.get_config(recipe)
    config.half_precision = True
    config.batch_size = 2048
    config.eval_batch_size = 2048
    config.parallelism = "jit"
    # A few decoded batches queued ride out JPEG-decoding hiccups; each is 1.2 GB of float32.
    config.prefetch = 4
    return config
