"""LunaSH `client ...`: NTLS client registration, partition assignment, host IP maps.

`client register -client N -ip A` (or `-hostname H`) needs A.pem (or H.pem) in the
admin's home first, uploaded with scp/sftp, exactly as on the appliance. The
registered certificate is what the NTLS listener trusts for that client.
"""
import ipaddress
import os

from appliance import hsmops, keys, layouts, rc
from appliance.cli import FORCE, Command, Opt
from appliance.context import LunaError

CLIENT = Opt("client", "c", required=True)
PARTITION = Opt("partition", "par", required=True)


def _address(ctx):
    hostname, ip = ctx.opt("hostname"), ctx.opt("ip")
    if bool(hostname) == bool(ip):
        raise LunaError(rc.BAD_PARAMETER, "Specify exactly one of -hostname or -ip.")
    if ip:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise LunaError(rc.BAD_PARAMETER, f"{ip} is not a valid IP address.")
    return ("ip", ip) if ip else ("hostname", hostname)


def _certificate(ctx, address):
    path = ctx.device.paths.home_file(f"{address}.pem")
    if path is None or not os.path.exists(path):
        raise LunaError(rc.FILE_NOT_FOUND, f"Could not find {address}.pem in the admin's home directory; "
                                           "copy the client certificate there with scp first.")
    return path


def register(ctx):
    name = ctx.opt("client")
    kind, address = _address(ctx)
    clients = ctx.state["clients"]
    if name in clients:
        raise LunaError(rc.ALREADY_EXISTS, "A client with the same name has already been registered.")
    if kind == "ip" and any(c["kind"] == "ip" and c["address"] == address for c in clients.values()):
        raise LunaError(rc.ALREADY_EXISTS, "A client with the same IP address has already been registered.")
    path = _certificate(ctx, address)
    with ctx.mutate():
        try:
            hsmops.register_client(ctx.device, name, kind, address, path)
        except ValueError:
            raise LunaError(rc.BAD_PARAMETER, f"{address}.pem is not a PEM certificate.")
    ctx.success()


def list_(ctx):
    names = list(ctx.state["clients"])
    ctx.out(*[f"registered client {i}: {n}" for i, n in enumerate(names, 1)] or ["No clients are registered."])


def show(ctx):
    name = ctx.opt("client")
    rec = ctx.client(name)
    ip = rec["address"] if rec["kind"] == "ip" else rec["ip_map"]
    hostname = rec["address"] if rec["kind"] == "hostname" else None
    ctx.out(*layouts.client_show(ctx.layout, name, ip, hostname, rec["partitions"]))


def fingerprint(ctx):
    """5.2 (5.x): `Certificate fingerprint: D9:9E:...`, 16 bytes (MD5 of the registered certificate: our
    reading of the width); an unknown client gets its own published order, the explanation first."""
    name = ctx.opt("client")
    if name not in ctx.state["clients"]:
        raise LunaError(rc.OBJECT_NOT_IN_LIST, before=["The client you specified does not exist.\n"
                                                       "Use 'client list' to list all available clients."])
    ctx.out(f"Certificate fingerprint: {keys.md5_fingerprint(ctx.device.paths.client_cert(name))}")


def delete(ctx):
    name = ctx.opt("client")
    ctx.client(name)
    ctx.delete_confirmed(name, None, hsmops.unregister_client)  # the question: layouts.PROMPTS (5.x's)


def assign(ctx):
    rec, partition = ctx.client(ctx.opt("client")), ctx.opt("partition")
    ctx.partition(partition)
    if partition in rec["partitions"]:
        raise LunaError(rc.ALREADY_EXISTS, f"The client already has access to partition {partition}.")
    with ctx.mutate():
        rec["partitions"].append(partition)
        ctx.device.world.changed()
    ctx.success()


def revoke(ctx):
    rec, partition = ctx.client(ctx.opt("client")), ctx.opt("partition")
    if partition not in rec["partitions"]:
        raise LunaError(rc.OBJECT_NOT_IN_LIST, f"The client has no access to partition {partition}.")
    with ctx.mutate():
        rec["partitions"].remove(partition)
        ctx.device.world.changed()
    ctx.success()


def _set_ip_map(ctx, value):
    rec = ctx.client(ctx.opt("client"))
    with ctx.mutate():
        rec["ip_map"] = value
        ctx.device.world.changed()


def hostip_map(ctx):
    _set_ip_map(ctx, ctx.opt("ip"))
    ctx.success()


def hostip_unmap(ctx):
    _set_ip_map(ctx, None)
    ctx.success()


COMMANDS = [
    Command("client register", register, [CLIENT, Opt("hostname", "h"), Opt("ip", "i")]),
    Command("client list", list_),
    Command("client show", show, [CLIENT]),
    Command("client fingerprint", fingerprint, [CLIENT]),
    Command("client delete", delete, [CLIENT, FORCE]),
    Command("client assignPartition", assign, [CLIENT, PARTITION]),
    Command("client revokePartition", revoke, [CLIENT, PARTITION]),
    Command("client hostip map", hostip_map, [CLIENT, Opt("ip", "i", required=True)]),
    Command("client hostip unmap", hostip_unmap, [CLIENT]),
]
