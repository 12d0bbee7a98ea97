"""Microsoft.Resources: subscriptions, resource groups, preview features, generic listing.

Deleting a resource group removes what is in it, except dedicatedHSMs (and the
NICs that follow them): those stay, still listed at subscription scope and
still billed - the orphaned state the troubleshooting guide warns about.
"""
import re

import armutil
from arm import FEATURES, RESOURCES, SUBSCRIPTIONS
from armerrors import ArmError, group_not_found
from httpserver import Response

HSM_TYPE = "Microsoft.HardwareSecurityModules/dedicatedHSMs"
NIC_TYPE = "Microsoft.Network/networkInterfaces"
REQUIRED_FEATURES = ("Microsoft.HardwareSecurityModules/AzureDedicatedHSM",
                     "Microsoft.Network/AllowBaremetalServers")
GROUP_NAME = re.compile(r"^[-\w._()]{1,90}$")


# allowlisting ---------------------------------------------------------------
def feature_state(world, sub, feature):
    stored = world.s["subscriptions"][sub.lower()]["features"].get(feature, "NotRegistered")
    if world.knob("not_allowlisted") and stored == "Registered":
        return "NotRegistered"
    return stored


def missing_feature(world, sub):
    """The first required feature not Registered, or None when allowlisted."""
    for feature in REQUIRED_FEATURES:
        if feature_state(world, sub, feature) != "Registered":
            return feature
    return None


def is_orphaned(world, rec):
    return world.group(rec["sub"], rec["rg"]) is None


# rendering ------------------------------------------------------------------
def render_group(grp):
    doc = {"id": armutil.rg_id(grp["sub"], grp["name"]), "name": grp["name"],
           "type": "Microsoft.Resources/resourceGroups", "location": grp["location"]}
    if grp["tags"]:
        doc["tags"] = grp["tags"]
    doc["properties"] = {"provisioningState": grp["state"]}
    return doc


def render_subscription(world, sub):
    info = world.s["subscriptions"][sub.lower()]
    return {"id": f"/subscriptions/{info['id']}", "authorizationSource": "RoleBased", "managedByTenants": [],
            "subscriptionId": info["id"], "tenantId": world.s["tenant"], "displayName": info["displayName"],
            "state": "Enabled", "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01",
                                                         "quotaId": "EnterpriseAgreement_2014-09-01",
                                                         "spendingLimit": "Off"}}


def render_feature(world, sub, namespace, feature):
    name = f"{namespace}/{feature}"
    return {"properties": {"state": feature_state(world, sub, name)},
            "id": f"/subscriptions/{sub}/providers/Microsoft.Features/providers/{namespace}/features/{feature}",
            "type": "Microsoft.Features/providers/features", "name": name}


def render_generic(rec):
    doc = {"id": rec["id"], "name": rec["name"], "type": rec["type"], "location": rec["location"]}
    if rec["tags"]:
        doc["tags"] = rec["tags"]
    return doc


# handlers -------------------------------------------------------------------
def list_subscriptions(ctx):
    return ctx.page([render_subscription(ctx.world, s) for s in ctx.world.s["subscriptions"]])


def get_subscription(ctx, sub):
    return Response.json(200, render_subscription(ctx.world, sub))


def list_groups(ctx, sub):
    groups = [g for g in ctx.world.s["groups"].values() if g["sub"].lower() == sub.lower()]
    return ctx.page([render_group(g) for g in sorted(groups, key=lambda g: g["created"])])


def _existing_group(ctx, sub, rg):
    grp = ctx.world.group(sub, rg)
    if grp is None:
        raise group_not_found(rg)
    return grp


def get_group(ctx, sub, rg):
    return Response.json(200, render_group(_existing_group(ctx, sub, rg)))


def head_group(ctx, sub, rg):
    return Response.empty(204 if ctx.world.group(sub, rg) else 404)


def put_group(ctx, sub, rg):
    body = ctx.body()
    location = body.get("location")
    if not location:
        raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
    if not GROUP_NAME.match(rg) or rg.endswith("."):
        raise ArmError(400, "InvalidResourceGroupName",
                       f"The resource group name '{rg}' is invalid. It can include alphanumeric, underscore, "
                       "parentheses, hyphen, period (except at end), and Unicode characters.")
    existing = ctx.world.group(sub, rg)
    if existing and existing["state"] == "Deleting":
        raise ArmError(409, "ResourceGroupBeingDeleted",
                       f"The resource group '{existing['name']}' is in deprovisioning state and cannot "
                       "perform this operation.")
    if existing and existing["location"].lower() != location.replace(" ", "").lower():
        raise ArmError(409, "InvalidResourceGroupLocation",
                       f"Invalid resource group location '{location}'. The Resource group already exists "
                       f"in location '{existing['location']}'.")
    grp = create_group(ctx.world, sub, existing["name"] if existing else rg, location, body.get("tags"))
    return Response.json(200 if existing else 201, render_group(grp))


def create_group(world, sub, name, location, tags=None):
    existing = world.group(sub, name)
    grp = {"sub": sub, "name": name, "location": location.replace(" ", "").lower(), "tags": tags or {},
           "state": "Succeeded", "created": existing["created"] if existing else world.now()}
    world.put_group(grp)
    return grp


def patch_group(ctx, sub, rg):
    grp = _existing_group(ctx, sub, rg)
    body = ctx.body()
    if "tags" in body:
        grp["tags"] = body["tags"] or {}
        ctx.world.changed()
    return Response.json(200, render_group(grp))


def delete_group(ctx, sub, rg):
    grp = _existing_group(ctx, sub, rg)
    if grp["state"] != "Deleting":
        grp["state"] = "Deleting"
        grp["done_at"] = ctx.world.now() + ctx.world.knob("delete_seconds")
        ctx.world.changed()
    job = f"RESOURCEGROUPDELETIONJOB-{grp['name'].upper()}-{grp['location'].upper()}"
    token = armutil.b64_token({"jobId": job, "jobLocation": grp["location"]})
    ctx.world.add_operation(token, kind="sub_result", sub=sub, done_at=grp["done_at"])
    return accepted(ctx, sub, token)


def accepted(ctx, sub, token):
    """202 + Location on /subscriptions/{sub}/operationresults/{token} (+ Retry-After), as ARM does."""
    location = ctx.url(f"/subscriptions/{sub}/operationresults/{token}")
    return Response.empty(202, [("Location", location), ("Retry-After", str(ctx.world.knob("retry_after")))])


def operation_result(ctx, sub, token):
    op = ctx.world.operation(token)
    if op is None or op["kind"] != "sub_result":
        raise ArmError(404, "NotFound", f"The operation '{token}' could not be found.")
    if ctx.world.now() < op["done_at"]:
        return accepted(ctx, sub, token)
    return Response.empty(200)


def get_feature(ctx, sub, namespace, feature):
    return Response.json(200, render_feature(ctx.world, sub, namespace, feature))


def register_feature(ctx, sub, namespace, feature):
    name = f"{namespace}/{feature}"
    approved = ctx.world.s.get("approved", True) and not ctx.world.knob("not_allowlisted")
    features = ctx.world.s["subscriptions"][sub.lower()]["features"]
    # An allowlist-gated feature stays Pending until Microsoft approves the subscription.
    features[name] = "Registered" if approved or name not in REQUIRED_FEATURES else "Pending"
    ctx.world.changed()
    return Response.json(200, render_feature(ctx.world, sub, namespace, feature))


def _top_level(rec):
    return rec["type"].count("/") == 1


def list_resources(ctx, sub, rg=None):
    return ctx.page([render_generic(r) for r in ctx.world.find(sub=sub, rg=rg, where=_top_level)])


# ticking --------------------------------------------------------------------
def tick_groups(world, now):
    for grp in list(world.s["groups"].values()):
        if grp["state"] == "Deleting" and now >= grp["done_at"]:
            _finish_group_delete(world, grp, now)


def _finish_group_delete(world, grp, now):
    kept = {HSM_TYPE.lower(), NIC_TYPE.lower()}
    for rec in world.find(sub=grp["sub"], rg=grp["name"]):
        if rec["type"].lower() in kept:
            rec["sim"].setdefault("orphaned_at", now)
            world.changed()
        else:
            world.remove(rec["id"])
    for dep in list(world.s.get("deployments", {}).values()):
        if dep["sub"].lower() == grp["sub"].lower() and dep["rg"].lower() == grp["name"].lower():
            world.s["deployments"].pop(armutil.key(dep["id"]), None)
    world.remove_group(grp["sub"], grp["name"])


def register(app):
    P = "/subscriptions/{sub}"
    G = P + "/resourcegroups/{rg}"
    app.route("/subscriptions", SUBSCRIPTIONS, "subscriptions", GET=list_subscriptions)
    app.route(P, SUBSCRIPTIONS, "subscriptions", GET=get_subscription)
    app.route(P + "/resourcegroups", RESOURCES, "resourceGroups", GET=list_groups)
    app.route(G, RESOURCES, "resourceGroups", needs_group=False, GET=get_group, HEAD=head_group,
              PUT=put_group, PATCH=patch_group, DELETE=delete_group)
    app.route(P + "/operationresults/{token}", RESOURCES, "operationresults", GET=operation_result)
    app.route(P + "/resources", RESOURCES, "resources", GET=list_resources)
    app.route(G + "/resources", RESOURCES, "resources", GET=list_resources)
    F = P + "/providers/Microsoft.Features/providers/{namespace}/features/{feature}"
    app.route(F, FEATURES, "features", GET=get_feature)
    app.route(F + "/register", FEATURES, "features", POST=register_feature)
    app.world.tickers.append(tick_groups)
