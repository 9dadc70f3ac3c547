"""ImageNet on a TPU pod slice: bfloat16, global batch 4096, the default recipe.

python train.py --config=configs/tpu.py --workdir=gs://...   # or configs/tpu.py:sgd
"""

import ml_collections

from configs import default


def get_config(recipe: str = "rmsprop") -> ml_collections.ConfigDict:
    """The default config for a TPU pod slice; learning_rate stays per 256 images."""
    config = default.get_config(recipe)
    config.half_precision = True
    config.batch_size = 4096
    config.eval_batch_size = 4096
    config.parallelism = "jit"
    config.checkpoint_every_steps = 1000
    return config
