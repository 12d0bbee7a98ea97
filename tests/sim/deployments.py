"""Microsoft.Resources/deployments: template deployments at resource-group scope.

PUT validates the template (InvalidTemplate, 400) and answers 201/200 with
provisioningState "Accepted" and Azure-AsyncOperation .../operationStatuses/{id}.
The tick then starts every resource whose dependsOn are Succeeded - resources
without a dependency start together, which is how a template that forgets
dependsOn on the ExpressRoute gateway reproduces the race. A resource that
fails stops its dependants and fails the deployment with DeploymentFailed /
ResourceDeploymentFailure; deployment operations carry the statusMessage.
"""
import hashlib
import json
import random
import re

import armutil
import hsm
import network
import resources
import template
from arm import HSM, NETWORK, RESOURCES
from armerrors import ArmError, rp_error
from httpserver import Response

DEPLOYMENT_TYPE = "Microsoft.Resources/deployments"
TERMINAL = ("Succeeded", "Failed", "Canceled")
STATUS_NAMES = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 429: "TooManyRequests"}
TERMINAL_FAILED = ("The resource write operation failed to complete successfully, because it reached terminal "
                   "provisioning state 'Failed'.")
NAME_RE = re.compile(r"^[-\w._()]{1,64}$")


# what a template may create -------------------------------------------------------
def _create(world, res, sub, rg, principal):
    """Start one template resource through the same code as its PUT; returns its record."""
    if res["type"] in network.TYPES:
        NETWORK.check(res["api_version"], res["type"].split("/", 1)[1], world.s["location"])
        return network.write(world, res["type"], sub, rg, res["names"], res["body"])[1]
    HSM.check(res["api_version"], "dedicatedHSMs", world.s["location"])
    return hsm.write_hsm(world, sub, rg, res["names"][0], res["body"], res["api_version"], principal)[1]


def _supported(rtype):
    return rtype in network.TYPES or rtype.lower() == hsm.HSM_TYPE.lower()


# state helpers ------------------------------------------------------------------
def _store(world):
    return world.s.setdefault("deployments", {})


def _get(world, sub, rg, name):
    return _store(world).get(armutil.key(armutil.resource_id(sub, rg, DEPLOYMENT_TYPE, name)))


def _existing(world, sub, rg, name):
    dep = _get(world, sub, rg, name)
    if dep is None:
        raise rp_error(404, "DeploymentNotFound", f"Deployment '{name}' could not be found.")
    return dep


def _operation_id():
    return "".join(random.choice("0123456789ABCDEF") for _ in range(16))


def _redacted_parameters(tmpl, values):
    declared = tmpl.get("parameters") or {}
    out = {}
    for name, value in values.items():
        ptype = str(declared.get(name, {}).get("type", "String"))
        secure = ptype.lower().startswith("secure")
        out[name] = {"type": ptype[:1].upper() + ptype[1:]} if secure else \
            {"type": ptype[:1].upper() + ptype[1:], "value": value}
    return out


# tick -------------------------------------------------------------------------------
def _start_ready(world, dep, now):
    states = {op["rid"]: op["state"] for op in dep["ops"]}
    for res in dep["resources"]:
        if res["id"] in states or any(states.get(d) != "Succeeded" for d in res["depends_on"]):
            continue
        op = {"operation_id": _operation_id(), "rid": res["id"], "type": res["type"], "name": res["name"],
              "state": "Running", "started": now, "ended": None, "status_code": None, "status_message": None,
              "tracking_id": armutil.new_guid()}
        dep["ops"].append(op)
        states[res["id"]] = "Running"
        try:
            _create(world, res, dep["sub"], dep["rg"], dep["principal"])
        except ArmError as e:
            _finish_op(op, now, "Failed", STATUS_NAMES.get(e.status, str(e.status)),
                       {"status": "Failed", "error": {**e.body()["error"], "target": res["id"]}})


def _finish_op(op, now, state, status_code, status_message=None):
    op.update(state=state, ended=now, status_code=status_code, status_message=status_message)


def _follow_running(world, dep, now):
    for op in dep["ops"]:
        if op["state"] != "Running":
            continue
        rec = world.get(op["rid"])
        if rec is not None and rec["state"] == "Succeeded":
            _finish_op(op, now, "Succeeded", "OK")
        elif rec is None or rec["state"] == "Failed":
            error = (rec or {}).get("sim", {}).get("error") or {"code": "ResourceNotFound",
                                                                "message": f"{op['rid']} disappeared."}
            _finish_op(op, now, "Failed", "Conflict",
                       {"status": "Failed", "error": {"code": "ResourceDeploymentFailure", "target": op["rid"],
                                                      "message": TERMINAL_FAILED, "details": [error]}})


def _conclude(world, dep, now):
    if any(op["state"] == "Running" for op in dep["ops"]):
        return
    started = {op["rid"] for op in dep["ops"]}
    failed = [op for op in dep["ops"] if op["state"] == "Failed"]
    pending = [r for r in dep["resources"] if r["id"] not in started]
    if pending and not failed:
        return  # waiting on nothing cannot happen, but do not conclude early
    dep["ended"] = now
    if failed:
        dep["state"] = "Failed"
        dep["error"] = {"code": "DeploymentFailed", "target": dep["id"],
                        "message": "At least one resource deployment operation failed. Please list deployment "
                                   "operations for details. Please see https://aka.ms/arm-deployment-operations "
                                   "for usage details.",
                        "details": [_failure_detail(op) for op in failed]}
        return
    dep["state"] = "Succeeded"
    scope = _scope(world, dep)
    try:
        dep["outputs"] = template.outputs(dep["template"], dep["param_values"], scope,
                                          lambda rid: _reference(world, rid))
    except template.TemplateError as e:
        dep["state"], dep["error"] = "Failed", {"code": "DeploymentOutputEvaluationFailed", "message": str(e)}


def _failure_detail(op):
    error = op["status_message"]["error"]
    return {"code": error["code"], "target": op["rid"], "message": error["message"]}


def _reference(world, rid):
    rec = world.get(rid)
    if rec is None:
        raise template.TemplateError(f"The Resource '{rid}' was not found.")
    if rec["type"] == hsm.HSM_TYPE:
        return hsm.render(world, rec, "2021-11-30")["properties"]
    return network.RENDERERS[rec["type"]](world, rec)["properties"]


def tick_deployments(world, now):
    for dep in list(_store(world).values()):
        if dep["state"] in TERMINAL:
            continue
        dep["state"] = "Running"
        _follow_running(world, dep, now)
        _start_ready(world, dep, now)
        _conclude(world, dep, now)
        world.changed()


# rendering ------------------------------------------------------------------------
def _scope(world, dep):
    grp = world.group(dep["sub"], dep["rg"])
    return {"sub": dep["sub"], "rg": dep["rg"], "location": grp["location"] if grp else world.s["location"],
            "tenant": world.s["tenant"],
            "displayName": world.s["subscriptions"][dep["sub"].lower()]["displayName"]}


def _target(res_or_op):
    return {"id": res_or_op.get("id") or res_or_op["rid"], "resourceType": res_or_op["type"],
            "resourceName": res_or_op["name"]}


def render(world, dep):
    end = dep["ended"] or world.now()
    props = {"templateHash": dep["template_hash"], "parameters": dep["parameters"], "mode": dep["mode"],
             "provisioningState": dep["state"], "timestamp": armutil.iso(dep.get("ended") or dep["created"]),
             "duration": armutil.iso_duration(end - dep["created"]), "correlationId": dep["correlation_id"],
             "providers": _providers(dep),
             "dependencies": [{"dependsOn": [_target(_by_id(dep, d)) for d in r["depends_on"]], **_target(r)}
                              for r in dep["resources"] if r["depends_on"]]}
    if dep["state"] == "Succeeded":
        props["outputs"] = dep.get("outputs") or {}
        props["outputResources"] = [{"id": r["id"]} for r in dep["resources"]]
    if dep.get("error"):
        props["error"] = dep["error"]
    return {"id": dep["id"], "name": dep["name"], "type": DEPLOYMENT_TYPE, "properties": props}


def _by_id(dep, rid):
    return next(r for r in dep["resources"] if r["id"] == rid)


def _providers(dep):
    namespaces = {}
    for r in dep["resources"]:
        ns, rtype = r["type"].split("/", 1)
        namespaces.setdefault(ns, set()).add(rtype)
    location = dep["location"]
    return [{"namespace": ns, "resourceTypes": [{"resourceType": t, "locations": [location]} for t in sorted(types)]}
            for ns, types in namespaces.items()]


def render_operation(dep, op, now):
    props = {"provisioningOperation": "Create", "provisioningState": op["state"],
             "timestamp": armutil.iso(op["ended"] or op["started"]),
             "duration": armutil.iso_duration((op["ended"] or now) - op["started"]),
             "trackingId": op["tracking_id"]}
    if op["status_code"]:
        props["statusCode"] = op["status_code"]
    if op["status_message"]:
        props["statusMessage"] = op["status_message"]
    props["targetResource"] = _target(op)
    return {"id": f"{dep['id']}/operations/{op['operation_id']}", "operationId": op["operation_id"],
            "properties": props}


# HTTP handlers --------------------------------------------------------------------
def _invalid_template(message):
    return rp_error(400, "InvalidTemplate", message)


def put(ctx, sub, rg, name):
    if not NAME_RE.match(name):
        raise rp_error(400, "InvalidDeploymentName", f"The deployment name '{name}' is invalid.")
    body = ctx.body()
    props = body.get("properties") or {}
    if "templateLink" in props and "template" not in props:
        raise _invalid_template("Deployment template validation failed: 'templateLink is not supported by the "
                                "simulator; send the template inline.'")
    tmpl = props.get("template")
    if not isinstance(tmpl, dict):
        raise _invalid_template("Deployment template validation failed: 'The template is missing.'")
    previous = _get(ctx.world, sub, rg, name)
    if previous and previous["state"] not in TERMINAL:
        raise rp_error(409, "DeploymentActive",
                       f"Unable to edit or replace deployment '{name}': previous deployment from "
                       f"'{armutil.iso(previous['created'])}' is still active. Please see "
                       "https://aka.ms/arm-deploy-resources for usage details.")
    grp = ctx.world.group(sub, rg)
    scope = {"sub": sub, "rg": grp["name"], "location": grp["location"], "tenant": ctx.world.s["tenant"]}
    try:
        values, planned = template.prepare(tmpl, props.get("parameters") or {}, scope)
    except template.TemplateError as e:
        raise _invalid_template(str(e))
    unsupported = [r["type"] for r in planned if not _supported(r["type"])]
    if unsupported:
        raise _invalid_template(f"Deployment template validation failed: 'The resource type '{unsupported[0]}' is "
                                "not supported by the simulated estate.'")
    dep = _new_deployment(ctx, sub, grp, name, tmpl, props, values, planned)
    status_url = ctx.url(f"{dep['id']}/operationStatuses/{dep['status_id']}")
    return Response.json(200 if previous else 201, render(ctx.world, dep), [("Azure-AsyncOperation", status_url)])


def _template_hash(tmpl):
    digest = hashlib.sha256(json.dumps(tmpl, sort_keys=True).encode()).hexdigest()
    return str(int(digest[:16], 16) % 10 ** 19)


def _new_deployment(ctx, sub, grp, name, tmpl, props, values, planned):
    rid = armutil.resource_id(sub, grp["name"], DEPLOYMENT_TYPE, name)
    now = ctx.world.now()
    dep = {"id": rid, "name": name, "sub": sub, "rg": grp["name"], "location": grp["location"],
           "template": tmpl, "template_hash": _template_hash(tmpl), "param_values": values,
           "parameters": _redacted_parameters(tmpl, values), "mode": props.get("mode", "Incremental"),
           "state": "Accepted", "created": now, "ended": None, "resources": planned, "ops": [],
           "correlation_id": ctx.req.header("x-ms-correlation-request-id") or armutil.new_guid(),
           "status_id": "0858" + "".join(random.choice("0123456789") for _ in range(16)),
           "principal": ctx.principal}
    _store(ctx.world)[armutil.key(rid)] = dep
    ctx.world.changed()
    return dep


def get(ctx, sub, rg, name):
    return Response.json(200, render(ctx.world, _existing(ctx.world, sub, rg, name)))


def list_group(ctx, sub, rg):
    deps = [d for d in _store(ctx.world).values()
            if d["sub"].lower() == sub.lower() and d["rg"].lower() == rg.lower()]
    return ctx.page([render(ctx.world, d) for d in sorted(deps, key=lambda d: d["created"])])


def delete(ctx, sub, rg, name):
    dep = _get(ctx.world, sub, rg, name)
    if dep is None:
        return Response.empty(204)
    if dep["state"] not in TERMINAL:
        raise rp_error(409, "DeploymentActive", f"The deployment '{name}' is still running; cancel it first.")
    _store(ctx.world).pop(armutil.key(dep["id"]))
    token = armutil.b64_token({"jobId": f"DEPLOYMENTDELETIONJOB-{name.upper()}", "jobLocation": dep["location"]})
    ctx.world.add_operation(token, kind="sub_result", sub=sub, done_at=ctx.world.now())
    return resources.accepted(ctx, sub, token)


def cancel(ctx, sub, rg, name):
    dep = _existing(ctx.world, sub, rg, name)
    if dep["state"] in TERMINAL:
        raise rp_error(409, "DeploymentCannotBeCancelled",
                       f"The deployment '{name}' cannot be cancelled because it is in terminal state "
                       f"'{dep['state']}'.")
    dep["state"], dep["ended"] = "Canceled", ctx.world.now()
    ctx.world.changed()
    return Response.empty(204)


def status(ctx, sub, rg, name, status_id):
    dep = _existing(ctx.world, sub, rg, name)
    if status_id != dep["status_id"]:
        raise rp_error(404, "OperationNotFound", f"Operation '{status_id}' was not found.")
    doc = {"status": dep["state"]}
    if dep.get("error"):
        doc["error"] = dep["error"]
    return Response.json(200, doc)


def list_operations(ctx, sub, rg, name):
    dep = _existing(ctx.world, sub, rg, name)
    now = ctx.world.now()
    return ctx.page([render_operation(dep, op, now) for op in reversed(dep["ops"])])


def get_operation(ctx, sub, rg, name, op_id):
    dep = _existing(ctx.world, sub, rg, name)
    for op in dep["ops"]:
        if op["operation_id"] == op_id:
            return Response.json(200, render_operation(dep, op, ctx.world.now()))
    raise rp_error(404, "DeploymentOperationNotFound", f"Deployment operation '{op_id}' could not be found.")


def register(app):
    base = "/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.Resources/deployments"
    app.route(base, RESOURCES, "deployments", GET=list_group)
    app.route(base + "/{name}", RESOURCES, "deployments", GET=get, PUT=put, DELETE=delete)
    app.route(base + "/{name}/cancel", RESOURCES, "deployments", POST=cancel)
    app.route(base + "/{name}/operationStatuses/{status_id}", RESOURCES, "deployments", GET=status)
    app.route(base + "/{name}/operations", RESOURCES, "deployments", GET=list_operations)
    app.route(base + "/{name}/operations/{op_id}", RESOURCES, "deployments", GET=get_operation)
    app.world.tickers.append(tick_deployments)
