"""A local Google Cloud Storage for tests: gcp-storage-emulator behind a TLS relay on 127.0.0.1.

TensorStore (Orbax's array store) takes the emulator's address from TENSORSTORE_GCS_HTTP_URL,
google-cloud-storage (Orbax's bucket checks) from STORAGE_EMULATOR_HOST.
TensorFlow's GCS filesystem (behind etils.epath, tf.summary and TFDS) has its endpoints built in
(https://www.googleapis.com, https://storage.googleapis.com) and no override, but its libcurl
honours `https_proxy` and CURL_CA_BUNDLE: the relay answers CONNECT for those hosts with a
certificate of a throwaway CA and passes the decrypted HTTP on to the emulator. Both servers
listen on 127.0.0.1 only and stop when the context exits.
"""

from __future__ import annotations

import contextlib
import datetime
import pathlib
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
IDLE_SECONDS = 120  # a relayed connection closes after this long without traffic


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_certificates(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """(CA certificate, server certificate, server key) PEM files, the server's for GOOGLE_HOSTS."""
    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=1))

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0])
            .not_valid_after(validity[1])
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName(host) for host in GOOGLE_HOSTS]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("test CA", ca_key, "test CA", ca_key, ca=True)
    server = certificate(GOOGLE_HOSTS[0], server_key, "test CA", ca_key, ca=False)
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class _Relay(socketserver.ThreadingTCPServer):
    """An HTTPS proxy that terminates TLS for GOOGLE_HOSTS itself and relays to `target`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, target: tuple[str, int], context: ssl.SSLContext):
        self.target, self.context = target, context
        super().__init__(("127.0.0.1", port), _RelayHandler)


class _RelayHandler(socketserver.BaseRequestHandler):
    """One CONNECT tunnel: TLS with the client, plain HTTP with the emulator."""

    server: _Relay

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        host = head.split()[1].decode().rsplit(":", 1)[0]
        if not head.startswith(b"CONNECT ") or host not in GOOGLE_HOSTS:
            self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        with self.server.context.wrap_socket(self.request, server_side=True) as client, socket.create_connection(
            self.server.target
        ) as emulator:
            _pipe(client, emulator)


def _pipe(client: ssl.SSLSocket, emulator: socket.socket) -> None:
    """Copies bytes both ways until either side closes or stays idle for IDLE_SECONDS."""
    while True:
        # Decrypted bytes already buffered in the TLS socket do not wake select().
        readable = [client] if client.pending() else select.select([client, emulator], [], [], IDLE_SECONDS)[0]
        if not readable:
            return
        for source in readable:
            data = source.recv(1 << 16)
            if not data:
                return
            (emulator if source is client else client).sendall(data)


@contextlib.contextmanager
def _patched_emulator() -> Iterator[None]:
    """The emulator, fixed for TensorFlow's client: a body sent both chunked and with a
    Content-Length is read as chunked (as HTTP/1.1 says), an empty upload (a folder marker) is
    b"", not a crash, a resumable upload's session URL keeps https, the relay's scheme, and a
    media download says its object's generation (x-goog-generation), as TensorStore expects."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    read_raw_data = server._read_raw_data
    media_upload, create_resumable_upload = objects._media_upload, objects._create_resumable_upload
    download = objects.download

    def read_body(request_handler):
        if request_handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            del request_handler.headers["Content-Length"]
        return read_raw_data(request_handler)

    def upload(request, response, storage):
        if request.data is None:
            request._data = b""
        return media_upload(request, response, storage)

    def create_upload(request, response, storage):
        create_resumable_upload(request, response, storage)
        for host in GOOGLE_HOSTS:
            response["Location"] = response["Location"].replace(f"http://{host}/", f"https://{host}/")

    def download_with_generation(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status < 300:
            name = (request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(storage.get_file_obj(*name)["generation"])

    server._read_raw_data = read_body
    objects._media_upload, objects._create_resumable_upload = upload, create_upload
    objects.download = download_with_generation
    try:
        yield
    finally:
        server._read_raw_data = read_raw_data
        objects._media_upload, objects._create_resumable_upload = media_upload, create_resumable_upload
        objects.download = download


@contextlib.contextmanager
def fake_gcs(folder: pathlib.Path, bucket: str) -> Iterator[dict[str, str]]:
    """Runs a local GCS holding an empty `bucket`; yields the environment variables that point
    TensorFlow, etils.epath and Orbax/TensorStore at it."""
    from gcp_storage_emulator.server import create_server

    ca, certificate, key = _write_certificates(folder)
    emulator_port, relay_port = _free_port(), _free_port()
    emulator = create_server("127.0.0.1", emulator_port, in_memory=True, default_bucket=bucket)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    relay = _Relay(relay_port, ("127.0.0.1", emulator_port), context)
    with _patched_emulator():
        emulator.start()
        threading.Thread(target=relay.serve_forever, daemon=True).start()
        try:
            yield {
                "https_proxy": f"http://127.0.0.1:{relay_port}",
                "CURL_CA_BUNDLE": str(ca),
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
                "NO_GCE_CHECK": "true",
                "TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{emulator_port}",
                "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{emulator_port}",
                "GOOGLE_CLOUD_PROJECT": "test",
            }
        finally:
            relay.shutdown()
            relay.server_close()
            emulator.stop()
