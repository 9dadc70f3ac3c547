"""ImageNet, MobileNet 1.0-224, the recipe of the Cloud TPU reference (tensorflow/tpu).

Recipes are selected by the config-file argument, and any field by a flag:

    python train.py --config=configs/default.py --workdir=...            # rmsprop (paper)
    python train.py --config=configs/default.py:sgd --workdir=...        # SGD, Nesterov, cosine
    python train.py --config=configs/default.py:adamw --workdir=...      # AdamW, cosine
    python train.py --config=configs/default.py --config.batch_size=512 \
        --config.variant=mobilenet_v1_050_160                            # any field, any variant

`mobilenet_jax.training.config.resolve` applies `variant` and checks every field before a run.
"""

import ml_collections
from ml_collections import config_dict

# The PyTorch-style training of the alternatives: linear warm-up, no rate floor, no label
# smoothing, an EMA as slow as timm's, PyTorch's BatchNorm defaults and He-normal kernels.
_PYTORCH_STYLE = dict(
    warmup_epochs=5.0,
    lr_floor=0.0,
    label_smoothing=0.0,
    ema_decay=0.9999,
    model=dict(bn_momentum=0.9, bn_epsilon=1e-5, init_stddev=0.0),
)

# What each recipe changes in the base config of get_config, which is the "rmsprop" recipe.
RECIPES = {
    "rmsprop": {},
    # The modern SGD recipe (Goyal et al.: 0.1 per 256 images), Nesterov momentum, cosine to 0.
    "sgd": dict(
        _PYTORCH_STYLE,
        optimizer="sgd",
        learning_rate=0.1,
        lr_schedule="cosine",
        nesterov=True,
    ),
    # AdamW with decoupled weight decay; optax scales the decay by the learning rate (as
    # PyTorch's AdamW does), hence a rate far above the L2 recipes'. A starting point, not tuned.
    "adamw": dict(
        _PYTORCH_STYLE,
        optimizer="adamw",
        learning_rate=2.5e-4,
        lr_schedule="cosine",
        weight_decay=0.02,
    ),
}


def get_config(recipe: str = "rmsprop") -> ml_collections.ConfigDict:
    """The ImageNet config with the training recipe `recipe` (one of RECIPES)."""
    if recipe not in RECIPES:
        raise ValueError(
            f"unknown recipe {recipe!r}; use --config=configs/default.py:<recipe> with one of "
            f"{sorted(RECIPES)}"
        )
    config = ml_collections.ConfigDict()
    config.seed = 0
    # A named paper variant (e.g. "mobilenet_v1_075_160") sets model.alpha and image_size.
    config.variant = config_dict.placeholder(str)

    # Data: see mobilenet_jax.data (DataSpec). dataset is a TFDS name, "folder" or "digits".
    config.dataset = "imagenet2012"
    config.data_dir = config_dict.placeholder(str)
    config.train_split = "train"
    config.eval_split = config_dict.placeholder(str)  # None: "validation", else "test", else 10% of "train"
    config.folder_train_dir = config_dict.placeholder(str)
    config.folder_eval_dir = config_dict.placeholder(str)
    config.folder_eval_fraction = 0.1  # held out of folder_train_dir when no folder_eval_dir
    config.skip_bad_images = False  # folder images training cannot use: False refuses the folder, True skips them
    config.image_size = 224
    # "imagenet" (mean/std, the PyTorch reference's), "inception" or "half" ([-1, 1]); None: the
    # init_from weights' convention, else "imagenet".
    config.normalization = config_dict.placeholder(str)
    config.crop_min_area = 0.08
    config.shuffle_buffer = 16_384
    config.cache = False
    config.prefetch = 0  # batches; 0 lets tf.data tune it
    # How pixels travel to the devices, which normalise them: "uint8" (rounded as PIL stores
    # resized images; a quarter of float32's bytes) or "float32".
    config.input_dtype = "uint8"

    # Batches are global: split over processes and devices. None: per_device_batch_size times
    # the number of devices of the run (eval_batch_size None: the training batch).
    config.batch_size = 1024
    config.eval_batch_size = 1024
    config.per_device_batch_size = config_dict.placeholder(int)

    config.num_epochs = 300.0
    config.num_train_steps = -1  # > 0 overrides num_epochs
    config.log_every_steps = 100
    config.eval_every_steps = 5000  # and at the end of training
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    config.keep_best_checkpoint = True
    config.eval_only = False
    config.skip_nonfinite_updates = False  # drop a step whose gradients hold NaN or inf
    config.export_path = config_dict.placeholder(str)

    config.half_precision = False  # bfloat16 compute; parameters and statistics stay float32
    config.parallelism = "jit"  # "jit": jax.jit + shard_map over a device mesh; "pmap": jax.pmap
    # False keeps per-device BatchNorm statistics, as the original TF training did.
    config.sync_batch_stats = True

    # Optimisation (mobilenet_jax.training.optim). learning_rate is per 256 images: the peak rate is
    # learning_rate * batch_size / 256. The recipe of tensorflow/tpu models/official/mobilenet
    # (mobilenet.py, its model built under mobilenet_v1_arg_scope()); docs/training.md "Recipes"
    # table says where each number comes from.
    config.optimizer = "rmsprop"  # "rmsprop" | "sgd" | "adamw"
    # TF1 RMSPropOptimizer semantics: epsilon inside the square root, mean square starting at 1.
    config.learning_rate = 0.165  # 0.66 at batch 1024
    config.lr_schedule = "exponential"  # "exponential" (staircase) | "cosine" | "constant"
    # Linear from 0; the reference has none. None: none up to the reference's batch of 1024,
    # else 5 epochs, the gradual warm-up of linear scaling (Goyal et al., 2017).
    config.warmup_epochs = 0.0
    config.lr_decay_rate = 0.94  # exponential: x lr_decay_rate every lr_decay_epochs
    config.lr_decay_epochs = 3.0
    config.lr_floor = 1e-4  # never below lr_floor * the peak rate
    config.momentum = 0.9  # rmsprop and sgd
    config.nesterov = False  # sgd
    config.rmsprop_decay = 0.9
    config.rmsprop_epsilon = 1.0
    config.adam_b1 = 0.9
    config.adam_b2 = 0.999
    config.adam_eps = 1e-8
    # Conv and Dense kernels only; never BatchNorm or biases. L2 added to the gradient for
    # rmsprop / sgd, decoupled for adamw. The paper puts little or none on depthwise filters.
    config.weight_decay = 4e-5
    config.weight_decay_depthwise = False
    config.grad_clip_norm = 0.0  # global-norm clipping when > 0
    config.label_smoothing = 0.1
    # Moving average of the parameters and BatchNorm statistics, decay min(ema_decay,
    # (1 + step) / (10 + step)) as TF's num_updates; evaluated beside the raw weights, and the
    # better of the two exported. 0 disables it.
    config.ema_decay = 0.995

    # Fine-tuning (docs/training.md "Fine-tune"): start from pretrained weights (a registered name, a
    # converted or exported model file, or a finished run's workdir); the classifier is
    # re-initialised when the class count differs. trainable: a regex over "/"-joined parameter
    # paths (e.g. "classifier/.*"); the others never move. freeze_batch_stats: BatchNorm in
    # inference mode (running statistics used and kept as loaded; dropout off).
    config.init_from = config_dict.placeholder(str)
    config.trainable = ""
    config.freeze_backbone_steps = 0  # train only the classifier for this many steps
    config.backbone_lr_multiplier = 1.0
    config.freeze_batch_stats = False
    # A classifier init_from cannot supply (another class count): "zeros" (big_vision's
    # head_zeroinit: a first loss of ln(num_classes), no early gradient into the backbone) or
    # "random" (the model's initialiser).
    config.new_classifier_init = "zeros"

    # Quantization-aware training (docs/deploy.md "Quantization-aware training"): "int8" trains on the
    # grids of the JAX int8 export (kernels rounded per output channel, the inputs of every layer
    # on 8-bit ranges tracked in batch_stats); None trains in float. Typically a fine-tuning of a
    # finished float run: --config.init_from=<its workdir> --config.quantization=int8.
    config.quantization = config_dict.placeholder(str)

    # Fields of mobilenet_jax.MobileNetV1; num_classes comes from the dataset. The architecture
    # is the PyTorch reference's (ReLU, symmetric padding); the reference's TF-Slim model has
    # ReLU6 and SAME padding (--config.model.activation=relu6 --config.model.padding=same).
    config.model = ml_collections.ConfigDict(
        dict(
            alpha=1.0,
            min_depth=8,
            dropout_rate=1e-3,  # keep_prob 0.999
            activation="relu",
            padding="torch",
            bn_momentum=0.9997,  # TF's BatchNorm decay, the same convention as Flax's momentum
            bn_epsilon=1e-3,
            init_stddev=0.09,  # truncated normal
            depthwise_impl="auto",
            output_stride=config_dict.placeholder(int),  # None: 32, the paper's; 16 or 8: atrous
        )
    )

    config.update_from_flattened_dict(_flatten(RECIPES[recipe]))
    return config


def _flatten(overrides: dict, prefix: str = "") -> dict:
    """{"model.bn_epsilon": ...} from {"model": {"bn_epsilon": ...}}, for nested overrides."""
    flat = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
