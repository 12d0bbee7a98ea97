"""Just enough PKCS#11 (through ctypes) to manage SoftHSM2 tokens as Luna partitions.

softhsm2-util only takes PINs on its command line (visible in `ps`), so token
initialisation and PIN resets go through the library instead. Every operation
initialises the library, works, and finalises it again: SoftHSM reads its token
directory at C_Initialize, so this always sees what other processes (a PKCS#11
client, softhsm2-util --delete-token) did in between. One lock serialises it:
SoftHSM's state is per process.
"""
import contextlib
import ctypes
import os
import threading

LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"
CKF_RW_SESSION, CKF_SERIAL_SESSION = 0x2, 0x4
CKF_TOKEN_INITIALIZED = 0x400
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


class Library:
    """One SoftHSM2 library bound to one configuration file."""

    _lock = threading.Lock()

    def __init__(self, conf_path, path=LIBRARY):
        self.conf_path, self.path = conf_path, path
        self._lib = None

    def _call(self, name, *args):
        rv = getattr(self._lib, name)(*args)
        if rv != 0:
            raise P11Error(name, rv)

    def __enter__(self):
        self._lock.acquire()
        try:
            # SoftHSM reads SOFTHSM2_CONF at C_Initialize; the daemon serves one estate, so
            # setting it for the process is harmless and keeps the environment of children right.
            os.environ["SOFTHSM2_CONF"] = self.conf_path
            self._lib = self._lib or ctypes.CDLL(self.path)
            self._call("C_Initialize", None)
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self._lib.C_Finalize(None)
        finally:
            self._lock.release()

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
        """A new token; returns its serial number."""
        slot = self.free_slot()
        so = so_pin.encode()
        self._call("C_InitToken", CK_ULONG(slot), so, CK_ULONG(len(so)), label.encode()[:32].ljust(32))
        serial = self.token_info(slot).serialNumber.decode().strip()
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
