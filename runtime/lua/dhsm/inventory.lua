-- dhsm.inventory: the one loader of the environment description.
--
--   local inv = require("dhsm.inventory").load(path)
--   inv.azure.resource_group, inv.hsms[1].host, inv:hsm("hsm1"), inv.client.lunacm
--   inv:crypto_officer("1234567") --> the partition's Crypto Officer secret, its HSM entry (or nil)
--
-- The file is JSON (docs/inventory.md).  Every bad field is reported
-- at once by its path (hsms[2].ssh_port: expected integer 1-65535, got
-- "22x"; entries are counted from 1).  Secrets are references (env:NAME,
-- file:PATH, prompt) turned into dhsm.secret values that are read only
-- when first used, so a prompt appears only if that secret is needed.
local cjson = require "cjson"
local dhsm = require "dhsm"
local schema = require "dhsm.schema"
local secret = require "dhsm.secret"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

local path_spec = { type = "string", pattern = "^.+$", expect = "a file path" }
local url_spec = { type = "string", pattern = "^https?://[^%s]+$", expect = "an http(s) URL" }

M.schema = {
  type = "object",
  fields = {
    azure = { type = "object", fields = {
      subscription = { type = "string", required = true, pattern = "^[%x%-]+$",
        expect = "a subscription id (GUID)" },
      tenant = { type = "string", required = true, pattern = "^[%w%-%.]+$",
        expect = "a tenant id (GUID) or domain" },
      resource_group = { type = "string", required = true, pattern = "^[%w%-%._%(%)]+$",
        expect = "a resource group name" },
      location = { type = "string", required = true, pattern = "^[%l%d]+$",
        expect = "a region name such as eastus" },
      credential = { type = "object", required = true, fields = {
        type = { type = "enum", required = true,
          values = { "client_secret", "managed_identity", "azure_cli", "environment" } },
        client_id = { type = "string" },
        secret = { type = "secret", prompt = "Azure client secret: " },
      } },
      endpoint = setmetatable({ default = "https://management.azure.com" }, { __index = url_spec }),
      authority = setmetatable({ default = "https://login.microsoftonline.com" }, { __index = url_spec }),
      imds_endpoint = url_spec,
      ca_file = path_spec,
      -- Sovereign clouds: set endpoint, authority and audience (the token's
      -- scope, ".default" appended) together.
      --   Azure Government: endpoint/audience https://management.usgovcloudapi.net,
      --                     authority https://login.microsoftonline.us
      --   Azure China:      endpoint/audience https://management.chinacloudapi.cn,
      --                     authority https://login.chinacloudapi.cn
      audience = setmetatable({ expect = "the token audience, an http(s) URL such as "
        .. "https://management.usgovcloudapi.net" }, { __index = url_spec }),
      -- Tuning (dhsm.azure.client): per-request timeout, how long 429/5xx are
      -- retried, attempts, the poll interval when ARM gives no Retry-After,
      -- requests in flight at once, and the Azure CLI to ask for a token.
      timeout = { type = "number", min = 0.01, max = 3600, expect = "seconds, a number from 0.01 to 3600" },
      retry_deadline = { type = "number", min = 0, max = 86400, expect = "seconds, a number from 0 to 86400" },
      max_attempts = { type = "integer", min = 1, max = 100 },
      poll_interval = { type = "number", min = 0.01, max = 600, expect = "seconds, a number from 0.01 to 600" },
      max_connections = { type = "integer", min = 1, max = 64 },
      az_command = path_spec,
    } },
    hsms = { type = "list", default = {}, items = { type = "object", fields = {
      name = { type = "string", required = true, pattern = "^[%w%-_%.]+$",
        expect = "a name of letters, digits, - _ ." },
      host = { type = "string", required = true, pattern = "^[%w%-%.:]+$",
        expect = "a host name or IP address" },
      ssh_port = { type = "integer", min = 1, max = 65535, default = 22 },
      user = { type = "string", default = "tenantadmin" },
      password = { type = "secret", default = "prompt" },
      so_password = { type = "secret" },      -- the HSM SO's (decommission's zeroize by command)
      key = path_spec,
      known_hosts = { type = "string", default = "~/.ssh/known_hosts" },
      -- seconds for the TCP connect and SSH handshake (dhsm.luna's default: 10)
      connect_timeout = { type = "number", min = 0.001, max = 3600 },
      ntls_port = { type = "integer", min = 1, max = 65535, default = 1792 },
      resource = { type = "string", pattern = "^[%w%-]+$",
        expect = "the Azure dedicated HSM resource name (letters, digits, -; default: the entry's name)" },
      serial = { type = "string", pattern = "^%d+$", expect = "the appliance's serial number (digits)" },
      -- The serials of the partitions the appliance holds (as `partition list` and lunacm show
      -- them): how dhsm names the appliance of an HA member whose appliance does not answer.
      partitions = { type = "list", items = { type = "string", pattern = "^%d+$",
        expect = "a partition serial (digits)" } },
      -- The Crypto Officer's secret of a partition, by reference only: what a census of the
      -- partition's objects (decommission's last-copy check) logs in with, read-only.
      crypto_officers = { type = "list", items = { type = "object", fields = {
        partition = { type = "string", required = true, pattern = "^%d+$", expect = "a partition serial (digits)" },
        password = { type = "secret", required = true },
      } } },
      -- The reboot fix as `package list` names it, matched as a substring in any case.  The
      -- default is what the guide and Microsoft call it; the real package name was never
      -- published (an assumption: set the name your appliance lists).
      reboot_fix_package = { type = "string", default = "KB0019789", pattern = "^[%w%-_%.+]+$",
        expect = "a package name or part of one (letters, digits, - _ . +)" },
    } } },
    client = { type = "object", default = {}, fields = {
      chrystoki_conf = path_spec,
      lunacm = path_spec,
      vtl = path_spec,
      pkcs11_lib = path_spec,
      softhsm_conf = path_spec,
      key_passphrase = { type = "secret", prompt = "Passphrase of the client's private key: " },
    } },
  },
}

local Inventory = {}
Inventory.__index = Inventory

-- Problems shown of an inventory; the rest are counted (a generated file
-- can hold 200,000 of them).
M.MAX_PROBLEMS = 20

local function fail(source, problems)
  local shown = table.move(problems, 1, math.min(#problems, M.MAX_PROBLEMS), 1, {})
  if #problems > #shown then
    shown[#shown + 1] = ("... and %d more problems"):format(#problems - M.MAX_PROBLEMS)
  end
  dhsm.error { kind = "usage", code = "BadInventory",
    message = ("inventory %s is not valid:\n  %s"):format(source, table.concat(shown, "\n  ")),
    details = { problems = table.move(problems, 1, math.min(#problems, M.MAX_PROBLEMS), 1, {}), count = #problems } }
end

-- expand_home(path) -> path with a leading ~/ made the home folder's (the
-- inventory's file fields; dhsm inventory discover's --known-hosts)
local function expand_home(p)
  if type(p) == "string" and p:sub(1, 2) == "~/" then
    return (os.getenv("HOME") or "") .. p:sub(2)
  end
  return p
end
M.expand_home = expand_home

-- hsms[i].crypto_officers: each partition once, and one of the entry's
-- `partitions` (the serial says nothing of its appliance: the list does).
local function co_problems(i, h, problems)
  local listed, seen = {}, {}
  for _, p in ipairs(h.partitions or {}) do listed[p] = true end
  for j, co in ipairs(h.crypto_officers or {}) do
    local sn, where = type(co) == "table" and co.partition, ("hsms[%d].crypto_officers[%d].partition"):format(i, j)
    if type(sn) == "string" then
      if seen[sn] then
        problems[#problems + 1] = ("%s: %s is already given in crypto_officers[%d]"):format(where, sn, seen[sn])
      elseif not listed[sn] then
        problems[#problems + 1] = ("%s: %s is not in hsms[%d].partitions; add it there (the partitions this "
          .. "appliance holds)"):format(where, sn, i)
      end
      seen[sn] = seen[sn] or j
    end
  end
end

-- Rules across fields that a per-field spec cannot say.
local function cross_checks(inv, problems)
  if type(inv) ~= "table" then return end
  local seen = {}
  for i, h in ipairs(inv.hsms or {}) do
    if type(h) == "table" and h.name then
      if seen[h.name] then
        problems[#problems + 1] = ("hsms[%d].name: %q is already the name of hsms[%d]"):format(i, h.name, seen[h.name])
      end
      seen[h.name] = i
    end
  end
  for i, h in ipairs(inv.hsms or {}) do
    if type(h) == "table" then co_problems(i, h, problems) end
  end
  local cred = inv.azure and inv.azure.credential
  if cred and cred.type == "client_secret" then
    if not cred.client_id then problems[#problems + 1] = "azure.credential.client_id: missing, expected string (client_secret needs it)" end
    if not cred.secret then problems[#problems + 1] = "azure.credential.secret: missing, expected " .. schema.expected({ type = "secret" }) end
  end
end

-- Fields naming a file: a directory there is a mistake worth saying now.
local FILE_FIELDS = {
  { "azure", "ca_file" }, { "client", "chrystoki_conf" }, { "client", "lunacm" }, { "client", "vtl" },
  { "client", "pkcs11_lib" }, { "client", "softhsm_conf" },
}

local function not_a_directory(where, p, problems)
  local st = type(p) == "string" and sys.stat(p)
  if st and st.type == "dir" then
    problems[#problems + 1] = ("%s: %s is a directory, expected a file"):format(where, p)
  end
end

local function check_files(inv, problems)
  for _, f in ipairs(FILE_FIELDS) do
    not_a_directory(f[1] .. "." .. f[2], (inv[f[1]] or {})[f[2]], problems)
  end
  for i, h in ipairs(inv.hsms) do
    not_a_directory(("hsms[%d].key"):format(i), h.key, problems)
    not_a_directory(("hsms[%d].known_hosts"):format(i), h.known_hosts, problems)
  end
end

-- The client tools (lunacm, vtl) of the inventory the front end loaded
-- (-i, $DHSM_INVENTORY): what dhsm.proc counts as those tools.  Said once,
-- before any code of the user's runs; an inventory a runbook builds is not
-- trusted to name them.
local tools, trusted = { lunacm = {}, vtl = {}, pkcs11_lib = {} }, false

-- trust_tools(inv | nil): (the front end) the tools of this inventory, or none
function M.trust_tools(inv)
  if trusted then
    dhsm.error { kind = "safety", code = "ToolsTrusted", message = "the client tools are named once, by dhsm's front end" }
  end
  trusted = true
  for name, paths in pairs(tools) do
    if inv and type(inv.client[name]) == "string" then paths[inv.client[name]] = true end
  end
end

-- trusted_tools(name) -> the paths the front end's inventory gives for
-- client tool `name` ("lunacm", "vtl", "pkcs11_lib"), as a list
function M.trusted_tools(name)
  local out = {}
  for path in pairs(tools[name] or {}) do out[#out + 1] = path end
  return out
end

-- from_table(t [, source]) -> inventory (raises a usage error listing every problem)
function M.from_table(t, source)
  source = source or "(table)"
  if type(t) ~= "table" then
    fail(source, { ("expected a JSON object at the top, got %s"):format(t == cjson.null and "null" or type(t)) })
  end
  local problems = {}
  local inv = schema.check(t, M.schema, "inventory", problems)
  for i, p in ipairs(problems) do problems[i] = p:gsub("^inventory%.", "") end
  cross_checks(inv, problems)
  if #problems > 0 then fail(source, problems) end
  for _, h in ipairs(inv.hsms) do
    h.known_hosts = expand_home(h.known_hosts)
    h.key = expand_home(h.key)
    h.resource = h.resource or h.name         -- the Azure resource this appliance stands for
  end
  check_files(inv, problems)
  if #problems > 0 then fail(source, problems) end
  for _, h in ipairs(inv.hsms) do
    if h.password:origin() == "prompt" then      -- say whose password is asked for
      h.password = secret.ref("prompt", ("LunaSH password for %s@%s: "):format(h.user, h.name))
    end
    if h.so_password and h.so_password:origin() == "prompt" then
      h.so_password = secret.ref("prompt", ("HSM SO password of %s: "):format(h.name))
    end
    for _, co in ipairs(h.crypto_officers or {}) do
      if co.password:origin() == "prompt" then
        co.password = secret.ref("prompt", ("Crypto Officer password of partition %s on %s: "):format(co.partition, h.name))
      end
    end
  end
  inv.source = source
  return setmetatable(inv, Inventory)
end

function M.load(path)
  if type(path) ~= "string" then
    dhsm.error { kind = "usage", code = "BadInventory", message = ("inventory: expected a file path, got %s"):format(type(path)) }
  end
  local data, err = util.read_file(expand_home(path))
  if not data then
    dhsm.error { kind = "usage", code = "BadInventory", message = ("cannot read inventory %s"):format(err) }
  end
  return M.decode(data, path)
end

-- decode(json_text, source) -> inventory: what load does once the file is read.
function M.decode(data, source)
  -- util.json_object: a byte order mark skipped, a syntax error by line and column
  local t, why, what = util.json_object(data)
  if what == "syntax" then
    dhsm.error { kind = "usage", code = "BadInventory", message = ("inventory %s: %s"):format(source, why) }
  end
  if what == "shape" then
    local text = util.without_bom(data)
    -- cjson gives [] and {} alike: the text says which it was
    if text:match("^%s*%[") then fail(source, { "expected a JSON object at the top ({...}), got a list" }) end
    t = cjson.decode(text)          -- a number, a string, null: from_table names what it is
  end
  return M.from_table(t, source)
end

-- inv:hsm(name) -> the entry, or a usage error naming the known ones
function Inventory:hsm(name)
  local names = {}
  for _, h in ipairs(self.hsms) do
    if h.name == name then return h end
    names[#names + 1] = h.name
  end
  dhsm.error { kind = "usage", code = "UnknownHsm",
    message = ("no HSM %q in the inventory%s (known: %s)"):format(tostring(name),
      util.did_you_mean(tostring(name), names), #names > 0 and table.concat(names, ", ") or "none") }
end

-- inv:crypto_officer(partition_serial) -> the CO secret, its HSM entry; or nil
function Inventory:crypto_officer(serial)
  for _, h in ipairs(self.hsms) do
    for _, co in ipairs(h.crypto_officers or {}) do
      if co.partition == serial then return co.password, h end
    end
  end
end

-- inv:get("azure.resource_group") -> value or nil
function Inventory:get(dotted)
  local v = self
  for part in dotted:gmatch("[^%.]+") do
    if type(v) ~= "table" then return nil end
    v = v[tonumber(part) or part]
  end
  return v
end

return M
