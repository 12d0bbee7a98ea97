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

local function provision_under(fault)
  e:clear()
  e:fault(fault)
  local r = t.run(("-i %s run provision -e hsms=hsm-a:stamp1 -e retries=0 -e backoff=0.01 -e poll_interval=0.02 --yes")
    :format(util.shell_quote(inventory)))
  e:clear()
  return r
end

local REQUEST_ID = "request id %x+%-%x+%-%x+%-%x+%-%x+"

local CASES = {
  { "ARM answering 5xx", { fail5xx = "1000" }, "azure/%a+: preflight: Azure could not be read %(HTTP 50[03] %a+, "
    .. REQUEST_ID .. "%): Azure did not answer" },
  { "ARM answering 403", { forbid = "1000" }, "azure/AuthorizationFailed: preflight: Azure could not be read %(HTTP 403 "
    .. "AuthorizationFailed, " .. REQUEST_ID .. "%): the credential lacks permission Microsoft%.Resources/%S+/read on "
    .. "/subscriptions/" },
  { "the token endpoint failing", { fail5xx = "1000:oauth2" }, "azure/temporarily_unavailable: preflight: Azure could "
    .. "not be read %(HTTP 503 temporarily_unavailable, " .. REQUEST_ID .. "%)" },
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

t.test("a preflight that finds a real problem is still a safety refusal (exit 3)", function()
  e:clear()
  e:fault { not_allowlisted = "1" }
  local r = t.run(("-i %s run provision -e hsms=hsm-a:stamp1 -e retries=0 --yes"):format(util.shell_quote(inventory)))
  e:clear()
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("safety/PreflightFailed", 1, true), r.stderr)
end)
