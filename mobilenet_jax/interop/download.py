"""Files by URL into a cache folder, once, kept only after their size and sha256 check out.

The cache is `$MOBILENET_JAX_CACHE`, by default `~/.cache/mobilenet_jax`. A download streams
into a temporary file beside its destination and is renamed into place only when complete and,
where a sha256 is known, matching; otherwise nothing is left behind. For files whose sha256 is
not pinned, the first download's digest is recorded beside the file (`<file>.sha256`) and every
later use is checked against it. `local_copy` and `local_file` bring gs:// files into the cache
for the readers that need a local file; a cached copy with its object's size and modification
time is not copied again.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import ssl
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from etils import epath

from mobilenet_jax.paths import to_path

CACHE_ENV = "MOBILENET_JAX_CACHE"
_CHUNK = 1 << 20
# Seconds a connection may stay silent (connecting, awaiting the answer, between chunks) before
# a download gives up: a network that drops packets is named within this time.
TIMEOUT = 15.0
# What the network raises where a transfer fails: refused, reset, timed out, no name, TLS, a
# connection closed before the server answered (http.client's, which urllib does not wrap).
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError)


class ChecksumError(ValueError):
    """A file's sha256 is not the one expected."""


def cache_dir() -> Path:
    """The cache folder: `$MOBILENET_JAX_CACHE`, else `~/.cache/mobilenet_jax`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mobilenet_jax")


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: str | os.PathLike, expected: str | None) -> str:
    """The file's sha256; ChecksumError if `expected` is given and differs (the file is kept)."""
    digest = sha256_of(path)
    if expected and digest != expected:
        raise ChecksumError(f"{path} has sha256 {digest}, expected {expected}: not the published file")
    return digest


def _download_to_temporary(url: str, destination: Path, timeout: float) -> tuple[Path, str]:
    """Stream `url` into a temporary file beside `destination`: (its path, its sha256).

    A transfer that fails, stays silent for `timeout` seconds or ends before Content-Length
    bytes raises one OSError naming the URL, why, and how to do without the network (the file
    passed in place of the name, or put at `destination`); it leaves no file behind.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=destination.parent, prefix=destination.name + ".", suffix=".part")
    temporary, digest, received = Path(name), hashlib.sha256(), 0
    offline = (
        "without internet, download it elsewhere and pass the file instead of the name (--weights PATH; "
        f"file= in Python), or put it at {destination} (the cache folder is ${CACHE_ENV})"
    )
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
            except http.client.IncompleteRead as error:
                received += len(error.partial)
                expected = expected or received + (error.expected or 0)
        if expected is not None and received != int(expected):
            raise OSError(
                f"download of {url} was cut off: {received} of {expected} bytes; call again to retry, or {offline}"
            )
        return temporary, digest.hexdigest()
    except urllib.error.HTTPError as error:  # the server answered: the file is not (or no longer) there
        temporary.unlink(missing_ok=True)
        raise OSError(f"HTTP {error.code} {error.reason} for {url}; pass a copy of the file you have") from error
    except _NETWORK_ERRORS as error:
        temporary.unlink(missing_ok=True)
        raise OSError(f"cannot download {url} ({_reason(error, timeout)}); {offline}") from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _reason(error: Exception, timeout: float) -> str:
    """Why a transfer failed, in a few words."""
    reason = getattr(error, "reason", None) or error  # URLError wraps the socket's error
    if isinstance(reason, TimeoutError):
        return f"no answer for {timeout:g} s"
    return str(reason) or type(reason).__name__


def fetch(url: str, filename: str, sha256: str | None, cache: str | os.PathLike | None = None,
          timeout: float = TIMEOUT) -> Path:
    """The cached copy of `url` (as `filename` in the cache), downloaded on first use.

    `sha256` pins the content; when None the first download's digest is recorded and later
    uses are checked against it (with a warning that the file is unpinned). A cached file with
    the wrong digest is removed and ChecksumError raised; a downloaded one is never kept.
    """
    path = Path(cache or cache_dir()) / filename
    record = path.with_name(path.name + ".sha256")
    expected = sha256 or (record.read_text().split()[0] if record.exists() else None)
    if path.exists():
        try:
            check_sha256(path, expected)
        except ChecksumError:
            path.unlink()
            raise
        return path
    temporary, digest = _download_to_temporary(url, path, timeout)
    if expected and digest != expected:
        temporary.unlink()
        raise ChecksumError(f"{url} has sha256 {digest}, expected {expected}: the download was not kept")
    os.replace(temporary, path)
    if sha256 is None and not record.exists():
        record.write_text(digest + "\n")
        warnings.warn(
            f"{filename}: no sha256 is pinned for {url}; recorded this download's {digest} in {record} "
            f"and later uses are checked against it",
            stacklevel=2,
        )
    return path


def local_copy(path: str | os.PathLike) -> Path:
    """`path` on the local disk: a gs:// file, folder or checkpoint prefix is copied into the cache first.

    A file or prefix (or a prefix's `.index`) brings every object named `<prefix>` or
    `<prefix>.*` beside it; a folder, everything under it. A file whose cached copy has its size
    and modification time is kept, any other copied again: the copy follows the bucket.
    """
    path = to_path(path)
    if "://" not in os.fspath(path):
        return Path(path)
    target = _cached(path)
    if path.is_dir():
        for folder, _, names in path.walk():
            for name in names:
                _copy(folder / name, target / (folder / name).relative_to(path))
        return target
    prefix = path.name.removesuffix(".index")
    for source in path.parent.glob(prefix + "*"):
        if source.name == prefix or source.name.startswith(prefix + "."):
            _copy(source, target.with_name(source.name))
    return target


def local_file(path: str | os.PathLike) -> Path:
    """The one file `path` on the local disk: a gs:// file alone is copied into the cache, where
    `local_copy` would put it (and then keeps it)."""
    path = to_path(path)
    if "://" not in os.fspath(path):
        return Path(path)
    target = _cached(path)
    _copy(path, target)
    return target


def _cached(path: epath.Path) -> Path:
    """Where the cache keeps its copy of the gs:// `path`."""
    return cache_dir() / os.fspath(path).replace("://", "/", 1)


def _copy(source: epath.Path, destination: Path) -> None:
    """Copy the file `source` to `destination`, renamed into place when complete and stamped with
    the source's modification time; nothing is copied where `destination` has its size and time
    (a source whose store gives no time, 0, is always copied)."""
    stat = source.stat()
    kept = destination.stat() if destination.exists() else None
    if stat.mtime and kept is not None and (kept.st_size, int(kept.st_mtime)) == (stat.length, stat.mtime):
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    source.copy(partial, overwrite=True)
    os.utime(partial, (stat.mtime, stat.mtime))
    os.replace(partial, destination)
