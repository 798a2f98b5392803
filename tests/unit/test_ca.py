"""The per-bottle CA: leaves it signs verify against it; it cannot sign sub-CAs."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from bottle.launch.ca import generate_ca

NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.timezone.utc)


def load(ca):
    key = serialization.load_pem_private_key(ca.mitmproxy_pem, password=None)
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    return key, cert


def sign(issuer_key, issuer_cert, subject_cn, *, is_ca=False, san=None, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if is_ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san or subject_cn)]), critical=False)
    return key, builder.sign(issuer_key, hashes.SHA256())


def verifier(ca_cert, host):
    return PolicyBuilder().store(Store([ca_cert])).time(NOW).build_server_verifier(x509.DNSName(host))


def test_ca_is_a_short_lived_pathlen_zero_ca_named_after_the_bottle():
    ca = generate_ca("bottle-demo-abc123", now=NOW)
    key, cert = load(ca)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert "bottle-demo-abc123" in cert.subject.rfc4514_string()
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(days=8)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()


def test_mitmproxy_pem_holds_key_and_cert_and_cert_pem_holds_no_key():
    ca = generate_ca("bottle-demo-abc123", now=NOW)
    assert b"PRIVATE KEY" in ca.mitmproxy_pem and ca.cert_pem in ca.mitmproxy_pem
    assert b"PRIVATE KEY" not in ca.cert_pem
    assert "PRIVATE" not in repr(ca) and ca.fingerprint_sha256 in repr(ca)
    assert ca.short_fingerprint == "sha256:" + ca.fingerprint_sha256[:16]


def test_each_bottle_gets_a_new_ca():
    assert generate_ca("b", now=NOW).fingerprint_sha256 != generate_ca("b", now=NOW).fingerprint_sha256


def test_leaf_signed_by_the_ca_verifies_against_it():
    ca = generate_ca("bottle-demo-abc123", now=NOW)
    ca_key, ca_cert = load(ca)
    _, leaf = sign(ca_key, ca_cert, "api.anthropic.com")
    chain = verifier(ca_cert, "api.anthropic.com").verify(leaf, [])
    assert chain[-1] == ca_cert


def test_leaf_does_not_verify_against_another_bottles_ca():
    ca_key, ca_cert = load(generate_ca("one", now=NOW))
    _, other_cert = load(generate_ca("two", now=NOW))
    _, leaf = sign(ca_key, ca_cert, "api.anthropic.com")
    with pytest.raises(VerificationError):
        verifier(other_cert, "api.anthropic.com").verify(leaf, [])


def test_ca_cannot_sign_sub_cas():
    ca_key, ca_cert = load(generate_ca("bottle-demo-abc123", now=NOW))
    sub_key, sub_cert = sign(ca_key, ca_cert, "rogue intermediate", is_ca=True)
    _, leaf = sign(sub_key, sub_cert, "api.anthropic.com")
    with pytest.raises(VerificationError):
        verifier(ca_cert, "api.anthropic.com").verify(leaf, [sub_cert])
