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

-- luna.sessions with a stand-in for luna.open that takes a while to
-- connect, counting what it opened; fn(pool, opened) runs with it.
local function with_slow_open(fn)
  local luna = require "dhsm.luna"
  local real_open, opened = luna.open, {}
  local restore <close> = setmetatable({}, { __close = function() luna.open = real_open end })
  luna.open = function(entry)
    dhsm.sleep(0.05)                          -- the other tasks ask meanwhile
    local s = { name = entry.name, close = function(self) self.closed = true end }
    opened[#opened + 1] = s
    return s
  end
  fn(luna.sessions { hsm = function(_, name) return { name = name } end }, opened)
end

t.test("the sessions pool: tasks asking for one name at once share one connect", function()
  with_slow_open(function(pool, opened)
    local got = dhsm.parallel({ "hsm1", "hsm1", "hsm2", "hsm1" }, function(name) return pool:get(name) end)
    t.eq(#opened, 2, "one session per name")
    t.ok(rawequal(got[1], got[2]) and rawequal(got[1], got[4]) and not rawequal(got[1], got[3]))
    pool:close()
    t.ok(got[1].closed and got[3].closed)
  end)
end)

t.test("the sessions pool: a broken session is closed before it is replaced", function()
  with_slow_open(function(pool, opened)
    local first = pool:get("hsm1")
    first.broken = true                       -- e.g. a command timed out, still logged in as the SO
    local again = pool:get("hsm1")
    t.ok(first.closed, "the broken session is closed")
    t.ok(not rawequal(again, first) and not again.closed and #opened == 2)
    again:close()
    t.ok(not rawequal(pool:get("hsm1"), again), "a closed one is opened anew")
  end)
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
