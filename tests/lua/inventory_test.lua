-- dhsm.inventory: the one loader of the environment description.
local t = require "dhsm.test"
local inventory = require "dhsm.inventory"
local secret = require "dhsm.secret"

local here = t.here()
local fixtures = here .. "/../fixtures/inventory"

t.test("a good inventory gets its defaults and lazy secrets", function()
  local inv = inventory.load(fixtures .. "/good.json")
  t.eq(inv.azure.endpoint, "https://management.azure.com")
  t.eq(inv.azure.authority, "https://login.microsoftonline.com")
  t.eq(#inv.hsms, 2)
  local h1, h2 = inv:hsm("hsm1"), inv:hsm("hsm2")
  t.eq({ h1.ssh_port, h1.user, h1.ntls_port }, { 22, "tenantadmin", 1792 })
  t.eq({ h2.ssh_port, h2.user, h2.known_hosts }, { 2222, "admin", os.getenv("HOME") .. "/kh" })
  t.ok(secret.is(h1.password))
  t.eq(h1.password:origin(), "env:DHSM_TEST_HSM_PW")
  t.eq(h2.password:origin(), "prompt")           -- asked only if ever used
  t.eq(inv.azure.credential.secret:origin(), "env:DHSM_TEST_AZ_SECRET")
  t.eq(inv:get("azure.resource_group"), "hsm-rg")
  t.eq(inv:get("hsms.2.name"), "hsm2")
  t.eq(inv.client.lunacm, "/usr/safenet/lunaclient/bin/lunacm")
end)

t.test("every bad field is reported by its path, all at once", function()
  local err = t.raises(function() inventory.load(fixtures .. "/bad.json") end, "BadInventory")
  t.eq(err.kind, "usage")
  local got = err.details.problems
  table.sort(got)
  t.eq(got, {
    'azure.credential.secret: expected a secret reference (env:NAME, file:PATH or prompt), got a literal value (it would show in your shell history and process list)',
    'azure.credential.type: expected one of "client_secret", "managed_identity", "azure_cli", "environment", got "password"',
    'azure.location: expected a region name such as eastus, got "East US"',
    'azure.tenant: missing, expected a tenant id (GUID) or domain',
    "clinet: unknown field (did you mean 'client'?)",
    'hsms[2].host: missing, expected a host name or IP address',
    "hsms[2].hots: unknown field (did you mean 'host'?)",
    'hsms[2].name: "hsm1" is already the name of hsms[1]',
    'hsms[2].ssh_port: expected integer 1-65535, got "22x"',
  })
  t.ok(err.message:find("^inventory " .. fixtures:gsub("%p", "%%%0") .. "/bad.json is not valid:\n  "), err.message)
end)

t.test("unreadable or malformed files are named", function()
  t.raises(function() inventory.load("/no/such/inventory.json") end, "cannot read inventory /no/such/inventory.json")
  local dir = t.tmpdir()
  t.write(dir .. "/x.json", "{ nope")
  t.raises(function() inventory.load(dir .. "/x.json") end, "inventory " .. dir:gsub("%p", "%%%0") .. "/x.json: invalid JSON")
  t.write(dir .. "/list.json", "[1, 2]")
  t.raises(function() inventory.load(dir .. "/list.json") end, "expected a JSON object at the top %({...}%), got a list")
end)

t.test("client_secret credentials need a client id and a secret", function()
  local err = t.raises(function()
    inventory.from_table({ azure = { subscription = "1", tenant = "t", resource_group = "g", location = "eastus",
      credential = { type = "client_secret" } } })
  end, "BadInventory")
  t.eq(err.details.problems, {
    "azure.credential.client_id: missing, expected string (client_secret needs it)",
    "azure.credential.secret: missing, expected a secret reference (env:NAME, file:PATH or prompt)",
  })
end)

t.test("an unknown HSM name is an error listing the known ones", function()
  local inv = inventory.load(fixtures .. "/good.json")
  local err = t.raises(function() inv:hsm("hsm3") end, "UnknownHsm")
  t.eq(err.message, 'no HSM "hsm3" in the inventory (did you mean \'hsm1\'?) (known: hsm1, hsm2)')
end)

t.test("a file holding null, a number or a string says what it holds, without a traceback", function()
  local dir = t.tmpdir()
  for text, what in pairs { ["null"] = "null", ["42"] = "number", ['"x"'] = "string", ["true"] = "boolean" } do
    t.write(dir .. "/x.json", text)
    local err = t.raises(function() inventory.load(dir .. "/x.json") end, "BadInventory")
    t.ok(err.message:find("expected a JSON object at the top, got " .. what, 1, true), err.message)
  end
  local r = t.sh(t.cmd("-i " .. dir .. "/x.json run " .. here .. "/../fixtures/playbooks/echo.lua"))
  t.eq(r.status, 2, r.stderr)
  t.ok(not r.stderr:find("traceback", 1, true), r.stderr)
end)

t.test("200,000 problems: the first 20 are shown and the rest counted", function()
  local hsms = {}
  for i = 1, 100000 do hsms[i] = { name = "h" .. i, host = "bad host", ssh_port = "x" } end
  local err = t.raises(function() inventory.from_table({ hsms = hsms }, "big.json") end, "BadInventory")
  local _, lines = err.message:gsub("\n", "")
  t.eq(lines, inventory.MAX_PROBLEMS + 1)
  t.ok(err.message:find("... and 199980 more problems", 1, true), err.message:sub(-200))
  t.eq({ #err.details.problems, err.details.count }, { 20, 200000 })
end)

t.test("a directory where a file is expected says so: the inventory itself, and its file fields", function()
  local dir = t.tmpdir()
  t.raises(function() inventory.load(dir) end, "cannot read inventory " .. dir:gsub("%p", "%%%0") .. ": Is a directory")
  local r = t.sh(t.cmd("-i " .. dir .. " run " .. here .. "/../fixtures/playbooks/echo.lua"))
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find(dir .. ": Is a directory", 1, true), r.stderr)
  local err = t.raises(function()
    inventory.from_table({ client = { chrystoki_conf = dir, lunacm = dir .. "/missing-is-fine" },
      hsms = { { name = "h", host = "h", password = "prompt", known_hosts = dir } } })
  end, "BadInventory")
  t.eq(err.details.problems, {
    ("client.chrystoki_conf: %s is a directory, expected a file"):format(dir),
    ("hsms[1].known_hosts: %s is a directory, expected a file"):format(dir),
  })
end)

t.test("an HSM entry names the Azure resource it stands for: by default its own name", function()
  local function inv(h)
    return inventory.from_table { hsms = { h } }
  end
  t.eq(inv({ name = "hsm1", host = "h", password = "env:X" }).hsms[1].resource, "hsm1")
  t.eq(inv({ name = "lab-a", host = "h", password = "env:X", resource = "hsm7", serial = "1534201" }):hsm("lab-a").resource, "hsm7")
  local err = t.raises(function() inv { name = "hsm1", host = "h", password = "env:X", resource = "hsm 7", serial = "x1" } end, "BadInventory")
  t.eq(err.details.problems, {
    'hsms[1].resource: expected the Azure dedicated HSM resource name (letters, digits, -; default: the entry\'s name), got "hsm 7"',
    "hsms[1].serial: expected the appliance's serial number (digits), got \"x1\"",
  })
end)

t.test("crypto_officers: each partition's CO secret by reference, prompted by name; bad entries named", function()
  local base = { azure = { subscription = "0000", tenant = "t", resource_group = "rg", location = "eastus",
    credential = { type = "azure_cli" } } }
  local function with(hsm)
    local inv = { azure = base.azure, hsms = { hsm } }
    return inventory.from_table(inv, "test")
  end
  local inv = with { name = "hsm1", host = "10.0.0.4", partitions = { "154438865", "154438866" },
    crypto_officers = { { partition = "154438865", password = "env:CO_X" }, { partition = "154438866", password = "prompt" } } }
  local co, entry = inv:crypto_officer("154438865")
  t.eq({ co:origin(), entry.name }, { "env:CO_X", "hsm1" })
  t.eq(inv:crypto_officer("154438866"):origin(), "prompt")
  t.eq(inv:crypto_officer("999"), nil)
  local function problems(hsm)
    local err = t.raises(function() with(hsm) end, "BadInventory")
    t.eq(err.kind, "usage")
    return err.details.problems
  end
  t.eq(problems { name = "hsm1", host = "h", partitions = { "1" }, crypto_officers = { { partition = "1", password = "s3cret" } } },
    { "hsms[1].crypto_officers[1].password: expected a secret reference (env:NAME, file:PATH or prompt), got a literal "
      .. "value (it would show in your shell history and process list)" })
  t.eq(problems { name = "hsm1", host = "h", crypto_officers = { { partition = "12", password = "env:X" } } },
    { "hsms[1].crypto_officers[1].partition: 12 is not in hsms[1].partitions; add it there (the partitions this appliance holds)" })
  t.eq(problems { name = "hsm1", host = "h", partitions = { "12" }, crypto_officers = { { partition = "12", password = "env:X" },
    { partition = "12", password = "env:Y" }, { partition = "p1", password = "env:Y" } } },
    { 'hsms[1].crypto_officers[3].partition: expected a partition serial (digits), got "p1"',
      "hsms[1].crypto_officers[2].partition: 12 is already given in crypto_officers[1]" })
end)
