"""Where an appliance keeps its files inside the estate directory.

    DIR/appliances/NAME/host_key          SSH host key (OpenSSH ed25519, 0600)
    DIR/appliances/NAME/host_key_rsa      SSH host key (RSA 2048, 0600): the one known_hosts lists
    DIR/appliances/NAME/authorized_keys   public keys accepted for tenantadmin
    DIR/appliances/NAME/home/             the admin's home (scp/sftp): server.pem, uploads
    DIR/appliances/NAME/ntls/server.{key,pem}   the newest NTLS key pair (regenCert)
    DIR/appliances/NAME/ntls/active.{key,pem}   the pair NTLS serves (copied when it starts)
    DIR/appliances/NAME/clients/CLIENT.pem      registered client certificates
    DIR/appliances/NAME/messages          syslog "messages"
    DIR/secrets/NAME_password, NAME_so_password, NAME_audit_password,
    DIR/secrets/NAME_PARTITION_so_pin, NAME_PARTITION_co_pin   (all 0600)
    DIR/softhsm2.conf, DIR/softhsm/tokens/   one SoftHSM2 store for the estate
"""
import os

from fsutil import write_private

SECRETS = "secrets"
CLIENT_KEY = "secrets/id_ed25519"
KNOWN_HOSTS = "known_hosts"
ADDRESS_MAP = "address-map.json"      # rehearsal only: NIC address -> where the appliance listens
SOFTHSM_CONF = "softhsm2.conf"
SOFTHSM_TOKENS = "softhsm/tokens"
PATCH_FILE = "patches/KB0019789.spkg"


class Paths:
    def __init__(self, estate_dir, name):
        self.estate_dir, self.name = estate_dir, name
        self.root = os.path.join(estate_dir, "appliances", name)
        self.host_key = os.path.join(self.root, "host_key")
        self.host_key_rsa = os.path.join(self.root, "host_key_rsa")
        self.authorized_keys = os.path.join(self.root, "authorized_keys")
        self.home = os.path.join(self.root, "home")
        self.ntls_key = os.path.join(self.root, "ntls", "server.key")
        self.ntls_cert = os.path.join(self.root, "ntls", "server.pem")
        self.ntls_active_key = os.path.join(self.root, "ntls", "active.key")
        self.ntls_active_cert = os.path.join(self.root, "ntls", "active.pem")
        self.clients = os.path.join(self.root, "clients")
        self.syslog = os.path.join(self.root, "messages")

    def secret(self, what):
        """DIR/secrets/NAME_WHAT, e.g. secret("so_password") or secret("par1_co_pin")."""
        return secret_path(self.estate_dir, f"{self.name}_{what}")

    def write_secret(self, what, value):
        write_private(self.secret(what), value + "\n")

    def read_secret(self, what):
        try:
            with open(self.secret(what)) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def forget_secret(self, what):
        try:
            os.unlink(self.secret(what))
        except FileNotFoundError:
            pass

    def home_file(self, filename):
        """A file in the admin's home; None when the name tries to leave it."""
        if not filename or "/" in filename or filename in (".", ".."):
            return None
        return os.path.join(self.home, filename)

    def client_cert(self, client):
        return os.path.join(self.clients, f"{client}.pem")


def secret_path(estate_dir, filename):
    return os.path.join(estate_dir, SECRETS, filename)


def estate_file(estate_dir, relative):
    return os.path.join(estate_dir, relative)
