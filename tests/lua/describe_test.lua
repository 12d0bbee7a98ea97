-- `dhsm list` and `dhsm doc` describe playbooks without running them: a
-- playbook whose top level would act (write a file, run a command, call
-- Azure, loop forever) is listed and documented and nothing happens.
-- `dhsm run` still loads it for real.
local t = require "dhsm.test"
local util = require "dhsm.util"

local q = util.shell_quote

-- The old code ran these top levels, loops included: a generous cap turns
-- that hang into a failure (describing takes well under a second).
local function dhsm_cmd(args) return "timeout 300 " .. t.cmd(args) end

-- A folder of playbooks whose top levels act; `marker` is where they write.
local function hostile_folder()
  local dir = t.tmpdir()
  local marker = dir .. "/acted"
  t.write(dir .. "/writer.lua", ([[
local azure = require "dhsm.azure"
local f = io.open(%q, "a") f:write("io.open ran\n") f:close()
os.execute("echo os.execute ran >> " .. %q)
if os.getenv("DHSM_FIXTURE_DELETE") then   -- unset: a real load skips it; in the sandbox it is a stand-in, truthy
  local c <close> = azure.client { subscription = "00000000-0000-0000-0000-000000000000" }
  c:delete("/subscriptions/x")
end
dhsm.spawn(function() end)
return {
  description = "Writes when loaded (test fixture)",
  params = { target = { type = "string", required = true, description = "the victim" } },
  run = function(ctx, p) io.stdout:write("ran with ", p.target, "\n") end,
}
]]):format(marker, marker))
  t.write(dir .. "/spinner.lua", [[
while true do end
return { description = "never returns", run = function() end }
]])
  t.write(dir .. "/catcher.lua", [[
for _ = 1, 1e9 do pcall(function() while true do end end) end
return { description = "pcall cannot outlast the budget", run = function() end }
]])
  t.write(dir .. "/finaliser.lua", [[
setmetatable({}, { __gc = function() while true do end end })
return { description = "a finaliser", run = function() end }
]])
  return dir, marker
end

t.test("list describes playbooks whose top level acts, without acting", function()
  local dir, marker = hostile_folder()
  local audit = dir .. "/audit.jsonl"
  local r = t.sh(dhsm_cmd("--audit " .. q(audit) .. " -I " .. q(dir) .. " list"))
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("writer%s+Writes when loaded %(test fixture%)"), r.stdout)
  t.ok(r.stdout:find("spinner%s+%(cannot describe: .*takes too long"), r.stdout)
  t.ok(r.stdout:find("catcher%s+%(cannot describe: .*takes too long"), r.stdout)
  t.ok(r.stdout:find("finaliser%s+%(cannot describe: .*__gc is not allowed"), r.stdout)
  t.ok(r.stdout:find("provision%s+Create Dedicated HSMs"), r.stdout)   -- the shipped ones still describe
  t.eq(util.read_file(marker), nil, "nothing was written")
  t.eq(util.read_file(audit), nil, "nothing was audited: no module was called")
end)

t.test("doc documents a playbook whose top level acts, without acting", function()
  local dir, marker = hostile_folder()
  local r = t.sh(dhsm_cmd("-I " .. q(dir) .. " doc writer"))
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("target%s+string%s+yes%s+the victim"), r.stdout)
  t.eq(util.read_file(marker), nil, "nothing was written")
  r = t.sh(dhsm_cmd("-I " .. q(dir) .. " doc spinner"))
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("takes too long", 1, true), r.stderr)
end)

t.test("the shipped playbooks describe exactly as they load", function()
  local play = require "dhsm.play"
  local paths = require "dhsm.paths"
  local compared = {}
  for _, found in ipairs(paths.list_playbooks()) do
    if found.embedded then
      found = paths.find_playbook(found.name)
      local d, l = play.describe(found), play.load(found)
      t.eq(play.doc(d), play.doc(l), found.name)
      compared[#compared + 1] = found.name
    end
  end
  table.sort(compared)
  t.eq(compared, { "decommission", "diagnose", "ha-recover", "initialize", "ntls-reexchange", "orphans", "provision" })
end)

t.test("run still loads the playbook for real", function()
  local dir, marker = hostile_folder()
  local r = t.sh(dhsm_cmd("-I " .. q(dir) .. " run writer -e target=x"))
  t.ok(r.stdout:find("ran with x", 1, true), r.stdout .. r.stderr)
  t.ok((util.read_file(marker) or ""):find("io.open ran", 1, true), "run executes the top level")
end)

t.test("describing checks the shape the runner needs: description and run", function()
  local dir = t.tmpdir()
  t.write(dir .. "/norun.lua", 'return { description = "no run function" }')
  local r = t.sh(dhsm_cmd("-I " .. q(dir) .. " list"))
  t.ok(r.stdout:find("norun%s+%(cannot describe: .*field 'run' must be a function"), r.stdout)
end)

t.test("a spec that takes values from a module is described in part, not refused; run loads it whole", function()
  local dir = t.tmpdir()
  t.write(dir .. "/modular.lua", [[
local hsm = require "dhsm.azure.hsm"
return {
  description = "Specs with module values (test fixture)",
  params = {
    hsms = { type = "list", required = true, unique = "name",
      items = { type = "record", fields = { { "name", hsm.NAME }, { "stamp", { pattern = "^%w+$", expect = "a stamp name" } } } },
      description = "name[:stamp]" },
    sku = { type = "enum", values = { hsm.SKU }, default = hsm.SKU, description = "the SKU" },
    name = hsm.NAME,
    rename = { type = "boolean", requires = { "name" }, description = "rename" },
  },
  run = function(ctx, p) io.stdout:write(p.hsms[1].name, " ", p.sku, " ", tostring(p.name), "\n") end,
}
]])
  local r = t.sh(dhsm_cmd("-I " .. q(dir) .. " list"))
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("modular%s+Specs with module values"), r.stdout)
  r = t.sh(dhsm_cmd("-I " .. q(dir) .. " doc modular"))
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("hsms%s+list of %S+%s+yes%s+name%[:stamp%]"), r.stdout)   -- what the sandbox could see of it
  t.ok(r.stdout:find("rename%s+boolean"), r.stdout)
  r = t.sh(dhsm_cmd("-I " .. q(dir) .. " run modular -e hsms=hsm-a:s1 -e name=hsm-b"))
  t.eq({ r.status, r.stdout }, { 0, "hsm-a SafeNet Luna Network HSM A790 hsm-b\n" }, r.stderr)
  r = t.sh(dhsm_cmd("-I " .. q(dir) .. " run modular -e hsms=hsm-a:s1,hsm-a -e name=x"))
  t.eq(r.status, 2, "run checks the whole spec: " .. r.stderr)
  t.ok(r.stderr:find('hsms: name "hsm-a" given more than once', 1, true), r.stderr)
  t.ok(r.stderr:find("name: expected 3-24 letters, digits or '-', got \"x\"", 1, true), r.stderr)
  -- a real mistake beside them is still refused, by both
  t.write(dir .. "/mistaken.lua", [[
local hsm = require "dhsm.azure.hsm"
return { description = "x", run = function() end, params = {
  sku = { type = "enum", values = { hsm.SKU } }, count = { type = "integr" } } }
]])
  for _, how in ipairs { "doc mistaken", "run mistaken" } do
    r = t.sh(dhsm_cmd("-I " .. q(dir) .. " " .. how))
    t.eq(r.status, 2, how .. ": " .. r.stderr)
    t.ok(r.stderr:find([[params.count: unknown type "integr"]], 1, true), r.stderr)
    t.ok(not r.stderr:find("params.sku", 1, true), r.stderr)
  end
end)

t.test("describing walks the returned table raw: a __pairs or __tostring that never returns does not hang list", function()
  local dir = t.tmpdir()
  t.write(dir .. "/pairs.lua", [[
local forever = { __pairs = function() while true do end end }
return setmetatable({ description = "loops in __pairs", run = function() end,
  params = setmetatable({ a = setmetatable({ type = "string" }, forever) }, forever) }, forever)
]])
  t.write(dir .. "/tostring.lua", [[
error(setmetatable({}, { __tostring = function() while true do end end }))
]])
  local r = t.sh("timeout 30 " .. t.cmd("-I " .. q(dir) .. " list"))
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("pairs%s+loops in __pairs"), r.stdout)
  t.ok(r.stdout:find("tostring%s+%(cannot describe: .*it raised a table, not a message"), r.stdout)
  r = t.sh("timeout 30 " .. t.cmd("-I " .. q(dir) .. " doc pairs"))
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("\n  a +string"), r.stdout)
end)
