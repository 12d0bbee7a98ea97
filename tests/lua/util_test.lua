-- dhsm.util helpers that touch the file system.
local t = require "dhsm.test"
local util = require "dhsm.util"
local sys = require "dhsm.sys"

t.test("scratch_dir: a private folder, gone with its files when closed; a link is unlinked, not followed", function()
  local outside = t.tmpdir()
  t.write(outside .. "/keep", "kept")
  local path
  do
    local dir, gone <close> = util.scratch_dir("dhsm-util-test-")
    path = dir
    t.eq(sys.stat(dir).type, "dir")
    t.eq(sys.stat(dir).mode, tonumber("700", 8))
    t.write(dir .. "/server.pem", "pem")
    t.ok(os.execute(("ln -s %s %s"):format(util.shell_quote(outside), util.shell_quote(dir .. "/link"))))
  end
  t.eq(sys.stat(path), nil, "the folder is gone")
  t.eq(util.read_file(outside .. "/keep"), "kept", "what a link pointed to is untouched")
end)

t.test("scratch_dir: a subfolder left inside stays, and so does the folder (nothing is removed recursively)", function()
  local path
  do
    local dir, gone <close> = util.scratch_dir("dhsm-util-test-")
    path = dir
    t.ok(sys.mkdir(dir .. "/sub", tonumber("700", 8)))
    t.write(dir .. "/sub/f", "x")
    t.write(dir .. "/top", "y")
  end
  t.eq(sys.stat(path .. "/top"), nil, "its files are removed")
  t.eq(util.read_file(path .. "/sub/f"), "x", "the subfolder stays")
  os.execute("rm -rf " .. util.shell_quote(path))
end)

t.test("backoff: Retry-After when given, else exponential up to the cap, jittered within [half, all]", function()
  t.eq(util.backoff(3, { base = 10, retry_after = 7 }), 7)
  t.eq(util.backoff(3, { base = 10, retry_after = "7" }), 7)
  for n = 1, 6 do
    local step = math.min(30, 0.5 * 2 ^ (n - 1))
    for _ = 1, 20 do
      local b = util.backoff(n, { base = 0.5, cap = 30 })
      t.ok(b >= step / 2 and b <= step, ("attempt %d: %g not in [%g, %g]"):format(n, b, step / 2, step))
    end
  end
  t.eq(util.backoff(4, { base = 0 }), 0)
end)
