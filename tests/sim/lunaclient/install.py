"""The simulated Luna client install: what /usr/safenet/lunaclient and /etc/Chrystoki.conf are
on a real client host, kept in DIR/client.

    DIR/client/Chrystoki.conf                        the configuration (conf.py)
    DIR/client/cert/client/<cn>.pem, <cn>Key.pem     `vtl createCert -n <cn>`
    DIR/client/cert/server/CAFile.pem                every registered server certificate (what the
                                                     client trusts on NTLS)
    DIR/client/cert/server/<host>_<port>.pem         each one alone, so `vtl deleteServer` can
                                                     rebuild CAFile.pem

Tools find it as the Luna library does, through $ChrystokiConfigurationPath (the folder
holding Chrystoki.conf; the file itself is accepted too), else
$DHSM_ESTATE_DIR/client/Chrystoki.conf, else /etc/Chrystoki.conf. The estate is
$DHSM_ESTATE_DIR, else the folder above DIR/client. vtl, lunacm and the estate daemon
may all rewrite the configuration, so every read-modify-write holds an flock on
DIR/client/.Chrystoki.lock.

The client's PKCS#11 library (Chrystoki2's LibUNIX64, inventory.json's client.pkcs11_lib) is
the simulated libCryptoki2 (cryptoki/cryptoki.c: SoftHSM2 plus the HA groups' virtual slots)
when it is built - $DHSM_SIM_CRYPTOKI, else <repo>/build/sim/libcryptoki-sim.so - else
SoftHSM2 itself (pkcs11_library).
"""
import contextlib
import fcntl
import os
import re

from appliance.softhsm import LIBRARY as SOFTHSM_LIBRARY
from fsutil import write_public
from lunaclient.conf import ChrystokiConf, ConfError

CLIENT_DIR = "client"
CONF_NAME = "Chrystoki.conf"
LUNASA = "LunaSA Client"
LOOPBACK = ("127.0.0.1", "localhost")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SIM_CRYPTOKI = os.path.join(REPO, "build", "sim", "libcryptoki-sim.so")
SERVER_KEY = re.compile(r"Server(Name|Port|Htl)\d+")
TEMPLATE = """Chrystoki2 = {{
   LibUNIX64 = {library};
}}

Luna = {{
   DefaultTimeOut = 500000;
   PEDTimeout1 = 100000;
   PEDTimeout2 = 200000;
   PEDTimeout3 = 10000;
   KeypairGenTimeOut = 2700000;
   CloningCommandTimeOut = 300000;
   CommandTimeOutPedSet = 720000;
}}

CardReader = {{
   RemoteCommand = 1;
}}

Misc = {{
   PE1746Enabled = 0;
   ToolsDir = {tools};
}}

LunaSA Client = {{
   ReceiveTimeout = 20000;
   SSLConfigFile = {root}/openssl.cnf;
   ClientPrivKeyFile = {root}/cert/client/ClientNameKey.pem;
   ClientCertFile = {root}/cert/client/ClientNameCert.pem;
   ServerCAFile = {root}/cert/server/CAFile.pem;
   NetClient = 1;
   TCPKeepAlive = 1;
}}
"""


class NotFound(Exception):
    pass


class AmbiguousServer(Exception):
    def __init__(self, name, ports):
        super().__init__(f"{name} is registered {len(ports)} times (ports {', '.join(map(str, ports))})")
        self.ports = ports


class Server:
    """One ServerNameNN / ServerPortNN pair."""

    def __init__(self, name, port):
        self.name, self.port = name, int(port)

    @property
    def connect_host(self):
        """Every simulated appliance listens on loopback: a name that is not, such as the
        appliance's admin IP, is reached there too (its port tells which appliance it is)."""
        return self.name if self.name in LOOPBACK or self.name.startswith("127.") else "127.0.0.1"

    def __eq__(self, other):
        return (self.name, self.port) == (other.name, other.port)


class Install:
    def __init__(self, conf_path):
        self.conf_path = os.path.abspath(conf_path)
        self.root = os.path.dirname(self.conf_path)
        self.client_certs = os.path.join(self.root, "cert", "client")
        self.server_certs = os.path.join(self.root, "cert", "server")
        self.lock_path = os.path.join(self.root, ".Chrystoki.lock")

    @classmethod
    def in_estate(cls, estate_dir):
        return cls(os.path.join(estate_dir, CLIENT_DIR, CONF_NAME))

    def exists(self):
        return os.path.exists(self.conf_path)

    def create(self, library, tools_dir):
        """An empty client (no certificate, no server); False when one is already there (its
        LibUNIX64 then follows LIBRARY if the estate wrote the one it has: managed_library)."""
        if self.exists():
            try:
                with self.editing() as conf:
                    if managed_library(conf.get("Chrystoki2", "LibUNIX64")):
                        conf.set("Chrystoki2", "LibUNIX64", library)
            except (OSError, ConfError):
                pass  # a hand-edited file that does not parse: left alone (the tools say what is wrong)
            return False
        for folder in (self.client_certs, self.server_certs):
            os.makedirs(folder, mode=0o755, exist_ok=True)
        write_public(self.conf_path, TEMPLATE.format(library=library, tools=tools_dir, root=self.root))
        return True

    # the configuration ------------------------------------------------------------------
    def load(self):
        if not self.exists():
            raise NotFound(f"{self.conf_path} does not exist")
        return ChrystokiConf.load(self.conf_path)

    @contextlib.contextmanager
    def editing(self):
        """The configuration, locked against other writers and saved if it changed."""
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            conf = self.load()
            before = conf.text
            yield conf
            if conf.text != before:
                conf.save(self.conf_path)

    @property
    def key_passphrase_path(self):
        """The estate's secret holding the client key's passphrase (certs.key_passphrase)."""
        return os.path.join(os.path.dirname(self.root), "secrets", "client_key_passphrase")

    def key_passphrase(self):
        """The passphrase (bytes), or None when no key was made with one."""
        try:
            with open(self.key_passphrase_path, "rb") as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    @staticmethod
    def client_files(conf):
        """(certificate, private key) the client presents on NTLS."""
        return conf.get(LUNASA, "ClientCertFile"), conf.get(LUNASA, "ClientPrivKeyFile")

    def ca_file(self, conf=None):
        return (conf or self.load()).get(LUNASA, "ServerCAFile") or os.path.join(self.server_certs, "CAFile.pem")

    @staticmethod
    def servers(conf):
        """[Server] in ServerNameNN order."""
        found = []
        for key, value in conf.items(LUNASA):
            if key.startswith("ServerName") and key[len("ServerName"):].isdigit():
                number = key[len("ServerName"):]
                found.append((int(number), Server(value, conf.get(LUNASA, f"ServerPort{number}", 1792))))
        return [server for _, server in sorted(found, key=lambda pair: pair[0])]

    @staticmethod
    def _write_servers(conf, servers):
        """Renumbered from 00, as vtl leaves the list after a change."""
        for key, _ in conf.items(LUNASA):
            if SERVER_KEY.fullmatch(key):
                conf.delete(LUNASA, key)
        for number, server in enumerate(servers):
            conf.set(LUNASA, f"ServerName{number:02d}", server.name)
            conf.set(LUNASA, f"ServerPort{number:02d}", server.port)
            conf.set(LUNASA, f"ServerHtl{number:02d}", 0)

    # certificates ----------------------------------------------------------------------
    def client_cert_files(self, name):
        """(private key, certificate) paths of client certificate NAME (certs.create_client_cert)."""
        return os.path.join(self.client_certs, f"{name}Key.pem"), os.path.join(self.client_certs, f"{name}.pem")

    def use_client_cert(self, key_file, cert_file):
        with self.editing() as conf:
            conf.set(LUNASA, "ClientPrivKeyFile", key_file)
            conf.set(LUNASA, "ClientCertFile", cert_file)

    def _server_cert_file(self, server):
        return os.path.join(self.server_certs, f"{server.name}_{server.port}.pem")

    def add_server(self, name, port, cert_data):
        """`vtl addServer`: False when NAME (on PORT) is already in the list."""
        server = Server(name, port)
        with self.editing() as conf:
            servers = self.servers(conf)
            if server in servers:
                return False
            os.makedirs(self.server_certs, mode=0o755, exist_ok=True)
            write_public(self._server_cert_file(server), cert_data)
            self._write_servers(conf, servers + [server])
            self._rebuild_ca_file(conf, servers + [server])
        return True

    def delete_server(self, name, port=None):
        """`vtl deleteServer`: the entry removed, None when there is none, AmbiguousServer when NAME
        is registered on several ports (every simulated appliance is 127.0.0.1) and PORT is not given."""
        with self.editing() as conf:
            servers = self.servers(conf)
            matches = [s for s in servers if s.name == name and (port is None or s.port == int(port))]
            if len(matches) > 1:
                raise AmbiguousServer(name, [s.port for s in matches])
            if not matches:
                return None
            remaining = [s for s in servers if s != matches[0]]
            self._write_servers(conf, remaining)
            self._rebuild_ca_file(conf, remaining)
            try:
                os.unlink(self._server_cert_file(matches[0]))
            except FileNotFoundError:
                pass
            return matches[0]

    def _rebuild_ca_file(self, conf, servers):
        pems = []
        for server in servers:
            try:
                with open(self._server_cert_file(server)) as f:
                    pems.append(f.read())
            except FileNotFoundError:
                continue
        write_public(self.ca_file(conf), "".join(pems))

    def follow_ports(self, moves):
        """MOVES {old port: new port}: an estate restart gave some appliances new NTLS ports."""
        with self.editing() as conf:
            servers = self.servers(conf)
            moved = [Server(s.name, moves.get(s.port, s.port)) for s in servers]
            if moved != servers:
                for old, new in zip(servers, moved):
                    if old != new and os.path.exists(self._server_cert_file(old)):
                        os.replace(self._server_cert_file(old), self._server_cert_file(new))
                self._write_servers(conf, moved)


def pkcs11_library(environ=None):
    """-> (library path, None), or (SoftHSM2's path, why the simulated libCryptoki2 is not used)."""
    environ = os.environ if environ is None else environ
    wanted = environ.get("DHSM_SIM_CRYPTOKI") or SIM_CRYPTOKI
    if os.path.isfile(wanted):
        return os.path.abspath(wanted), None
    origin = "$DHSM_SIM_CRYPTOKI" if environ.get("DHSM_SIM_CRYPTOKI") else "run 'make' to build it"
    return SOFTHSM_LIBRARY, f"{wanted} is not there ({origin})"


def managed_library(value):
    """Is VALUE a LibUNIX64 the estate itself wrote (SoftHSM2, or a simulated libCryptoki2)?
    Those follow pkcs11_library at every start; anything else is an operator's choice, kept."""
    return value == SOFTHSM_LIBRARY or os.path.basename(value or "") == os.path.basename(SIM_CRYPTOKI)


def locate(environ=None):
    """-> (Install, estate directory or None) as the tools find them (see the module doc)."""
    environ = os.environ if environ is None else environ
    estate_dir = environ.get("DHSM_ESTATE_DIR")
    configured = environ.get("ChrystokiConfigurationPath")
    if configured:
        conf_path = os.path.join(configured, CONF_NAME) if os.path.isdir(configured) else configured
    elif estate_dir:
        conf_path = os.path.join(estate_dir, CLIENT_DIR, CONF_NAME)
    else:
        conf_path = "/etc/" + CONF_NAME
    install = Install(conf_path)
    if not install.exists():
        raise NotFound(f"cannot find the Luna client configuration {conf_path} "
                       "(set ChrystokiConfigurationPath, or DHSM_ESTATE_DIR for a simulated estate)")
    if not estate_dir:
        above = os.path.dirname(install.root)
        estate_dir = above if os.path.exists(os.path.join(above, "estate.json")) else None
    return install, estate_dir and os.path.abspath(estate_dir)
