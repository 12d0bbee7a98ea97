-- The inventory's azure section: audience (sovereign clouds) and the
-- client's tuning (timeout, poll_interval, ...) are accepted, reach the
-- client, and a bad value is refused naming the field.
local t = require "dhsm.test"
local cjson = require "cjson"
local util = require "dhsm.util"

local q = util.shell_quote
local estate = require("support.estate").start { args = "--appliances 0" }

-- The estate's inventory with the azure section changed by `edit`, as a file.
local function inventory_with(edit)
  local inv = cjson.decode(util.read_file(estate.dir .. "/inventory.json"))
  edit(inv.azure)
  local path = t.tmpdir() .. "/inventory.json"
  t.write(path, cjson.encode(inv))
  return path
end

local function exec(inv, code)
  return t.sh(t.cmd(("-i %s exec --json -e %s"):format(q(inv), q(code))))
end

t.test("audience, timeout, poll_interval and the rest are read from the inventory", function()
  local inv = inventory_with(function(az)
    az.audience = az.endpoint
    az.timeout, az.poll_interval, az.retry_deadline, az.max_attempts, az.max_connections = 20, 0.5, 30, 3, 4
  end)
  local r = exec(inv, [[return { status = az:get(az:group_path()).status, audience = az.audience,
    timeout = az.timeout, poll_interval = az.poll_interval, retry_deadline = az.retry_deadline,
    max_attempts = az.max_attempts }]])
  t.eq(r.status, 0, r.stderr)
  local doc = cjson.decode(r.stdout)
  t.eq(doc, { status = 200, audience = doc.audience, timeout = 20, poll_interval = 0.5, retry_deadline = 30,
    max_attempts = 3 })
  t.ok(doc.audience:match("^https://"), doc.audience)
end, { timeout = 60 })

t.test("the audience is the token's scope: another cloud's audience is what AAD is asked for", function()
  local inv = inventory_with(function(az) az.audience = "https://management.usgovcloudapi.net" end)
  local r = exec(inv, "return az:get(az:group_path()).status")
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("management.usgovcloudapi.net", 1, true), r.stderr)
end, { timeout = 60 })

t.test("bad azure options in the inventory are refused with status 2, naming the field", function()
  local cases = {
    { "audience", "management.azure.com", "azure.audience: expected the token audience" },
    { "timeout", "60", 'azure.timeout: expected seconds, a number from 0.01 to 3600, got "60"' },
    { "poll_interval", -1, "azure.poll_interval: expected seconds" },
    { "max_attempts", 2.5, "azure.max_attempts: expected integer 1-100, got 2.5" },
    { "max_connections", 0, "azure.max_connections: expected integer 1-64, got 0" },
    { "retry_deadline", true, "azure.retry_deadline: expected seconds" },
  }
  for _, c in ipairs(cases) do
    local inv = inventory_with(function(az) az[c[1]] = c[2] end)
    local r = exec(inv, "return 1")
    t.eq(r.status, 2, c[1] .. ": " .. r.stderr)
    t.ok(r.stderr:find(c[3], 1, true), r.stderr)
  end
end)
