"""Certificates for mutual TLS between a job's processes.

Files are read in the layout of a Kubernetes Secret of type `kubernetes.io/tls` with the
CA beside the pair (`ca.crt`, `tls.crt`, `tls.key`: what cert-manager issues), mounted as
a directory. One certificate per job serves both ends: every PS presents it as a server
and requires a client certificate from the same CA, and every client (workers, chain
peers, the master, the chaos Job) presents it. Besides the CA, a PS checks that the peer's
certificate names the job (`identity`, a DNS name in its subjectAltName): with a CA that
issues for many jobs, one job's certificate does not open another job's PS.

Clients verify the PS's certificate against `identity` whatever address they dial (a pod
IP, a headless-Service name), so that name is the one a certificate must carry.

`generate` makes a throwaway CA and a certificate (local runs); `CertificateAuthority`
issues several from one CA (tests).
"""

from __future__ import annotations

import datetime
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trainthrough.errors import CredentialsError


def private_folder(directory: str | os.PathLike[str]) -> Path:
    """`directory`, created if need be, as a folder only this user may enter. One that
    exists already must be this user's own real folder (not a link another user planted
    in a shared place such as /tmp), and is made private."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise CredentialsError(f"{folder}: not a folder of this user; credentials are not written there")
    os.chmod(folder, 0o700)
    return folder


def write_private(path: Path, data: bytes) -> None:
    """`data` into `path`, readable by this user only, whatever was there before (a file
    of looser mode is tightened before anything is written; a link is refused)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        raise CredentialsError(f"{path}: cannot write ({error.strerror or error})") from None
    try:
        if os.fstat(fd).st_uid != os.getuid():
            raise CredentialsError(f"{path}: belongs to another user; credentials are not written there")
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
# The key in grpc's auth context that lists the peer certificate's subjectAltNames.
_SAN = "x509_subject_alternative_name"


def identity(namespace: str, job: str) -> str:
    """The DNS name a job's certificate carries, checked at both ends: the job's headless
    Service (`NAME.NS.svc`; every PS pod is `NAME-ps-<i>.NAME.NS.svc` below it)."""
    return f"{job}.{namespace}.svc"


@dataclass(frozen=True)
class TlsMaterial:
    """A CA and the job's certificate and key, PEM-encoded."""

    ca: bytes
    cert: bytes
    key: bytes = field(repr=False)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> TlsMaterial:
        """`ca.crt`, `tls.crt` and `tls.key` from `directory` (a mounted TLS Secret)."""
        folder = Path(directory)
        parts = []
        for name in (CA_FILE, CERT_FILE, KEY_FILE):
            path = folder / name
            try:
                data = path.read_bytes()
            except OSError as error:
                raise CredentialsError(f"TLS: cannot read {path} ({error.strerror or error}); a TLS Secret holds {CA_FILE}, {CERT_FILE} and {KEY_FILE}") from None
            if b"-----BEGIN" not in data:
                raise CredentialsError(f"TLS: {path} is not PEM")
            parts.append(data)
        return cls(*parts)

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """The three files in `directory`, a folder of this user only."""
        folder = private_folder(directory)
        for name, data in ((CA_FILE, self.ca), (CERT_FILE, self.cert), (KEY_FILE, self.key)):
            write_private(folder / name, data)
        return folder

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve with the certificate; require a client certificate from the CA."""
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Present the certificate; trust PS certificates from the CA only."""
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert)


def peer_names(context: grpc.ServicerContext) -> list[str]:
    """The DNS names in the peer's certificate (empty for a plaintext peer)."""
    return [name.decode("ascii", "replace") for name in context.auth_context().get(_SAN, [])]


class CertificateAuthority:
    """A throwaway CA (ECDSA P-256: milliseconds to make) that issues certificates usable
    as server and as client, valid from a few minutes ago (clock skew) for `days`."""

    def __init__(self, common_name: str = "trainthrough throwaway CA", *, days: int = 30) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        self._start, self._end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = _name(common_name)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name).issuer_name(self._name).public_key(self._key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(self._start).not_valid_after(self._end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )  # fmt: skip

    def issue(self, names: list[str]) -> TlsMaterial:
        """A key and a certificate for `names` (subjectAltName DNS entries), with this CA."""
        if not names:
            raise ValueError("a certificate needs at least one DNS name")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0])).issuer_name(self._name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(self._start).not_valid_after(self._end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )  # fmt: skip
        pem = serialization.Encoding.PEM
        return TlsMaterial(
            ca=self._cert.public_bytes(pem),
            cert=cert.public_bytes(pem),
            key=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trainthrough"), x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def generate(names: list[str]) -> TlsMaterial:
    """A fresh CA and a certificate for `names` signed by it (a local run's)."""
    return CertificateAuthority(f"trainthrough CA for {names[0] if names else '?'}").issue(names)
