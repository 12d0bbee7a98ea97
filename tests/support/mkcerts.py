#!/usr/bin/python3
"""Certificates for the net tests: mkcerts.py DIR

DIR/ca.pem, ca.key            the CA the tests trust
DIR/server.pem, server.key    localhost / 127.0.0.1, signed by ca
DIR/expired.pem, expired.key  signed by ca, expired yesterday
DIR/self.pem, self.key        self-signed, trusted by nobody
DIR/client.pem, client.key    a client signed by ca
DIR/app1.pem, app1.key        a self-signed client, as `vtl createCert` makes them
DIR/stranger.pem, stranger.key  a client signed by another CA
DIR/bundle.pem                server.pem + ca.pem
"""
import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(cn, issuer=None, not_before=NOW - DAY, not_after=NOW + 30 * DAY, ca=False, san=None):
    key = ec.generate_private_key(ec.SECP256R1())
    signer_name, signer_key = (issuer[0], issuer[1]) if issuer else (name(cn), key)
    b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(signer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, b.sign(signer_key, hashes.SHA256())


def write(directory, base, key, cert):
    with open(os.path.join(directory, base + ".key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(os.path.join(directory, base + ".pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def main(directory):
    ca_key, ca = issue("dhsm test CA", ca=True)
    other_key, other = issue("another CA", ca=True)
    local = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    write(directory, "ca", ca_key, ca)
    write(directory, "server", *issue("localhost", (ca.subject, ca_key), san=local))
    write(directory, "expired", *issue("localhost", (ca.subject, ca_key), NOW - 30 * DAY, NOW - DAY, san=local))
    write(directory, "self", *issue("localhost", san=local))
    write(directory, "client", *issue("app1", (ca.subject, ca_key)))
    write(directory, "stranger", *issue("stranger", (other.subject, other_key)))
    write(directory, "app1", *issue("app1"))
    with open(os.path.join(directory, "bundle.pem"), "wb") as f:
        for base in ("server", "ca"):
            with open(os.path.join(directory, base + ".pem"), "rb") as part:
                f.write(part.read())


if __name__ == "__main__":
    main(sys.argv[1])
