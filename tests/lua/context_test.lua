-- dhsm.play.context: what steps share comes from the run, made once and
-- closed when the run ends, however it ends.
local t = require "dhsm.test"
local cjson = require "cjson"
local context = require "dhsm.play.context"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local fixtures = t.here() .. "/../fixtures"
local q = util.shell_quote
local estate = require("support.estate").start { args = "--appliances 1" }

local function run(args)
  return estate:run(args, { env = "DHSM_PATH=" .. q(fixtures .. "/playbooks") })
end

t.test("a run's client, sessions and folder are made once and are gone when it ends", function()
  local r = run("run shared -e hsm=hsm1 --json")
  t.eq(r.status, 0, r.stderr)
  local doc = cjson.decode(r.stdout)
  local got = doc.result
  t.eq({ got.same_client, got.same_session, got.same_dir }, { true, true, true })
  t.eq(got.serial, estate.inventory:hsm("hsm1").serial)
  t.eq({ got.group, got.poll_interval }, { estate.inventory.azure.resource_group, 0.5 })
  t.eq(sys.stat(got.scratch), nil, "the scratch folder is removed with its files")
end)

t.test("a failed run closes them too", function()
  local r = run("run shared -e hsm=hsm1 -e fail=true --json")
  t.eq(r.status, 1, r.stderr)
  local doc = cjson.decode(r.stdout)
  t.eq(doc.error.message:match("failing on purpose") ~= nil, true, doc.error.message)
  t.eq(sys.stat(doc.steps[1].result.scratch), nil)
end)

t.test("release closes every session, the client and the folder; asked again, they are made anew", function()
  local ctx = context.new { inventory = estate.inventory, playbook = { name = "t" } }
  local s = ctx:appliance("hsm1")
  local c = ctx:azure()
  local dir = ctx:scratch_dir()
  t.eq(sys.stat(dir).type, "dir")
  c:get(c:group_path())
  ctx:release()
  t.ok(s.closed, "the session is closed")
  t.raises(function() c:get(c:group_path()) end, "this session is closed")
  t.eq(sys.stat(dir), nil)
  local again = ctx:appliance("hsm1")
  t.ok(not rawequal(again, s) and not again.closed, "a closed session is opened anew")
  t.ok(not rawequal(ctx:azure(), c), "a new client")
  ctx:release()
  t.ok(again.closed, "the session opened after a release is closed by the next")
end)

t.test("asked with other options, the run's client says so; without an azure section, what is missing", function()
  local ctx = context.new { inventory = estate.inventory, playbook = { name = "t" } }
  ctx:azure { poll_interval = 1 }
  t.eq(t.raises(function() ctx:azure { poll_interval = 2 } end, "usage").message:match("made with other options"),
    "made with other options")
  ctx:release()
  local bare = context.new { inventory = require("dhsm.inventory").from_table({ hsms = {} }, "bare"),
    playbook = { name = "needs-azure" } }
  t.ok(t.raises(function() bare:azure() end, "usage").message:find("needs-azure needs the inventory's azure section",
    1, true))
end)
