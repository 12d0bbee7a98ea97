"""Cloning a key PKCS#11 will not let out: what an HA group's synchronize does between members
of one cloning domain, done inside the simulator's own SoftHSM store.

A real Luna member clones every object to the others of its cloning domain, sensitive and
non-extractable keys included, without the key ever leaving the HSMs in clear. SoftHSM has
no cloning: a sensitive key's value cannot be read, and it refuses C_WrapKey of a key whose
CKA_EXTRACTABLE is false, and C_SetAttributeValue from false to true. The simulator owns the
store, so for one such key it:

  1. finds the key's object file: C_SetAttributeValue rewrites the object with its own label
     (nothing changes), and the one file of the token folder whose generation counter moved
     is the key's (private objects keep their byte strings encrypted on disk, so a label
     cannot be searched for);
  2. sets the CKA_EXTRACTABLE record of that file to true, in place, under SoftHSM's own lock
     on the file, and moves its generation counter on (so every process using SoftHSM reads
     the object again);
  3. wraps the key (CKM_AES_KEY_WRAP_PAD) with a session key made for this one clone, with one
     random value, on the source and on the target token (never on disk: session objects);
  4. puts CKA_EXTRACTABLE back to false at once, whatever happened, the same way;
  5. unwraps the blob on the target with the source's attributes (CKA_SENSITIVE, CKA_EXTRACTABLE
     false, label, id, key type, usage flags): the same key value, as cloning gives. A secret
     key is unwrapped here and made with C_CreateObject, so the token sets its CKA_VALUE_LEN and
     CKA_CHECK_VALUE as a Luna clone keeps them (SoftHSM's C_UnwrapKey sets neither).
The key is extractable only between 2 and 4, on the source token; its value exists outside
SoftHSM only in this process's memory (wrapped, and a secret key's unwrapped for one call). No secret goes to a log or a command line.
"""
import contextlib
import ctypes
import fcntl
import os
import secrets

from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

from appliance import p11, softhsm
from appliance.p11 import CK_ULONG, CKA_CLASS, CKA_LABEL, CKA_VALUE, CKO_SECRET_KEY

CKA_TOKEN, CKA_KEY_TYPE, CKA_WRAP, CKA_UNWRAP, CKA_EXTRACTABLE = 0x1, 0x100, 0x106, 0x107, 0x162
CKK_AES = 0x1F
CKM_AES_KEY_WRAP_PAD = 0x210A
# What the unwrapped key is given: every attribute a clone carries but those the wrapped key
# itself brings (its value, and a private key's public parts, which C_UnwrapKey refuses in a template).
FROM_THE_BLOB = {CKA_VALUE, 0x120, 0x122, 0x180, 0x181}


class CkMechanism(ctypes.Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", ctypes.c_void_p), ("ulParameterLen", CK_ULONG)]


class CloneError(Exception):
    pass


# SoftHSM's object files -------------------------------------------------------------------
def records(data, name="object file"):
    """An object file (softhsm.object_records) -> (generation, [(type, kind, value offset, value
    length)]); CloneError naming NAME when DATA is not that layout."""
    try:
        return softhsm.object_records(data)
    except ValueError as e:
        raise CloneError(f"{name} is not a SoftHSM object file: {e}") from e


def generation(path):
    try:
        with open(path, "rb") as f:
            return f.read(8)
    except OSError:
        return None


def generations(folder):
    """{object file: its generation counter bytes} of a token folder (token.object left out)."""
    return {entry.path: generation(entry.path) for entry in os.scandir(folder)
            if entry.name.endswith(".object") and entry.name != "token.object"}


def set_bool(path, kind_type, value):
    """The bool record KIND_TYPE of the object file at PATH becomes VALUE, in place (the file's
    inode stays: SoftHSM's fcntl locks are on it), the generation counter moved on, all under an
    exclusive lock, so no SoftHSM reads it half-written. CloneError when it cannot be read or
    written, or has no such record."""
    name = os.path.basename(path)
    try:
        with open(path, "r+b") as f:
            fcntl.lockf(f, fcntl.LOCK_EX)
            try:
                _rewrite_bool(f, name, kind_type, value)
            finally:
                fcntl.lockf(f, fcntl.LOCK_UN)
    except OSError as e:
        raise CloneError(f"{name}: {e.strerror or e}") from e


def _rewrite_bool(f, name, kind_type, value):
    gen, found = records(f.read(), name)
    where = next((offset for t, kind, offset, _ in found if t == kind_type and kind == softhsm.BOOL), None)
    if where is None:
        raise CloneError(f"{name} has no boolean attribute 0x{kind_type:x}")
    f.seek(where)
    f.write(b"\1" if value else b"\0")
    f.seek(0)
    f.write(((gen + 1) % (1 << 64) or 1).to_bytes(8, "big"))
    f.flush()
    os.fsync(f.fileno())


@contextlib.contextmanager
def extractable_meanwhile(path, needed=True):
    """The key of object file PATH extractable for the block, unextractable again whatever happened
    (NEEDED false: it was extractable already; nothing is done). When putting it back fails, a
    CloneError says the key was left extractable, and names what failed inside the block too."""
    if not needed:
        yield
        return
    set_bool(path, CKA_EXTRACTABLE, True)
    failure = None
    try:
        yield
    except BaseException as e:
        failure = e
        raise
    finally:
        try:
            set_bool(path, CKA_EXTRACTABLE, False)
        except CloneError as e:
            before = f" (after: {failure})" if failure is not None else ""
            raise CloneError(f"the key of {os.path.basename(path)} was left extractable: putting "
                             f"CKA_EXTRACTABLE back failed: {e}{before}") from e


# PKCS#11 -----------------------------------------------------------------------------------
def _ulong(value):
    return bytes(CK_ULONG(value))


@contextlib.contextmanager
def wrapping_key(lib, session, value):
    """A session AES key of VALUE on SESSION's token, for one wrap or unwrap; destroyed on the way out."""
    attrs = {CKA_CLASS: _ulong(CKO_SECRET_KEY), CKA_KEY_TYPE: _ulong(CKK_AES), CKA_TOKEN: b"\0",
             CKA_VALUE: value, CKA_WRAP: b"\1", CKA_UNWRAP: b"\1"}
    handle = p11.create_object(lib, session, attrs)
    try:
        yield handle
    finally:
        lib.C_DestroyObject(session, handle)


def _wrap(lib, session, wrapper, handle):
    mech = CkMechanism(CKM_AES_KEY_WRAP_PAD, None, 0)
    size = CK_ULONG(0)
    p11.check(lib.C_WrapKey(session, ctypes.byref(mech), wrapper, CK_ULONG(handle), None, ctypes.byref(size)),
              "C_WrapKey")
    blob = ctypes.create_string_buffer(size.value)
    p11.check(lib.C_WrapKey(session, ctypes.byref(mech), wrapper, CK_ULONG(handle), blob, ctypes.byref(size)),
              "C_WrapKey")
    return blob.raw[:size.value]


def _unwrap(lib, session, wrapper, blob, attrs):
    mech = CkMechanism(CKM_AES_KEY_WRAP_PAD, None, 0)
    template, _keep = p11.template(attrs)
    handle = CK_ULONG(0)
    p11.check(lib.C_UnwrapKey(session, ctypes.byref(mech), wrapper, blob, CK_ULONG(len(blob)), template,
                              CK_ULONG(len(attrs)), ctypes.byref(handle)), "C_UnwrapKey")


def object_file(lib, session, handle, label, folder):
    """The object file of HANDLE in FOLDER: the one whose generation moves when SoftHSM rewrites
    the object with its own LABEL (an unchanged value)."""
    before = generations(folder)
    template, _keep = p11.template({CKA_LABEL: label})
    p11.check(lib.C_SetAttributeValue(session, CK_ULONG(handle), template, CK_ULONG(1)), "C_SetAttributeValue")
    moved = [path for path, gen in generations(folder).items() if before.get(path) != gen]
    if len(moved) != 1:
        raise CloneError(f"cannot tell the key's object file in {folder} ({len(moved)} files changed)")
    return moved[0]


def _create_secret(lib, session, wrapping, blob, attrs):
    """A secret key made again from its wrapped BLOB with ATTRS: unwrapped here (the wrapping
    key's value is this clone's own) and made with C_CreateObject, so SoftHSM sets its length
    and check value (KCV) as a Luna clone keeps them - its C_UnwrapKey sets neither, and the KCV
    is how two copies of one sensitive key are told apart. The value lives in this process's
    memory only for the call."""
    p11.create_object(lib, session, {**attrs, CKA_VALUE: aes_key_unwrap_with_padding(wrapping, blob)})


def clone_key(lib, source, handle, target, attrs, folder):
    """The key HANDLE of session SOURCE (its token's files in FOLDER; ATTRS: what PKCS#11 gives of
    it) made again, with the same value, on session TARGET's token (see the module's steps)."""
    path = object_file(lib, source, handle, attrs.get(CKA_LABEL, b""), folder)
    value = secrets.token_bytes(32)
    with wrapping_key(lib, source, value) as src_wrapper, wrapping_key(lib, target, value) as dst_wrapper:
        with extractable_meanwhile(path, needed=attrs.get(CKA_EXTRACTABLE, b"\1") == b"\0"):
            blob = _wrap(lib, source, src_wrapper, handle)
        kept = {k: v for k, v in attrs.items() if k not in FROM_THE_BLOB}
        if p11._class((attrs.get(CKA_CLASS), b"")) == CKO_SECRET_KEY:
            _create_secret(lib, target, value, blob, kept)
        else:
            _unwrap(lib, target, dst_wrapper, blob, kept)
