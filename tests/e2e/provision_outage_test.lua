-- provision when Azure cannot be read: an outage (5xx), a missing
-- permission (403) or a token endpoint that fails is not a safety refusal
-- (exit 3) but a failure (exit 1) naming the HTTP status and the request
-- id, and for a 403 the permission missing.  Nothing reached the estate
-- but reads (its own request log).
local t = require "dhsm.test"
local cjson = require "cjson"
local util = require "dhsm.util"
local support = require "support.estate"

local e = support.start { set = { retry_after = 0 }, args = "--appliances 0" }

-- The estate's inventory with the client giving up quickly (two attempts).
local inventory = e.dir .. "/inventory-impatient.json"
do
  local doc = cjson.decode(util.read_file(e.dir .. "/inventory.json"))
  doc.azure.max_attempts, doc.azure.retry_deadline = 2, 5
  local f = assert(io.open(inventory, "w"))
  f:write(cjson.encode(doc))
  f:close()
end

-- retries: the playbook's own (default 0 here; the playbook's default is 3)
local function provision_under(fault, retries)
  e:clear()
  e:fault(fault)
  local r = t.run(("-i %s run provision -e hsms=hsm-a:stamp1 -e retries=%d -e backoff=0.01 -e poll_interval=0.02 --yes")
    :format(util.shell_quote(inventory), retries or 0))
  e:clear()
  return r
end

local REQUEST_ID = "request id %x+%-%x+%-%x+%-%x+%-%x+"

local CASES = {
  { "ARM answering 5xx", { fail5xx = "1000" }, "azure/%a+: preflight: Azure could not be read: Azure answered HTTP "
    .. "50[03] %(below%).-\n  credentials %S+: cannot read subscription %S+: %a+: GET /subscriptions/%S+: HTTP 50[03], "
    .. REQUEST_ID .. ": " },
  { "ARM answering 403", { forbid = "1000" }, "azure/AuthorizationFailed: preflight: Azure could not be read: the "
    .. "credential lacks a permission %(below%).-\n  credentials %S+: cannot read subscription %S+: "
    .. "AuthorizationFailed: GET /subscriptions/%S+: HTTP 403, " .. REQUEST_ID .. ": the credential lacks "
    .. "permission Microsoft%.Resources/%S+/read on /subscriptions/" },
  { "the token endpoint failing", { fail5xx = "1000:oauth2" }, "azure/temporarily_unavailable: preflight: Azure could "
    .. "not be read: Azure answered HTTP 503 %(below%).-: POST /%S+/oauth2/v2%.0/token: HTTP 503, " .. REQUEST_ID },
}

for _, case in ipairs(CASES) do
  t.test("provision with " .. case[1] .. " fails (exit 1) with the status and request id, not a safety refusal",
    function()
    local before = #e:mutations("/subscriptions/")
    local r = provision_under(case[2])
    t.eq(r.status, 1, r.stderr)
    t.ok(r.stderr:find(case[3]), r.stderr)
    t.ok(not r.stderr:find("safety/", 1, true), r.stderr)
    t.ok(not r.stderr:find("check the inventory's azure credential", 1, true) or case[2].forbid, r.stderr)
    t.eq(#e:mutations("/subscriptions/"), before, "nothing but reads reached the estate")
  end)
end

-- How many times the estate's log shows `pattern` (a Lua pattern) since line `from`.
local function requests_since(from, pattern)
  return e:count_since(from, { n = pattern }).n
end

local SUB = cjson.decode(util.read_file(inventory)).azure.subscription

t.test("a 403 on the first read is said once: the SKIP rows name the credentials row, not its message", function()
  local r = provision_under { forbid = "1000" }
  t.eq(r.status, 1, r.stderr)
  local all = r.stdout .. r.stderr
  local _, said = all:gsub("Microsoft%.Resources/subscriptions/resourceGroups/read", "")
  t.eq(said, 1, "the permission once: " .. all)
  local _, skips = all:gsub("not checked: the credentials row failed\n", "")
  t.ok(skips >= 9, all)
  -- diagnose, likewise
  e:fault { forbid = "1000" }
  r = t.run(("-i %s run diagnose"):format(util.shell_quote(inventory)))
  e:clear()
  all = r.stdout .. r.stderr
  _, said = all:gsub("Microsoft%.Resources/subscriptions/resourceGroups/read", "")
  t.eq(said, 1, all)
  t.ok(all:find("not checked: the credentials row failed", 1, true), all)
end)

t.test("one layer retries: a read ARM keeps failing is sent max_attempts times, the step does not retry it again",
  function()
  local from = #e:log()
  -- the playbook's own retries at their default (3): they must not multiply the client's two attempts
  local r = provision_under({ fail5xx = "1000" }, 3)
  t.eq(r.status, 1, r.stderr)
  t.eq(requests_since(from, "^arm GET /subscriptions/" .. SUB:gsub("%p", "%%%0") .. " %->"), 2,
    "the subscription read: the client's 2")
  t.ok(not r.stderr:find("Azure busy", 1, true), r.stderr)
end)

t.test("a later step's ARM error names the status, request id and missing permission; a 403 on the PUT, the role",
  function()
  local r = provision_under { forbid = "1000:dedicatedHSMs/hsm-a" }
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("✗ create HSMs hsm%-a %(in parallel%): azure/AuthorizationFailed: item 1 %(hsm%-a%): GET "
    .. "/subscriptions/%S+/dedicatedHSMs/hsm%-a: HTTP 403, " .. REQUEST_ID .. ": the credential lacks permission "
    .. "Microsoft%.HardwareSecurityModules/dedicatedHSMs/read on /subscriptions/"), r.stderr)
  r = provision_under { forbid = "1000:PUT /subscriptions/" .. SUB .. "/resourceGroups/hsm-rg/providers/"
    .. "Microsoft.HardwareSecurityModules/dedicatedHSMs/hsm-a" }
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("hsm-a: stopped, permission (HTTP 403 AuthorizationFailed): give the credential's role the "
    .. "permission ARM names", 1, true), r.stderr)
  t.ok(r.stderr:find("the credential lacks permission Microsoft.HardwareSecurityModules/dedicatedHSMs/write on ", 1,
    true), r.stderr)
  t.ok(not r.stderr:find("support request", 1, true), r.stderr)
  t.eq(#e:mutations("dedicatedHSMs/hsm-a"), 1, "one PUT, refused: not retried")
end)

t.test("a later step's 5xx names the status and request id, and that Azure answered", function()
  local r = provision_under { fail5xx = "1000:dedicatedHSMs/hsm-a" }
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("item 1 %(hsm%-a%): GET /subscriptions/%S+/dedicatedHSMs/hsm%-a: HTTP 50[03], " .. REQUEST_ID),
    r.stderr)
  t.ok(not r.stderr:find("did not answer", 1, true), r.stderr)
end)

t.test("a preflight that finds a real problem is still a safety refusal (exit 3)", function()
  e:clear()
  e:fault { not_allowlisted = "1" }
  local r = t.run(("-i %s run provision -e hsms=hsm-a:stamp1 -e retries=0 --yes"):format(util.shell_quote(inventory)))
  e:clear()
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("safety/PreflightFailed", 1, true), r.stderr)
end)

t.test("an HSM's PUT answered 5xx past the client's retries: raised as it is, no support request; the printed "
  .. "resume creates it once Azure answers", function()
  e:clear()
  local put = "PUT /subscriptions/" .. SUB .. "/resourceGroups/hsm-rg/providers/Microsoft.HardwareSecurityModules/"
    .. "dedicatedHSMs/hsm-a"
  e:fault { fail5xx = "1000:" .. put }
  local from, state = #e:log(), t.tmpdir()
  local r = t.run(("-i %s run provision -e hsms=hsm-a:stamp1 -e retries=3 -e backoff=0.01 -e poll_interval=0.02 --yes")
    :format(util.shell_quote(inventory)), { state = state })
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("PUT /subscriptions/%S+/dedicatedHSMs/hsm%-a: HTTP 50[03], " .. REQUEST_ID), r.stderr)
  t.ok(not r.stderr:find("support request", 1, true) and not r.stderr:find("redeploying", 1, true), r.stderr)
  local refused = e:count_since(from, { put = "arm PUT %S+/dedicatedHSMs/hsm%-a %-> 50[03]" }).put
  t.eq(refused, 2, "the client's attempts (max_attempts 2), none more for retries=3")
  local hint = r.stderr:match("'dhsm (run provision %-%-resume %S+ %-%-yes)' continues it")
  t.ok(hint, r.stderr)
  e:clear()
  r = t.run(hint, { state = state, env = "env -u DHSM_INVENTORY" })
  t.eq(r.status, 0, r.stderr)
  t.eq(e:hsms()["hsm-a"], "Succeeded")
  t.eq(e:count_since(from, { put = "arm PUT %S+/dedicatedHSMs/hsm%-a %-> 2" }).put, 1, "created by one PUT, after the fault")
end)
