#!/usr/bin/python3
"""Regenerate the fuzz seeds from the reference pages (run from the repo root):

    /usr/bin/python3 tests/fuzz/corpus/extract.py /work/shared/reference

luna/    every fenced block of luna-field.md and luna.md (LunaSH, lunacm, vtl output)
ntls/    the NTLS syslog lines found there, one seed per block
arm/     ARM replies as "STATUS\\nHeader: value\\n\\nbody": the JSON of arm-recorded.md and
         azure-arm.md (fenced and inline) under the statuses and headers real ARM sends
The Chrystoki.conf and inventory seeds are the test fixtures, read by the drivers directly.
"""
import json
import os
import re
import sys

ref = sys.argv[1]
out = os.path.dirname(os.path.abspath(__file__))


def blocks(name):
    text = open(os.path.join(ref, name), encoding="utf-8").read()
    return re.findall(r"```[a-z]*\n(.*?)```", text, re.S), text


def write(folder, items):
    os.makedirs(os.path.join(out, folder), exist_ok=True)
    for i, item in enumerate(items):
        with open(os.path.join(out, folder, "%03d.txt" % i), "w", encoding="utf-8") as f:
            f.write(item)


luna = []
for name in ("luna-field.md", "luna.md"):
    luna += blocks(name)[0]
write("luna", luna)
write("ntls", ["\n".join(l for l in b.splitlines() if "NTLS[" in l) for b in luna if "NTLS[" in b])

docs = []
for name in ("arm-recorded.md", "azure-arm.md"):
    fenced, text = blocks(name)
    docs += fenced
    docs += re.findall(r"`(\{[^`]*\})`", text)
bodies = []
for d in docs:
    try:
        json.loads(d)
        bodies.append(d)
    except ValueError:
        pass
ids = "x-ms-request-id: 1f3a2b4c-0000-4000-8000-000000000001\n"
loc = "location: https://management.azure.com/subscriptions/s/providers/Microsoft.HardwareSecurityModules/locations/eastus/operationResults/T?api-version=2021-11-30\n"
asy = "azure-asyncoperation: https://management.azure.com/subscriptions/s/providers/Microsoft.Network/locations/eastus/operations/1?api-version=2023-09-01\n"
replies = ["200\n%s\n%s" % (ids, b) for b in bodies]
replies += [
    "202\n%sretry-after: 5\n%s\n" % (ids, loc),
    "201\n%s%s\n{\"properties\": {\"provisioningState\": \"Updating\"}}" % (ids, asy),
    "200\n%s\n{\"status\": \"InProgress\"}" % ids,
    "200\n%s\n{\"status\": \"Failed\", \"error\": {\"code\": \"GatewayNotReady\", \"message\": \"m\"}}" % ids,
    "204\n%s\n" % ids,
    "404\n%s\n{\"error\": {\"code\": \"ResourceNotFound\", \"message\": \"The Resource was not found.\"}}" % ids,
    "429\n%sretry-after: 17\n\n{\"error\": {\"code\": \"SubscriptionRequestsThrottled\", \"message\": \"m\"}}" % ids,
    "503\n%sretry-after: 1\n\n{\"error\": {\"code\": \"ServiceUnavailable\", \"message\": \"m\"}}" % ids,
    "401\n%swww-authenticate: Bearer error=\"invalid_token\"\n\n{\"error\": {\"code\": \"ExpiredAuthenticationToken\", \"message\": \"m\"}}" % ids,
    "400\n\n{\"error\": \"invalid_client\", \"error_description\": \"AADSTS7000215: Invalid client secret provided.\"}",
    "200\n\n{\"token_type\": \"Bearer\", \"expires_in\": 3599, \"access_token\": \"eyJ0\"}",
    "200\n%s\n{\"value\": [{\"name\": \"hsm1\"}], \"nextLink\": \"https://management.azure.com/subscriptions/s/x?$skiptoken=1\"}" % ids,
]
write("arm", replies)
print(len(luna), "luna,", len(replies), "arm seeds")
