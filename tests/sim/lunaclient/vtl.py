"""The `vtl` stand-in: the Luna client's certificate and server-list tool (luna.md section 6).

    vtl createCert -n NAME              client key pair in cert/client (NAMEKey.pem, NAME.pem)
    vtl addServer -n HOST -c CERT [-p PORT]
    vtl deleteServer -n HOST [-p PORT]
    vtl listServers
    vtl listSlots
    vtl verify

Every simulated appliance is HOST 127.0.0.1 with its NTLS on a port of its own, so
addServer finds the port from the certificate (or HOST naming the appliance) and
records it as ServerPortNN; `-p` (our addition) gives it outright, and is needed by
deleteServer when several appliances are registered under the same HOST. Command names
and options are case-insensitive. Exit status 0, or 1 after an `Error:` line.
"""
import os
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from appliance import model
from appliance.cli import logged_words
from appliance.paths import Paths
from fsutil import read_json
from lunaclient import slots, toollog
from lunaclient.certs import create_client_cert
from lunaclient.conf import ConfError
from lunaclient.estate_view import EstateView
from lunaclient.install import AmbiguousServer, NotFound, locate

USAGE = """usage: vtl <command> [options]
  createCert -n <name>                     create the client certificate and private key
  addServer -n <server> -c <cert file>     register a server's NTLS certificate [-p <port>]
  deleteServer -n <server>                 remove a server from the list [-p <port>]
  listServers                              show the registered servers
  listSlots                                show the slots (partitions) the servers offer
  verify                                   check the NTLS links and list the partitions found"""
OPTIONS = {"-n": "name", "-c": "cert", "-p": "port", "-port": "port"}


class VtlError(Exception):
    """Printed as `Error: <message>`; vtl exits 1."""


def _options(words, allowed):
    opts, i = {}, 0
    while i < len(words):
        name = OPTIONS.get(words[i].lower())
        if name not in allowed or i + 1 >= len(words):
            raise VtlError(f"Invalid option or missing value: {words[i]}\n{USAGE}")
        opts[name], i = words[i + 1], i + 2
    if "port" in opts and not opts["port"].isdigit():
        raise VtlError(f"Invalid port: {opts['port']}")
    return opts


def _required(opts, name, flag):
    if not opts.get(name):
        raise VtlError(f"Missing required option {flag}\n{USAGE}")
    return opts[name]


def create_cert(install, view, opts):
    key_file, cert_file = create_client_cert(install, _required(opts, "name", "-n"), time.time())
    print(f"Private Key created and written to: {key_file}")
    print(f"Certificate created and written to: {cert_file}")


def _fingerprint(path):
    try:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read()).fingerprint(hashes.SHA256())
    except (OSError, ValueError):
        return None


def appliance_for(view, host, cert):
    """(name, NTLS port) of the appliance `addServer -n HOST -c CERT` means, or None: the one
    serving CERT (or holding it as its newest, after regenCert), else the one whose name,
    hostname or admin IP is HOST or CERT's common name (a certificate from an older
    regenCert still names its appliance)."""
    fingerprint = cert.fingerprint(hashes.SHA256())
    for name, dev in view.devices.items():
        paths = Paths(view.dir, name)
        if fingerprint in (_fingerprint(paths.ntls_active_cert), _fingerprint(paths.ntls_cert)):
            return name, dev["ntls_port"]
    common_names = {a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    states = (read_json(os.path.join(view.dir, "state.json")) or {}).get("appliances", {})
    for name, dev in view.devices.items():
        state = states.get(name)
        known = {name} | ({state["hostname"], model.admin_ip(state)} if state else set())
        if known & ({host} | common_names):
            return name, dev["ntls_port"]
    return None


def add_server(install, view, opts):
    host, path = _required(opts, "name", "-n"), _required(opts, "cert", "-c")
    try:
        with open(path, "rb") as f:
            data = f.read()
        cert = x509.load_pem_x509_certificate(data)
    except OSError as e:
        raise VtlError(f"Unable to read the server certificate {path}: {e.strerror}")
    except ValueError:
        raise VtlError(f"{path} is not a PEM certificate")
    port = int(opts["port"]) if "port" in opts else None
    if port is None:
        found = appliance_for(view, host, cert) if view else None
        if found is None:
            raise VtlError(f"Cannot tell which simulated appliance {host} with this certificate is; give its NTLS "
                           "port with -p")
        port = found[1]
    if not install.add_server(host, port, data.decode()):
        print("This server is already registered")
        return 1
    print(f"New server {host} successfully added to server list.")


def delete_server(install, view, opts):
    host = _required(opts, "name", "-n")
    try:
        removed = install.delete_server(host, opts.get("port"))
    except AmbiguousServer as e:
        raise VtlError(f"{e}; give the one to delete with -p")
    if removed is None:
        raise VtlError(f"Server {host} is not registered")
    print(f"Server {host} successfully removed from server list.")


def list_servers(install, view, opts):
    servers = install.servers(install.load())
    if not servers:
        print("There are no registered servers.")
    for server in servers:
        print(f"Server: {server.name} Port: {server.port} HTL required: no")


def _found(install, view):
    conf = install.load()
    if not install.servers(conf):
        raise VtlError("There are no registered servers")
    return slots.discover(install, conf, view)


def list_slots(install, view, opts):
    found = _found(install, view)
    print(f"Number of slots: {len(found)}", "", "The following slots were found:", "", sep="\n")
    print(f"{'Slot #':<10}{'Description':<21}{'Label':<33}{'Serial #':<17}Status")
    print("=" * 89)
    for slot in found:
        print(f"{'slot #' + str(slot.id):<10}{'LunaNet Slot':<21}{slot.label:<33}{slot.serial:<17}Present")


# `vtl verify`, luna-field.md 8.3: the 6.x client's TAB-separated table (TABs intact in S8), which
# the 10.7.2 client prints too after its banner. The simulated client is 7.2.0-220 (lunacm's
# banner, lunacm/console.py), whose vtl banner was never published: like the 6.x client, none.
VERIFY_TITLE = "The following Luna SA Slots/Partitions were found:"
VERIFY_HEAD = ("Slot\tSerial #        \tLabel", "====\t================\t=====")
# Only this much of the no-slot message is published (8.3, S10's substring); nothing more is printed.
NO_SLOTS = "Unable to find any Luna SA slots/partitions"


def verify_row(slot_id, serial, label):
    """8.3's row: `%4d<TAB>%16s <TAB>%s` (with 8-column TAB stops the label starts at column 32)."""
    return f"{slot_id:4d}\t{serial:>16} \t{label}"


def verify(install, view, opts):
    found = _found(install, view)
    if not found:
        raise VtlError(NO_SLOTS)
    print("", VERIFY_TITLE, "", *VERIFY_HEAD, sep="\n")
    for slot in found:
        print(verify_row(slot.id, slot.serial, slot.label))
    print()


# command -> (handler, options it takes)
COMMANDS = {"createcert": (create_cert, {"name"}), "addserver": (add_server, {"name", "cert", "port"}),
            "deleteserver": (delete_server, {"name", "port"}), "listservers": (list_servers, set()),
            "listslots": (list_slots, set()), "verify": (verify, set())}


def main(argv):
    toollog.keep_going_without_reader()
    if not argv or argv[0].lower() not in COMMANDS:
        print(USAGE)
        return 0 if argv and argv[0].lower() in ("-h", "help", "--help") else 1
    handler, allowed = COMMANDS[argv[0].lower()]
    estate_dir, command = None, argv[0]
    try:
        install, estate_dir = locate()
        opts = _options(argv[1:], allowed)
        command = logged_words(argv[0], opts)
        status = handler(install, estate_dir and EstateView(estate_dir), opts) or 0
    except (VtlError, NotFound) as e:
        print(f"Error: {e}")
        status = 1
    except ConfError as e:
        print(f"Error: {install.conf_path}: {e}")
        status = 1
    toollog.record(estate_dir, "vtl", command, status)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
