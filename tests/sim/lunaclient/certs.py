"""`vtl createCert`: the client's self-signed NTLS certificate, kept apart from install.py so
that tools which only read the install (lunacm) do not load the X.509 machinery.

The private key is written as real `vtl createCert` writes it: PKCS#8, encrypted with a
passphrase (AES-256 here; older clients used 3DES). The passphrase is the estate's secret
DIR/secrets/client_key_passphrase (made on first use), which the simulated client library
(ntls_link) reads as the real one is configured with it."""
import os
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fsutil import write_private, write_public
from pki import cert_pem, key_pem, self_signed_rsa

CERT_YEARS = 10


def create_client_cert(install, name, now):
    """RSA 2048, CN=NAME, in cert/client as NAMEKey.pem and NAME.pem; Chrystoki.conf points at
    them. Returns (key file, certificate file)."""
    subject = [(NameOID.COUNTRY_NAME, "CA"), (NameOID.STATE_OR_PROVINCE_NAME, "Ontario"),
               (NameOID.LOCALITY_NAME, "Ottawa"), (NameOID.ORGANIZATION_NAME, "Chrysalis-ITS"),
               (NameOID.COMMON_NAME, name)]
    key, cert = self_signed_rsa(subject, [], now, CERT_YEARS)
    key_file, cert_file = install.client_cert_files(name)
    write_private(key_file, key_pem(key, key_passphrase(install)))
    write_public(cert_file, cert_pem(cert))
    install.use_client_cert(key_file, cert_file)
    return key_file, cert_file


def age_client_cert(install, now, days_left):
    """The certificate Chrystoki.conf names, re-issued with its key and subject as if `vtl
    createCert` had made it long ago: it ends DAYS_LEFT days after NOW (negative: expired
    that many days ago).  Time passing, for the expiry paths. Returns (old PEM, new PEM)."""
    cert_file, key_file = install.client_files(install.load())
    with open(cert_file, "rb") as f:
        old = f.read()
    with open(key_file, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), key_passphrase(install))
    subject = [(a.oid, a.value) for a in x509.load_pem_x509_certificate(old).subject]
    issued = now + days_left * 86400 - 365 * CERT_YEARS * 86400 + 60
    _, cert = self_signed_rsa(subject, [], issued, CERT_YEARS, key=key)
    write_public(cert_file, cert_pem(cert))
    return old, cert_pem(cert)


def key_passphrase(install):
    """The passphrase of the client's private key (bytes), made on first use."""
    path = install.key_passphrase_path
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_private(path, secrets.token_urlsafe(18))
    with open(path, "rb") as f:
        return f.read().strip()
