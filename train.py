"""Train MobileNet v1: python train.py --config=configs/default.py --workdir=DIR [--config.field=value ...]

On several hosts (a Cloud TPU pod slice, several GPU machines) add --distributed on every host.
A mistake in the command or the config ends the command with one line on stderr and exit status 2;
in a multi-host run it ends every process, each naming the process that failed.
"""

import os
import sys
import traceback
from typing import Any, NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the exported model.", required=True)
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host runs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, where it cannot be detected.")
flags.DEFINE_integer("num_processes", None, "Number of processes, where it cannot be detected.")
flags.DEFINE_integer("process_id", None, "This process's index, where it cannot be detected.")
flags.DEFINE_list(
    "local_device_ids", None,
    "Device ids this process drives, e.g. its local rank when each process has one GPU; default: all of the host's.",
)
config_flags.DEFINE_config_file("config", None, "A configs/*.py file (with an optional :argument).", lock_config=True)
FLAGS = flags.FLAGS


def fail(message: str) -> NoReturn:
    """End the command with `message` as its one line on stderr; in a multi-host run, end all
    processes (see `end_every_process`)."""
    print(f"train.py: error: {message}", file=sys.stderr, flush=True)
    if FLAGS.is_parsed() and FLAGS.distributed:
        end_every_process(message, 2)
    sys.exit(2)


def end_every_process(report: str, status: int) -> NoReturn:
    """Publish this process's failure to the others, which stop within a second, and exit at once:
    a normal exit would wait for them at the runtime's shutdown barrier."""
    from mobilenet_jax.training import hosts

    hosts.report_failure(report)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def initialize_distributed() -> None:
    """`jax.distributed.initialize` from the flags; with all three of --coordinator_address,
    --num_processes and --process_id given, cluster auto-detection is off, so that Slurm or
    OpenMPI does not narrow a process to one local device."""
    import jax

    from mobilenet_jax.training import hosts

    try:
        local_ids = [int(i) for i in FLAGS.local_device_ids] if FLAGS.local_device_ids else None
    except ValueError:
        fail(f"--local_device_ids must be integers, got {','.join(FLAGS.local_device_ids)}; e.g. --local_device_ids=0")
    explicit = None not in (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    jax.distributed.initialize(
        FLAGS.coordinator_address,
        FLAGS.num_processes,
        FLAGS.process_id,
        local_device_ids=local_ids,
        cluster_detection_method="deactivate" if explicit else None,
    )
    hosts.watch_for_failures(stop_for_another)


def stop_for_another(report: str) -> NoReturn:
    """End this process because another one failed, with that process's report as its one line."""
    # On a line of its own: a progress bar may be half drawn.
    print(f"\ntrain.py: error: {report} (this process stops too)", file=sys.stderr, flush=True)
    os._exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every mistake in the flags or the config file as one line."""
    try:
        remaining = FLAGS(argv)
        FLAGS.config.keys()  # raises if the config file did not load
    except AttributeError as error:  # ml_collections: an override of a field the config lacks
        field = str(error).strip("\"'")
        given = [arg for arg in argv if arg.startswith("--config.") and field in arg.split("=")[0].split(".")]
        fail(f"unknown config field {field!r} in {' '.join(given) or 'a --config.FIELD flag'}; "
             "check its spelling against the fields of the --config file")
    except (flags.Error, OSError) as error:
        if "config file" not in str(error):
            fail(str(error).splitlines()[0])
        # ml_collections: the config file cannot be loaded; its last line says why
        path = next((arg.split("=", 1)[1] for arg in reversed(argv) if arg.startswith("--config=")), "").split(":")[0]
        reason = str(error).splitlines()[-1].strip()
        advice = "; pass an existing configs/*.py file" if "No such file" in reason else ""
        fail(f"--config file {path!r} cannot be loaded: {reason}{advice}")
    return remaining


def final_line(result: dict[str, Any], workdir: str) -> str:
    """What the run reached and where its model or checkpoint is, in one line."""
    metrics = " ".join(f"{k}={v:.4f}" for k, v in result.items() if isinstance(v, float))
    step = result.get("step")
    if result.get("stopped"):
        return f"Stopped by SIGTERM after step {step}; checkpoint saved in {result['checkpoint_dir']}. {metrics}".strip()
    if result.get("finished_before"):
        where = f"; model in {result['model_path']}" if "model_path" in result else ""
        return f"The run in {workdir} already finished at step {step}: {metrics}{where}"
    if "model_path" in result:
        return f"Finished at step {step}: {metrics}; model ({result['model_variables']} variables) written to {result['model_path']}"
    return f"Evaluated the checkpoint of step {step} in {workdir}: {metrics}"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax reports every save at INFO
    import jax  # after flag parsing, so that --help stays fast

    if FLAGS.distributed:
        initialize_distributed()
    from mobilenet_jax.training import train_and_evaluate
    from mobilenet_jax.training.checkpoint import RestoreDisagreement
    from mobilenet_jax.training.loop import NonFiniteLossError

    try:
        result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, OSError, NonFiniteLossError, RestoreDisagreement) as error:  # their messages name the fix
        fail(str(error))
    except Exception as error:
        if not FLAGS.distributed:
            raise
        from mobilenet_jax.training import hosts

        # A collective fails at once when a peer process exits: its report is the cause.
        if report := hosts.failure_of_another():
            stop_for_another(report)
        traceback.print_exc()
        end_every_process(f"{type(error).__name__}: {error}".splitlines()[0], 1)
    if jax.process_index() == 0:
        print(final_line(result, FLAGS.workdir))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=parse_flags)
