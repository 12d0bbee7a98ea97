"""What the client tools learn from the estate directory, beyond the network.

A real client knows nothing but the address and port it connects to. The stand-ins
also need to know which simulated appliance sits behind a loopback port, to report
partition logins to it (DIR/estate.json), and they use the control endpoint to report
those logins and to read the HA state the daemon keeps.
"""
import os

from estate_client import EstateClient
from fsutil import read_json


class EstateView:
    def __init__(self, estate_dir):
        self.dir = estate_dir
        self.info = read_json(os.path.join(estate_dir, "estate.json")) or {}
        self.devices = self.info.get("appliances", {}).get("devices", {})
        self._client = None

    def control(self, method, path, body=None):
        """The estate's control endpoint (EstateError when the estate is not running)."""
        if self._client is None:
            self._client = EstateClient(self.dir)
        return self._client.control(method, path, body)

    def appliance_at(self, port):
        """The appliance whose NTLS listens on PORT, or None."""
        return next((name for name, dev in self.devices.items() if dev["ntls_port"] == port), None)
