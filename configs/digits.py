"""Offline quick run: scikit-learn's digits (1,437 train / 360 test) at 32x32, MobileNet 0.25.

Needs no download and trains in minutes on a laptop CPU:

    python train.py --config=configs/digits.py --workdir=/tmp/digits
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """A small-data recipe: SGD with Nesterov momentum, cosine, no EMA, no dropout."""
    config = default.get_config("sgd")
    config.dataset = "digits"
    config.image_size = 32
    config.normalization = "inception"
    config.input_dtype = "float32"  # 8x8 images upsampled: rounding to uint8 would add banding
    config.shuffle_buffer = 2048
    config.model.alpha = 0.25
    config.model.dropout_rate = 0.0
    # Set here, not inherited: the digits figures of docs/training.md were measured with these.
    config.model.bn_momentum = 0.9
    config.model.bn_epsilon = 1e-5
    config.model.init_stddev = 0.0  # He normal

    config.batch_size = 64
    config.eval_batch_size = 120  # the 360 test images in 3 unpadded batches
    config.num_epochs = 40.0
    config.log_every_steps = 20
    config.eval_every_steps = 22  # an epoch: 1,437 // 64
    config.checkpoint_every_steps = 100

    config.learning_rate = 0.4  # 0.1 at batch 64
    config.warmup_epochs = 1.0
    config.lr_floor = 0.0
    config.weight_decay = 5e-5
    config.label_smoothing = 0.0
    config.ema_decay = 0.0  # too few steps for an average to settle
    return config
