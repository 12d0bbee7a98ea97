"""The estate's own certificate authority.

One CA per estate directory, created on first start and reused on restart so a
client that already trusts DIR/ca.pem keeps working. The server certificate
covers 127.0.0.1 and localhost (SAN IP + DNS): every simulated HTTPS service
shares it. Later parts (NTLS listeners, appliance certificates) can call
issue_cert() to get more certificates from the same CA.
"""
import datetime
import ipaddress
import os
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fsutil import write_private, write_public

CA_CERT = "ca.pem"
CA_KEY = "pki/ca.key"
SERVER_CERT = "pki/server.pem"
SERVER_KEY = "pki/server.key"
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1",)


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _new_key():
    # EC P-256: generating it takes milliseconds, which keeps `estate start` fast.
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key, passphrase=None):
    """PKCS#8 PEM; with PASSPHRASE (bytes) encrypted, AES-256-CBC (PBES2), as recent Luna clients write it."""
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(passphrase) if passphrase
                             else serialization.NoEncryption())


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dhsm simulated estate"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca():
    key = _new_key()
    name = _name("dhsm estate CA")
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(days=1))
            .not_valid_after(_now() + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue_cert(ca_key, ca_cert, common_name, dns_names=(), ip_addresses=(), client=False):
    """Sign a leaf certificate; returns (key, cert)."""
    key = _new_key()
    sans = [x509.DNSName(n) for n in dns_names] + \
           [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(_now() - datetime.timedelta(days=1))
               .not_valid_after(_now() + datetime.timedelta(days=825))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def self_signed_rsa(subject, sans, now, years, key=None):
    """A self-signed RSA 2048 certificate as Luna makes them (NTLS server.pem, `vtl createCert`):
    SUBJECT a list of (NameOID, value), SANS x509 general names, valid YEARS from NOW - 60 s
    (NOW is the issuer's clock, so a skewed appliance stamps certificates in its own time).
    KEY: an existing private key (default: a new one).  Returns (key, cert)."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in subject])
    start = datetime.datetime.fromtimestamp(now - 60, datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(start)
               .not_valid_after(start + datetime.timedelta(days=365 * years))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(key, hashes.SHA256())


class Pki:
    """Paths of the estate's CA and server certificate, created if missing."""

    def __init__(self, estate_dir):
        self.dir = estate_dir
        self.ca_file = os.path.join(estate_dir, CA_CERT)
        self.ca_key_file = os.path.join(estate_dir, CA_KEY)
        self.server_cert_file = os.path.join(estate_dir, SERVER_CERT)
        self.server_key_file = os.path.join(estate_dir, SERVER_KEY)

    def ensure(self):
        if not (os.path.exists(self.ca_file) and os.path.exists(self.ca_key_file)):
            key, cert = _make_ca()
            write_private(self.ca_key_file, key_pem(key))
            write_public(self.ca_file, cert_pem(cert))
            self._issue_server_cert(key, cert)
        elif not os.path.exists(self.server_cert_file):
            self._issue_server_cert(*self.load_ca())
        return self

    def load_ca(self):
        with open(self.ca_key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        with open(self.ca_file, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        return key, cert

    def _issue_server_cert(self, ca_key, ca_cert):
        key, cert = issue_cert(ca_key, ca_cert, "127.0.0.1", LOOPBACK_NAMES, LOOPBACK_IPS)
        write_private(self.server_key_file, key_pem(key))
        write_public(self.server_cert_file, cert_pem(cert) + cert_pem(ca_cert))

    def server_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.server_cert_file, self.server_key_file)
        # ARM speaks HTTP/1.1 here; advertising only it keeps ALPN clients honest.
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx
