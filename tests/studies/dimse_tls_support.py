"""Certificates for the DICOM TLS tests: a test CA, the listener's certificate, and nodes' client certificates."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pynetdicom import _config

from studies.dimse.scp import scp_start, tls_context
from tests.studies.dimse_support import HOST, free_port


@dataclass(frozen=True)
class Issued:
    certificate: Path
    key: Path

    @property
    def pem(self) -> str:
        return self.certificate.read_text()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(folder: Path, stem: str, certificate: x509.Certificate, key: rsa.RSAPrivateKey) -> Issued:
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return Issued(cert_path, key_path)


class CertificateAuthority:
    """A certificate authority that lives in a folder for one test."""

    def __init__(self, folder: Path, name: str = "Test DICOM CA") -> None:
        self.folder = folder
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.path = _write(folder, name.replace(" ", "_"), self.certificate, self.key).certificate

    def issue(self, common_name: str, *, server: bool = False) -> Issued:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(self.certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return _write(self.folder, common_name, builder.sign(self.key, hashes.SHA256()), key)


@contextlib.contextmanager
def running_tls_listener(*, certificate: Issued, ca_file: Path) -> Iterator[int]:
    """The portal's DICOM TLS listener in this process, with ``certificate``; yields its port."""
    context = tls_context(certificate=str(certificate.certificate), private_key=str(certificate.key),
                          ca_file=str(ca_file))
    chunked = _config.STORE_RECV_CHUNKED_DATASET
    port = free_port()
    server = scp_start(host=HOST, port=port, ae_title="PACSPORTAL", block=False, ssl_context=context)
    try:
        yield port
    finally:
        server.shutdown()
        _config.STORE_RECV_CHUNKED_DATASET = chunked
