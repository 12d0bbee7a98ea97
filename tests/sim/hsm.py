"""Microsoft.HardwareSecurityModules/dedicatedHSMs, as the recordings show it.

PUT answers 200 (never 201) with provisioningState CheckingQuota and no async
header; the client polls the resource. Each provisioning state lasts
hsm_step_seconds and its exit is where the troubleshooting guide's failures
happen:
  CheckingQuota -> quota (quota_per_stamp / quota_per_region; failed HSMs count)
  Allocating    -> capacity (capacity_per_stamp, others_per_stamp)
  Connecting    -> subnet delegation, ExpressRoute gateway not Succeeded (race)
  Provisioning  -> Succeeded; the NIC {name}_HSMnic exists from Connecting on.
With the field_errors knob a failure carries the generic code ProvisioningFailed
and the cause only in its message text, as real failures do.
Validation errors (name, body, sku, subnet reference, allowlisting) are
synchronous. DELETE answers 202 + Location to .../operationResults/{token},
polls 202 until done, then 200 with an empty body (204 for 2018-10-31-preview);
it is refused while the device is not zeroized (see is_zeroized).
"""
import ipaddress
import re

import armutil
import knobs
import network
import resources
from arm import HSM, LOCATIONS
from armerrors import ArmError, hsm_error, resource_not_found
from httpserver import Response

HSM_TYPE = resources.HSM_TYPE
NAME_RE = re.compile(r"^[a-zA-Z0-9-]{3,24}$")
SKUS = ("SafeNet Luna Network HSM A790", "payShield10K_LMK1_CPS60", "payShield10K_LMK1_CPS250",
        "payShield10K_LMK1_CPS2500", "payShield10K_LMK2_CPS60", "payShield10K_LMK2_CPS250",
        "payShield10K_LMK2_CPS2500")
STAMPS = ("stamp1", "stamp2")
STAGES = ("CheckingQuota", "Allocating", "Connecting", "Provisioning")
MESSAGES = {"CheckingQuota": "Resource creation in progress. Validating subscription device quota...",
            "Allocating": "Resource creation in progress. Allocating a device...",
            "Connecting": "Resource creation in progress. Connecting the device to the virtual network...",
            "Provisioning": "Resource creation in progress. Configuring the device...",
            "Succeeded": "The Dedicated HSM device is provisioned successfully and ready to use.",
            "Deleting": "Resource deletion in progress. Releasing the device..."}
PREVIEW_2018 = "2018-10-31-preview"


def id_field(api_version):
    """2024-06-30-preview renamed subnet.id / networkInterfaces[].id to resourceId."""
    return "resourceId" if api_version >= "2024-06-30" else "id"


def is_zeroized(world, hsm):
    """The one question the delete path asks. The appliance simulator, once present,
    answers it by setting world.zeroize_probe; until then it is the per-HSM flag
    set through the control endpoint (POST /_sim/hsms/{name}/zeroized)."""
    if world.zeroize_probe is not None:
        return world.zeroize_probe(hsm)
    return bool(hsm["sim"].get("zeroized"))


# request parsing --------------------------------------------------------------
def _missing(path):
    return hsm_error(400, "BadRequest", f"The request is missing the required property '{path}'.",
                     "MissingRequiredProperty")


def _profile(world, body, key, api_version, hsm_id, required):
    profile = (body.get("properties") or {}).get(key)
    if profile is None:
        if required:
            raise _missing(f"properties.{key}")
        return None
    field = id_field(api_version)
    subnet_id = (profile.get("subnet") or {}).get(field)
    if not subnet_id:
        raise _missing(f"properties.{key}.subnet.{field}")
    subnet = world.get(subnet_id)
    if subnet is None or armutil.parse_id(subnet_id) is None:
        raise hsm_error(400, "InvalidResourceReference",
                        f"Resource {subnet_id} referenced by resource {hsm_id} was not found. Please make sure "
                        "that the referenced resource exists, and that both resources are in the same region.")
    nics = profile.get("networkInterfaces") or [{}]
    return {"subnet_id": subnet["id"], "ip": _private_ip(world, subnet, nics[0].get("privateIpAddress"), hsm_id)}


def _used_ips(world, subnet_id, except_id):
    used = set()
    for rec in world.find(HSM_TYPE):
        if armutil.key(rec["id"]) == armutil.key(except_id):
            continue
        for prof in (rec["props"]["network"], rec["props"]["management"]):
            if prof and armutil.key(prof["subnet_id"]) == armutil.key(subnet_id):
                used.add(prof["ip"])
    return used


def _private_ip(world, subnet, wanted, hsm_id):
    net = ipaddress.ip_network(subnet["props"]["address_prefix"], strict=False)
    used = _used_ips(world, subnet["id"], hsm_id)
    if wanted:
        try:
            inside = ipaddress.ip_address(wanted) in net
        except ValueError:
            inside = False
        if not inside:
            raise hsm_error(400, "PrivateIPAddressNotInSubnet",
                            f"Private static IP address {wanted} does not belong to the range of subnet prefix {net}.")
        if wanted in used:
            raise hsm_error(400, "PrivateIPAddressInUse",
                            f"The private IP address {wanted} is already allocated to another Dedicated HSM "
                            f"in subnet {subnet['id']}.")
        return wanted
    for host in list(net.hosts())[3:]:  # Azure keeps the first addresses of a subnet
        if str(host) not in used:
            return str(host)
    raise hsm_error(400, "SubnetIsFull", f"Subnet {subnet['id']} has no free private IP address.")


def _stamp(world, sub, location, given):
    if given:
        if given not in STAMPS:
            raise hsm_error(400, "BadRequest", f"Invalid stampId '{given}'. Valid values are: {', '.join(STAMPS)}.",
                            "InvalidStampId")
        return given
    counts = {s: 0 for s in STAMPS}
    for rec in _hsms_at(world, sub, location):
        counts[rec["props"]["stamp"]] += 1
    return min(STAMPS, key=lambda s: counts[s])


def _hsms_at(world, sub, location):
    return world.find(HSM_TYPE, sub=sub, where=lambda r: r["location"] == location)


def _validate(world, sub, rg, name, body, api_version):
    rid = armutil.resource_id(sub, rg, HSM_TYPE, name)
    if not NAME_RE.match(name):
        raise hsm_error(400, "InvalidResourceName",
                        f"The resource name '{name}' is invalid. It must be 3 to 24 characters long and contain "
                        "only letters, digits and hyphens (^[a-zA-Z0-9-]{3,24}$).")
    for field in ("location", "sku", "properties"):
        if not body.get(field):
            raise _missing(field)
    location = str(body["location"]).replace(" ", "").lower()
    if location not in LOCATIONS:
        raise ArmError(400, "LocationNotAvailableForResourceType",
                       f"The provided location '{body['location']}' is not available for resource type '{HSM_TYPE}'. "
                       f"List of available regions for the resource type is '{','.join(LOCATIONS)}'.")
    sku = (body["sku"] or {}).get("name")
    if sku not in SKUS:
        raise hsm_error(400, "BadRequest", f"The sku '{sku}' is not supported. Supported skus: {', '.join(SKUS)}.",
                        "InvalidSku")
    feature = resources.missing_feature(world, sub)
    if feature:
        raise ArmError(409, "SubscriptionNotRegisteredForFeature",
                       f"Subscription {sub} is not registered for feature {feature} required to carry out the "
                       "requested operation.")
    return {"sku": sku, "location": location,
            "network": _profile(world, body, "networkProfile", api_version, rid, required=True),
            "management": _profile(world, body, "managementNetworkProfile", api_version, rid, required=False),
            "stamp": _stamp(world, sub, location, body["properties"].get("stampId")),
            "zones": body.get("zones") or []}


# lifecycle ---------------------------------------------------------------------
def _enter(world, rec, state, now):
    rec["state"] = state
    rec["sim"]["message"] = MESSAGES.get(state, "")
    rec["until"] = now + world.knob("hsm_step_seconds") if state in STAGES else None
    world.changed()


# The field's wording of each failure: a generic code, the cause in prose only
# (assumed: no real failure was recorded; modelled on other RPs' messages).
FIELD_TEXT = {
    "QuotaExceeded": "Operation could not be completed as it results in exceeding approved Dedicated HSM quota "
                     "({scope}). Delete devices left by failed deployments, or request a quota increase.",
    "InsufficientCapacity": "Allocation failed. There is not sufficient capacity for the requested Dedicated HSM "
                            "({scope}). Please try again later or contact support.",
    "SubnetNotDelegated": "The device could not be attached: subnet '{subnet}' does not carry the delegation "
                          "the service requires.",
    "GatewayNotReady": "Failed to connect the device to the virtual network '{vnet}': a dependent network "
                       "resource was not ready. Retry the operation.",
    "GatewayNotFound": "Failed to connect the device to the virtual network '{vnet}': no route to the device "
                       "could be set up.",
}
GENERIC_CODE = "ProvisioningFailed"


def _fail(world, rec, code, message, **where):
    rec["state"], rec["until"] = "Failed", None
    if world.knob("field_errors"):
        code, message = GENERIC_CODE, FIELD_TEXT.get(code, message).format(**where)
        rec["sim"]["message"] = f"Provisioning of the Dedicated HSM failed. {message}"
    else:
        rec["sim"]["message"] = f"Resource creation failed. {code}: {message}"
    rec["sim"]["error"] = {"code": code, "message": message}
    world.changed()


def _check_quota(world, rec):
    earlier = [r for r in _hsms_at(world, rec["sub"], rec["location"]) if r["seq"] < rec["seq"]]
    region_limit, stamp_limit = world.knob("quota_per_region"), world.knob("quota_per_stamp")
    if len(earlier) >= region_limit:
        return ("QuotaExceeded", f"Subscription '{rec['sub']}' has reached its quota of {region_limit} Dedicated "
                                 f"HSMs in region '{rec['location']}'. Delete HSMs left by failed deployments or "
                                 "request a quota increase through a support ticket.",
                {"scope": f"region '{rec['location']}', usage {len(earlier)}, limit {region_limit}"})
    in_stamp = [r for r in earlier if r["props"]["stamp"] == rec["props"]["stamp"]]
    if len(in_stamp) >= stamp_limit:
        return ("QuotaExceeded", f"Subscription '{rec['sub']}' has reached its quota of {stamp_limit} Dedicated "
                                 f"HSMs in stamp '{rec['props']['stamp']}' of region '{rec['location']}'. Delete "
                                 "HSMs left by failed deployments or request a quota increase.",
                {"scope": f"stamp '{rec['props']['stamp']}' in region '{rec['location']}', usage {len(in_stamp)}, "
                          f"limit {stamp_limit}"})
    return None


def _check_capacity(world, rec):
    capacity = world.knob("capacity_per_stamp")
    taken = world.knob("others_per_stamp") + len(world.find(HSM_TYPE, where=lambda r: (
        r["sim"].get("allocated") and r["location"] == rec["location"]
        and r["props"]["stamp"] == rec["props"]["stamp"])))
    if taken >= capacity:
        return ("InsufficientCapacity", f"Stamp '{rec['props']['stamp']}' in region '{rec['location']}' has no free "
                                        f"Dedicated HSM device ({taken} of {capacity} in use). Retry later, choose "
                                        "another stamp, or contact support about capacity.",
                {"scope": f"stamp '{rec['props']['stamp']}' in region '{rec['location']}'"})
    rec["sim"]["allocated"] = True
    return None


def _check_network(world, rec):
    subnet = world.get(rec["props"]["network"]["subnet_id"])
    if subnet is None:
        return ("SubnetNotFound", f"The subnet '{rec['props']['network']['subnet_id']}' no longer exists.")
    if world.knob("subnet_undelegated") or not network.is_delegated_to_hsm(subnet):
        return ("SubnetNotDelegated", f"The subnet '{subnet['id']}' is not delegated to '{network.HSM_SERVICE}'. "
                                      "Add the delegation to the subnet, then delete this HSM and redeploy.",
                {"subnet": subnet["id"]})
    vnet_id = subnet["id"].rsplit("/subnets/", 1)[0]
    where = {"vnet": vnet_id.rsplit("/", 1)[1]}
    gateway = network.gateway_for_vnet(world, vnet_id)
    if gateway is None:
        return ("GatewayNotFound", f"The virtual network '{vnet_id}' has no ExpressRoute gateway; Dedicated HSM "
                                   "connects through one.", where)
    state = "Updating" if world.knob("gateway_race") else gateway["state"]
    if not rec["sim"].get("gateway_ready_at_put", True):
        state = rec["sim"]["gateway_state_at_put"]
    if state != "Succeeded":
        return ("GatewayNotReady", f"The ExpressRoute gateway '{gateway['id']}' was in provisioning state "
                                   f"'{state}', not 'Succeeded', when the device was connected. Wait until the "
                                   "gateway is Succeeded, then rerun the deployment.", where)
    if rec["sim"].get("hidden_race"):
        return ("GatewayNotReady", f"The ExpressRoute gateway '{gateway['id']}' read Succeeded but its connection "
                                   "was not ready when the device was connected. Rerun the deployment.", where)
    _create_nics(world, rec)
    return None


EXIT_CHECKS = {"CheckingQuota": _check_quota, "Allocating": _check_capacity, "Connecting": _check_network,
               "Provisioning": lambda world, rec: None}


def _nic_names(rec):
    if rec["props"]["sku"].startswith("payShield"):
        return [f"{rec['name']}_HSMHost1Nic", f"{rec['name']}_HSMMgmtNic"]
    return [f"{rec['name']}_HSMnic"]


def _create_nics(world, rec):
    profiles = [p for p in (rec["props"]["network"], rec["props"]["management"]) if p]
    for name, prof in zip(_nic_names(rec), profiles):
        if world.get(armutil.resource_id(rec["sub"], rec["rg"], network.NIC, name)) is None:
            network.create_hsm_nic(world, rec, name, prof["subnet_id"], prof["ip"])
        prof["nic"] = name


def _remove(world, rec):
    for name in _nic_names(rec):
        world.remove(armutil.resource_id(rec["sub"], rec["rg"], network.NIC, name))
    world.remove(rec["id"])


def tick_hsms(world, now):
    for rec in world.find(HSM_TYPE, where=lambda r: r["until"] is not None):
        while rec["state"] in STAGES and now >= rec["until"]:
            failure = EXIT_CHECKS[rec["state"]](world, rec)
            if failure:
                _fail(world, rec, failure[0], failure[1], **(failure[2] if len(failure) > 2 else {}))
                break
            following = STAGES.index(rec["state"]) + 1
            boundary = rec["until"]
            _enter(world, rec, STAGES[following] if following < len(STAGES) else "Succeeded", boundary)
            if rec["state"] == "Connecting":
                _create_nics(world, rec)  # the NIC id shows while Connecting, before the HSM is usable
            if rec["state"] == "Succeeded":
                rec["sim"]["ever_succeeded"] = True
                rec["sim"].setdefault("zeroized", world.knob("new_hsm_zeroized"))
        if rec["state"] == "Deleting" and now >= rec["until"]:
            _remove(world, rec)


# writes (shared by PUT and deployments) ---------------------------------------
def _gateway_snapshot(world, rec):
    """Whether the VNet's gateway was Succeeded when the HSM was asked for (the race)."""
    subnet = world.get(rec["props"]["network"]["subnet_id"])
    gateway = network.gateway_for_vnet(world, subnet["id"].rsplit("/subnets/", 1)[0]) if subnet else None
    state = gateway["state"] if gateway else "Missing"
    if world.knob("gateway_race"):
        state = "Updating"
    rec["sim"]["gateway_ready_at_put"] = state == "Succeeded" or gateway is None
    rec["sim"]["gateway_state_at_put"] = state
    # The field's race: the gateway reads Succeeded, the device still cannot connect.
    if gateway is not None and state == "Succeeded" and knobs.take_count(world, "gateway_race_next"):
        rec["sim"]["hidden_race"] = True


def write_hsm(world, sub, rg, name, body, api_version, principal):
    """Create, re-run (a Failed HSM) or update tags; returns (created, record)."""
    rid = armutil.resource_id(sub, rg, HSM_TYPE, name)
    existing = world.get(rid)
    if existing and existing["state"] == "Deleting":
        raise hsm_error(409, "Conflict", f"The Dedicated HSM '{name}' is being deleted.")
    if existing and existing["state"] != "Failed":
        _refuse_changed_spec(world, existing, body, api_version)
        existing["tags"] = body.get("tags") or existing["tags"]
        _touch(world, existing, principal)
        return False, existing
    props = _validate(world, sub, rg, name, body, api_version)
    rec = existing or world.new_record(HSM_TYPE, sub, rg, [name], location=props["location"])
    rec["props"], rec["location"], rec["tags"] = props, props["location"], body.get("tags") or {}
    rec["sim"] = {"created_by": (existing or {}).get("sim", {}).get("created_by") or principal}
    _touch(world, rec, principal)
    _gateway_snapshot(world, rec)
    _enter(world, rec, "CheckingQuota", world.now())
    return existing is None, rec


def _refuse_changed_spec(world, rec, body, api_version):
    """A re-PUT may change tags only: every other property is fixed once the device exists
    (assumed; Terraform marks them all ForceNew). Fields left out are not compared."""
    props = body.get("properties") or {}
    profile = props.get("networkProfile") or {}
    nic = (profile.get("networkInterfaces") or [{}])[0]
    wanted = {"sku.name": ((body.get("sku") or {}).get("name"), rec["props"]["sku"]),
              "location": (str(body.get("location") or "").replace(" ", "").lower() or None, rec["location"]),
              "properties.stampId": (props.get("stampId"), rec["props"]["stamp"]),
              "properties.networkProfile.subnet": ((profile.get("subnet") or {}).get(id_field(api_version)),
                                                   rec["props"]["network"]["subnet_id"]),
              "properties.networkProfile.networkInterfaces[0].privateIpAddress":
                  (nic.get("privateIpAddress"), rec["props"]["network"]["ip"])}
    for field, (asked, actual) in wanted.items():
        if asked is not None and str(asked).lower() != str(actual).lower():
            raise hsm_error(400, "BadRequest",
                            f"The Dedicated HSM '{rec['name']}' already exists with {field} '{actual}'; it cannot "
                            f"be changed to '{asked}'. Only tags can be updated: delete the HSM and create it "
                            "again to change anything else.", "PropertyChangeNotAllowed")


def _touch(world, rec, principal):
    rec["modified"] = world.now()
    rec["sim"]["modified_by"] = principal
    world.changed()


def seed_hsm(world, sub, rg, name, subnet_id, principal, ip=None, stamp=None, zeroized=False, sku=SKUS[0]):
    """An HSM that is already Succeeded (for seeded estates): validation applies, the wait does not."""
    body = {"location": world.get(subnet_id)["location"], "sku": {"name": sku},
            "properties": {"stampId": stamp, "networkProfile": {"subnet": {"id": subnet_id},
                                                                "networkInterfaces": [{"privateIpAddress": ip}]}}}
    _, rec = write_hsm(world, sub, rg, name, body, "2021-11-30", principal)
    rec["sim"]["allocated"] = rec["sim"]["ever_succeeded"] = True
    rec["sim"]["zeroized"] = zeroized
    _create_nics(world, rec)
    _enter(world, rec, "Succeeded", world.now())
    return rec


# rendering -----------------------------------------------------------------------
def _profile_doc(world, rec, prof, field):
    nic = {"privateIpAddress": prof["ip"]}
    if prof.get("nic"):
        nic = {field: armutil.resource_id(rec["sub"], rec["rg"], network.NIC, prof["nic"]), **nic}
    return {"subnet": {field: prof["subnet_id"]}, "networkInterfaces": [nic]}


def _system_data(rec):
    created, modified = rec["sim"].get("created_by") or {}, rec["sim"].get("modified_by") or {}
    return {"createdBy": created.get("name"), "createdByType": created.get("type"),
            "createdAt": armutil.iso(rec["created"]), "lastModifiedBy": modified.get("name"),
            "lastModifiedByType": modified.get("type"), "lastModifiedAt": armutil.iso(rec["modified"])}


def render(world, rec, api_version):
    field = id_field(api_version)
    doc = {"sku": {"name": rec["props"]["sku"]}, "id": rec["id"], "name": rec["name"], "type": HSM_TYPE,
           "location": rec["location"]}
    if rec["tags"]:
        doc["tags"] = rec["tags"]
    if api_version != PREVIEW_2018:
        doc["systemData"] = _system_data(rec)
    props = {"networkProfile": _profile_doc(world, rec, rec["props"]["network"], field)}
    if rec["props"]["management"]:
        props["managementNetworkProfile"] = _profile_doc(world, rec, rec["props"]["management"], field)
    props.update({"provisioningState": rec["state"], "statusMessage": rec["sim"].get("message", ""),
                  "stampId": rec["props"]["stamp"]})
    doc["properties"] = props
    return doc


# HTTP handlers ---------------------------------------------------------------------
def _existing(ctx, sub, rg, name):
    rec = ctx.world.get(armutil.resource_id(sub, rg, HSM_TYPE, name))
    if rec is None:
        raise resource_not_found(HSM_TYPE, [name], rg, style="hsm")
    return rec


def get(ctx, sub, rg, name):
    return Response.json(200, render(ctx.world, _existing(ctx, sub, rg, name), ctx.api_version))


def put(ctx, sub, rg, name):
    _, rec = write_hsm(ctx.world, sub, rg, name, ctx.body(), ctx.api_version, ctx.principal)
    return Response.json(200, render(ctx.world, rec, ctx.api_version))  # 200 even when created


def patch(ctx, sub, rg, name):
    rec = _existing(ctx, sub, rg, name)
    body = ctx.body()
    if "tags" in body:
        rec["tags"] = body["tags"] or {}
    _touch(ctx.world, rec, ctx.principal)
    return Response.json(200, render(ctx.world, rec, ctx.api_version))


def delete(ctx, sub, rg, name):
    rec = ctx.world.get(armutil.resource_id(sub, rg, HSM_TYPE, name))
    if rec is None:
        return Response.empty(204)
    if rec["state"] != "Deleting":
        # A device that never reached Succeeded was never handed over: nothing to zeroize
        # (assumed; the guide tells to delete failed deployments' resources before redeploying).
        if rec["sim"].get("ever_succeeded") and not is_zeroized(ctx.world, rec):
            raise hsm_error(409, "HsmNotZeroized",
                            f"The Dedicated HSM '{name}' cannot be deleted because the device is not zeroized. "
                            "Zeroize the HSM (all key material removed) and retry the delete.",
                            "DeviceNotZeroized", "The device still holds an initialized HSM.")
        rec["sim"]["delete_token"] = armutil.b64_token(f"{armutil.new_guid()}/{rg.upper()}/{name.upper()}")
        _enter(ctx.world, rec, "Deleting", ctx.world.now())
        rec["until"] = ctx.world.now() + ctx.world.knob("delete_seconds")
        ctx.world.add_operation(rec["sim"]["delete_token"], kind="hsm_delete", rid=rec["id"], done_at=rec["until"])
    return Response.empty(202, [("Location", _delete_location(ctx, rec["sub"], rec["location"],
                                                              rec["sim"]["delete_token"]))])


def _delete_location(ctx, sub, location, token):
    return ctx.url(f"/subscriptions/{sub}/providers/Microsoft.HardwareSecurityModules/locations/{location}"
                   f"/operationResults/{token}")


def delete_result(ctx, sub, loc, token):
    op = ctx.world.operation(token)
    if op is None or op["kind"] != "hsm_delete":
        raise hsm_error(404, "OperationNotFound", f"The operation '{token}' was not found.")
    if ctx.world.now() < op["done_at"]:
        return Response.empty(202, [("Location", _delete_location(ctx, sub, loc, token))])
    return Response.empty(204 if ctx.api_version == PREVIEW_2018 else 200)


def list_group(ctx, sub, rg):
    return ctx.page([render(ctx.world, r, ctx.api_version) for r in ctx.world.find(HSM_TYPE, sub=sub, rg=rg)])


def list_subscription(ctx, sub):
    return ctx.page([render(ctx.world, r, ctx.api_version) for r in ctx.world.find(HSM_TYPE, sub=sub)])


def outbound_endpoints(ctx, sub, rg, name):
    _existing(ctx, sub, rg, name)
    details = [{"ipAddress": "", "port": 443, "protocol": "TCP", "description": "HSM management and monitoring"}]
    return Response.json(200, {"value": [
        {"category": "Azure Resource Manager", "endpoints": [{"domainName": "management.azure.com",
                                                               "endpointDetails": details}]},
        {"category": "Azure Active Directory", "endpoints": [{"domainName": "login.microsoftonline.com",
                                                               "endpointDetails": details}]}]})


def operations(ctx):
    ops = [("dedicatedHSMs/read", "Read Dedicated HSM"), ("dedicatedHSMs/write", "Create or update Dedicated HSM"),
           ("dedicatedHSMs/delete", "Delete Dedicated HSM")]
    return Response.json(200, {"value": [
        {"name": f"Microsoft.HardwareSecurityModules/{op}", "isDataAction": False, "origin": "user",
         "display": {"provider": "Microsoft Hardware Security Modules", "resource": "Dedicated HSM",
                     "operation": text, "description": text}} for op, text in ops]})


def register(app):
    base = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.HardwareSecurityModules/dedicatedHSMs"
    app.route(base + "/{name}", HSM, "dedicatedHSMs", GET=get, PUT=put, PATCH=patch, DELETE=delete)
    app.route(base, HSM, "dedicatedHSMs", GET=list_group)
    app.route(base + "/{name}/outboundNetworkDependenciesEndpoints", HSM, "dedicatedHSMs", GET=outbound_endpoints)
    app.route("/subscriptions/{sub}/providers/Microsoft.HardwareSecurityModules/dedicatedHSMs", HSM,
              "dedicatedHSMs", GET=list_subscription)
    app.route("/subscriptions/{sub}/providers/Microsoft.HardwareSecurityModules/locations/{loc}/operationResults/"
              "{token}", HSM, "locations/operationResults", GET=delete_result)
    app.route("/providers/Microsoft.HardwareSecurityModules/operations", HSM, "operations", GET=operations)
    app.world.tickers.append(tick_hsms)
