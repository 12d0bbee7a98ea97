-- An estate for the initialize playbook's tests: HA group demoHA over
-- hsm1's and hsm2's par1 (the default cloning domain, one Crypto Officer
-- password), an application's sensitive key on the group, and hsm3 just
-- provisioned on the spare appliance: factory-fresh, as Microsoft hands it
-- over (zeroized, its administrator password to be changed at first login).
--
--   local fresh = require "support.fresh"
--   local e = fresh.estate()              -- support.estate, with e.secrets (files) for initialize
--   fresh.args(e, { "-e", "hsm=hsm3" })  -- initialize's parameters, as argv words
--   fresh.objects(e, "hsm3-par1")        -- {"class:label", ...} on that token, as its Crypto Officer
local t = require "dhsm.test"
local pkcs11 = require "dhsm.pkcs11"
local proc = require "dhsm.proc"
local util = require "dhsm.util"
local Estate = require "support.estate"

local M = {}

M.APP_KEY = "app-key-1"

local function tool_env(e)
  return { ChrystokiConfigurationPath = e.inventory.client.chrystoki_conf:match("^(.*)/[^/]*$") }
end

local function library(e)
  local client = e.inventory.client
  return pkcs11.load(client.pkcs11_lib, { env = { SOFTHSM2_CONF = client.softhsm_conf,
    ChrystokiConfigurationPath = tool_env(e).ChrystokiConfigurationPath } })
end

-- A secret file of the test's own (0600) -> its path.
local function secret_file(e, name, value)
  local path = e.dir .. "/test-" .. name
  t.write(path, value .. "\n", tonumber("600", 8))
  return path
end

-- The HA group over the ready partitions of hsm1 and hsm2, and the
-- application's key made through its first member (sensitive and not
-- extractable, as generate_aes makes keys by default).
local function group(e)
  local client = e.inventory.client
  local serials = {}
  for _, s in ipairs(proc.lunacm_slots { argv = { client.lunacm }, env = tool_env(e) }) do
    serials[s.label:match("^(hsm%d)%-par1$") or s.label] = s.serial
  end
  for i, words in ipairs { { "createGroup", "-label", "demoHA", "-serialNumber", serials.hsm1 },
    { "addMember", "-group", "demoHA", "-serialNumber", serials.hsm2 } } do
    local r = proc.lunacm_login { argv = { client.lunacm, "-c", "hagroup", table.unpack(words) }, env = tool_env(e),
      password = e:secret("hsm1_par1_co_pin"), timeout = 60 }
    t.ok(r.ok, "group step " .. i .. ": " .. r.stdout)
  end
  local lib <close> = library(e)
  local s <close> = lib:open { label = "hsm1-par1", rw = true }
  s:login("user", e:secret("hsm1_par1_co_pin"))
  s:generate_aes { label = M.APP_KEY }
  s:logout()
  e.serials = serials
end

-- estate() -> the estate, hsm3 provisioned and factory-fresh
function M.estate()
  local e = Estate.start { args = "--appliances 2 --spare 1 --client-ready" }
  group(e)
  local r = e:run("run provision -e hsms=hsm3:stamp2 -e poll_interval=0.05 -e backoff=0.05 --yes")
  t.eq(r.status, 0, "hsm3 provisioned: " .. r.stderr)
  e.secrets = {
    new_password = secret_file(e, "new_password", "Fresh-Passw0rd-1"),
    so_password = secret_file(e, "so_password", "Hsm-SO-Passw0rd-1"),
    cloning_domain = secret_file(e, "cloning_domain", "defaultdomain"),
    wrong_domain = secret_file(e, "wrong_domain", "another-domain"),
    pso_password = secret_file(e, "pso_password", "Par-SO-Passw0rd-1"),
    co_password = e.dir .. "/secrets/hsm1_par1_co_pin",
  }
  return e
end

-- args(e [, extra [, omit]]) -> initialize's argv words: partition par1
-- into demoHA, every secret as a file reference, credentials stored (less
-- the parameters omit names: {credentials_stored = true}), then extra
function M.args(e, extra, omit)
  omit = omit or {}
  local params = { partition = "par1", ha_group = "demoHA", credentials_stored = "true" }
  for _, k in ipairs { "new_password", "so_password", "cloning_domain", "pso_password", "co_password" } do
    params[k] = "file:" .. e.secrets[k]
  end
  local out = {}
  for _, k in ipairs { "partition", "ha_group", "credentials_stored", "new_password", "so_password", "cloning_domain",
    "pso_password", "co_password" } do
    if not omit[k] then
      out[#out + 1] = "-e"
      out[#out + 1] = k .. "=" .. params[k]
    end
  end
  for _, a in ipairs(extra or {}) do out[#out + 1] = a end
  return out
end

-- The same as one shell line (for e:run).
function M.line(e, extra, omit)
  local words = {}
  for i, a in ipairs(M.args(e, extra, omit)) do words[i] = util.shell_quote(a) end
  return table.concat(words, " ")
end

-- objects(e, token) -> {"class:label", ...} sorted, read as the token's
-- Crypto Officer (the group's password)
function M.objects(e, token)
  local lib <close> = library(e)
  local s <close> = lib:open { label = token }
  s:login("user", e:secret("hsm1_par1_co_pin"))
  local keys = {}
  for i, h in ipairs(s:find {}) do
    local a = s:attributes(h, { "class", "label" })
    keys[i] = a.class .. ":" .. a.label
  end
  s:logout()
  table.sort(keys)
  return keys
end

-- Where the estate's records stand now: its log's length, and the password
-- changes in hsm3's syslog (first logins show there, not in the log).
local function password_changes(e, name)
  local messages = util.read_file(e.dir .. "/appliances/" .. name .. "/messages") or ""
  return select(2, messages:gsub("password changed for tenantadmin", ""))
end

-- mark(e [, name]) -> where the estate's log and appliance name's syslog
-- (default hsm3, the one initialised) are now
function M.mark(e, name)
  name = name or "hsm3"
  return { log = #e:log(), logins = password_changes(e, name), name = name }
end

-- How often each change of an initialisation reached the estate since
-- mark (LunaSH commands to mark's appliance, the client tools' lines, its syslog).
function M.sent(e, mark)
  local at = mark.name:gsub("%p", "%%%0")
  local n = e:count_since(mark.log, {
    hsm_init = "^" .. at .. " lunash: hsm init .*%-> 0$",
    partition_create = "^" .. at .. " lunash: partition create .*%-> 0$",
    register = "^" .. at .. " lunash: client register .*%-> 0$",
    assign = "^" .. at .. " lunash: client assignPartition .*%-> 0$",
    add_server = "^vtl: addServer .*%-> 0$",
    partition_init = "^lunacm: partition init .*%-> No Error$",
    add_member = "^lunacm: hagroup addMember .*%-> No Error$",
    synchronize = "^lunacm: hagroup synchronize .*%-> No Error$",
  })
  n.first_login = password_changes(e, mark.name) - mark.logins
  return n
end

return M
