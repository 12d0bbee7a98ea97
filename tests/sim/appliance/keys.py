"""SSH keys (host keys, the test client key, known_hosts) and NTLS server certificates.

Host keys: RSA 2048 (what the real 7.2 appliance was seen offering, luna-field.md
1.1, and the key the estate's known_hosts lists) and ed25519, in OpenSSH format,
made with python3-cryptography (paramiko cannot generate ed25519) and kept in DIR
so a restarted estate keeps its identity. The NTLS certificate is self-signed like the appliance's: RSA 2048,
CN = hostname, valid ten years from the appliance's clock (so a skewed clock
makes a certificate that clients see as not yet valid).
"""
import base64
import datetime
import hashlib
import ipaddress
import os

import paramiko
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from fsutil import write_private, write_public
from pki import cert_pem, key_pem, self_signed_rsa

CERT_YEARS = 10


def _new_ed25519_pem():
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public


def _new_rsa_pem():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public


KINDS = {"ed25519": (_new_ed25519_pem, paramiko.Ed25519Key), "rsa": (_new_rsa_pem, paramiko.RSAKey)}


def ensure_key_pair(path, comment, kind="ed25519"):
    """A KIND key at PATH (0600) and PATH.pub; returns the paramiko key."""
    if not os.path.exists(path):
        make_key_pair(path, comment, kind)
    return KINDS[kind][1](filename=path)


def make_key_pair(path, comment, kind="ed25519"):
    private, public = KINDS[kind][0]()
    write_private(path, private)
    write_public(path + ".pub", public + f" {comment}\n".encode())


def fingerprint_sha256(key):
    """OpenSSH's `SHA256:<base64, no padding>` of a paramiko key's public blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def fingerprints(host_keys):
    """{"rsa": ..., "ed25519": ...} of paramiko host keys."""
    names = {"ssh-rsa": "rsa", "ssh-ed25519": "ed25519"}
    return {names.get(key.get_name(), key.get_name()): fingerprint_sha256(key) for key in host_keys}


def public_line(key):
    """'ssh-ed25519 AAAA...' for known_hosts / authorized_keys."""
    return f"{key.get_name()} {key.get_base64()}"


def write_known_hosts(path, entries):
    """entries: [(host, port, paramiko key)] -> OpenSSH known_hosts with [host]:port names."""
    write_public(path, "".join(f"[{host}]:{port} {public_line(key)}\n" for host, port, key in entries))


def read_authorized_keys(path):
    """-> set of (type, base64) accepted for the admin user."""
    try:
        with open(path) as f:
            return {tuple(line.split()[:2]) for line in f if line.strip() and not line.startswith("#")}
    except FileNotFoundError:
        return set()


def make_server_cert(key_path, cert_path, hostname, ips, now):
    """A new self-signed NTLS key pair, stamped with the appliance clock NOW."""
    subject = [(NameOID.COUNTRY_NAME, "CA"), (NameOID.ORGANIZATION_NAME, "Gemalto Inc."),
               (NameOID.COMMON_NAME, hostname)]
    sans = [x509.DNSName(hostname), x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    key, cert = self_signed_rsa(subject, sans, now, CERT_YEARS)
    write_private(key_path, key_pem(key))
    write_public(cert_path, cert_pem(cert))
    return cert_pem(cert)


def load_cert(pem):
    return x509.load_pem_x509_certificate(pem if isinstance(pem, bytes) else pem.encode())


def fingerprint(cert):
    return cert.fingerprint(hashes.SHA256()).hex()


def md5_fingerprint(path):
    """LunaSH's `client fingerprint` form of the certificate in PATH: MD5, upper-case hex pairs joined by ':'."""
    with open(path, "rb") as f:
        digest = load_cert(f.read()).fingerprint(hashes.MD5())
    return ":".join(f"{byte:02X}" for byte in digest)


def valid_at(cert, ts):
    moment = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).replace(tzinfo=None)
    return cert.not_valid_before <= moment <= cert.not_valid_after
