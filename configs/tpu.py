"""ImageNet on a Cloud TPU VM or pod slice: bfloat16, 128 images per chip, the default recipe.

python train.py --distributed --config=configs/tpu.py --workdir=gs://...   # or configs/tpu.py:sgd

The global batch is 128 per chip times the slice's chips (v4-8: 512, v4-32: 2048, v5e-64: 8192)
unless --config.batch_size sets it. The rate stays 0.165 per 256 images, the reference's 0.66 at
its batch of 1024, scaled linearly with the batch; above 1024 it warms up over 5 epochs.
BatchNorm statistics are per chip, as the reference computed them per core: 128 images each,
and no all-reduce per BatchNorm layer in the step.
"""

import ml_collections
from ml_collections import config_dict

from configs import default

PER_CHIP_BATCH = 128


def get_config(recipe: str = "rmsprop") -> ml_collections.ConfigDict:
    """The default recipe scaled to the slice the run finds; learning_rate stays per 256 images."""
    config = default.get_config(recipe)
    config.half_precision = True
    config.per_device_batch_size = PER_CHIP_BATCH
    config.batch_size = config_dict.placeholder(int)
    config.eval_batch_size = config_dict.placeholder(int)
    config.warmup_epochs = config_dict.placeholder(float)
    config.sync_batch_stats = False
    config.parallelism = "jit"
    config.checkpoint_every_steps = 1000
    return config
