"""What happens to an appliance's HSM, partitions and configuration, with side effects.

These run with the world lock held (device.mutate()) and keep three things in
step: the state document, the SoftHSM tokens and the PIN files in DIR/secrets.
"""
import os
import shutil

from appliance import keys, model

LUNASH_PID = 1403  # LunaSH's own syslog lines carry one pid per appliance boot


def _forget_pins(dev, name):
    for role in ("so", "co"):
        dev.paths.forget_secret(f"{name}_{role}_pin")


def _write_pins(dev, name, so_pin, co_pin):
    dev.paths.write_secret(f"{name}_so_pin", so_pin)
    if co_pin is None:
        dev.paths.forget_secret(f"{name}_co_pin")
    else:
        dev.paths.write_secret(f"{name}_co_pin", co_pin)


def create_partition(dev, name, label, so_pin=None, co_pin=None, initialise=True):
    """A new partition. INITIALISE false (LunaSH `partition create` on 7.x): as 7.2 leaves it, no
    token and no roles until LunaCM's `partition init` (init_partition); else initialised at once,
    PINs not given generated (DIR/secrets has them either way), as 5.x/6.x and `--client-ready` make it.
    A token is made with the partition's Luna serial, as PKCS#11 clients of a real Luna see it."""
    prefixed = model.lunash_layout(dev.state) != 7
    serial = model.partition_serial(dev.state, prefixed, dev.now(), _slot_numbers(dev))
    token_serial = None
    if initialise:
        token_serial, so_pin, co_pin = dev.tokens.create(label, so_pin, co_pin, serial=serial)
    part = model.new_partition(name, label, serial, token_serial)
    dev.state["partitions"][name] = part
    if initialise:
        _write_pins(dev, name, so_pin, co_pin)
    dev.world.changed()
    dev.syslog.write("lunash", LUNASH_PID, f"info : 0 : Partition {name} ({part['serial']}) created")
    return part


def _slot_numbers(dev):
    """The SoftHSM slot numbers of every partition of the estate (model.partition_serial)."""
    return {model.slot_number(serial) for state in dev.world.s["appliances"].values()
            for part in state["partitions"].values() for serial in (part["serial"], part["token_serial"]) if serial}


def delete_partition(dev, name):
    part = dev.state["partitions"].pop(name)
    dev.tokens.delete(part["token_serial"])
    _forget_pins(dev, name)
    for client in dev.state["clients"].values():
        if name in client["partitions"]:
            client["partitions"].remove(name)
    dev.world.changed()


def delete_all_partitions(dev):
    for name in list(dev.state["partitions"]):
        delete_partition(dev, name)


def zeroize_partition(dev, name):
    """Partition SO threshold: contents and roles gone; the partition stays listed until re-initialised."""
    part = dev.state["partitions"][name]
    dev.tokens.delete(part["token_serial"])
    part.update(zeroized=True, token_serial=None)
    _forget_pins(dev, name)
    dev.world.changed()
    dev.syslog.write("lunash", LUNASH_PID, f"info : 0 : Partition {name} ({part['serial']}) zeroized")


def init_partition(dev, name, label=None, domain=None, so_pin=None, co_pin=None, with_co=True):
    """LunaCM `partition init` + `role init -name co` (the client side drives it through the control
    endpoint): a new empty token; label and cloning domain kept unless given, PINs generated unless given.
    WITH_CO false: `partition init` alone, the Crypto Officer not initialised (no user PIN)."""
    part = dev.state["partitions"][name]
    if part["token_serial"]:
        dev.tokens.delete(part["token_serial"])
    label = label or part["label"] or name
    token_serial, so_pin, co_pin = dev.tokens.create(label, so_pin, co_pin, with_user=with_co, serial=part["serial"])
    part.update(label=label, token_serial=token_serial, initialized=True, zeroized=False, pso_failures=0, co_failures=0,
                co_locked=False, co_permanent=False,
                domain=model.domain_id(domain) if domain else model.partition_domain(part))
    _write_pins(dev, name, so_pin, co_pin)
    dev.world.changed()
    return part


def zeroize_hsm(dev, why):
    """HSM SO threshold or `hsm zeroize`: every partition gone; policies and the Auditor kept."""
    delete_all_partitions(dev)
    dev.state["hsm"].update(initialized=False, label="", so=None, so_failures=0, domain=None)
    dev.paths.forget_secret("so_password")
    dev.world.changed()
    dev.syslog.write("lunash", LUNASH_PID, f"info : 0 : HSM zeroized ({why})")


def init_hsm(dev, label, password, domain=model.DEFAULT_DOMAIN):
    """`hsm init`: DOMAIN, the HSM's cloning domain, is kept as its digest (model.domain_id);
    partitions made later do not inherit it (theirs comes from LunaCM's `partition init`)."""
    delete_all_partitions(dev)
    dev.state["hsm"].update(initialized=True, label=label, so=model.hash_secret(password), so_failures=0,
                            domain=model.domain_id(domain))
    dev.paths.write_secret("so_password", password)
    dev.world.changed()
    dev.syslog.write("lunash", LUNASH_PID, f"info : 0 : HSM initialized with label {label}")


def init_audit(dev, password):
    dev.state["hsm"]["audit"] = {**model.factory_audit(), "initialized": True, "secret": model.hash_secret(password)}
    dev.paths.write_secret("audit_password", password)
    dev.world.changed()


def co_initialized(dev, part):
    """Has the partition's Crypto Officer a password? (its token's CKF_USER_PIN_INITIALIZED: C_InitPIN
    through any path, LunaCM's `role init` or a PKCS#11 application, sets it)"""
    return bool(part["token_serial"]) and dev.tokens.user_pin_initialized(part["token_serial"])


def init_co(dev, name, co_pin):
    """LunaCM `role init -name co` (the Partition SO logged in, client side): the CO's first password,
    set with C_InitPIN as the Partition SO. -> None, or (code, why) when it is refused."""
    part = dev.state["partitions"][name]
    if not model.partition_initialized(part) or part["zeroized"]:
        return "NotInitialized", "the partition is not initialized (partition init)"
    if co_initialized(dev, part):
        return "CoAlreadyInitialized", "the Crypto Officer is already initialized (role resetpw changes its password)"
    set_co_pin(dev, name, co_pin)
    dev.syslog.write("lunash", LUNASH_PID, f"info : 0 : Partition {name} ({part['serial']}) Crypto Officer initialized")
    return None


def set_co_pin(dev, name, co_pin):
    """The Partition SO sets a new Crypto Officer PIN (`role resetpw -name co`)."""
    part = dev.state["partitions"][name]
    dev.tokens.set_user_pin(part["token_serial"], dev.paths.read_secret(f"{name}_so_pin"), co_pin)
    dev.paths.write_secret(f"{name}_co_pin", co_pin)


def register_client(dev, name, kind, address, cert_file):
    """`client register`: CERT_FILE becomes the certificate NTLS trusts for client NAME."""
    with open(cert_file, "rb") as f:
        cert = keys.load_cert(f.read())  # ValueError when it is no PEM certificate
    os.makedirs(dev.paths.clients, mode=0o700, exist_ok=True)
    shutil.copyfile(cert_file, dev.paths.client_cert(name))
    dev.state["clients"][name] = {"kind": kind, "address": address, "ip_map": None,
                                  "fingerprint": keys.fingerprint(cert), "partitions": []}
    dev.world.changed()


def reissue_client_cert(dev, old_fingerprint, cert_file):
    """Every registration holding the certificate OLD_FINGERPRINT now holds CERT_FILE's (the
    same certificate, re-issued: see lunaclient/certs.age_client_cert); -> the client names."""
    with open(cert_file, "rb") as f:
        fingerprint = keys.fingerprint(keys.load_cert(f.read()))
    names = [name for name, c in dev.state["clients"].items() if c["fingerprint"] == old_fingerprint]
    for name in names:
        shutil.copyfile(cert_file, dev.paths.client_cert(name))
        dev.state["clients"][name]["fingerprint"] = fingerprint
    if names:
        dev.world.changed()
    return names


def unregister_client(dev, name):
    dev.state["clients"].pop(name)
    try:
        os.unlink(dev.paths.client_cert(name))
    except FileNotFoundError:
        pass
    dev.world.changed()


def factory_reset(dev):
    """What Microsoft's reset does (support request, or a device returned to the pool):
    the initial state - zeroized, default policies, no Auditor, no clients, no patch, no
    files in the home folder, a new NTLS certificate, the factory admin password (a new one
    in DIR/secrets, to be changed at the first interactive login). The resource binding and
    the address stay; the host key too (Device.support_reset makes new ones)."""
    zeroize_hsm(dev, "factory reset")
    state = dev.state
    model.factory_admin(state, dev.paths.write_secret)
    for name in list(state["clients"]):
        unregister_client(dev, name)
    state.update(hsm=model.factory_hsm(), hostname=state["name"], packages={model.REBOOT_FIX: False},
                 network=model.default_network(state["provisioned_ip"], state["serial"]))
    state["ntls"].update(bind="all", ipcheck=True)
    dev.paths.forget_secret("audit_password")
    shutil.rmtree(dev.paths.home, ignore_errors=True)
    dev.syslog.clear()
    dev.regen_cert()
    dev.world.changed()
