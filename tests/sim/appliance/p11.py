"""Just enough PKCS#11 (through ctypes) to manage SoftHSM2 tokens as Luna partitions.

softhsm2-util only takes PINs on its command line (visible in `ps`), so token
initialisation and PIN resets go through the library instead. Every operation
initialises the library, works, and finalises it again: SoftHSM reads its token
directory at C_Initialize, so this always sees what other processes (a PKCS#11
client, softhsm2-util --delete-token) did in between. One lock serialises it:
SoftHSM's state is per process. It is reentrant, so a caller can hold it across
an operation and what must follow the library's C_Finalize (softhsm.TokenStore.create).
"""
import contextlib
import ctypes
import os
import threading

LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"
CKF_RW_SESSION, CKF_SERIAL_SESSION = 0x2, 0x4
CKF_TOKEN_INITIALIZED, CKF_USER_PIN_INITIALIZED = 0x400, 0x8
CKU_SO, CKU_USER = 0, 1
CKR_PIN_INCORRECT = 0xA0
CK_ULONG = ctypes.c_ulong


class CkVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class CkTokenInfo(ctypes.Structure):
    _fields_ = [("label", ctypes.c_char * 32), ("manufacturerID", ctypes.c_char * 32),
                ("model", ctypes.c_char * 16), ("serialNumber", ctypes.c_char * 16),
                ("flags", CK_ULONG)] + \
               [(name, CK_ULONG) for name in (
                   "ulMaxSessionCount", "ulSessionCount", "ulMaxRwSessionCount", "ulRwSessionCount",
                   "ulMaxPinLen", "ulMinPinLen", "ulTotalPublicMemory", "ulFreePublicMemory",
                   "ulTotalPrivateMemory", "ulFreePrivateMemory")] + \
               [("hardwareVersion", CkVersion), ("firmwareVersion", CkVersion), ("utcTime", ctypes.c_char * 16)]


class P11Error(Exception):
    def __init__(self, function, rv):
        super().__init__(f"{function} failed: CKR 0x{rv:08X}")
        self.function, self.rv = function, rv


# CK_FUNCTION_LIST (PKCS#11 2.40) as far as this file calls it: the version, then the
# functions in the standard's order.
FUNCTIONS = ("C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList", "C_GetSlotInfo",
             "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo", "C_InitToken", "C_InitPIN", "C_SetPIN",
             "C_OpenSession", "C_CloseSession", "C_CloseAllSessions", "C_GetSessionInfo", "C_GetOperationState",
             "C_SetOperationState", "C_Login", "C_Logout", "C_CreateObject", "C_CopyObject", "C_DestroyObject",
             "C_GetObjectSize", "C_GetAttributeValue", "C_SetAttributeValue", "C_FindObjectsInit", "C_FindObjects",
             "C_FindObjectsFinal")


class _FunctionList(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)] + [(name, ctypes.c_void_p) for name in FUNCTIONS]


class FunctionTable:
    """A PKCS#11 library called through its C_GetFunctionList, as applications do, for libraries
    that export nothing else (the simulated libCryptoki2): an attribute per function, each called
    with ctypes-typed arguments as Library does, answering the CK_RV."""

    def __init__(self, path):
        self._dll = ctypes.CDLL(path)
        table = ctypes.POINTER(_FunctionList)()
        rv = self._dll.C_GetFunctionList(ctypes.byref(table))
        if rv != 0 or not table:
            raise P11Error("C_GetFunctionList", rv or 0x5)
        for name in FUNCTIONS:
            setattr(self, name, ctypes.CFUNCTYPE(CK_ULONG)(getattr(table.contents, name)))


class Library:
    """One SoftHSM2 library bound to one configuration file (or, with FUNCTION_LIST, any PKCS#11
    library reached through its function list: FunctionTable)."""

    lock = threading.RLock()

    def __init__(self, conf_path, path=LIBRARY, function_list=False):
        self.conf_path, self.path, self.function_list = conf_path, path, function_list
        self._lib = None

    def _call(self, name, *args):
        rv = getattr(self._lib, name)(*args)
        if rv != 0:
            raise P11Error(name, rv)

    def __enter__(self):
        self.lock.acquire()
        try:
            # SoftHSM reads SOFTHSM2_CONF at C_Initialize; the daemon serves one estate, so
            # setting it for the process is harmless and keeps the environment of children right.
            os.environ["SOFTHSM2_CONF"] = self.conf_path
            self._lib = self._lib or (FunctionTable(self.path) if self.function_list else ctypes.CDLL(self.path))
            self._call("C_Initialize", None)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self._lib.C_Finalize(None)
        finally:
            self.lock.release()

    # queries -------------------------------------------------------------------
    def slots(self):
        count = CK_ULONG(0)
        self._call("C_GetSlotList", ctypes.c_ubyte(1), None, ctypes.byref(count))
        ids = (CK_ULONG * count.value)()
        self._call("C_GetSlotList", ctypes.c_ubyte(1), ids, ctypes.byref(count))
        return list(ids[:count.value])

    def token_info(self, slot):
        info = CkTokenInfo()
        self._call("C_GetTokenInfo", CK_ULONG(slot), ctypes.byref(info))
        return info

    def slot_of(self, serial):
        for slot in self.slots():
            if self.token_info(slot).serialNumber.decode().strip() == serial:
                return slot
        raise P11Error("C_GetTokenInfo (no token with serial %s)" % serial, 0xE0)

    def free_slot(self):
        for slot in self.slots():
            if not self.token_info(slot).flags & CKF_TOKEN_INITIALIZED:
                return slot
        raise P11Error("C_GetSlotList (no free slot)", 0xE0)

    def check_pin(self, serial, user, pin):
        """True when PIN is USER's (CKU_SO / CKU_USER) on the token with SERIAL, False when SoftHSM
        says CKR_PIN_INCORRECT; the login is undone at once. SoftHSM counts nothing: the caller
        reports the outcome to the appliance, which applies Luna's thresholds."""
        with self._session(self.slot_of(serial)) as session:
            data = pin.encode()
            rv = self._lib.C_Login(session, CK_ULONG(user), data, CK_ULONG(len(data)))
            if rv == CKR_PIN_INCORRECT:
                return False
            if rv != 0:
                raise P11Error("C_Login", rv)
            self._lib.C_Logout(session)
            return True

    # changes -------------------------------------------------------------------
    def init_token(self, label, so_pin, user_pin):
        """A new token; returns its serial number.  USER_PIN None: the user PIN is left
        uninitialised (Luna: the Crypto Officer awaits `role init -name co`)."""
        slot = self.free_slot()
        so = so_pin.encode()
        self._call("C_InitToken", CK_ULONG(slot), so, CK_ULONG(len(so)), label.encode()[:32].ljust(32))
        serial = self.token_info(slot).serialNumber.decode().strip()
        if user_pin is not None:
            self.set_user_pin(slot, so_pin, user_pin)
        return serial

    def set_user_pin(self, slot, so_pin, user_pin):
        """C_InitPIN as the token SO (Luna: the Partition SO resetting the CO)."""
        with self._session(slot) as session:
            so, user = so_pin.encode(), user_pin.encode()
            self._call("C_Login", session, CK_ULONG(CKU_SO), so, CK_ULONG(len(so)))
            self._call("C_InitPIN", session, user, CK_ULONG(len(user)))
            self._lib.C_Logout(session)

    def destroy_objects(self, serial, user_pin):
        """Every object on the token, destroyed as its user (LunaCM's 'remove' answer); returns how many."""
        with self._session(self.slot_of(serial)) as session:
            pin = user_pin.encode()
            self._call("C_Login", session, CK_ULONG(CKU_USER), pin, CK_ULONG(len(pin)))
            handles, found, batch = [], CK_ULONG(0), (CK_ULONG * 64)()
            self._call("C_FindObjectsInit", session, None, CK_ULONG(0))
            while True:
                self._call("C_FindObjects", session, batch, CK_ULONG(len(batch)), ctypes.byref(found))
                if not found.value:
                    break
                handles += list(batch[:found.value])
            self._call("C_FindObjectsFinal", session)
            for handle in handles:
                self._call("C_DestroyObject", session, CK_ULONG(handle))
            self._lib.C_Logout(session)
            return len(handles)

    @contextlib.contextmanager
    def _session(self, slot):
        """A read-write session (an SO login needs one) on SLOT, closed on the way out."""
        session = CK_ULONG(0)
        self._call("C_OpenSession", CK_ULONG(slot), CK_ULONG(CKF_SERIAL_SESSION | CKF_RW_SESSION), None, None,
                   ctypes.byref(session))
        try:
            yield session
        finally:
            self._lib.C_CloseSession(session)


# HA synchronize ------------------------------------------------------------------
class CkAttribute(ctypes.Structure):
    _fields_ = [("type", CK_ULONG), ("pValue", ctypes.c_void_p), ("ulValueLen", CK_ULONG)]


CKA_CLASS, CKA_LABEL, CKA_VALUE = 0x0, 0x3, 0x11
# What a clone carries: the attributes an application sets (never those the token derives, such
# as CKA_LOCAL or CKA_VALUE_LEN, which C_CreateObject refuses).
CLONED = [0x0, 0x1, 0x2, 0x3, 0x10, 0x11, 0x100, 0x102, 0x103, 0x104, 0x105, 0x106, 0x107, 0x108, 0x10A, 0x10C,
          0x120, 0x122, 0x162, 0x180, 0x181]
UNAVAILABLE = CK_ULONG(-1).value
CKO_NAMES = {0: "data", 1: "certificate", 2: "public key", 3: "private key", 4: "secret key"}
CKO_DATA, CKO_PRIVATE_KEY, CKO_SECRET_KEY = 0, 3, 4


class NotClonable(Exception):
    pass


def check(rv, name):
    if rv != 0:
        raise P11Error(name, rv)


def _attribute(lib, session, handle, kind):
    """The raw bytes of one attribute, or None when the token does not give it (sensitive, absent)."""
    probe = CkAttribute(kind, None, 0)
    rv = lib.C_GetAttributeValue(session, CK_ULONG(handle), ctypes.byref(probe), CK_ULONG(1))
    if rv != 0 or probe.ulValueLen == UNAVAILABLE:
        return None
    buf = ctypes.create_string_buffer(probe.ulValueLen)
    probe.pValue = ctypes.cast(buf, ctypes.c_void_p)
    if lib.C_GetAttributeValue(session, CK_ULONG(handle), ctypes.byref(probe), CK_ULONG(1)) != 0:
        return None
    return buf.raw[:probe.ulValueLen]


def _objects(lib, session):
    """{(class bytes, label bytes): (handle, {attribute: bytes})} of every object the session sees."""
    handles, found, batch = [], CK_ULONG(0), (CK_ULONG * 64)()
    check(lib.C_FindObjectsInit(session, None, CK_ULONG(0)), "C_FindObjectsInit")
    while True:
        check(lib.C_FindObjects(session, batch, CK_ULONG(len(batch)), ctypes.byref(found)), "C_FindObjects")
        if not found.value:
            break
        handles += list(batch[:found.value])
    lib.C_FindObjectsFinal(session)
    objects = {}
    for handle in handles:
        attrs = {kind: value for kind in CLONED if (value := _attribute(lib, session, handle, kind)) is not None}
        objects[(attrs.get(CKA_CLASS), attrs.get(CKA_LABEL, b""))] = (handle, attrs)
    return objects


def template(attrs):
    """{type: raw bytes} -> (CK_ATTRIBUTE array, the buffers it points into: keep them alive)."""
    array, keep = (CkAttribute * len(attrs))(), []
    for slot, (kind, value) in zip(array, attrs.items()):
        buf = ctypes.create_string_buffer(value, len(value))
        keep.append(buf)
        slot.type, slot.pValue, slot.ulValueLen = kind, ctypes.cast(buf, ctypes.c_void_p), len(value)
    return array, keep


def create_object(lib, session, attrs):
    array, _keep = template(attrs)
    handle = CK_ULONG(0)
    check(lib.C_CreateObject(session, array, CK_ULONG(len(attrs)), ctypes.byref(handle)), "C_CreateObject")
    return handle


def _class(key):
    """The CKO_ class of an object key (class bytes, label bytes) of _objects."""
    return int.from_bytes(key[0] or b"\0", "little")


def _describe(key):
    kind = _class(key)
    return f"{CKO_NAMES.get(kind, kind)} '{key[1].decode(errors='replace')}'"


def _is_key(key):
    return _class(key) in (CKO_PRIVATE_KEY, CKO_SECRET_KEY)


def synchronize(library, serials, user_pin, folder_of):
    """Every object of every token (by class and label) cloned to the tokens missing it, as the
    HA group's synchronize clones them; returns how many clones were made. Objects whose value
    PKCS#11 gives are copied through it; keys it keeps inside (sensitive, non-extractable) are
    cloned by cloning.clone_key, which needs FOLDER_OF(serial), the token's folder in the store.
    A non-key object whose value cannot be read: NotClonable."""
    from appliance import cloning  # it builds on this module
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(library._session(library.slot_of(serial))) for serial in serials]
        pin = user_pin.encode()
        for session in sessions:
            library._call("C_Login", session, CK_ULONG(CKU_USER), pin, CK_ULONG(len(pin)))
            stack.callback(library._lib.C_Logout, session)
        held = [_objects(library._lib, session) for session in sessions]
        union = {}
        for serial, session, objects in zip(serials, sessions, held):
            for key, (handle, attrs) in objects.items():
                union.setdefault(key, (serial, session, handle, attrs))
        missing = [(session, key) for session, objects in zip(sessions, held) for key in union if key not in objects]
        unreadable = sorted({_describe(key) for _, key in missing
                             if CKA_VALUE not in union[key][3] and _class(key) == CKO_DATA})
        if unreadable:
            raise NotClonable("cannot clone " + ", ".join(unreadable) + " (a data object whose value PKCS#11 "
                              "does not give)")
        for target, key in missing:
            serial, source, handle, attrs = union[key]
            if CKA_VALUE in attrs or not _is_key(key):
                create_object(library._lib, target, attrs)
                continue
            try:
                cloning.clone_key(library._lib, source, handle, target, attrs, folder_of(serial))
            except (cloning.CloneError, P11Error) as e:
                raise NotClonable(f"cannot clone {_describe(key)}: {e}")
        return len(missing)
