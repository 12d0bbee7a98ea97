"""The world a fresh estate starts with (ignored when DIR/state.json already exists).

Default: an allowlisted subscription, resource group hsm-rg in eastus, VNet
hsm-vnet 10.2.0.0/16 with subnets hsm (delegated to dedicatedHSMs),
GatewaySubnet and compute (not delegated: the delegation-failure path), a
public IP and an ExpressRoute gateway already Succeeded, and no HSM.
Appliances hsm1..hsmN (`appliances`, default 2; `estate start --appliances N`) each
back a Succeeded HSM resource of the same name; `spare_appliances` (`--spare N`, default
0) more wait in the pool for the HSMs the operator provisions (see appliance/pool.py).
A JSON seed file (`estate start --seed FILE`) overrides any of DEFAULT_SEED,
e.g. {"allowlisted": false, "gateway": {"state": "Updating"},
      "hsms": [{"name": "hsm1", "ip": "10.2.1.4", "stamp": "stamp1", "zeroized": false}]}.
"""
import copy
import hashlib
import os
import secrets

import armutil
import hsm
import network
import resources
from appliance import pool
from fsutil import write_private

SECRET_FILE = "secrets/azure_client_secret"
DEFAULT_SEED = {
    "tenant": None, "subscription": None, "subscription_name": "dhsm-simulated", "client_id": None,
    "user": "operator@contoso.example",
    "resource_group": "hsm-rg", "location": "eastus", "allowlisted": True,
    "vnet": {"name": "hsm-vnet", "address_prefix": "10.2.0.0/16",
             "hsm_subnet": {"name": "hsm", "prefix": "10.2.1.0/24"},
             "gateway_subnet": {"name": "GatewaySubnet", "prefix": "10.2.255.0/26"},
             "plain_subnet": {"name": "compute", "prefix": "10.2.2.0/24"}},
    "gateway": {"name": "hsm-ergw", "public_ip": "hsm-ergw-pip", "state": "Succeeded"},
    "hsms": [],
    "appliances": 2,
    "spare_appliances": 0,
}


def merged(overrides):
    seed = copy.deepcopy(DEFAULT_SEED)
    for k, v in (overrides or {}).items():
        if isinstance(v, dict) and isinstance(seed.get(k), dict):
            seed[k].update(v)
        else:
            seed[k] = v
    return seed


def _identities(world, seed, estate_dir):
    secret = secrets.token_urlsafe(32)
    write_private(os.path.join(estate_dir, SECRET_FILE), secret + "\n")
    s = world.s
    s["tenant"] = seed["tenant"] or armutil.new_guid()
    s["principal"] = {"client_id": seed["client_id"] or armutil.new_guid(), "object_id": armutil.new_guid(),
                      "secret_sha256": hashlib.sha256(secret.encode()).hexdigest()}
    s["managed_identity"] = {"client_id": armutil.new_guid(), "object_id": armutil.new_guid()}
    s["user"] = {"upn": seed["user"], "object_id": armutil.new_guid()}
    s["approved"] = bool(seed["allowlisted"])
    s["location"] = seed["location"]
    s["resource_group"] = seed["resource_group"]


def _subscription(world, seed):
    sub = seed["subscription"] or armutil.new_guid()
    world.s["subscriptions"][sub.lower()] = {
        "id": sub, "displayName": seed["subscription_name"],
        "features": {f: "Registered" for f in resources.REQUIRED_FEATURES}}
    return sub


def _network(world, seed, sub, rg):
    v, loc = seed["vnet"], seed["location"]
    subnets = [{"name": v["hsm_subnet"]["name"],
                "properties": {"addressPrefix": v["hsm_subnet"]["prefix"],
                               "delegations": [{"name": "0", "properties": {"serviceName": network.HSM_SERVICE}}]}},
               {"name": v["gateway_subnet"]["name"], "properties": {"addressPrefix": v["gateway_subnet"]["prefix"]}},
               {"name": v["plain_subnet"]["name"], "properties": {"addressPrefix": v["plain_subnet"]["prefix"]}}]
    network.write(world, network.VNET, sub, rg, [v["name"]],
                  {"location": loc, "properties": {"addressSpace": {"addressPrefixes": [v["address_prefix"]]},
                                                   "subnets": subnets}})
    gw = seed["gateway"]
    if not gw:
        return
    network.write(world, network.PIP, sub, rg, [gw["public_ip"]],
                  {"location": loc, "sku": {"name": "Standard", "tier": "Regional"},
                   "properties": {"publicIPAllocationMethod": "Static"}})
    gateway_subnet = armutil.resource_id(sub, rg, network.SUBNET, v["name"], v["gateway_subnet"]["name"])
    _settle(world)  # references must exist before the gateway points at them
    network.write(world, network.GATEWAY, sub, rg, [gw["name"]], {"location": loc, "properties": {
        "gatewayType": "ExpressRoute", "vpnType": "RouteBased", "sku": {"name": "Standard", "tier": "Standard"},
        "ipConfigurations": [{"name": "vnetGatewayConfig0", "properties": {
            "privateIPAllocationMethod": "Dynamic", "subnet": {"id": gateway_subnet},
            "publicIPAddress": {"id": armutil.resource_id(sub, rg, network.PIP, gw["public_ip"])}}}]}})
    if gw.get("state", "Succeeded") == "Succeeded":
        _settle(world)


def _settle(world):
    """Seeded network resources exist already: no Updating window."""
    for rec in world.s["resources"].values():
        if rec["state"] == "Updating":
            rec["state"], rec["until"] = "Succeeded", None


def _hsms(world, seed, sub, rg, estate_dir):
    v = seed["vnet"]
    subnet_id = armutil.resource_id(sub, rg, network.SUBNET, v["name"], v["hsm_subnet"]["name"])
    principal = {"oid": world.s["principal"]["object_id"], "type": "Application",
                 "name": world.s["principal"]["client_id"]}
    for spec in seed["hsms"]:
        hsm.seed_hsm(world, sub, rg, spec["name"], subnet_id, principal, ip=spec.get("ip"),
                     stamp=spec.get("stamp"), zeroized=bool(spec.get("zeroized", False)),
                     sku=spec.get("sku", hsm.SKUS[0]))
    # appliances hsm1..hsmN, each backing an HSM resource of the same name (seeded above or here)
    pool.seed_appliances(world, int(seed["appliances"]), estate_dir, lambda name: world.get(
        armutil.resource_id(sub, rg, hsm.HSM_TYPE, name)) or hsm.seed_hsm(world, sub, rg, name, subnet_id, principal))
    # spares hsm(N+1).., in the pool: the HSMs the operator provisions take them
    pool.seed_spares(world, int(seed["appliances"]) + 1, int(seed["spare_appliances"]), estate_dir)


def seed_world(world, overrides, estate_dir):
    seed = merged(overrides)
    _identities(world, seed, estate_dir)
    sub = _subscription(world, seed)
    rg = seed["resource_group"]
    resources.create_group(world, sub, rg, seed["location"])
    _network(world, seed, sub, rg)
    _hsms(world, seed, sub, rg, estate_dir)
    if not seed["allowlisted"]:
        features = world.s["subscriptions"][sub.lower()]["features"]
        features.update({f: "NotRegistered" for f in resources.REQUIRED_FEATURES})
    world.changed()
    return world
