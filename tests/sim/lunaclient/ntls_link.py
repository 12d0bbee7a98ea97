"""The client end of NTLS: what the Luna library does before any slot shows up.

A TLS connection to each registered server (ServerNameNN/ServerPortNN) presenting the
client certificate of Chrystoki.conf (ClientCertFile/ClientPrivKeyFile) and trusting
only the server certificates registered with `vtl addServer` (ServerCAFile), then the
appliance's one JSON line (tests/sim/README.md, "NTLS"). The appliance logs a failed
handshake in its syslog; here it only means no slots from that server: a stale
server.pem makes this side reject the appliance (it logs `tlsv1 alert unknown ca`), an
unregistered client makes the appliance reject this side.

Servers are tried in parallel with a short connect timeout, because an appliance that
is off drops SYNs and the simulator should not wait the library's 20 s for it.
"""
import concurrent.futures
import json
import os
import socket
import ssl

CONNECT_TIMEOUT = 0.5  # loopback answers in microseconds; only a dropped SYN waits this long
READ_TIMEOUT = 5.0


class Link:
    """What one server answered: GREETING (the JSON line) or ERROR (why not)."""

    def __init__(self, server, greeting=None, error=None):
        self.server, self.greeting, self.error = server, greeting, error

    @property
    def partitions(self):
        return (self.greeting or {}).get("partitions", [])


def _nonempty(path):
    return bool(path) and os.path.exists(path) and os.path.getsize(path) > 0


def context(install, conf):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # NTLS trusts the registered certificate itself, whatever its name
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if _nonempty(install.ca_file(conf)):
        ctx.load_verify_locations(install.ca_file(conf))
    cert, key = install.client_files(conf)
    if _nonempty(cert) and _nonempty(key):
        # without one the appliance logs "peer did not return a certificate"; the key is encrypted
        ctx.load_cert_chain(cert, key, password=install.key_passphrase())
    return ctx


def _why(exc):
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, socket.timeout):
        return "connection timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc)


def connect(server, ctx):
    try:
        with socket.create_connection((server.connect_host, server.port), timeout=CONNECT_TIMEOUT) as sock:
            sock.settimeout(READ_TIMEOUT)
            with ctx.wrap_socket(sock) as tls:
                line = tls.makefile().readline()
        return Link(server, greeting=json.loads(line))
    except (OSError, ValueError) as e:
        return Link(server, error=_why(e))


def connect_all(install, conf, servers):
    """[Link] in the order of SERVERS."""
    if not servers:
        return []
    ctx = context(install, conf)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(servers)) as pool:
        return list(pool.map(lambda server: connect(server, ctx), servers))
