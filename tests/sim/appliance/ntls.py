"""NTLS: the appliance's mutual-TLS listener (TCP 1792 on a real appliance).

TLS 1.2 only, as on Luna 7.2, so a rejected client certificate fails the client's
own handshake. The server certificate is the one loaded when NTLS last started
(`sysconf regenCert` writes a new one that waits for `service restart ntls`).
Trusted client certificates are the ones registered with `client register`
that are valid by the appliance's clock (a skewed clock rejects them), checked
as trust anchors (partial chains allowed, like the appliance's client list).

Mini-protocol after a good handshake: the appliance sends ONE line of JSON and
closes the connection:
  {"appliance": "hsm1", "serial": "534201", "client": "web1",
   "partitions": [{"name": "par1", "serial": "1767268800123", "label": "par1", "token_serial": "..."}]}
`partitions` is what the client may see: the partitions assigned to it, empty when
`ntls ipcheck` is on and the client's registered (or mapped) IP is not the source.

Every connection is logged to syslog in the format of the troubleshooting guide.
"""
import json
import logging
import os
import shutil
import ssl

from cryptography.hazmat.primitives.serialization import Encoding

from appliance import keys, model

log = logging.getLogger("estate.appliance")
HANDSHAKE_TIMEOUT = 5.0

# Python/OpenSSL 3 reason -> the OpenSSL 1.0.2 error string the appliance's NTLS logs.
SSL_ACCEPT_ERRORS = {
    "TLSV1_ALERT_UNKNOWN_CA": "error:14094418:SSL routines:ssl3_read_bytes:tlsv1 alert unknown ca",
    "SSLV3_ALERT_BAD_CERTIFICATE": "error:14094412:SSL routines:ssl3_read_bytes:sslv3 alert bad certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED":
        "error:14094415:SSL routines:ssl3_read_bytes:sslv3 alert certificate expired",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN":
        "error:14094416:SSL routines:ssl3_read_bytes:sslv3 alert certificate unknown",
    "TLSV1_ALERT_DECRYPT_ERROR": "error:1409441B:SSL routines:ssl3_read_bytes:tlsv1 alert decrypt error",
    "SSLV3_ALERT_HANDSHAKE_FAILURE":
        "error:14094410:SSL routines:ssl3_read_bytes:sslv3 alert handshake failure",
    "CERTIFICATE_VERIFY_FAILED":
        "error:14089086:SSL routines:ssl3_get_client_certificate:certificate verify failed",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        "error:140890C7:SSL routines:ssl3_get_client_certificate:peer did not return a certificate",
    "WRONG_VERSION_NUMBER": "error:1408F10B:SSL routines:ssl3_get_record:wrong version number",
    "UNSUPPORTED_PROTOCOL": "error:1408A10B:SSL routines:ssl3_get_client_hello:wrong version number",
    "NO_SHARED_CIPHER": "error:1408A0C1:SSL routines:ssl3_get_client_hello:no shared cipher",
}
GENERIC_ERROR = "error:140940E5:SSL routines:ssl3_read_bytes:ssl handshake failure"


def accept_error(exc):
    return SSL_ACCEPT_ERRORS.get(getattr(exc, "reason", None) or "", GENERIC_ERROR)


class NtlsServer:
    def __init__(self, device):
        self.device = device

    def load(self):
        """(Re)start NTLS: the newest key pair becomes the one served (ntls/active.*)."""
        paths = self.device.paths
        shutil.copyfile(paths.ntls_cert, paths.ntls_active_cert)
        shutil.copyfile(paths.ntls_key, paths.ntls_active_key)
        os.chmod(paths.ntls_active_key, 0o600)

    @property
    def pid(self):
        return self.device.state["ntls"]["pid"]

    def _log(self, message):
        self.device.syslog.write("NTLS", self.pid, message)

    def _trusted_clients(self):
        """(name, cert) of registered clients whose certificate is valid at the appliance's time."""
        now, trusted = self.device.now(), []
        for name in self.device.state["clients"]:
            try:
                with open(self.device.paths.client_cert(name), "rb") as f:
                    cert = keys.load_cert(f.read())
            except (OSError, ValueError):
                continue
            if keys.valid_at(cert, now):
                trusted.append((name, cert))
        return trusted

    def _context(self, trusted):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.load_cert_chain(self.device.paths.ntls_active_cert, self.device.paths.ntls_active_key)
        pems = "".join(cert.public_bytes(Encoding.PEM).decode() for _, cert in trusted)
        if pems:
            ctx.load_verify_locations(cadata=pems)
        return ctx

    def handle(self, conn, addr):
        peer = f"{addr[0]}/{addr[1]}"
        self._log(f"info : 0 : Incoming connection request... : {peer}")
        trusted = self._trusted_clients()
        conn.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self._context(trusted).wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self._handshake_failed(peer, e)
            conn.close()
            return
        try:
            self._serve(tls, addr, peer, trusted)
        finally:
            tls.close()

    def _handshake_failed(self, peer, exc):
        self._log(f"Error message from SSLAccept is : {accept_error(exc)}")
        self._log("Error during SSL accept ( RC_SSL_ERROR )")
        self._log(f"info : 0xc0000711 : Fail to establish a secure channel with client : {peer} : "
                  "RC_SSL_FAILED_HANDSHAKE")
        self._log(f'info : 0 : NTLS Client "Unknown host name" Connection instance removed : {peer}')

    def _serve(self, tls, addr, peer, trusted):
        der = tls.getpeercert(binary_form=True)
        name = next((n for n, cert in trusted if cert.public_bytes(Encoding.DER) == der), None)
        self._log(f'info : 0 : NTLS Client "{name}" Connection instance added : {peer}')
        try:
            tls.sendall((json.dumps(self.greeting(name, addr[0])) + "\n").encode())
        except OSError:
            pass
        self._log(f'info : 0 : NTLS Client "{name}" Connection instance removed : {peer}')

    def greeting(self, client, source_ip):
        state = self.device.state
        rec = state["clients"].get(client)
        visible = rec["partitions"] if rec and self._ip_allowed(rec, source_ip) else []
        parts = [state["partitions"][p] for p in visible if p in state["partitions"]]
        return {"appliance": state["hostname"], "serial": state["serial"], "client": client,
                "partitions": [{"name": p["name"], "serial": p["serial"], "label": model.token_label(p),
                                "token_serial": p["token_serial"]} for p in parts if not p["zeroized"]]}

    def _ip_allowed(self, client, source_ip):
        if not self.device.state["ntls"]["ipcheck"]:
            return True
        expected = client.get("ip_map") or (client["address"] if client["kind"] == "ip" else None)
        return expected is None or expected == source_ip

