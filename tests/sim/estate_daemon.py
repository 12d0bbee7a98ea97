"""The estate's one background process: `estate start` runs it detached.

    estate_daemon.py --dir DIR --options JSON

OPTIONS: {"knobs": {name: value}, "seed": {...} or null, "log_level": "INFO",
          "client_ready": bool (a fresh client install comes provisioned, lunaclient/ready.py)}.
Starts every service of services.SERVICES, then writes DIR/estate.json and
DIR/inventory.json (the launcher waits for estate.json carrying this pid),
ticks the world every 50 ms, and stops cleanly on SIGTERM/SIGINT.
"""
import argparse
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import knobs  # noqa: E402
import seed  # noqa: E402
from armerrors import ArmError  # noqa: E402
from fsutil import write_json  # noqa: E402
from httpserver import Stats  # noqa: E402
from identity import TokenStore  # noqa: E402
from pki import Pki  # noqa: E402
from services import SERVICES, Estate  # noqa: E402
from world import World  # noqa: E402

ESTATE_FILE = "estate.json"
INVENTORY_FILE = "inventory.json"
TICK_SECONDS = 0.05
log = logging.getLogger("estate")


def open_world(estate_dir, options):
    world = World.load(estate_dir)
    if world is None:
        try:
            world = seed.seed_world(World.empty(estate_dir), options.get("seed"), estate_dir)
        except (ArmError, KeyError, TypeError, ValueError) as e:
            log.error("the seed is invalid: %s", e)
            sys.exit(1)
        log.info("seeded a new world in %s", estate_dir)
    else:
        log.info("resuming the world of %s", estate_dir)
    world.set_knobs(knobs.parse_assignments(options.get("knobs") or {}))
    world.save_if_dirty()
    return world


def write_descriptions(estate, services):
    inventory = {"azure": {}, "hsms": [], "client": {}}
    for service in services:
        service.contribute(inventory)
    arm = estate.urls["arm"]
    s = estate.world.s
    description = {
        "pid": os.getpid(), "dir": estate.dir, "ca_file": estate.pki.ca_file,
        "control": {"url": arm + "/_sim", "token": estate.control_secret, "header": "X-Sim-Token"},
        "services": {svc.name: svc.describe() for svc in services},
        "azure": {"subscription": inventory["azure"].get("subscription"), "tenant": s["tenant"],
                  "client_id": s["principal"]["client_id"], "resource_group": s.get("resource_group"),
                  "location": s["location"], "secret_file": os.path.join(estate.dir, seed.SECRET_FILE)},
        "inventory": os.path.join(estate.dir, INVENTORY_FILE), "started_at": estate.started_at}
    for service in services:
        description.update(getattr(service, "estate_entry", dict)())
    write_json(os.path.join(estate.dir, INVENTORY_FILE), inventory)
    write_json(os.path.join(estate.dir, ESTATE_FILE), description, private=True)


def ticker(world, stop):
    while not stop.wait(TICK_SECONDS):
        try:
            with world.lock:
                world.tick()
                world.save_if_dirty()
        except Exception:
            log.exception("tick failed")


def run(estate_dir, options):
    pki = Pki(estate_dir).ensure()
    world = open_world(estate_dir, options)
    estate = Estate(estate_dir, pki, world, TokenStore(world), Stats(), secrets.token_urlsafe(24), options)
    services = [cls() for cls in SERVICES]
    for service in services:
        service.start(estate)
        log.info("%s listening on %s", service.name, estate.urls[service.name])
    estate.started_at = time.time()
    write_descriptions(estate, services)
    # Later changes (an appliance bound to a new HSM, or returned to the pool) rewrite both files.
    estate.refresh = lambda: write_descriptions(estate, services)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=ticker, args=(world, stop), name="ticker", daemon=True).start()
    log.info("estate ready (pid %d)", os.getpid())
    stop.wait()
    log.info("stopping")
    for service in services:
        service.stop()
    with world.lock:
        world.save_if_dirty()
    log.info("stopped")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--options", default="{}")
    args = parser.parse_args()
    options = json.loads(args.options)
    logging.basicConfig(level=options.get("log_level", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(os.path.abspath(args.dir), options)


if __name__ == "__main__":
    main()
