-- Fuzz the inventory loader (dhsm.inventory.decode: JSON text to a
-- validated inventory) with mutated inventories.
local fuzz = dofile(arg[0]:match("^(.-)[^/]*$") .. "harness.lua")
local inventory = require "dhsm.inventory"

local seeds = { fuzz.file("../fixtures/inventory/good.json"), fuzz.file("../fixtures/inventory/bad.json"),
  [[{"azure": {"subscription": "2815d8d8-1c90-48c3-8ca2-20b8ab4f0e78", "tenant": "t", "resource_group": "hsm-rg",
    "location": "eastus", "credential": {"type": "client_secret", "client_id": "c", "secret": "file:/tmp/x"},
    "endpoint": "https://127.0.0.1:8443", "authority": "https://127.0.0.1:8444", "ca_file": "/tmp/ca.pem"},
   "hsms": [{"name": "hsm1", "host": "127.0.0.1", "ssh_port": 2222, "password": "env:PW", "known_hosts": "/tmp/kh",
     "ntls_port": 1792}],
   "client": {"chrystoki_conf": "/tmp", "lunacm": "/bin/lunacm", "vtl": "/bin/vtl", "pkcs11_lib": "/lib/x.so"}}]] }

fuzz.main {
  name = "inventory",
  seeds = seeds,
  dictionary = { "null", "true", "[]", "{}", '""', '"prompt"', '"env:X"', '"file:/etc/passwd"', '"~/"', "0", "-1",
    "1e400", '"hsms"', '"azure"', '"client"', '"credential"', '"type"', '"managed_identity"', "[[[[[[[[", "\\u0000" },
  target = function(input)
    local inv = inventory.decode(input, "fuzz")
    for _, h in ipairs(inv.hsms) do inv:hsm(h.name) end
    inv:get("azure.resource_group")
    inv:get("hsms.1.name")
    inv:hsm(input:sub(1, 300))
  end,
}
