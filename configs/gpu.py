"""ImageNet on GPUs: bfloat16, 256 images per GPU, the default recipe.

python train.py --config=configs/gpu.py --workdir=...   # or configs/gpu.py:sgd

The global batch is 256 per GPU times the run's GPUs (one host of 8: 2048) unless
--config.batch_size sets it; the rate scales with it as in configs/tpu.py, with a 5-epoch
warm-up above the reference's batch of 1024.
"""

import ml_collections
from ml_collections import config_dict

from configs import default

PER_GPU_BATCH = 256


def get_config(recipe: str = "rmsprop") -> ml_collections.ConfigDict:
    """The default recipe scaled to the GPUs the run finds; learning_rate stays per 256 images."""
    config = default.get_config(recipe)
    config.half_precision = True
    config.per_device_batch_size = PER_GPU_BATCH
    config.batch_size = config_dict.placeholder(int)
    config.eval_batch_size = config_dict.placeholder(int)
    config.warmup_epochs = config_dict.placeholder(float)
    config.parallelism = "jit"
    # A few decoded batches queued ride out JPEG-decoding hiccups; each is 1.2 GB of float32.
    config.prefetch = 4
    return config
