"""The pool of appliances and how it follows ARM's dedicatedHSMs resources.

- Seeding (`estate start --appliances N`, default 2): appliances hsm1..hsmN, each
  bound to a Succeeded dedicatedHSMs resource of the same name in the seeded
  group (created if the seed did not list it), with an initialised HSM (label =
  name), an initialised Auditor, no partitions, and their passwords in DIR/secrets.
- Delete: ARM refuses to delete an HSM whose appliance is not zeroized (the probe
  below); once the resource is gone the appliance is factory-reset and returned to
  the pool: unreachable, and gone from inventory.json.
- Spares (seed "spare_appliances": N, `estate start --spare N`): appliances
  hsm(N+1).. in the pool from the start, bound to nothing, factory-fresh: their factory
  admin password in DIR/secrets and force_password_change set (the first interactive
  login must change it, luna-field.md 1.1); the HSMs the operator provisions take them.
- Create: an HSM that reaches Succeeded takes a free appliance from the pool, if
  any (a spare, or one freed by a delete: hsmops.factory_reset gave it a new factory admin
  password and the forced change), which comes up factory-fresh (zeroized) at the HSM's
  private IP; with no free appliance the resource exists without a device.
"""
import resources
from appliance import model
from appliance.paths import Paths


SPARE_IP = "0.0.0.0"  # a spare has no address until an HSM takes it (Device.bind)


def _initialise(state, paths):
    """Passwords for the admin, the HSM SO and the Auditor: hashed in the state, clear in DIR/secrets."""
    admin, so, audit = model.new_password(), model.new_password(), model.new_password()
    for what, value in (("password", admin), ("so_password", so), ("audit_password", audit)):
        paths.write_secret(what, value)
    state["admin"] = model.hash_secret(admin)
    state["hsm"].update(initialized=True, label=state["name"], so=model.hash_secret(so))
    state["hsm"]["audit"].update(initialized=True, secret=model.hash_secret(audit))


def bind_record(state, rec):
    state["resource"] = {"id": rec["id"], "name": rec["name"]}
    rec["sim"]["appliance"] = state["name"]


def seed_appliances(world, count, estate_dir, hsm_for):
    """HSM_FOR(name) -> the ARM record to bind (existing or newly seeded)."""
    pool = world.s.setdefault("appliances", {})
    for number in range(1, count + 1):
        name = f"hsm{number}"
        rec = hsm_for(name)
        state = model.new_appliance(name, rec["props"]["network"]["ip"], [a["serial"] for a in pool.values()])
        _initialise(state, Paths(estate_dir, name))
        bind_record(state, rec)
        pool[name] = state
    world.changed()


def seed_spares(world, first, count, estate_dir):
    """Appliances hsmFIRST.. in the pool, factory-fresh (zeroized, no Auditor), waiting for a new HSM."""
    pool = world.s.setdefault("appliances", {})
    for number in range(first, first + count):
        name = f"hsm{number}"
        state = model.new_appliance(name, SPARE_IP, [a["serial"] for a in pool.values()])
        model.factory_admin(state, Paths(estate_dir, name).write_secret)
        state["status"] = "pool"
        pool[name] = state
    world.changed()


def zeroize_probe(world):
    """world.zeroize_probe: the appliance answers for HSMs it backs; others keep the old flag."""
    def probe(rec):
        state = world.s.get("appliances", {}).get(rec["sim"].get("appliance") or "")
        if state is None or (state["resource"] or {}).get("id", "").lower() != rec["id"].lower():
            return bool(rec["sim"].get("zeroized"))
        return model.is_zeroized(state)
    return probe


def sync(world, devices):
    """Release appliances whose resource is gone, bind free ones to new HSMs; True if anything moved."""
    moved = False
    for dev in devices:
        resource = dev.state["resource"]
        if resource and world.get(resource["id"]) is None:
            dev.release_to_pool()
            moved = True
    waiting = world.find(resources.HSM_TYPE, where=lambda r: r["state"] == "Succeeded"
                         and r["sim"].get("allocated") and not r["sim"].get("appliance"))
    for rec in waiting:
        free = next((d for d in devices if d.state["resource"] is None), None)
        if free is None:
            break
        free.bind(rec["id"], rec["name"], rec["props"]["network"]["ip"])
        rec["sim"]["appliance"] = free.name
        world.changed()
        moved = True
    return moved

