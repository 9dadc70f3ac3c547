"""Fine-tune pretrained weights on a folder of your images (one sub-folder per class):

    python train.py --config=configs/finetune.py --workdir=$WORKDIR \
        --config.init_from=mobilenet_v1_050_160.tf_slim \
        --config.folder_train_dir=/data/train --config.folder_eval_dir=/data/val

The architecture (alpha, min_depth, activation, padding, bn_epsilon) and the input normalisation
come from the weights; image_size is this config's. Without folder_eval_dir, folder_eval_fraction
of each class is held out for evaluation. docs/fine-tuning.md has the measurements behind the
recipe.
"""

import ml_collections
from ml_collections import config_dict

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Every layer trains at one rate (SGD, Nesterov momentum, cosine decay) with BatchNorm in
    train mode and running statistics that follow the new data; the new classifier starts at
    zero. --config.trainable='classifier/.*' trains the classifier alone (a linear probe)."""
    config = default.get_config("sgd")
    # Small sets are often small images upsampled to the model's size, where rounding to uint8
    # adds banding: on the faces set (docs/fine-tuning.md) it turned 1.000 into 0.600.
    config.input_dtype = "float32"
    config.dataset = "folder"
    config.image_size = 224
    config.crop_min_area = 0.25  # gentler than ImageNet's 0.08: small datasets, pretrained features
    config.shuffle_buffer = 4096

    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_epochs = 10.0
    config.log_every_steps = 20
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500

    config.learning_rate = 0.1  # per 256 images: 0.0125 at batch 32
    config.warmup_epochs = 0.0  # the zero-initialised classifier sends no gradient back at first
    config.weight_decay = 1e-5
    config.ema_decay = 0.0
    config.new_classifier_init = "zeros"
    # Train mode normalises each channel by its batch statistics, so a kernel's scale does not
    # matter. With frozen statistics, ImageNet MobileNet weights fine-tuned worse than their
    # classifier alone at every backbone rate measured (docs/fine-tuning.md).
    config.freeze_batch_stats = False
    config.model.bn_momentum = 0.9  # running statistics that follow within a few dozen steps

    # None: the weights' values (typed, so that --config.model.FIELD=VALUE still parses).
    for field, kind in (("alpha", float), ("min_depth", int), ("activation", str), ("padding", str), ("bn_epsilon", float)):
        config.model[field] = config_dict.placeholder(kind)
    config.model.dropout_rate = 0.0
    return config
