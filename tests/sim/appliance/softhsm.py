"""Partitions as SoftHSM2 tokens, in one store for the whole estate.

DIR/softhsm2.conf points SoftHSM at DIR/softhsm/tokens, so any PKCS#11 client
started with SOFTHSM2_CONF=DIR/softhsm2.conf and /usr/lib/softhsm/libsofthsm2.so
sees every appliance's partitions (label = partition name; the Luna serial and
the token serial are both recorded, SoftHSM cannot be told which serial to use).
SoftHSM names a token's folder after a UUID whose last 16 hex digits are the
token serial, which is how a token is found on disk to count or delete it.
"""
import os
import secrets
import shutil

from appliance import p11
from appliance.paths import SOFTHSM_CONF, SOFTHSM_TOKENS, estate_file
from fsutil import write_public

LIBRARY = p11.LIBRARY


class TokenStore:
    def __init__(self, estate_dir):
        self.conf = estate_file(estate_dir, SOFTHSM_CONF)
        self.tokens = estate_file(estate_dir, SOFTHSM_TOKENS)
        self.library = p11.Library(self.conf)

    def ensure(self):
        os.makedirs(self.tokens, mode=0o700, exist_ok=True)
        if not os.path.exists(self.conf):
            write_public(self.conf, f"directories.tokendir = {self.tokens}\nobjectstore.backend = file\n"
                                    "log.level = ERROR\nslots.removable = false\n")
        return self

    def create(self, label, so_pin=None, user_pin=None, with_user=True):
        """-> (token serial, SO PIN, user PIN); PINs not given are generated. They go to
        DIR/secrets, never to a log.  WITH_USER false: no user PIN (None) at all."""
        so_pin, user_pin = so_pin or new_pin(), (user_pin or new_pin()) if with_user else None
        with self.library as lib:
            serial = lib.init_token(label, so_pin, user_pin)
        return serial, so_pin, user_pin

    def set_user_pin(self, serial, so_pin, user_pin):
        with self.library as lib:
            lib.set_user_pin(lib.slot_of(serial), so_pin, user_pin)

    def check_pin(self, serial, user, pin):
        """p11.CKU_SO / CKU_USER: is PIN right? (no counting here, see p11.check_pin)"""
        with self.library as lib:
            return lib.check_pin(serial, user, pin)

    def destroy_objects(self, serial, user_pin):
        with self.library as lib:
            return lib.destroy_objects(serial, user_pin)

    def synchronize(self, serials, user_pin):
        """An HA group's synchronize: every object copied to the members missing it (p11.synchronize)."""
        with self.library as lib:
            return p11.synchronize(lib, serials, user_pin)

    def _folder(self, serial):
        try:
            names = os.listdir(self.tokens)
        except FileNotFoundError:
            return None
        for name in names:
            if serial and name.replace("-", "").endswith(serial):
                return os.path.join(self.tokens, name)
        return None

    def exists(self, serial):
        return self._folder(serial) is not None

    def delete(self, serial):
        folder = self._folder(serial)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)

    def usage(self, serial):
        """-> (object count, bytes used): what `partition list/show` report."""
        folder = self._folder(serial)
        if folder is None:
            return 0, 0
        objects = [e for e in os.scandir(folder) if e.name.endswith(".object") and e.name != "token.object"]
        return len(objects), sum(e.stat().st_size for e in objects)


def new_pin():
    return secrets.token_urlsafe(9)
