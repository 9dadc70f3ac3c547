"""Train MobileNet v1: python train.py --config=configs/default.py --workdir=DIR [--config.field=value ...]

On several hosts (a Cloud TPU pod slice, several GPU machines) add --distributed on every host.
A mistake in the command or the config ends the command with one line on stderr and exit status 2;
in a multi-host run it ends every process, each naming the process that failed. Ctrl-C ends it with
one line and exit status 130; the same command resumes from the last checkpoint.
"""

import importlib.machinery
import importlib.util
import inspect
import os
import signal
import sys
import threading
import traceback
from typing import Any, NoReturn

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the exported model.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host runs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, where it cannot be detected.")
flags.DEFINE_integer("num_processes", None, "Number of processes, where it cannot be detected.")
flags.DEFINE_integer("process_id", None, "This process's index, where it cannot be detected.")
flags.DEFINE_list(
    "local_device_ids", None,
    "Device ids this process drives, e.g. its local rank when each process has one GPU; default: all of the host's.",
)
# ml_collections' flag, for its --config.FIELD=value overrides; the file is read by ConfigFileParser.
config_flags.DEFINE_config_file("config", None, "A configs/*.py file (with an optional :argument).")
FLAGS = flags.FLAGS


class ConfigFileError(flags.Error):
    """A --config file that does not load, in one line naming the file, the line and the reason."""


class ConfigFileParser(flags.ArgumentParser):
    """--config=FILE[:ARGUMENT] read as ml_collections reads it (FILE's get_config(ARGUMENT), locked),
    with every way the file can fail to load raised as a ConfigFileError; ml_collections' own
    parser lets most of them out as tracebacks or defers them to the first use of the config."""

    def parse(self, argument: str) -> ml_collections.ConfigDict:
        path, *arguments = argument.split(":", 1)
        config = load_config(path, arguments)
        config.lock()
        return config

    def flag_type(self) -> str:
        return "config file"


FLAGS["config"].parser = ConfigFileParser()


def load_config(path: str, arguments: list[str]) -> ml_collections.ConfigDict:
    """`get_config(*arguments)` of the Python file at `path`; a ConfigFileError when that fails."""
    if not path:
        raise ConfigFileError("--config is empty; pass a recipe file, e.g. --config=configs/digits.py")
    try:
        module = import_file(path)
    except Exception as error:
        raise ConfigFileError(cannot_load(path, error)) from error
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigFileError(f"--config file {path!r} has no get_config(); define one returning the ConfigDict")
    try:
        inspect.signature(get_config).bind(*arguments)
    except TypeError:
        signature = inspect.signature(get_config).replace(return_annotation=inspect.Signature.empty)
        problem = f"cannot take the argument {arguments[0]!r}; drop ':{arguments[0]}'" if arguments else (
            f"needs an argument; pass one as --config={path}:ARGUMENT")
        raise ConfigFileError(f"--config file {path!r}: get_config{signature} {problem}") from None
    try:
        config = get_config(*arguments)
    except Exception as error:
        raise ConfigFileError(cannot_load(path, error)) from error
    if not isinstance(config, ml_collections.ConfigDict):
        returned = type(config).__name__
        raise ConfigFileError(f"--config file {path!r}: get_config() returned {returned}, not a ConfigDict; return one")
    return config


def import_file(path: str) -> Any:
    """The Python file at `path` run as a module (registered as ml_collections registers it)."""
    name = "config_config"
    spec = importlib.util.spec_from_file_location(name, path, loader=importlib.machinery.SourceFileLoader(name, path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def cannot_load(path: str, error: Exception) -> str:
    """One line: the --config file, the error, and the deepest line of the file (or a file beside
    it, such as configs/default.py) that raised it; a SyntaxError names its own line."""
    first = (str(error).splitlines() or [""])[0]
    reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
    folder = os.path.dirname(os.path.abspath(path))
    lines = [frame for frame in traceback.extract_tb(error.__traceback__)
             if os.path.dirname(os.path.abspath(frame.filename)) == folder]
    if lines and not isinstance(error, SyntaxError):
        where = os.path.join(os.path.dirname(path), os.path.basename(lines[-1].filename))
        reason += f" ({where}, line {lines[-1].lineno})"
    if isinstance(error, FileNotFoundError):
        reason += "; pass an existing configs/*.py file"
    elif isinstance(error, IsADirectoryError):
        reason += "; pass a Python file, e.g. configs/default.py"
    return f"--config file {path!r} cannot be loaded: {reason}"


def fail(message: str, status: int = 2) -> NoReturn:
    """End the command with `message` as its one line on stderr and exit `status`; in a multi-host
    run, end all processes (see `end_every_process`)."""
    print(f"train.py: error: {message}", file=sys.stderr, flush=True)
    if FLAGS.is_parsed() and FLAGS.distributed:
        end_every_process(message, status)
    sys.exit(status)


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
    except AttributeError as error:  # ml_collections: an override of a field the config lacks
        field = str(error).strip("\"'")
        given = [arg for arg in argv if arg.startswith("--config.") and field in arg.split("=")[0].split(".")]
        fail(f"unknown config field {field!r} in {' '.join(given) or 'a --config.FIELD flag'}; "
             "check its spelling against the fields of the --config file")
    except flags.Error as error:  # a ConfigFileError's message is one line already
        fail(str(error).splitlines()[0])
    if FLAGS.config is None:
        fail("--config is missing; pass a recipe file, e.g. --config=configs/digits.py")
    if not FLAGS.workdir or not FLAGS.workdir.strip():
        fail("--workdir is missing or empty; pass a directory for the run, e.g. --workdir=/tmp/mobilenet")
    if len(remaining) > 1:
        fail(f"unexpected arguments {remaining[1:]}; every setting is a flag: --name=value or --config.FIELD=value")
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
    del argv  # parse_flags refuses anything but flags
    sys.unraisablehook = keep_interrupts
    try:
        train()
    except KeyboardInterrupt:
        fail(f"interrupted; rerun the same command to resume from the last checkpoint in {FLAGS.workdir}", 130)


def keep_interrupts(unraisable: Any) -> None:
    """A sys.unraisablehook that sends SIGINT again, a moment later, when Ctrl-C's KeyboardInterrupt
    was raised where Python drops exceptions, such as the garbage-collection callback JAX installs
    (the run would go on); other exceptions are reported as usual."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        # A signal to the process, not _thread.interrupt_main: it also wakes a main thread that waits.
        threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT)).start()
    else:
        sys.__unraisablehook__(unraisable)


def train() -> None:
    """Train (or evaluate) as the flags say and print the final line; a failure whose message names
    its fix ends the command with that one line."""
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
    app.run(main, flags_parser=parse_flags)
