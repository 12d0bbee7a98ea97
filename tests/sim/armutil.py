"""ARM resource ids, timestamps and other small formats shared by every provider."""
import base64
import datetime
import json
import re
import uuid

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def new_guid():
    return str(uuid.uuid4())


def etag():
    return f'W/"{new_guid()}"'


def rg_id(sub, rg):
    return f"/subscriptions/{sub}/resourceGroups/{rg}"


def resource_id(sub, rg, rtype, *names):
    """resource_id(s, g, "Microsoft.Network/virtualNetworks/subnets", "v", "s")."""
    namespace, *types = rtype.split("/")
    if len(types) != len(names):
        raise ValueError(f"type '{rtype}' needs {len(types)} name(s), got {len(names)}")
    tail = "/".join(f"{t}/{n}" for t, n in zip(types, names))
    return f"{rg_id(sub, rg)}/providers/{namespace}/{tail}"


def parse_id(rid):
    """'/subscriptions/S/resourceGroups/G/providers/NS/t1/n1/t2/n2' -> dict or None."""
    parts = [p for p in (rid or "").split("/") if p]
    if (len(parts) < 6 or parts[0].lower() != "subscriptions" or parts[2].lower() != "resourcegroups"
            or parts[4].lower() != "providers" or len(parts) % 2 != 0):
        return None
    rest = parts[6:]
    types, names = rest[0::2], rest[1::2]
    return {"sub": parts[1], "rg": parts[3], "type": "/".join([parts[5]] + types), "names": names}


def key(rid):
    """ARM ids are case-insensitive: one lower-cased key per resource."""
    return rid.lower().rstrip("/")


def _utc(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)


def iso(ts):
    """ARM style: 2023-03-29T01:16:00.4160000Z (seven fractional digits)."""
    t = _utc(ts)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}0Z"


def iso_duration(seconds):
    return f"PT{max(seconds, 0):.7f}S"


def dotnet_utc(ts):
    """The format of ARM's expired-token message: 11/28/2025 9:05:03 AM."""
    t = _utc(ts)
    hour = t.hour % 12 or 12
    return f"{t.month}/{t.day}/{t.year} {hour}:{t.minute:02d}:{t.second:02d} {'AM' if t.hour < 12 else 'PM'}"


def b64_token(obj):
    raw = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def b64_decode(token):
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
