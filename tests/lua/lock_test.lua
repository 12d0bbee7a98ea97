-- sys.lock: one holder at a time, among tasks and among processes, and no
-- stale lock after the holder is killed.
local t = require "dhsm.test"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

t.test("a second holder waits for the first, tasks keep running meanwhile", function()
  local path = t.tmpdir() .. "/a.lock"
  local first = assert(sys.lock(path))
  local order = {}
  local waiter = dhsm.spawn(function()
    local lk <close> = assert(sys.lock(path, 5))
    order[#order + 1] = "waiter holds it"
  end)
  dhsm.sleep(0.1)
  order[#order + 1] = "first lets go"
  first:unlock()
  waiter:join()
  t.eq(order, { "first lets go", "waiter holds it" })
end)

t.test("a holder that gives up learns the pid of the holder", function()
  local path = t.tmpdir() .. "/b.lock"
  local lk <close> = assert(sys.lock(path))
  local got, who = sys.lock(path, 0.05)
  t.eq(got, nil)
  t.eq(who, sys.getpid())
  t.eq(lk:held(), true)
  lk:unlock()
  t.eq(lk:held(), false)
  t.ok(sys.lock(path, 0), "free again after unlock")
end)

t.test("another process waits, and a killed holder leaves no stale lock", function()
  local dir = t.tmpdir()
  local path = dir .. "/c.lock"
  -- a child holds the lock, says so, then is killed with SIGKILL
  local child = t.sh(("(%s exec -e %s & echo $! > %s/pid; wait) >/dev/null 2>&1 &"):format(
    util.shell_quote(t.dhsm), util.shell_quote(("local l = assert(require('dhsm.sys').lock(%q)); "
      .. "io.open(%q, 'w'):close(); dhsm.sleep(30)"):format(path, dir .. "/held")), dir))
  t.eq(child.status, 0)
  local deadline = dhsm.now() + 10
  while not io.open(dir .. "/held") and dhsm.now() < deadline do dhsm.sleep(0.02) end
  local got, who = sys.lock(path, 0.05)
  t.eq(got, nil, "the child holds it")
  t.ok(math.type(who) == "integer" and who ~= sys.getpid(), tostring(who))
  t.sh("kill -9 " .. who)
  local lk = sys.lock(path, 5)
  t.ok(lk, "free once its holder is dead")
end)

t.test("a lock in a folder that does not exist fails with the path", function()
  local got, err = sys.lock("/nonexistent-dir/x.lock")
  t.eq(got, nil)
  t.ok(err:find("/nonexistent-dir/x.lock", 1, true), err)
end)
