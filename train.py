"""Train MobileNet v1: python train.py --config=configs/default.py --workdir=DIR [--config.field=value ...]

On several hosts (a Cloud TPU pod slice, several GPU machines) add --distributed on every host.
"""

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the exported model.", required=True)
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host runs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, where it cannot be detected.")
flags.DEFINE_integer("num_processes", None, "Number of processes, where it cannot be detected.")
flags.DEFINE_integer("process_id", None, "This process's index, where it cannot be detected.")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file (with an optional :argument).", lock_config=True)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax reports every save at INFO
    import jax  # after flag parsing, so that --help stays fast

    if FLAGS.distributed:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    from mobilenet_jax.training import train_and_evaluate

    result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if jax.process_index() == 0 and result:
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
