-- dhsm.azure's retries against the simulated estate: a DELETE whose
-- connection was reset, or that was answered 5xx, after ARM took it is
-- settled by reading the state, never sent twice (counted in the estate's
-- own log); throttling is shown as a progress line and recorded in the
-- audit log, not absorbed silently.
local t = require "dhsm.test"
local cjson = require "cjson"
local util = require "dhsm.util"
local support = require "support.estate"
local hsm = require "dhsm.azure.hsm"

local estate = support.start { set = { retry_after = 0 }, args = "--appliances 0" }

-- The estate's HSM name's DELETEs in its log.
local function deletes(name)
  return support.count(estate:log(), "^arm DELETE /subscriptions/%S+/dedicatedHSMs/" .. name .. " %->")
end

-- A DELETE of a new HSM's resource (device-less, zeroized by the estate's
-- flag) with the connection reset once ARM has taken it (or another fault:
-- {name = value}); waited for.
local function delete_through_reset(name, delete_seconds, fault)
  local c = estate:azure()
  t.eq(select(2, estate:put_hsm(c, name, { vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp1" })), "Succeeded")
  estate:fault(util.merged(fault or { reset = "1:DELETE" }, { delete_seconds = delete_seconds }))
  estate:control("POST", "/hsms/" .. name .. "/zeroized", { zeroized = true, resource_group = c.resource_group })
  local r = c:delete(hsm.path(c, name), { allow_unzeroized = true })
  c:wait(r, { timeout = 30 })
  estate:clear()
  return c, r
end

t.test("a DELETE reset after ARM took it is not sent again: the resource read Deleting is waited for", function()
  local c, r = delete_through_reset("hsm1", 1)
  t.eq(r.settled, "Deleting")
  t.eq(hsm.get(c, "hsm1"), nil)
  t.eq(deletes("hsm1"), 1, table.concat(estate:log(), "\n"))
end)

t.test("a DELETE reset after ARM took it and finished it is settled by ARM's 404, not sent again", function()
  local c, r = delete_through_reset("hsm2", 0)
  t.eq({ r.status, r.settled }, { 204, "gone" })
  t.eq(hsm.get(c, "hsm2"), nil)
  t.eq(deletes("hsm2"), 1, table.concat(estate:log(), "\n"))
end)

t.test("a DELETE answered 5xx after ARM took it is not sent again: the state is read first", function()
  local c, r = delete_through_reset("hsm3", 1, { fail5xx_after = "1:DELETE" })
  t.eq(r.settled, "Deleting")
  t.eq(hsm.get(c, "hsm3"), nil)
  t.eq(deletes("hsm3"), 1, table.concat(estate:log(), "\n"))
end)

t.test("a DELETE answered 5xx and not taken is sent again once the state reads as it was", function()
  local from = #estate:log()
  local c, r = delete_through_reset("hsm4", 0, { fail5xx = "1:DELETE" })
  t.eq({ r.status, r.settled }, { 202, nil })
  t.eq(hsm.get(c, "hsm4"), nil)
  local log = estate:log()
  local sent = {}
  for i = from + 1, #log do
    local m = log[i]:match("^arm (%u+) /subscriptions/%S+/dedicatedHSMs/hsm4 %->")
    if m == "DELETE" or (m == "GET" and sent[#sent] == "DELETE") then sent[#sent + 1] = m end
  end
  t.eq({ sent[1], sent[2], sent[3] }, { "DELETE", "GET", "DELETE" }, "read between the two DELETEs")
  t.eq(deletes("hsm4"), 2)
end)

t.test("a DELETE answered 5xx whose follow-up read fails too: its fate unknown, the DELETE's own error is raised, "
  .. "and it is not sent again", function()
  local c = estate:azure()
  t.eq(select(2, estate:put_hsm(c, "hsm5", { vnet = "hsm-vnet", subnet = "hsm", stamp = "stamp1" })), "Succeeded")
  local from = #estate:log()
  estate:fault { fail5xx_after = "1:DELETE", forbid = "1:GET " .. hsm.path(c, "hsm5"), delete_seconds = 1 }
  estate:control("POST", "/hsms/hsm5/zeroized", { zeroized = true, resource_group = c.resource_group })
  local ok, err = pcall(c.delete, c, hsm.path(c, "hsm5"), { allow_unzeroized = true })
  estate:clear()
  t.eq(ok, false, "the DELETE's fate is unknown: not reported as done")
  t.ok(type(err) == "table" and err.kind == "azure" and tostring(err.message):find(
    "^DELETE /subscriptions/%S+/dedicatedHSMs/hsm5: HTTP 50[03], request id "), tostring(err and err.message or err))
  local n = estate:count_since(from, { delete = "^arm DELETE %S+/dedicatedHSMs/hsm5 %->",
    read = "^arm GET %S+/dedicatedHSMs/hsm5 %-> 403" })
  t.eq(n, { delete = 1, read = 1 }, "one DELETE (taken, answered 5xx), one read that failed, no DELETE more")
end)

t.test("throttling shows a progress line with the wait and the attempt, and the audit log records it", function()
  estate:fault { throttle = "1:dedicatedHSMs", retry_after = 1 }
  local state = t.tmpdir()
  local r = estate:run("run orphans", { state = state })
  estate:clear()
  t.ok(r.stderr:find("throttled by ARM, retrying in 1.0 s (attempt 2)", 1, true), r.stderr)
  local found
  for line in (util.read_file(state .. "/audit.jsonl") or ""):gmatch("[^\n]+") do
    local rec = cjson.decode(line)
    if rec.action == "azure.retry" then found = rec end
  end
  t.ok(found, "no azure.retry record in the audit log")
  t.eq({ found.outcome, found.status, found.attempt, found.wait_s }, { "throttled", 429, 2, 1 })
  t.ok(found.target:find("/dedicatedHSMs", 1, true), found.target)
end)
