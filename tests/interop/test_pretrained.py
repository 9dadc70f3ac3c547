"""The pretrained registry, cache and download (against a local HTTP server), and loading files."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import re
import socket
import threading
import time
import warnings

import numpy as np
import pytest

pytest.importorskip("safetensors")

import timm_state  # noqa: E402
from flax.traverse_util import flatten_dict  # noqa: E402

from mobilenet_jax.interop import download, pretrained, registry  # noqa: E402
from mobilenet_jax.interop.preprocessing import TIMM  # noqa: E402
from mobilenet_jax.interop.timm import from_timm  # noqa: E402


class Server:
    """An HTTP server on 127.0.0.1 serving `files` by path; "/cut/<path>" sends half a file
    while announcing all of it. `requests` counts what was asked for."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                cut = self.path.startswith("/cut/")
                body = server.files.get(self.path.removeprefix("/cut") if cut else self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if cut else body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    files = {"/weights.bin": np.random.default_rng(0).bytes(300_000)}
    s = Server(files)
    yield s
    s.close()


def cache_files(cache) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_unpinned_download_is_recorded_then_served_from_the_cache(server, tmp_path):
    body = server.files["/weights.bin"]
    with pytest.warns(UserWarning, match="no sha256 is pinned"):
        path = download.fetch(server.url + "/weights.bin", "w.bin", None, cache=tmp_path)
    assert path.read_bytes() == body
    assert (tmp_path / "w.bin.sha256").read_text().strip() == hashlib.sha256(body).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert download.fetch(server.url + "/weights.bin", "w.bin", None, cache=tmp_path) == path
    assert server.requests == ["/weights.bin"]  # the second call was a cache hit
    path.write_bytes(body[:-1] + b"x")  # the cached copy changed: refused by the recorded digest, removed
    with pytest.raises(download.ChecksumError, match="expected " + hashlib.sha256(body).hexdigest()):
        download.fetch(server.url + "/weights.bin", "w.bin", None, cache=tmp_path)
    assert cache_files(tmp_path) == ["w.bin.sha256"]


def test_pinned_checksum_mismatch_is_refused_and_nothing_is_kept(server, tmp_path):
    good = hashlib.sha256(server.files["/weights.bin"]).hexdigest()
    with pytest.raises(download.ChecksumError, match=f"has sha256 {good}, expected 0+: the download was not kept"):
        download.fetch(server.url + "/weights.bin", "w.bin", "0" * 64, cache=tmp_path)
    assert cache_files(tmp_path) == []
    assert download.fetch(server.url + "/weights.bin", "w.bin", good, cache=tmp_path).exists()


def test_interrupted_download_leaves_nothing_behind(server, tmp_path):
    with pytest.raises(OSError, match=r"cut off: 150000 of 300000 bytes"):
        download.fetch(server.url + "/cut/weights.bin", "w.bin", None, cache=tmp_path)
    assert cache_files(tmp_path) == []


def test_cache_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
    assert download.cache_dir() == tmp_path
    monkeypatch.delenv(download.CACHE_ENV)
    assert download.cache_dir().parts[-2:] == (".cache", "mobilenet_jax")


def test_registry_covers_every_published_source_with_its_recipe():
    entries = registry.REGISTRY
    assert len([n for n in entries if n.endswith(".tf_slim")]) == 16
    assert len([n for n in entries if n.endswith(".keras")]) == 16
    slim, keras, timm = (entries[f"mobilenet_v1_100_224.{s}"] for s in ("tf_slim", "keras", "timm"))
    assert (slim.top1, keras.top1, round(timm.top1, 1)) == (70.9, 70.4, 75.4)
    assert slim.url == "https://download.tensorflow.org/models/mobilenet_v1_2018_08_02/mobilenet_v1_1.0_224.tgz"
    assert all(w.url.startswith("https://") for w in entries.values())
    assert slim.num_classes == 1001
    assert keras.url.endswith("mobilenet_1_0_224_tf.h5") and keras.num_classes == 1000
    assert timm.url == ("https://huggingface.co/timm/mobilenetv1_100.ra4_e3600_r224_in1k/resolve/"
                        "dda9ab42e23f3061aa191630817df76e8fe9cace/model.safetensors")
    assert entries["mobilenet_v1_025_128.tf_slim"].preprocessing.size == 128
    assert (slim.preprocessing.interpolation, timm.preprocessing.interpolation) == ("bilinear", "bicubic")
    assert "mobilenetv1_100h" not in str(entries)


def test_the_published_tf_slim_digests_are_pinned():
    pinned = {w.url.rsplit("/", 1)[-1]: w.sha256 for w in registry.REGISTRY.values() if w.sha256}
    assert pinned == {
        "mobilenet_v1_1.0_224.tgz": "2fadeabb9968ec6833bee903900dda6e61b3947200535874ce2fe42a8493abc0",
        "mobilenet_v1_0.25_128.tgz": "879ddc3e0857f3611b5cf248e36de2288c7a11ea8c2ed8a8bdded635e6010dfe",
        "mobilenet_v1_0.5_224.tgz": "98cf7a39552f73920cb99617cfa9b88d5732a87abf9ec14f7cc7f3ade1db0aaa",
    }


def framed(width: int, height: int, border: int) -> np.ndarray:
    """A white image with a black frame `border` pixels wide."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[border:-border, border:-border] = 255
    return pixels


def test_timm_125_resizes_to_248_and_crops_0_9():
    recipe = registry.REGISTRY["mobilenet_v1_125_224.timm"].preprocessing
    assert (recipe.size, recipe.crop_fraction, recipe.resize) == (224, 0.9, "resize_then_crop")
    assert registry.REGISTRY["mobilenet_v1_100_224.timm"].preprocessing.crop_fraction == 0.875
    # Shorter side 248 = floor(224 / 0.9): kept as it is, then 12 pixels cropped off each side.
    assert np.all(recipe(framed(300, 248, 12)) == 1.0)
    assert np.any(recipe(framed(300, 248, 13)) == -1.0)
    assert np.any(recipe(framed(300, 256, 16)) == -1.0)  # not timm _100's 256 = floor(224 / 0.875)


@pytest.mark.parametrize("alpha, entry", [(1.0, "mobilenet_v1_100_224.timm"), (1.25, "mobilenet_v1_125_224.timm"),
                                          (0.25, None)])
def test_a_bare_model_safetensors_is_told_apart_by_its_width(tmp_path, alpha, entry):
    path = timm_state.write_safetensors(str(tmp_path / "model.safetensors"), alpha)
    loaded = pretrained.load_pretrained(path)
    expected = registry.REGISTRY[entry].preprocessing if entry else TIMM
    assert loaded.preprocessing == expected and loaded.model.alpha == alpha


def test_run_config_is_the_one_training_writes():
    from mobilenet_jax import weights
    from mobilenet_jax.training.run_record import CONFIG_FILE

    assert weights.CONFIG_FILE == CONFIG_FILE


@pytest.fixture
def timm_entry(server, tmp_path, monkeypatch):
    """A registry entry for a random alpha-0.25 timm file served on 127.0.0.1, cache in tmp_path."""
    local = timm_state.write_safetensors(str(tmp_path / "model.safetensors"), 0.25)
    data = open(local, "rb").read()
    server.files["/timm/model.safetensors"] = data
    entry = registry.PretrainedWeights(
        "test_025.timm", "timm", server.url + "/timm/model.safetensors", hashlib.sha256(data).hexdigest(),
        0.25, 1000, TIMM, None,
    )
    monkeypatch.setitem(registry.REGISTRY, entry.name, entry)
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    return entry, local


def test_load_pretrained_downloads_converts_and_also_takes_a_local_file(timm_entry, server, tmp_path):
    entry, local = timm_entry
    model, variables, recipe = pretrained.load_pretrained(entry.name)
    assert recipe == TIMM and model == from_timm(local).model()
    np.testing.assert_equal(flatten_dict(variables), flatten_dict(from_timm(local).variables))
    assert (tmp_path / "cache" / "test_025.timm.safetensors").exists()
    offline = pretrained.load_pretrained(entry.name, file=local)  # no server needed
    np.testing.assert_equal(flatten_dict(offline.variables), flatten_dict(variables))
    assert {k: offline.fields[k] for k in entry.fields} == entry.fields
    assert server.requests == ["/timm/model.safetensors"]


def test_local_file_of_another_shape_or_checksum_is_refused(timm_entry, tmp_path):
    entry, _ = timm_entry
    other = timm_state.write_safetensors(str(tmp_path / "other.safetensors"), 0.5)
    with pytest.raises(download.ChecksumError, match="not the published file"):
        pretrained.load_pretrained(entry.name, file=other)
    unpinned = dataclasses.replace(entry, name="unpinned.timm", sha256=None)
    registry.REGISTRY[unpinned.name] = unpinned
    with pytest.raises(ValueError, match="alpha 0.5 weights with 1000 classes, but unpinned.timm has alpha 0.25"):
        pretrained.load_pretrained(unpinned.name, file=other)
    del registry.REGISTRY[unpinned.name]
    with pytest.raises(ValueError, match="neither a registered name nor an existing path"):
        pretrained.load_pretrained("mobilenet_v1_100_224.nowhere")


def test_paths_convert_by_format_and_saved_models_load_back(tmp_path):
    local = timm_state.write_safetensors(str(tmp_path / "mine.safetensors"), 0.25, seed=3)
    loaded = pretrained.load_pretrained(local)
    assert loaded.preprocessing == TIMM and loaded.model.alpha == 0.25
    pretrained.save_pretrained(str(tmp_path / "saved.msgpack"), loaded)
    again = pretrained.load_pretrained(str(tmp_path / "saved.msgpack"))
    assert again.fields == loaded.fields and again.preprocessing == loaded.preprocessing
    np.testing.assert_equal(flatten_dict(again.variables), flatten_dict(loaded.variables))
    with pytest.raises(ValueError, match="'.*x.onnx' is in no format a converter reads; accepted: a registered name"):
        (tmp_path / "x.onnx").write_bytes(b"")
        pretrained.load_pretrained(str(tmp_path / "x.onnx"))


def test_loading_code_imports_no_framework():
    import subprocess
    import sys

    code = ("import sys, mobilenet_jax.pretrained, mobilenet_jax.classify\n"
            "from mobilenet_jax.interop import tf_slim, keras, timm\n"
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'h5py', 'safetensors', 'PIL') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_missing_file_is_reported_with_its_http_status(server, tmp_path):
    with pytest.raises(OSError, match=rf"^HTTP 404 Not Found for {server.url}/gone.bin; pass a copy of the file you have$"):
        download.fetch(server.url + "/gone.bin", "w.bin", None, cache=tmp_path)
    assert cache_files(tmp_path) == []


OFFLINE_FIX = r"without internet, download it elsewhere and pass the file instead of the name \(--weights PATH; "


def test_unreachable_server_is_named_with_the_offline_fix(tmp_path):
    with pytest.raises(OSError, match=rf"cannot download http://127.0.0.1:9/w.bin .*{OFFLINE_FIX}"):
        download.fetch("http://127.0.0.1:9/w.bin", "w.bin", None, cache=tmp_path)
    assert cache_files(tmp_path) == []


@pytest.fixture
def mute_server():
    """A TCP server on 127.0.0.1 that accepts each connection and then either closes it at once
    ("/closed" URLs: a proxy or firewall that drops the request) or never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            request = connection.recv(4096)
            if b"/closed" in request:
                connection.close()
            else:
                held.append(connection)

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for connection in held:
        connection.close()


@pytest.mark.parametrize("path, reason", [("/closed/w.bin", "Remote end closed connection without response"),
                                          ("/silent/w.bin", "no answer for 0.5 s")])
def test_a_network_that_drops_or_holds_a_download_is_one_line_in_bounded_time(mute_server, tmp_path, path, reason):
    url = mute_server + path
    started = time.monotonic()
    with pytest.raises(OSError) as error:
        download.fetch(url, "w.bin", None, cache=tmp_path, timeout=0.5)
    message = str(error.value)
    assert message.startswith(f"cannot download {url} ({reason}); ") and "\n" not in message
    assert re.search(OFFLINE_FIX, message)
    assert f"or put it at {tmp_path / 'w.bin'} (the cache folder is $MOBILENET_JAX_CACHE)" in message
    assert time.monotonic() - started < 5 and cache_files(tmp_path) == []


def test_a_workdir_without_its_model_file_says_how_to_get_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=(
        f"{tmp_path} is a workdir without mobilenet_v1.msgpack: rerun its train.py command with "
        f"--workdir={tmp_path}, which writes it when the run has finished \\(and trains on when it has not\\)$"
    )):
        pretrained.resolve_weights(str(tmp_path))
