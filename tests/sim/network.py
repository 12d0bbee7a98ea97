"""Microsoft.Network: virtual networks, subnets (with delegations), public IPs,
virtual network gateways and the NICs that follow Dedicated HSMs.

Writes are long-running the Network way: 201/200 with provisioningState
"Updating" and an Azure-AsyncOperation URL answering {"status":"InProgress"}
then {"status":"Succeeded"}; deletes answer 202 with Azure-AsyncOperation and
Location (the Location poll ends in 204). A gateway stays Updating for
gateway_seconds, other resources for network_seconds.
"""
import ipaddress
import random

import armutil
import knobs
from arm import NETWORK
from armerrors import resource_not_found, rp_error
from httpserver import Response

VNET = "Microsoft.Network/virtualNetworks"
SUBNET = "Microsoft.Network/virtualNetworks/subnets"
PIP = "Microsoft.Network/publicIPAddresses"
GATEWAY = "Microsoft.Network/virtualNetworkGateways"
NIC = "Microsoft.Network/networkInterfaces"
HSM_SERVICE = "Microsoft.HardwareSecurityModules/dedicatedHSMs"
# A Network long-running operation that ends Failed: what the status URL says (assumed
# wording; the Network RP's internal errors carry no more than this).
FAILED_WRITE = {"code": "InternalServerError", "message": "An error occurred.", "details": []}
HSM_ACTIONS = ["Microsoft.Network/networkinterfaces/*", "Microsoft.Network/virtualNetworks/subnets/join/action"]


# shared helpers -------------------------------------------------------------
def _seconds(world, rtype):
    return world.knob("gateway_seconds" if rtype == GATEWAY else "network_seconds")


def _start(world, rec, state):
    rec["state"] = state
    rec["until"] = world.now() + _seconds(world, rec["type"])
    rec["modified"] = world.now()
    world.changed()


def _ref_id(value):
    return value.get("id") if isinstance(value, dict) else None


def _existing(world, rtype, sub, rg, names):
    rec = world.get(armutil.resource_id(sub, rg, rtype, *names))
    if rec is None:
        raise resource_not_found(rtype, names, rg)
    return rec


def _referenced(world, rid, referrer):
    rec = world.get(rid) if rid else None
    if rec is None or rec["state"] == "Deleting":
        raise rp_error(400, "InvalidResourceReference",
                       f"Resource {rid} referenced by resource {referrer} was not found. Please make sure that "
                       "the referenced resource exists, and that both resources are in the same region.")
    return rec


def _envelope(rec, props, with_location=True):
    doc = {"name": rec["name"], "id": rec["id"], "etag": rec["etag"], "type": rec["type"]}
    if with_location:
        doc["location"] = rec["location"]
        if rec["tags"]:
            doc["tags"] = rec["tags"]
    doc["properties"] = {"provisioningState": rec["state"], "resourceGuid": rec["guid"], **props}
    return doc


def subnet_in_use_by(world, subnet_id):
    """Ids of what occupies a subnet: HSM NICs and gateways."""
    users = [n["id"] + "/ipConfigurations/ipconfig1" for n in world.find(NIC)
             if armutil.key(n["props"]["subnet_id"]) == armutil.key(subnet_id)]
    for gw in world.find(GATEWAY):
        if any(armutil.key(c["subnet_id"]) == armutil.key(subnet_id) for c in gw["props"]["ip_configurations"]):
            users.append(gw["id"] + "/ipConfigurations/" + gw["props"]["ip_configurations"][0]["name"])
    return users


def _refuse_if_subnet_in_use(world, subnet):
    users = subnet_in_use_by(world, subnet["id"])
    if users:
        raise rp_error(400, "InUseSubnetCannotBeDeleted",
                       f"Subnet {subnet['name']} is in use by {users[0]} and cannot be deleted. In order to "
                       "delete the subnet, delete all the resources within the subnet. See aka.ms/deletesubnet.")


def is_delegated_to_hsm(subnet):
    return any(d["serviceName"].lower() == HSM_SERVICE.lower() for d in subnet["props"]["delegations"])


def gateway_for_vnet(world, vnet_id):
    """The VNet's gateway (ExpressRoute preferred): the HSM's tunnel."""
    found = [gw for gw in world.find(GATEWAY)
             if any(armutil.key(c["subnet_id"]).startswith(armutil.key(vnet_id) + "/subnets/")
                    for c in gw["props"]["ip_configurations"])]
    found.sort(key=lambda gw: gw["props"]["gatewayType"] != "ExpressRoute")
    return found[0] if found else None


# virtual networks and subnets ----------------------------------------------
def _prefix(text, what):
    try:
        return ipaddress.ip_network(text, strict=False)
    except (ValueError, TypeError):
        raise rp_error(400, "InvalidAddressPrefixFormat", f"Address prefix {text} of {what} is not formatted correctly.")


def validate_vnet(world, sub, rg, names, body):
    props = body.get("properties") or {}
    prefixes = (props.get("addressSpace") or {}).get("addressPrefixes") or []
    if not prefixes:
        raise rp_error(400, "InvalidRequestFormat", "Cannot parse the request.",
                       details=[{"code": "MissingJsonProperty",
                                 "message": "Required property 'addressSpace.addressPrefixes' not found in JSON."}])
    for p in prefixes:
        _prefix(p, names[0])
    return {"address_prefixes": prefixes}


def _subnet_props(body, sub_name):
    props = body.get("properties") or {}
    prefix = props.get("addressPrefix") or (props.get("addressPrefixes") or [None])[0]
    if not prefix:
        raise rp_error(400, "InvalidRequestFormat", "Cannot parse the request.",
                       details=[{"code": "MissingJsonProperty",
                                 "message": f"Subnet {sub_name} must have an addressPrefix."}])
    delegations = [{"name": d.get("name") or str(i), "serviceName": (d.get("properties") or {}).get("serviceName", "")}
                   for i, d in enumerate(props.get("delegations") or [])]
    return {"address_prefix": prefix, "delegations": delegations}


def validate_subnet(world, sub, rg, names, body):
    vnet = _existing(world, VNET, sub, rg, names[:1])
    props = _subnet_props(body, names[1])
    net = _prefix(props["address_prefix"], names[1])
    if not any(net.subnet_of(ipaddress.ip_network(p, strict=False)) for p in vnet["props"]["address_prefixes"]):
        raise rp_error(400, "NetcfgSubnetRangeOutsideVnet",
                       f"Subnet '{names[1]}' is not valid because its IP address range is outside the IP address "
                       f"range of virtual network '{names[0]}'.")
    existing = world.get(armutil.resource_id(sub, rg, SUBNET, *names))
    if existing and is_delegated_to_hsm(existing) and not any(
            d["serviceName"].lower() == HSM_SERVICE.lower() for d in props["delegations"]) \
            and subnet_in_use_by(world, existing["id"]):
        raise rp_error(400, "SubnetMissingRequiredDelegation",
                       f"Subnet {existing['id']} requires any of the following delegation(s) "
                       f"[{HSM_SERVICE}] to reference service association link.")
    return props


def _sync_inline_subnets(world, vnet, body):
    """A VNet PUT carries the full subnet list: create/update those, drop the others."""
    inline = (body.get("properties") or {}).get("subnets")
    if inline is None:
        return
    wanted = {}
    for s in inline:
        if not s.get("name"):
            raise rp_error(400, "InvalidRequestFormat", "Cannot parse the request.",
                           details=[{"code": "MissingJsonProperty", "message": "Subnet name is required."}])
        wanted[s["name"].lower()] = s
    for child in _subnets_of(world, vnet):
        if child["name"].lower() not in wanted:
            _refuse_if_subnet_in_use(world, child)
            world.remove(child["id"])
    for s in inline:
        write(world, SUBNET, vnet["sub"], vnet["rg"], [vnet["name"], s["name"]], s)


def _subnets_of(world, vnet):
    prefix = armutil.key(vnet["id"]) + "/subnets/"
    return world.find(SUBNET, where=lambda r: armutil.key(r["id"]).startswith(prefix))


def render_subnet(world, rec):
    props = {"addressPrefix": rec["props"]["address_prefix"]}
    users = subnet_in_use_by(world, rec["id"])
    if users:
        props["ipConfigurations"] = [{"id": u} for u in users]
    props["delegations"] = [{"name": d["name"], "id": f"{rec['id']}/delegations/{d['name']}", "etag": rec["etag"],
                             "properties": {"provisioningState": "Succeeded", "serviceName": d["serviceName"],
                                            "actions": HSM_ACTIONS if d["serviceName"].lower() == HSM_SERVICE.lower()
                                            else []},
                             "type": "Microsoft.Network/virtualNetworks/subnets/delegations"}
                            for d in rec["props"]["delegations"]]
    if is_delegated_to_hsm(rec):
        props["purpose"] = "HostedWorkloads"
    props["privateEndpointNetworkPolicies"] = "Disabled"
    props["privateLinkServiceNetworkPolicies"] = "Enabled"
    doc = _envelope(rec, props, with_location=False)
    doc["properties"].pop("resourceGuid")
    doc["type"] = doc.pop("type")  # subnets put `type` last
    return doc


def render_vnet(world, rec):
    return _envelope(rec, {"addressSpace": {"addressPrefixes": rec["props"]["address_prefixes"]},
                           "subnets": [render_subnet(world, s) for s in _subnets_of(world, rec)],
                           "virtualNetworkPeerings": [], "enableDdosProtection": False})


# public IPs and gateways ---------------------------------------------------
def validate_pip(world, sub, rg, names, body):
    props = body.get("properties") or {}
    method = props.get("publicIPAllocationMethod", "Dynamic")
    sku = body.get("sku") or {"name": "Basic"}
    sku = {"name": sku.get("name", "Basic"), "tier": sku.get("tier", "Regional")}
    address = None
    if method == "Static" or sku["name"] == "Standard":
        address = f"20.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
    return {"method": method, "version": props.get("publicIPAddressVersion", "IPv4"),
            "idle": props.get("idleTimeoutInMinutes", 4), "sku": sku, "address": address}


def render_pip(world, rec):
    p = rec["props"]
    props = {}
    if p["address"]:
        props["ipAddress"] = p["address"]
    props.update({"publicIPAddressVersion": p["version"], "publicIPAllocationMethod": p["method"],
                  "idleTimeoutInMinutes": p["idle"], "ipTags": []})
    users = [gw for gw in world.find(GATEWAY)
             if any(armutil.key(c.get("pip_id") or "") == armutil.key(rec["id"]) for c in gw["props"]["ip_configurations"])]
    if users:
        props["ipConfiguration"] = {"id": users[0]["id"] + "/ipConfigurations/" +
                                          users[0]["props"]["ip_configurations"][0]["name"]}
    doc = _envelope(rec, props)
    doc["type"] = doc.pop("type")
    doc["sku"] = p["sku"]
    return doc


def validate_gateway(world, sub, rg, names, body):
    props = body.get("properties") or {}
    gateway_type = props.get("gatewayType", "Vpn")  # the CLI's default, as in recording R23
    if gateway_type not in ("Vpn", "ExpressRoute", "LocalGateway"):
        raise rp_error(400, "InvalidRequestFormat", f"Invalid gatewayType '{gateway_type}'.")
    configs = []
    gw_id = armutil.resource_id(sub, rg, GATEWAY, *names)
    for i, cfg in enumerate(props.get("ipConfigurations") or []):
        cprops = cfg.get("properties") or {}
        subnet_id = _ref_id(cprops.get("subnet"))
        _referenced(world, subnet_id, gw_id)
        pip_id = _ref_id(cprops.get("publicIPAddress"))
        if pip_id:
            pip = _referenced(world, pip_id, gw_id)
            if gateway_type == "ExpressRoute" and pip["props"]["sku"]["name"] != "Standard":
                raise rp_error(400, "ExpressRouteGatewayRequiresStandardSkuPublicIp",
                               f"Public IP address {pip['id']} has SKU '{pip['props']['sku']['name']}'. An "
                               f"ExpressRoute gateway ({gw_id}) requires a public IP address of SKU 'Standard' "
                               "with Static allocation; Basic SKU public IP addresses are not supported.")
        configs.append({"name": cfg.get("name") or f"vnetGatewayConfig{i}", "subnet_id": subnet_id,
                        "pip_id": pip_id, "method": cprops.get("privateIPAllocationMethod", "Dynamic")})
    if not configs:
        raise rp_error(400, "VirtualNetworkGatewayMustHaveAtLeastOneIpConfiguration",
                       "Virtual network gateway must have at least one IP configuration.")
    _refuse_second_gateway(world, gw_id, configs[0]["subnet_id"])
    sku = props.get("sku") or {"name": "Standard", "tier": "Standard"}
    return {"gatewayType": gateway_type, "vpnType": props.get("vpnType", "RouteBased"),
            "activeActive": bool(props.get("activeActive", False)),
            "sku": {"name": sku.get("name", "Standard"), "tier": sku.get("tier", sku.get("name", "Standard")),
                    "capacity": 2},
            "ip_configurations": configs}


def _refuse_second_gateway(world, gw_id, subnet_id):
    """One gateway per virtual network (the troubleshooting guide, Provisioning ExpressRoute)."""
    vnet_id = subnet_id.rsplit("/subnets/", 1)[0]
    other = gateway_for_vnet(world, vnet_id)
    if other is not None and armutil.key(other["id"]) != armutil.key(gw_id):
        raise rp_error(400, "VirtualNetworkAlreadyHasGateway",
                       f"Virtual network {vnet_id} already has gateway {other['id']}. A virtual network can have "
                       "only one gateway: use another virtual network for a second connection.")


def render_gateway(world, rec):
    p = rec["props"]
    configs = []
    for c in p["ip_configurations"]:
        cprops = {"provisioningState": rec["state"], "privateIPAllocationMethod": c["method"],
                  "subnet": {"id": c["subnet_id"]}}
        if c["pip_id"]:
            cprops["publicIPAddress"] = {"id": c["pip_id"]}
        configs.append({"name": c["name"], "id": f"{rec['id']}/ipConfigurations/{c['name']}", "etag": rec["etag"],
                        "type": "Microsoft.Network/virtualNetworkGateways/ipConfigurations", "properties": cprops})
    return _envelope(rec, {"packetCaptureDiagnosticState": "None", "enablePrivateIpAddress": False,
                           "ipConfigurations": configs, "natRules": [], "virtualNetworkGatewayPolicyGroups": [],
                           "enableBgpRouteTranslationForNat": False, "disableIPSecReplayProtection": False,
                           "sku": p["sku"], "gatewayType": p["gatewayType"], "vpnType": p["vpnType"],
                           "enableBgp": False, "activeActive": p["activeActive"], "vpnGatewayGeneration": "None",
                           "allowRemoteVnetTraffic": False, "allowVirtualWanTraffic": False})


# NICs (owned by the HSM RP) -------------------------------------------------
def create_hsm_nic(world, hsm, nic_name, subnet_id, address):
    nic = world.new_record(NIC, hsm["sub"], hsm["rg"], [nic_name], location=hsm["location"],
                           props={"subnet_id": subnet_id, "address": address, "hsm_id": hsm["id"]})
    return nic


def render_nic(world, rec):
    p = rec["props"]
    ipconfig = {"name": "ipconfig1", "id": rec["id"] + "/ipConfigurations/ipconfig1", "etag": rec["etag"],
                "type": "Microsoft.Network/networkInterfaces/ipConfigurations",
                "properties": {"provisioningState": "Succeeded", "privateIPAddress": p["address"],
                               "privateIPAllocationMethod": "Static", "subnet": {"id": p["subnet_id"]},
                               "primary": True, "privateIPAddressVersion": "IPv4"}}
    return _envelope(rec, {"ipConfigurations": [ipconfig],
                           "dnsSettings": {"dnsServers": [], "appliedDnsServers": []},
                           "enableAcceleratedNetworking": False, "vnetEncryptionSupported": False,
                           "enableIPForwarding": False, "hostedWorkloads": [p["hsm_id"]], "nicType": "Standard"})


# type table and generic write/delete --------------------------------------
class NetType:
    def __init__(self, rtype, validate, render, top_level=True, after_write=None):
        self.rtype, self.validate, self.render = rtype, validate, render
        self.top_level, self.after_write = top_level, after_write


TYPES = {t.rtype: t for t in [
    NetType(VNET, validate_vnet, render_vnet, after_write=_sync_inline_subnets),
    NetType(SUBNET, validate_subnet, render_subnet, top_level=False),
    NetType(PIP, validate_pip, render_pip),
    NetType(GATEWAY, validate_gateway, render_gateway),
]}


def _another_operation(rid):
    return rp_error(409, "AnotherOperationInProgress",
                    f"Another operation on this or dependent resource is in progress. To retrieve status of "
                    f"the operation use uri: {rid}.")


def write(world, rtype, sub, rg, names, body):
    """Create or update; returns (created, record). Shared by PUT and deployments."""
    kind = TYPES[rtype]
    rid = armutil.resource_id(sub, rg, rtype, *names)
    existing = world.get(rid)
    if existing and existing["state"] == "Deleting":
        raise _another_operation(rid)
    location = body.get("location")
    if kind.top_level and not location:
        raise rp_error(400, "LocationRequired", "The location property is required for this definition.")
    props = kind.validate(world, sub, rg, names, body)
    rec = existing or world.new_record(rtype, sub, rg, names, location=location)
    rec["props"] = props
    if kind.top_level:
        rec["tags"] = body.get("tags") or {}
        rec["location"] = location.replace(" ", "").lower()
    else:
        rec["location"] = world.get(armutil.resource_id(sub, rg, VNET, names[0]))["location"]
    rec["etag"] = armutil.etag()
    _start(world, rec, "Updating")
    if kind.after_write:
        kind.after_write(world, rec, body)
    return existing is None, rec


def _refuse_delete_in_use(world, rec):
    if rec["type"] == SUBNET:
        _refuse_if_subnet_in_use(world, rec)
    elif rec["type"] == VNET:
        for child in _subnets_of(world, rec):
            _refuse_if_subnet_in_use(world, child)
    elif rec["type"] == PIP:
        for gw in world.find(GATEWAY):
            if any(armutil.key(c.get("pip_id") or "") == armutil.key(rec["id"]) for c in gw["props"]["ip_configurations"]):
                raise rp_error(400, "PublicIPAddressInUse",
                               f"Public IP address {rec['id']} can not be deleted since it is still allocated to "
                               f"resource {gw['id']}/ipConfigurations/{gw['props']['ip_configurations'][0]['name']}.")
    elif rec["type"] == NIC:
        raise rp_error(400, "InUseNetworkInterfaceCannotBeDeleted",
                       f"Network Interface {rec['id']} is used by existing resource {rec['props']['hsm_id']}. In "
                       "order to delete the network interface, it must be dissociated from the resource.")


def _async_headers(ctx, rec, op_id, deleting):
    loc = rec["location"] or ctx.world.s["location"]
    base = f"/subscriptions/{rec['sub']}/providers/Microsoft.Network/locations/{loc}"
    headers = [("Azure-AsyncOperation", ctx.url(f"{base}/operations/{op_id}")),
               ("Retry-After", str(ctx.world.knob("retry_after")))]
    if deleting:
        headers.append(("Location", ctx.url(f"{base}/operationResults/{op_id}")))
    else:
        headers.append(("azure-asyncnotification", "Enabled"))
    return headers


def _new_op(world, rec, action):
    op_id = armutil.new_guid()
    world.add_operation(op_id, kind="network", rid=rec["id"], action=action, done_at=rec["until"])
    return op_id


# HTTP handlers ---------------------------------------------------------------
def _handlers(rtype):
    depth = rtype.count("/")  # names in the id

    def names_of(params):
        return [params[k] for k in ("n1", "n2")[:depth]]

    def get(ctx, sub, rg, **params):
        rec = _existing(ctx.world, rtype, sub, rg, names_of(params))
        return Response.json(200, _render(ctx.world, rec))

    def put(ctx, sub, rg, **params):
        body = ctx.body()
        rid = armutil.resource_id(sub, rg, rtype, *names_of(params))
        if knobs.take(ctx.world, "network_busy", ctx.req.line):
            raise _another_operation(rid)
        created, rec = write(ctx.world, rtype, sub, rg, names_of(params), body)
        rec["sim"]["fail_write"] = knobs.take(ctx.world, "network_fail", ctx.req.line)
        op_id = _new_op(ctx.world, rec, "write")
        return Response.json(201 if created else 200, _render(ctx.world, rec),
                             _async_headers(ctx, rec, op_id, deleting=False))

    def delete(ctx, sub, rg, **params):
        rec = ctx.world.get(armutil.resource_id(sub, rg, rtype, *names_of(params)))
        if rec is None:
            return Response.empty(204)
        _refuse_delete_in_use(ctx.world, rec)
        if rec["state"] != "Deleting":
            _start(ctx.world, rec, "Deleting")
        op_id = _new_op(ctx.world, rec, "delete")
        return Response.empty(202, _async_headers(ctx, rec, op_id, deleting=True))

    def listing(ctx, sub, rg, **params):
        if depth == 2:
            vnet = _existing(ctx.world, VNET, sub, rg, [params["n1"]])
            recs = _subnets_of(ctx.world, vnet)
        else:
            recs = ctx.world.find(rtype, sub=sub, rg=rg)
        return ctx.page([_render(ctx.world, r) for r in recs])

    return get, put, delete, listing


def _render(world, rec):
    return RENDERERS[rec["type"]](world, rec)


RENDERERS = {VNET: render_vnet, SUBNET: render_subnet, PIP: render_pip, GATEWAY: render_gateway, NIC: render_nic}


def async_status(ctx, sub, loc, op_id):
    op = ctx.world.operation(op_id)
    if op is None or op["kind"] != "network":
        raise rp_error(404, "OperationNotFound", f"Operation {op_id} was not found.")
    if ctx.world.now() < op["done_at"]:
        return Response.json(200, {"status": "InProgress"}, [("Retry-After", str(ctx.world.knob("retry_after")))])
    rec = ctx.world.get(op["rid"])
    if op.get("action") == "write" and rec is not None and rec["state"] == "Failed":
        return Response.json(200, {"status": "Failed", "error": FAILED_WRITE})
    return Response.json(200, {"status": "Succeeded"})


def operation_result(ctx, sub, loc, op_id):
    op = ctx.world.operation(op_id)
    if op is None or op["kind"] != "network":
        raise rp_error(404, "OperationNotFound", f"Operation {op_id} was not found.")
    if ctx.world.now() < op["done_at"]:
        rec = {"location": loc, "sub": sub}
        return Response.empty(202, _async_headers(ctx, rec, op_id, deleting=True))
    return Response.empty(204)


def nic_get(ctx, sub, rg, n1):
    return Response.json(200, render_nic(ctx.world, _existing(ctx.world, NIC, sub, rg, [n1])))


def nic_delete(ctx, sub, rg, n1):
    rec = ctx.world.get(armutil.resource_id(sub, rg, NIC, n1))
    if rec is None:
        return Response.empty(204)
    _refuse_delete_in_use(ctx.world, rec)  # a NIC follows its HSM: always refused
    raise AssertionError("unreachable")


def nic_list(ctx, sub, rg):
    return ctx.page([render_nic(ctx.world, r) for r in ctx.world.find(NIC, sub=sub, rg=rg)])


# ticking ----------------------------------------------------------------------
def tick_network(world, now):
    for rec in world.find(where=lambda r: r["type"] in TYPES and r["until"] is not None and now >= r["until"]):
        if world.get(rec["id"]) is None:
            continue  # removed with its parent in this same tick
        if rec["state"] == "Deleting":
            for child in _subnets_of(world, rec) if rec["type"] == VNET else []:
                world.remove(child["id"])
            world.remove(rec["id"])
        else:
            rec["state"] = "Failed" if rec["sim"].pop("fail_write", False) else "Succeeded"
            rec["until"] = None
            world.changed()


def register(app):
    base = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/"
    for rtype, path, label in ((VNET, "virtualNetworks/{n1}", "virtualNetworks"),
                               (SUBNET, "virtualNetworks/{n1}/subnets/{n2}", "virtualNetworks/subnets"),
                               (PIP, "publicIPAddresses/{n1}", "publicIPAddresses"),
                               (GATEWAY, "virtualNetworkGateways/{n1}", "virtualNetworkGateways")):
        get, put, delete, listing = _handlers(rtype)
        app.route(base + path, NETWORK, label, GET=get, PUT=put, DELETE=delete)
        app.route(base + path.rsplit("/", 1)[0], NETWORK, label, GET=listing)
    app.route(base + "networkInterfaces/{n1}", NETWORK, "networkInterfaces", GET=nic_get, DELETE=nic_delete)
    app.route(base + "networkInterfaces", NETWORK, "networkInterfaces", GET=nic_list)
    loc = "/subscriptions/{sub}/providers/Microsoft.Network/locations/{loc}/"
    app.route(loc + "operations/{op_id}", NETWORK, "locations/operations", GET=async_status)
    app.route(loc + "operationResults/{op_id}", NETWORK, "locations/operationResults", GET=operation_result)
    app.world.tickers.append(tick_network)
