"""LunaSH `network ...`: show, interface static/dhcp, hostname.

The guide's warning made real: changing the address, mask, gateway or DHCP mode of
the interface the tenant reaches the appliance through (eth0, behind the
ExpressRoute gateway) removes the path. The command's own answer never arrives,
the session freezes, and the appliance stays unreachable until Microsoft resets
it (control action support-reset), which loses its whole configuration.
"""
import ipaddress

from appliance import rc
from appliance.cli import FORCE, Command, Opt
from appliance.context import LunaError

DEVICE = Opt("device", "dev", required=True)


def _routes(interfaces):
    lines = [f"{'Destination':<16}{'Gateway':<16}{'Genmask':<16}{'Flags':<6}Iface"]
    for name, nic in interfaces.items():
        if not nic["ip"]:
            continue
        network = ipaddress.ip_interface(f"{nic['ip']}/{nic['netmask']}").network
        if nic["gateway"]:
            lines.append(f"{'0.0.0.0':<16}{nic['gateway']:<16}{'0.0.0.0':<16}{'UG':<6}{name}")
        lines.append(f"{str(network.network_address):<16}{'0.0.0.0':<16}{nic['netmask']:<16}{'U':<6}{name}")
    return lines


def show(ctx):
    state = ctx.state
    ctx.out(f"Hostname:                    {state['hostname']}", "Domain:                      <none>", "")
    for name, nic in state["network"]["interfaces"].items():
        ctx.out(f"{f'IP Address ({name}):':<29}{nic['ip'] or '<not configured>'}",
                f"{f'HW Address ({name}):':<29}{nic['mac']}", f"{f'Mask ({name}):':<29}{nic['netmask'] or ''}",
                f"{f'Gateway ({name}):':<29}{nic['gateway'] or ''}", "")
    ctx.out("Name Servers:                168.63.129.16", "Search Domain(s):            <none>", "",
            "Routing table:", *_routes(state["network"]["interfaces"]))


def _device(ctx):
    name = ctx.opt("device").lower()
    if name not in ctx.state["network"]["interfaces"]:
        raise LunaError(rc.BAD_PARAMETER, f"Unknown network device {name}.")
    return name


def _check_addresses(*values):
    for value in values:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise LunaError(rc.BAD_PARAMETER, f"{value} is not a valid IPv4 address.")


def _apply(ctx, device, settings):
    ctx.confirm(f"change the configuration of {device}",
                f"WARNING:  Changing the network configuration of {device} may interrupt connections to the "
                "appliance.")
    nic = ctx.state["network"]["interfaces"][device]
    cuts_path = device == ctx.state["network"]["admin_device"] and any(nic[k] != v for k, v in settings.items())
    with ctx.mutate():
        nic.update(settings)
        ctx.device.world.changed()
        if cuts_path:
            ctx.device.cut_network()  # from here on nothing reaches the client
    ctx.out(f"'{ctx.name}' successful.")


def interface_static(ctx):
    device = _device(ctx)
    ip, mask, gateway = ctx.opt("ip"), ctx.opt("netmask"), ctx.opt("gateway")
    _check_addresses(ip, mask, gateway)
    _apply(ctx, device, {"ip": ip, "netmask": mask, "gateway": gateway})


def interface_dhcp(ctx):
    _apply(ctx, _device(ctx), {"ip": None, "netmask": None, "gateway": None})


def hostname(ctx):
    name = ctx.inv.args[0]
    with ctx.mutate():
        ctx.state["hostname"] = name
        ctx.device.world.changed()
    ctx.out("'network hostname' successful.")


COMMANDS = [
    Command("network show", show),
    Command("network interface static", interface_static,
            [DEVICE, Opt("ip", "i", required=True), Opt("netmask", "n", required=True), Opt("gateway", "g"),
             FORCE]),
    Command("network interface dhcp", interface_dhcp, [DEVICE, FORCE]),
    Command("network hostname", hostname, args=["hostname"]),
]
