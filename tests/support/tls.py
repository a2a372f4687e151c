"""TLS for the tests: a throwaway CA and server certificate, and a TLS-only, password-protected
``redis-server`` using them. Certificates are made with the ``openssl`` command line."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from testbed.services import free_port, require_binary
from testbed.waiting import wait_until


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the server's certificate, for 127.0.0.1 and localhost
    key: Path


def make_certificates(directory: Path) -> Certificates:
    """A CA and a server certificate it signed, valid for a day, in ``directory``."""
    openssl = require_binary("openssl", "apt-get install -y openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    commands = [
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=labeler test CA",
            "-keyout",
            ca_key,
            "-out",
            ca,
        ],
        [
            openssl,
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            key,
            "-out",
            csr,
        ],
        [
            openssl,
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-extfile",
            extensions,
            "-out",
            cert,
        ],
    ]
    for command in commands:
        subprocess.run([str(part) for part in command], check=True, capture_output=True)
    return Certificates(ca, cert, key)


class TlsRedisServer:
    """A private ``redis-server`` that speaks only TLS and requires a password."""

    def __init__(self, workdir: Path, certificates: Certificates, password: str) -> None:
        self.binary = require_binary("redis-server", "apt-get install -y redis-server")
        self.workdir = workdir
        self.certificates = certificates
        self.password = password
        self.port = free_port()
        self.log = workdir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def broker_url(self, db: int = 0) -> str:
        """``rediss://`` with the CA to verify against, and no password (it goes separately)."""
        ca = quote(str(self.certificates.ca), safe="/")
        return f"rediss://127.0.0.1:{self.port}/{db}?ssl_cert_reqs=required&ssl_ca_certs={ca}"

    def start(self) -> TlsRedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        certs = self.certificates
        args = [
            self.binary,
            "--port",
            "0",  # no plain-text port at all
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(certs.cert),
            "--tls-key-file",
            str(certs.key),
            "--tls-ca-cert-file",
            str(certs.ca),
            "--tls-auth-clients",
            "no",  # clients verify the server; no client certificates
            "--requirepass",
            self.password,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_until(
            lambda: b"Ready to accept connections" in self.log.read_bytes() or not self.alive,
            10,
            f"TLS redis-server on port {self.port}",
        )
        if not self.alive:
            raise RuntimeError(f"redis-server with TLS did not start:\n{self.log.read_text()}")
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None
