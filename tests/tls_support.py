"""TLS for the Redis test servers: a throwaway CA, a server certificate for 127.0.0.1 signed
by it, a second CA that signed nothing here (the wrong CA), and the ``redis-server`` options
that make a server, a replica, a sentinel or a cluster node speak TLS only (``--port 0``).

Debian's redis-server 7 is built with TLS; clients are not asked for certificates
(``tls-auth-clients no``): the store verifies the servers, the servers check passwords.
"""

from __future__ import annotations

import datetime
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path  # the CA that signed the servers' certificate (PEM)
    cert: Path  # the servers' certificate: SAN IP 127.0.0.1 only
    key: Path
    wrong_ca: Path  # a CA that signed nothing the servers present

    def server_args(self, port: int) -> list[str]:
        """redis-server options: TLS on ``port``, no plaintext port, TLS to its master."""
        return ["--port", "0", "--tls-port", str(port), *self.file_args(), "--tls-replication", "yes"]

    def file_args(self) -> list[str]:
        return ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
                "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no"]

    def sentinel_conf(self, port: int) -> str:
        """sentinel.conf lines: TLS on ``port``, no plaintext port, TLS to the servers and the
        other sentinels."""
        return (f"port 0\ntls-port {port}\ntls-cert-file {self.cert}\ntls-key-file {self.key}\n"
                f"tls-ca-cert-file {self.ca}\ntls-auth-clients no\ntls-replication yes\n")

    def context(self) -> ssl.SSLContext:
        """A client context trusting the CA (the support modules' own checks)."""
        return ssl.create_default_context(cafile=str(self.ca))

    def redis_kwargs(self) -> dict:
        """redis-py client options for the support modules' own checks."""
        return {"ssl": True, "ssl_ca_certs": str(self.ca)}


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path | None = None) -> Pki:
    """A fresh CA, a server certificate (SAN: IP 127.0.0.1, nothing else) and a wrong CA."""
    import ipaddress

    d = Path(directory or tempfile.mkdtemp(prefix="igsp-tls-"))
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca("igsp test CA")
    _, wrong = _ca("igsp test CA")  # the same name, another key: only the signature tells them apart
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("igsp test redis")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(d, d / "ca.pem", d / "server.pem", d / "server.key", d / "wrong-ca.pem")
    pki.ca.write_bytes(_pem(ca))
    pki.wrong_ca.write_bytes(_pem(wrong))
    pki.cert.write_bytes(_pem(cert))
    pki.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    pki.key.chmod(0o600)
    return pki


def tls_ping(port: int, pki: Pki, timeout: float = 1.0) -> bool:
    """PING over TLS (trusting ``pki``'s CA): True on PONG."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            pki.context().wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


class TlsRedisServer:
    """A private ``redis-server`` speaking TLS only, on a free port (never the shared 6379)."""

    def __init__(self, pki: Pki):
        from tests.support import free_port

        self.pki = pki
        self.dir = Path(tempfile.mkdtemp(prefix="igsp-redis-tls-"))
        self.port = free_port()
        self.proc = None

    def url(self, ca: Path | None = None, scheme: str = "rediss") -> str:
        from urllib.parse import quote

        return f"{scheme}://127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(ca or self.pki.ca), safe='')}"

    def start(self) -> TlsRedisServer:
        import shutil
        import subprocess

        from tests.sentinel_support import _wait

        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), *self.pki.server_args(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--daemonize", "no", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait(f"redis-server (TLS) on {self.port}", lambda: self.proc.poll() is None and tls_ping(self.port, self.pki),
                  timeout=10)
        except BaseException:
            self.cleanup()
            raise
        return self

    def cleanup(self) -> None:
        import shutil

        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
