"""`vtl createCert`: the client's self-signed NTLS certificate, kept apart from install.py so
that tools which only read the install (lunacm) do not load the X.509 machinery."""
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
    write_private(key_file, key_pem(key))
    write_public(cert_file, cert_pem(cert))
    install.use_client_cert(key_file, cert_file)
    return key_file, cert_file
