"""Fine-tune pretrained weights on a folder of your images (one sub-folder per class):

    python train.py --config=configs/finetune.py --workdir=$WORKDIR \
        --config.init_from=mobilenet_v1_050_160.tf_slim \
        --config.folder_train_dir=/data/train --config.folder_eval_dir=/data/val

The architecture (alpha, min_depth, activation, padding, bn_epsilon) and the input normalisation
come from the weights; image_size is this config's. Without folder_eval_dir, folder_eval_fraction
of each class is held out for evaluation.
"""

import ml_collections
from ml_collections import config_dict

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """SGD with Nesterov momentum and a cosine decay; every layer trains from the first step, the
    backbone at a tenth of the classifier's rate, BatchNorm in inference mode (Keras's advice).
    --config.freeze_backbone_steps=N trains the classifier alone for N steps first;
    --config.trainable='classifier/.*' trains it alone throughout (a linear probe)."""
    config = default.get_config("sgd")
    config.dataset = "folder"
    config.image_size = 224
    config.crop_min_area = 0.25  # gentler than ImageNet's 0.08: small datasets, pretrained features
    config.shuffle_buffer = 4096

    config.batch_size = 64
    config.eval_batch_size = 64
    config.num_epochs = 10.0
    config.log_every_steps = 20
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500

    config.learning_rate = 0.1  # per 256 images: 0.025 at batch 64, for the classifier
    config.warmup_epochs = 0.0
    config.weight_decay = 1e-5
    config.ema_decay = 0.0
    config.backbone_lr_multiplier = 0.1
    config.freeze_batch_stats = True

    # None: the weights' values (typed, so that --config.model.FIELD=VALUE still parses).
    for field, kind in (("alpha", float), ("min_depth", int), ("activation", str), ("padding", str), ("bn_epsilon", float)):
        config.model[field] = config_dict.placeholder(kind)
    config.model.dropout_rate = 0.0  # inactive in inference mode (freeze_batch_stats)
    return config
