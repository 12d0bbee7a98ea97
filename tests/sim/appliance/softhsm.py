"""Partitions as SoftHSM2 tokens, in one store for the whole estate.

DIR/softhsm2.conf points SoftHSM at DIR/softhsm/tokens, so any PKCS#11 client
started with SOFTHSM2_CONF=DIR/softhsm2.conf and /usr/lib/softhsm/libsofthsm2.so
sees every appliance's partitions: label = partition label, token serial = the
Luna partition serial (model.partition_serial), as a real Luna client's library
reports them.

SoftHSM cannot be told the serial at C_InitToken: it picks 16 hex digits of its
own. Its file backend keeps a token's own attributes in the token folder's
token.object (TokenFile below), so once the token is made and its PINs set, and
SoftHSM finalised (it would write its copy back otherwise), the serial record is
rewritten there and the file's generation counter bumped, which makes any other
process using the token read it again. A token is found on disk by the serial in
its token.object; tokens of states made before keep their SoftHSM serial, which
is also the tail of their folder's UUID name, the way they used to be found.

SoftHSM numbers a slot after the last 8 characters of the token serial read as
hex (masked to 31 bits), and aborts when two tokens get one number:
model.partition_serial gives every partition a number of its own (model.slot_number).
"""
import fcntl
import os
import secrets
import shutil

from appliance import p11
from appliance.paths import SOFTHSM_CONF, SOFTHSM_TOKENS, estate_file
from fsutil import write_private, write_public

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

    def create(self, label, so_pin=None, user_pin=None, with_user=True, serial=None):
        """-> (token serial, SO PIN, user PIN); PINs not given are generated. They go to
        DIR/secrets, never to a log.  WITH_USER false: no user PIN (None) at all.
        SERIAL (the Luna partition serial): the token's serial from then on; without it
        SoftHSM's own. A leftover token holding SERIAL (a delete that failed half-way)
        goes first: two tokens with one serial would share a SoftHSM slot number."""
        so_pin, user_pin = so_pin or new_pin(), (user_pin or new_pin()) if with_user else None
        with p11.Library.lock:  # held across the rewrite: no other thread's SoftHSM is up meanwhile
            if serial:
                for stale in self._folders(serial):
                    shutil.rmtree(stale, ignore_errors=True)
            with self.library as lib:
                own = lib.init_token(label, so_pin, user_pin)
            if serial:  # SoftHSM is finalised now: it will not write its copy back over this
                folder = self._folder_named(own)
                if folder is None:
                    raise p11.P11Error(f"C_InitToken (no token folder for SoftHSM serial {own})", 0x5)
                TokenFile(folder).set_serial(serial)
        return serial or own, so_pin, user_pin

    def set_user_pin(self, serial, so_pin, user_pin):
        with self.library as lib:
            lib.set_user_pin(lib.slot_of(serial), so_pin, user_pin)

    def user_pin_initialized(self, serial):
        """Has the token's user (Luna: the Crypto Officer) a PIN? Read from its token.object, so
        no library is loaded: CKF_USER_PIN_INITIALIZED in SoftHSM's token flags record.
        TokenFileError when the token or its flags cannot be read: "no" would let `role init`
        replace a Crypto Officer password that exists."""
        folder = self._folder(serial)
        if folder is None:
            raise TokenFileError(f"no token folder in {self.tokens} holds token serial {serial}")
        return bool(TokenFile(folder).flags() & p11.CKF_USER_PIN_INITIALIZED)

    def check_pin(self, serial, user, pin):
        """p11.CKU_SO / CKU_USER: is PIN right? (no counting here, see p11.check_pin)"""
        with self.library as lib:
            return lib.check_pin(serial, user, pin)

    def destroy_objects(self, serial, user_pin):
        with self.library as lib:
            return lib.destroy_objects(serial, user_pin)

    def synchronize(self, serials, user_pin):
        """An HA group's synchronize: every object cloned to the members missing it (p11.synchronize;
        sensitive keys through their files here: appliance/cloning.py)."""
        with self.library as lib:
            return p11.synchronize(lib, serials, user_pin, self._folder)

    def _token_folders(self):
        try:
            names = sorted(os.listdir(self.tokens))
        except FileNotFoundError:
            return []
        return [os.path.join(self.tokens, name) for name in names if os.path.isdir(os.path.join(self.tokens, name))]

    def _folders(self, serial):
        """Every token folder whose token.object holds SERIAL."""
        return [folder for folder in self._token_folders() if serial and TokenFile(folder).serial() == serial]

    def _folder_named(self, softhsm_serial):
        """The folder SoftHSM named after SOFTHSM_SERIAL (the tail of its UUID name)."""
        return next((folder for folder in self._token_folders()
                     if softhsm_serial and os.path.basename(folder).replace("-", "").endswith(softhsm_serial)), None)

    def _folder(self, serial):
        """The token folder of SERIAL: by its token.object, else (states made before) by its name."""
        found = self._folders(serial)
        return found[0] if found else self._folder_named(serial)

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


BOOL, ULONG, BYTES, ATTRMAP, MECHSET = 1, 2, 3, 4, 5  # SoftHSM's attribute kinds on disk


def object_records(data, kinds=(BOOL, ULONG, BYTES, ATTRMAP, MECHSET), holder="an object file"):
    """A file of SoftHSM 2.6's file backend (an 8-byte generation counter, then records of 8-byte
    type, 8-byte kind and the value, big-endian) -> (generation, [(type, kind, value offset, value
    length)]). Kinds: 1 bool (1 byte), 2 unsigned long (8), 3 byte string (8-byte length first),
    4 attribute map (8-byte length in bytes first), 5 mechanism set (8-byte count of 8-byte
    mechanisms first); KINDS: those HOLDER may hold. ValueError when DATA is not that layout."""
    if len(data) < 8:
        raise ValueError("shorter than its generation counter")
    found, pos = [], 8
    while pos < len(data):
        if pos + 16 > len(data):
            raise ValueError(f"record at {pos} cut short")
        kind_type, kind = int.from_bytes(data[pos:pos + 8], "big"), int.from_bytes(data[pos + 8:pos + 16], "big")
        pos += 16
        if kind not in kinds:
            raise ValueError(f"attribute kind {kind} at {pos - 8} is not one {holder} holds")
        if kind in (BOOL, ULONG):
            size = 1 if kind == BOOL else 8
        else:
            if pos + 8 > len(data):
                raise ValueError(f"length at {pos} cut short")
            size = int.from_bytes(data[pos:pos + 8], "big") * (8 if kind == MECHSET else 1)
            pos += 8
        if pos + size > len(data):
            raise ValueError(f"value at {pos} cut short")
        found.append((kind_type, kind, pos, size))
        pos += size
    return int.from_bytes(data[:8], "big"), found


class TokenFileError(Exception):
    """A token.object that is missing, unreadable or lacks a record asked for."""


class TokenFile:
    """A token's own attributes in SoftHSM2's file backend, DIR/softhsm/tokens/<uuid>/token.object:
    an 8-byte big-endian generation counter, then one record per attribute: 8-byte type,
    8-byte kind (1 bool: 1 byte; 2 unsigned long: 8 bytes; 3 byte string: 8-byte length, then
    the bytes), the value; every number big-endian. SoftHSM re-reads the file when the counter
    differs from the one it read last."""

    NAME = "token.object"
    LABEL, SERIAL, FLAGS = 0x80005349, 0x8000534A, 0x8000534B  # SoftHSM's CKA_OS_TOKENLABEL, _TOKENSERIAL, _TOKENFLAGS
    BOOL, ULONG, BYTES = BOOL, ULONG, BYTES

    def __init__(self, folder):
        self.path = os.path.join(folder, self.NAME)

    @classmethod
    def parse(cls, data):
        """-> (generation, [(type, kind, value bytes)]); ValueError when DATA is not that layout."""
        generation, found = object_records(data, (cls.BOOL, cls.ULONG, cls.BYTES), "a token.object")
        return generation, [(kind_type, kind, data[pos:pos + size]) for kind_type, kind, pos, size in found]

    @classmethod
    def build(cls, generation, records):
        out = [generation.to_bytes(8, "big")]
        for kind_type, kind, value in records:
            out += [kind_type.to_bytes(8, "big"), kind.to_bytes(8, "big")]
            if kind == cls.BYTES:
                out.append(len(value).to_bytes(8, "big"))
            out.append(value)
        return b"".join(out)

    def _record(self, kind_type, kind):
        """The value bytes of one record; TokenFileError naming the file when there is no such
        file or record, or the file is not that layout."""
        try:
            with open(self.path, "rb") as f:
                _, records = self.parse(f.read())
        except (OSError, ValueError) as e:
            raise TokenFileError(f"{self.path}: {e}") from e
        value = next((v for t, k, v in records if t == kind_type and k == kind), None)
        if value is None:
            raise TokenFileError(f"{self.path}: no record 0x{kind_type:x} of kind {kind}")
        return value

    def serial(self):
        """The token's serial, or None (no such file or record, not that layout): a folder being
        made or deleted meanwhile is no token to find by its serial."""
        try:
            return self._record(self.SERIAL, self.BYTES).decode(errors="replace")
        except TokenFileError:
            return None

    def flags(self):
        """The token's CK_TOKEN_INFO flags as SoftHSM keeps them; TokenFileError when they cannot
        be read (never a guess: a flag read as unset would let a PIN be replaced)."""
        return int.from_bytes(self._record(self.FLAGS, self.ULONG), "big")

    def set_serial(self, serial):
        """The serial record becomes SERIAL (at most 16 characters, as CK_TOKEN_INFO has room for),
        the generation counter moves on; the file is replaced whole, under SoftHSM's own lock on it."""
        value = serial.encode()
        if not 0 < len(value) <= 16:
            raise ValueError(f"a token serial has 1 to 16 characters: {serial!r}")
        with open(self.path, "rb") as f:
            fcntl.lockf(f, fcntl.LOCK_SH)  # SoftHSM locks the file (fcntl) while it reads or writes it
            generation, records = self.parse(f.read())
            records = [r for r in records if r[0] != self.SERIAL] + [(self.SERIAL, self.BYTES, value)]
            records.sort(key=lambda r: r[0])  # SoftHSM writes them in type order
            write_private(self.path, self.build((generation + 1) % (1 << 64) or 1, records))
