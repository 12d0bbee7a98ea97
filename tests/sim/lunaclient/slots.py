"""Slots as the Luna library numbers them: what `vtl verify`, `vtl listSlots` and LunaCM show.

Physical slots are the partitions each registered server offers this client over NTLS,
numbered from 0 in ServerNameNN order, then in the appliance's order. A server that
cannot be reached or refuses the handshake contributes none, so slot numbers move when
an appliance goes away (the reason dhsm finds tokens by serial or label, never by
number). HA groups get virtual slots numbered after the physical ones.
"""
from lunaclient import ntls_link


class Slot:
    virtual = False

    def __init__(self, slot_id, server, partition, appliance):
        self.id, self.server, self.appliance = slot_id, server, appliance  # appliance: estate name or None
        self.label, self.serial = partition["label"], partition["serial"]
        self.partition, self.token_serial = partition["name"], partition["token_serial"]


class VirtualSlot:
    virtual = True

    def __init__(self, slot_id, group):
        self.id, self.group = slot_id, group
        self.label, self.serial = group.label, group.serial


def physical(links, view=None):
    found = []
    for link in links:
        appliance = view.appliance_at(link.server.port) if view else None
        for part in link.partitions:
            found.append(Slot(len(found), link.server, part, appliance))
    return found


def discover(install, conf, view=None):
    """Connect to every registered server -> [Slot]."""
    return physical(ntls_link.connect_all(install, conf, install.servers(conf)), view)


def virtual(groups, first_id):
    return [VirtualSlot(first_id + number, group) for number, group in enumerate(groups)]
