"""metrics.jsonl keeps whole rows, each step once, and sets aside, never drops, what it does not keep."""

from __future__ import annotations

import json
import pathlib

import pytest

from mobilenet_jax.training.metrics import METRICS_FILE, REPLAYED_FILE, TORN_FILE, MetricWriter, read_metrics

ROWS = [{"step": step, "train_loss": 1.0 / step} for step in (1, 2, 3, 4)]


def write_rows(workdir: pathlib.Path, rows: list[dict], tail: str = "") -> pathlib.Path:
    """metrics.jsonl holding `rows`, then `tail` (a line a crash cut short)."""
    workdir.mkdir(exist_ok=True)
    path = workdir / METRICS_FILE
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + tail)
    return path


def append(workdir: pathlib.Path, step: int, initial_step: int | None) -> None:
    """One row at `step` through a MetricWriter opened as a run starting at `initial_step` opens it."""
    writer = MetricWriter(str(workdir), initial_step=initial_step)
    writer.write(step, {"train_loss": 0.5})
    writer.close()


def test_a_torn_last_line_is_set_aside_and_the_next_row_stays_whole(tmp_path, capsys):
    torn = '{"step": 5, "train_lo'
    write_rows(tmp_path, ROWS, torn)
    assert read_metrics(str(tmp_path)) == ROWS  # a reader skips it
    append(tmp_path, 5, initial_step=4)
    assert read_metrics(str(tmp_path)) == [*ROWS, {"step": 5, "train_loss": 0.5}]
    assert (tmp_path / TORN_FILE).read_text() == torn + "\n"
    said = capsys.readouterr().err
    assert f"The last line of {tmp_path / METRICS_FILE} was cut short" in said
    assert f"moved to {tmp_path / TORN_FILE}" in said


def test_a_whole_last_row_without_its_newline_is_kept(tmp_path):
    path = write_rows(tmp_path, ROWS[:3], json.dumps(ROWS[3]))
    append(tmp_path, 5, initial_step=4)
    assert read_metrics(str(tmp_path)) == [*ROWS, {"step": 5, "train_loss": 0.5}]
    assert path.read_text().endswith("\n") and not (tmp_path / TORN_FILE).exists()


def test_a_broken_line_before_the_last_is_named(tmp_path):
    write_rows(tmp_path, [])
    (tmp_path / METRICS_FILE).write_text('{"step": 1}\n{"step": 2, "lo{"step": 2}\n{"step": 3}\n')
    fix = rf"line 2 of {tmp_path / METRICS_FILE} is not a metrics row \(Expecting .*\); move that line to .*\.torn"
    with pytest.raises(ValueError, match=fix):
        read_metrics(str(tmp_path))
    with pytest.raises(ValueError, match=fix):
        MetricWriter(str(tmp_path), initial_step=3)


def test_rows_after_the_step_a_run_resumes_from_are_set_aside(tmp_path, capsys):
    write_rows(tmp_path, ROWS)  # a run killed after logging step 4, during the save of checkpoint 4
    append(tmp_path, 3, initial_step=2)  # resumed from checkpoint 2: steps 3 and 4 are trained again
    assert read_metrics(str(tmp_path)) == [*ROWS[:2], {"step": 3, "train_loss": 0.5}]
    replayed = (tmp_path / REPLAYED_FILE).read_text().splitlines()
    assert [json.loads(line) for line in replayed] == ROWS[2:]
    said = capsys.readouterr().err
    assert f"The rows of steps 3..4 in {tmp_path / METRICS_FILE} come after step 2" in said
    assert f"moved to {tmp_path / REPLAYED_FILE}" in said


def test_an_evaluation_keeps_every_row(tmp_path):
    write_rows(tmp_path, ROWS)
    append(tmp_path, 2, initial_step=None)  # eval_only: a row at the restored step, 2
    assert read_metrics(str(tmp_path)) == [*ROWS, {"step": 2, "train_loss": 0.5}]
    assert not (tmp_path / REPLAYED_FILE).exists()


@pytest.mark.skipif(not pathlib.Path("/dev/full").exists(), reason="needs /dev/full, a disk that is always full")
def test_a_full_disk_is_an_oserror_naming_metrics_jsonl(tmp_path):
    (tmp_path / METRICS_FILE).symlink_to("/dev/full")
    writer = MetricWriter(str(tmp_path), initial_step=0)
    named = rf"cannot write {tmp_path / METRICS_FILE}: No space left on device; free space there"
    with pytest.raises(OSError, match=named):
        writer.write(1, {"train_loss": 0.5})
    with pytest.raises(OSError, match=named):  # the refused row, flushed again
        writer.close()
