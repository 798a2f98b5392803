"""One ephemeral certificate authority per bottle, made on the host with `cryptography`.

The CA only ever signs the proxy's leaf certificates: `pathlen:0` means a leaked key
cannot mint intermediate CAs, and the short validity and per-bottle subject mean it is
worthless once the bottle is gone. Everything is returned as bytes in memory so the
backend can stream the private key into the proxy container without writing it to the
host's disk.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_VALIDITY = datetime.timedelta(days=7)
# Clocks inside containers and on the host can disagree a little.
BACKDATE = datetime.timedelta(hours=1)


@dataclasses.dataclass(frozen=True, repr=False)
class BottleCA:
    mitmproxy_pem: bytes
    """Private key and certificate in one PEM file: what mitmproxy loads as `mitmproxy-ca.pem`."""
    cert_pem: bytes
    """The certificate alone: what the agent trusts."""
    fingerprint_sha256: str
    """Hex SHA-256 of the DER certificate."""

    def __repr__(self) -> str:  # never show the key, even in a traceback
        return f"BottleCA(fingerprint_sha256={self.fingerprint_sha256!r})"

    @property
    def short_fingerprint(self) -> str:
        return f"sha256:{self.fingerprint_sha256[:16]}"


def generate_ca(
    bottle_id: str,
    *,
    validity: datetime.timedelta = DEFAULT_VALIDITY,
    now: datetime.datetime | None = None,
) -> BottleCA:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"bottle egress CA for {bottle_id}"[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bottle"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, bottle_id[:64]),
        ]
    )
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return BottleCA(mitmproxy_pem=key_pem + cert_pem, cert_pem=cert_pem, fingerprint_sha256=fingerprint)
