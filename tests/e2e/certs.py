"""A throw-away CA, server and client certificates for TLS tests."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool = False, server: bool = False, addresses: tuple[str, ...] = ()) -> x509.Certificate:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                         *(x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", *addresses))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, addresses: tuple[str, ...] = ()) -> dict[str, Path]:
    """ca.pem, server.pem/server.key (localhost, 127.0.0.1 and `addresses`), client.pem/client.key."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert("appliance-test-ca", ca_key, None, ca=True)
    files: dict[str, Path] = {}
    for name, data in (("ca.pem", ca.public_bytes(serialization.Encoding.PEM)),):
        (directory / name).write_bytes(data)
        files["ca"] = directory / name
    for role in ("server", "client"):
        key = _key()
        cert = _cert(f"appliance-test-{role}", key, ("appliance-test-ca", ca_key), server=role == "server",
                     addresses=addresses)  # fmt: skip
        (directory / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{role}.key").write_bytes(_pem_key(key))
        files[role] = directory / f"{role}.pem"
        files[f"{role}_key"] = directory / f"{role}.key"
    return files
