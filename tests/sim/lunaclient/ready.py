"""`estate start --client-ready`: the client side done already, for tests that are not about it.

What an operator would have done by the tutorial (createCert, scp server.pem, addServer,
scp the client certificate, client register, partition create, assignPartition), done
directly on a fresh estate:
  - client certificate `dhsm-client` (DIR/client/cert/client/dhsm-client.pem);
  - on every appliance that is bound and initialised: partition `par1` labelled `NAME-par1`,
    the client registered as `dhsm-client` with IP 127.0.0.1 and `par1` assigned to it;
  - every appliance's NTLS certificate registered as server 127.0.0.1 on its NTLS port.
All `par1` partitions share one Partition SO PIN, one Crypto Officer PIN (DIR/secrets as
usual) and the default cloning domain, as the members of one HA group must.
"""
import time

from appliance import hsmops
from appliance.softhsm import new_pin
from lunaclient.certs import create_client_cert

CLIENT_NAME = "dhsm-client"
CLIENT_IP = "127.0.0.1"
PARTITION = "par1"


def provision(estate, install):
    """Runs in the daemon at start, world lock held, after the appliances started."""
    _, cert_file = create_client_cert(install, CLIENT_NAME, time.time())
    so_pin, co_pin = new_pin(), new_pin()
    for dev in estate.devices.values():
        state = dev.state
        if state["resource"] is None or state["status"] != "up" or not state["hsm"]["initialized"]:
            continue
        if PARTITION not in state["partitions"]:
            hsmops.create_partition(dev, PARTITION, f"{dev.name}-{PARTITION}", so_pin, co_pin)
        hsmops.register_client(dev, CLIENT_NAME, "ip", CLIENT_IP, cert_file)
        state["clients"][CLIENT_NAME]["partitions"].append(PARTITION)
        with open(dev.paths.ntls_active_cert) as f:
            install.add_server(CLIENT_IP, state["ports"]["ntls"], f.read())
