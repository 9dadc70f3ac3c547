"""One way to name weights: every form of reference works in load_pretrained, the classify command,
the export's load_weights and fine-tuning's describe and load_variables, locally and on gs://."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from typing import Any, Callable

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("safetensors")

import slim_reference as ref  # noqa: E402
import timm_state  # noqa: E402
from flax.traverse_util import flatten_dict  # noqa: E402
from PIL import Image  # noqa: E402

from mobilenet_jax import classify, weights  # noqa: E402
from mobilenet_jax.export import load_weights  # noqa: E402
from mobilenet_jax.export.__main__ import main as export_main  # noqa: E402
from mobilenet_jax.interop import download, pretrained, tf_slim, timm  # noqa: E402
from mobilenet_jax.interop.preprocessing import TF_SLIM, TIMM, Preprocessing, normalization_of  # noqa: E402
from mobilenet_jax.model import MobileNetV1  # noqa: E402
from mobilenet_jax.training import init  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEM = "mobilenet_v1_0.25_128"  # a published TF-Slim name: its registry entry sets the size, 128
REGISTERED = "test_025_128.tf_slim"


@dataclasses.dataclass(frozen=True)
class Case:
    """A weights reference and what every entry point must make of it."""

    reference: str
    variables: dict[str, Any]
    num_classes: int
    size: int
    normalization: str


def tarball(folder: pathlib.Path, name: str) -> str:
    """`folder`'s files packed as TF-Slim publishes them: flat, each with a `./` prefix."""
    archive = folder.parent / name
    mode = "w:gz" if name.endswith(("gz", ".tgz")) else "w"
    with tarfile.open(archive, mode) as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=f"./{path.name}")
    return str(archive)


def slim_cases(root: pathlib.Path) -> dict[str, Case]:
    """A random alpha-0.25 TF-Slim model in each of the forms TF-Slim weights come in."""
    tensors = ref.random_tensors(0.25, 1001, seed=11)
    variables = tf_slim.from_tf_slim(tensors).variables
    folder = root / STEM
    folder.mkdir()
    prefix = ref.save_checkpoint(str(folder / f"{STEM}.ckpt"), tensors)
    frozen = root / f"{STEM}_frozen.pb"
    frozen.write_bytes(ref.frozen_graph_def(tensors).SerializeToString())
    unpublished = ref.save_checkpoint(str(root / "mine" / "model.ckpt"), tensors)
    references = {
        "slim prefix": prefix, "slim .index": prefix + ".index", "slim folder": str(folder),
        "slim .tgz": tarball(folder, f"{STEM}.tgz"), "slim .tar.gz": tarball(folder, f"{STEM}.tar.gz"),
        "slim .tar": tarball(folder, f"{STEM}.tar"), "slim frozen .pb": str(frozen),
        "registered name": REGISTERED,
    }
    cases = {form: Case(reference, variables, 1001, 128, "inception") for form, reference in references.items()}
    cases["unpublished slim prefix"] = Case(unpublished, variables, 1001, 224, "inception")  # TF-Slim's recipe at 224
    return cases


def keras_case(root: pathlib.Path) -> Case:
    """A random alpha-0.25 Keras MobileNet at 128, saved under its published file name."""
    from test_keras import keras_mobilenet, save_published_layout

    from mobilenet_jax.interop import keras

    path = save_published_layout(keras_mobilenet(0.25, 128, seed=12), str(root / "mobilenet_2_5_128_tf.h5"))
    return Case(path, keras.from_keras(path).variables, 1000, 128, "inception")


def timm_cases(root: pathlib.Path) -> dict[str, Case]:
    """A random alpha-0.25 timm state dict as .safetensors and as a torch .pth."""
    import torch

    state = timm_state.random_state(0.25, seed=13)
    variables = timm.from_timm(state).variables
    safetensors = timm_state.write_safetensors(str(root / "timm.safetensors"), 0.25, seed=13)
    pth = root / "timm.pth"
    torch.save({name: torch.from_numpy(value) for name, value in state.items()}, pth)
    return {form: Case(path, variables, 1000, 224, "inception")
            for form, path in (("timm .safetensors", safetensors), ("timm .pth", str(pth)))}


def random_model(num_classes: int, seed: int) -> tuple[MobileNetV1, dict[str, Any]]:
    """An alpha-0.25 model with TF-Slim's conventions and its variables, from random TF-Slim tensors."""
    converted = tf_slim.from_tf_slim(ref.random_tensors(0.25, num_classes, seed))
    return converted.model(), converted.variables


def model_cases(root: pathlib.Path) -> dict[str, Case]:
    """A model file written by save_pretrained, and a finished run's workdir."""
    model, variables = random_model(1001, seed=14)
    saved = str(root / "saved.msgpack")
    pretrained.save_pretrained(saved, pretrained.Pretrained(model, variables, dataclasses.replace(TIMM, size=160)))
    workdir = root / "run"
    weights.save_model(str(workdir / weights.MODEL_FILE), model, variables)
    (workdir / weights.CONFIG_FILE).write_text(json.dumps({"image_size": 96, "normalization": "imagenet"}))
    return {"model file": Case(saved, variables, 1001, 160, "inception"),
            "workdir": Case(str(workdir), variables, 1001, 96, "imagenet")}


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("references")
    pytest.importorskip("keras")
    return {**slim_cases(root), "keras .h5": keras_case(root), **timm_cases(root), **model_cases(root)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def registered(cases, cache, monkeypatch) -> None:
    """REGISTERED: an entry whose published file is the .tgz, served by file:// URL; the cache in `cache`."""
    archive = pathlib.Path(cases["slim .tgz"].reference)
    entry = dataclasses.replace(
        pretrained.REGISTRY["mobilenet_v1_025_128.tf_slim"], name=REGISTERED, url=archive.as_uri(),
        sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
    )
    monkeypatch.setitem(pretrained.REGISTRY, REGISTERED, entry)
    monkeypatch.setenv(download.CACHE_ENV, str(cache))


@dataclasses.dataclass(frozen=True)
class Seen:
    """What an entry point made of a reference (None: it does not say)."""

    num_classes: int
    variables: dict[str, Any]
    size: int | None
    normalization: str | None


def via_load_pretrained(reference: str) -> Seen:
    model, variables, recipe = pretrained.load_pretrained(reference)
    return Seen(model.num_classes, variables, recipe.size, normalization_of(recipe))


def via_export(reference: str) -> Seen:
    deployable = load_weights(reference)
    return Seen(deployable.model.num_classes, deployable.variables, deployable.image_size, deployable.normalization)


def via_init(reference: str) -> Seen:
    described = init.describe(reference)  # what the config gate reads; the loop reads the variables
    return Seen(described.fields["num_classes"], init.load_variables(reference), None, described.normalization)


ENTRY_POINTS: dict[str, Callable[[str], Seen]] = {
    "load_pretrained": via_load_pretrained, "export": via_export, "init_from": via_init,
}
FORMS = [
    "registered name", "slim prefix", "slim .index", "slim folder", "slim .tgz", "slim .tar.gz", "slim .tar",
    "slim frozen .pb", "unpublished slim prefix", "keras .h5", "timm .safetensors", "timm .pth", "model file",
    "workdir",
]


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize("form", FORMS)
def test_every_form_loads_in_every_entry_point(cases, form, entry_point):
    case = cases[form]
    seen = ENTRY_POINTS[entry_point](case.reference)
    assert seen.num_classes == case.num_classes
    assert seen.size in (None, case.size) and seen.normalization == case.normalization
    expected, got = flatten_dict(case.variables), flatten_dict(seen.variables)
    assert got.keys() == expected.keys()
    for path, value in expected.items():
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(value), err_msg="/".join(path))


@pytest.mark.parametrize("form", [form for form in FORMS if form != "slim frozen .pb"])  # lists no shapes
def test_what_the_config_gate_reads_of_every_form_holds_no_arrays(cases, form, monkeypatch):
    import safetensors.numpy

    def refused(*args, **kwargs):
        raise AssertionError("describing the weights downloaded them or read their arrays")

    for owner, name in ((download, "fetch"), (weights, "load_variables"), (tf_slim, "read_checkpoint"),
                        (tf_slim, "read_frozen_graph"), (safetensors.numpy, "load_file")):
        monkeypatch.setattr(owner, name, refused)
    described = init.describe(cases[form].reference)
    assert described.fields["num_classes"] == cases[form].num_classes
    assert described.normalization == cases[form].normalization and not described.activation_ranges


def test_a_frozen_graph_is_read_once_for_the_config_gate_and_the_run(cases):
    reference = cases["slim frozen .pb"].reference
    tf_slim._frozen_graph.cache_clear()
    assert init.describe(reference).fields["num_classes"] == 1001
    init.load_variables(reference)
    assert tf_slim._frozen_graph.cache_info().misses == 1  # the file's one read


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("images") / "image.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("form", FORMS)
def test_every_form_classifies(cases, form, image, capsys):
    assert classify.main([image, "--weights", cases[form].reference, "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == image and len(lines) == 3


def test_a_published_name_selects_its_entry_only_when_the_model_fits(cases, tmp_path):
    # alpha 0.5 weights under the 0.25-128 file name are not that entry's: TF-Slim's recipe at 224.
    prefix = ref.save_checkpoint(str(tmp_path / f"{STEM}.ckpt"), ref.random_tensors(0.5, 1001, seed=15))
    assert pretrained.load_pretrained(prefix).preprocessing == TF_SLIM


def test_a_bare_model_file_records_no_preprocessing(tmp_path, image, capsys):
    path = str(tmp_path / "bare.msgpack")
    weights.save_model(path, *random_model(1001, seed=16))
    with pytest.raises(FileNotFoundError, match="bare.msgpack records no preprocessing .* pass preprocessing="):
        pretrained.load_pretrained(path)
    recipe = Preprocessing(size=64)
    assert pretrained.load_pretrained(path, preprocessing=recipe).preprocessing == recipe
    with pytest.raises(FileNotFoundError, match="bare.msgpack records no preprocessing .* image_size= and normalization="):
        load_weights(path)  # no longer the project's 224 and ImageNet normalisation, silently
    deployable = load_weights(path, image_size=64, normalization="half")
    assert (deployable.image_size, deployable.normalization) == (64, "half")
    assert init.describe(path).normalization is None
    with pytest.raises(SystemExit) as exit_info:
        classify.main([image, "--weights", path])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_an_unfinished_workdir_is_named_everywhere(tmp_path, image, capsys):
    (tmp_path / weights.CONFIG_FILE).write_text("{}")
    message = "is a workdir without mobilenet_v1.msgpack: rerun its train.py command with --workdir="
    for entry_point, error in ((pretrained.load_pretrained, FileNotFoundError), (load_weights, FileNotFoundError),
                               (init.describe, ValueError), (init.load_variables, ValueError)):
        with pytest.raises(error, match=message):
            entry_point(str(tmp_path))
    with pytest.raises(SystemExit):
        classify.main([image, "--weights", str(tmp_path)])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("reference, problem", [
    ("no_such_weights", "'no_such_weights' is neither a registered name nor an existing path; accepted: "),
    ("missing.h5", "weights file missing.h5 does not exist; accepted: "),
])
def test_a_reference_to_nothing_gets_one_line_listing_what_is_accepted(reference, problem, image, capsys):
    accepted = "a TF-Slim checkpoint prefix, its .index file, a folder holding one"
    with pytest.raises(SystemExit) as exit_info:
        classify.main([image, "--weights", reference])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and problem in err and accepted in err
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--weights", reference, "--format", "onnx", "--out", "x"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and problem in err and accepted in err
    for entry_point in (init.describe, init.load_variables):
        with pytest.raises(ValueError, match=problem):
            entry_point(reference)


def test_a_file_of_no_known_format_is_named(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="model.onnx' is in no format a converter reads; accepted: "):
        pretrained.load_pretrained(str(tmp_path / "model.onnx"))


# ---------------------------------------------------------------------------------------------
# gs:// against a local GCS (tests/data/fake_gcs.py).

BUCKET = "weights"
GS_SCRIPT = """
import json, sys
from mobilenet_jax.export import load_weights
from mobilenet_jax.interop.preprocessing import normalization_of
from mobilenet_jax.interop.pretrained import load_pretrained
from mobilenet_jax.training.init import describe, load_variables
seen = {}
for reference in sys.argv[1:]:
    loaded, deployable, described = load_pretrained(reference), load_weights(reference), describe(reference)
    kernel = loaded.variables["params"]["stem"]["conv"]["kernel"]
    seen[reference] = [loaded.preprocessing.size, normalization_of(loaded.preprocessing), deployable.image_size,
                       deployable.normalization, described.normalization, float(abs(kernel).sum()),
                       float(abs(load_variables(reference)["params"]["stem"]["conv"]["kernel"]).sum())]
print(json.dumps(seen))
"""


def upload(emulator: str, local: pathlib.Path, name: str) -> None:
    """Put the file `local` into the bucket as `name`, over the emulator's JSON API."""
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    request = urllib.request.Request(f"{emulator}/upload/storage/v1/b/{BUCKET}/o?{query}", data=local.read_bytes(),
                                     headers={"Content-Type": "application/octet-stream"}, method="POST")
    urllib.request.urlopen(request).close()


def test_gs_references_resolve_like_local_ones(cases, tmp_path, monkeypatch):
    pytest.importorskip("gcp_storage_emulator")
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "data"))
    from fake_gcs import fake_gcs

    prefix, workdir = pathlib.Path(cases["slim prefix"].reference), pathlib.Path(cases["workdir"].reference)
    with fake_gcs(tmp_path, BUCKET) as gcs:
        for path in prefix.parent.iterdir():
            upload(gcs["STORAGE_EMULATOR_HOST"], path, f"slim/{path.name}")
        for path in workdir.iterdir():
            upload(gcs["STORAGE_EMULATOR_HOST"], path, f"run/{path.name}")
        references = [f"gs://{BUCKET}/slim/{prefix.name}", f"gs://{BUCKET}/run"]
        env = dict(os.environ, **gcs, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
                   MOBILENET_JAX_CACHE=str(tmp_path / "cache"))
        done = subprocess.run([sys.executable, "-c", GS_SCRIPT, *references], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "cache" / "gs" / BUCKET / "slim" / f"{prefix.name}.index").exists()  # copied for TF's reader
    seen = json.loads(done.stdout.splitlines()[-1])
    for case, reference in zip((cases["slim prefix"], cases["workdir"]), references):
        kernel = float(np.abs(case.variables["params"]["stem"]["conv"]["kernel"]).sum())
        size, normalization = case.size, case.normalization
        assert seen[reference] == pytest.approx([size, normalization, size, normalization, normalization, kernel, kernel])


GS_DESCRIBE_SCRIPT = """
import json, sys
from mobilenet_jax.interop.download import cache_dir
from mobilenet_jax.training.init import describe, load_variables
def cached():
    return {str(p.relative_to(cache_dir())): p.stat().st_ino for p in cache_dir().rglob("*") if p.is_file()}
seen = {}
for reference in sys.argv[1:]:
    described = describe(reference)
    after_describe = cached()
    kernel = load_variables(reference)["params"]["stem"]["conv"]["kernel"]
    seen[reference] = [described.fields, described.normalization, after_describe, cached(), float(abs(kernel).sum())]
print(json.dumps(seen))
"""
GS_FORMS = ("slim prefix", "keras .h5", "timm .safetensors", "timm .pth")


def test_describing_gs_weights_copies_no_arrays_and_the_run_copies_them_once(cases, tmp_path, monkeypatch):
    pytest.importorskip("gcp_storage_emulator")
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "data"))
    from fake_gcs import fake_gcs

    prefix = pathlib.Path(cases["slim prefix"].reference)
    files = [*prefix.parent.iterdir(), *(pathlib.Path(cases[form].reference) for form in GS_FORMS[1:])]
    with fake_gcs(tmp_path, BUCKET) as gcs:
        for path in files:
            upload(gcs["STORAGE_EMULATOR_HOST"], path, f"w/{path.name}")
        references = [f"gs://{BUCKET}/w/{pathlib.Path(cases[form].reference).name}" for form in GS_FORMS]
        env = dict(os.environ, **gcs, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
                   MOBILENET_JAX_CACHE=str(tmp_path / "cache"))
        done = subprocess.run([sys.executable, "-c", GS_DESCRIBE_SCRIPT, *references], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    cached = f"gs/{BUCKET}/w/"
    index, data = cached + prefix.name + ".index", cached + prefix.name + ".data-00000-of-00001"
    pth = cached + pathlib.Path(cases["timm .pth"].reference).name
    before = {}
    for form, reference in zip(GS_FORMS, references):
        fields, normalization, after_describe, after_load, kernel = seen[reference]
        local = init.describe(cases[form].reference)
        assert (fields, normalization) == (local.fields, local.normalization)
        assert kernel == pytest.approx(float(np.abs(cases[form].variables["params"]["stem"]["conv"]["kernel"]).sum()))
        copied = set(after_describe) - set(before)
        if form == "slim prefix":  # the checkpoint's variable list alone; the run adds its data, keeps the list
            assert copied == {index} and data in after_load and after_load[index] == after_describe[index]
        elif form == "timm .pth":  # lists no shapes up front: copied for the check, and the run reads that copy
            assert copied == {pth} and after_load[pth] == after_describe[pth]
        else:  # the .h5's datasets and the safetensors header are read in the bucket
            assert copied == set()
        before = after_load


def test_a_fine_tuned_run_is_classified_with_its_own_class_names(tmp_path, image, capsys):
    model, variables = random_model(3, seed=15)
    workdir = tmp_path / "run"
    weights.save_model(str(workdir / weights.MODEL_FILE), model, variables, ("circle", "square", "triangle"))
    (workdir / weights.CONFIG_FILE).write_text(json.dumps({"image_size": 96, "normalization": "inception"}))
    for reference in (str(workdir), str(workdir / weights.MODEL_FILE)):
        assert classify.main([image, "--weights", reference, "--top", "3"]) == 0
        printed = capsys.readouterr().out.splitlines()[1:]
        assert sorted(line.split()[-1] for line in printed) == ["circle", "square", "triangle"]
    weights.to_path(str(workdir / weights.MODEL_FILE) + weights.CLASS_NAMES_SUFFIX).unlink()
    assert classify.main([image, "--weights", str(workdir), "--top", "3"]) == 0
    assert {line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()[1:]} == {
        "class 0", "class 1", "class 2"}
    with pytest.raises(ValueError, match="2 class names for a model of 3 classes"):
        weights.save_model(str(tmp_path / "x.msgpack"), model, variables, ("a", "b"))


def test_a_prefix_without_its_extension_is_answered_with_the_checkpoint_beside_it(cases):
    prefix = cases["slim prefix"].reference
    stem = prefix[: -len(".ckpt")]
    with pytest.raises(ValueError, match=f"neither a registered name nor an existing path, did you mean {prefix}\\?"):
        pretrained.load_pretrained(stem)


def test_a_folder_without_weights_says_so(tmp_path):
    (tmp_path / "readme.txt").write_text("not weights")
    with pytest.raises(FileNotFoundError, match="holds no weights: no TensorFlow checkpoint .* nor frozen graph"):
        pretrained.load_pretrained(str(tmp_path))
