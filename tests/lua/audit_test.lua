-- The audit log: one JSON object per line, context, modes, and whole lines
-- even when the process is killed in the middle.
local t = require "dhsm.test"
local cjson = require "cjson"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local function records(path)
  local out = {}
  for line in io.lines(path) do out[#out + 1] = cjson.decode(line) end
  return out
end

t.test("a record carries time, context, target, action, outcome and fields", function()
  local dir = t.tmpdir()
  local path = dir .. "/sub/audit.jsonl"
  local r = t.sh(t.cmd("--audit " .. path .. " exec -e " .. util.shell_quote([[
    local ctx = dhsm.context()
    ctx.playbook, ctx.step = "decommission", "zeroize"
    dhsm.audit.write{ action = "hsm.zeroize", target = "hsm1", outcome = "ok",
                      duration_ms = 12.5, attempts_left = 0, extra = { a = 1 } }
    dhsm.spawn(function()
      dhsm.audit.write{ action = "child", target = "hsm2" }
    end):join()
  ]])))
  t.eq(r.status, 0, r.stderr)
  local recs = records(path)
  t.eq(#recs, 2)
  local a = recs[1]
  t.ok(a.ts:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), a.ts)
  t.ok(a.run:match("^%d+T%d+%-%x+$"), a.run)
  t.eq({ a.playbook, a.step, a.target, a.action, a.outcome, a.duration_ms, a.attempts_left, a.extra.a },
       { "decommission", "zeroize", "hsm1", "hsm.zeroize", "ok", 12.5, 0, 1 })
  t.eq({ recs[2].step, recs[2].run, recs[2].action }, { "zeroize", a.run, "child" })
  t.eq(sys.stat(path).mode, tonumber("600", 8))
  t.eq(sys.stat(dir .. "/sub").mode, tonumber("700", 8))
end)

t.test("a record written as a cancelled task closes carries that task's context", function()
  -- Ctrl-C cancels a run's task: its <close> handlers write its last records
  local dir = t.tmpdir()
  local path = dir .. "/audit.jsonl"
  local r = t.sh(t.cmd("--audit " .. path .. " exec -e " .. util.shell_quote([[
    local task = dhsm.spawn(function()
      dhsm.context().playbook, dhsm.context().step = "closing-play", "closing-step"
      local last <close> = setmetatable({}, { __close = function() dhsm.audit.write{ action = "closed" } end })
      dhsm.sleep(30)
    end)
    dhsm.sleep(0.05)
    task:cancel()
    dhsm.audit.write{ action = "after" }
  ]])))
  t.eq(r.status, 0, r.stderr)
  local recs = records(path)
  t.eq({ recs[1].action, recs[1].playbook, recs[1].step }, { "closed", "closing-play", "closing-step" })
  t.eq({ recs[2].action, recs[2].playbook, recs[2].step }, { "after", nil, nil }, "the spawner's own context")
  t.eq(recs[1].run, recs[2].run)
end)

t.test("the path comes from --audit, then DHSM_AUDIT, then XDG_STATE_HOME", function()
  local dir = t.tmpdir()
  local r = t.sh(("DHSM_AUDIT=%s/env.jsonl %s"):format(dir, t.cmd("exec -e 'print(dhsm.audit.path())'")))
  t.eq(r.stdout, dir .. "/env.jsonl\n")
  r = t.sh(("env -u DHSM_AUDIT XDG_STATE_HOME=%s %s"):format(dir, t.cmd("exec -e 'print(dhsm.audit.path())'")))
  t.eq(r.stdout, dir .. "/dhsm/audit.jsonl\n")
end)

t.test("audit.write names a missing or malformed field", function()
  t.raises(function() dhsm.audit.write {} end, "field 'action' is required")
  t.raises(function() dhsm.audit.write { action = "x", target = {} } end, "field 'target' must be a string")
end)

t.test("an unwritable log is an error: no action without its record", function()
  local dir = t.tmpdir()
  t.write(dir .. "/file", "")
  local r = t.sh(t.cmd("--audit " .. dir .. "/file/audit.jsonl exec -e 'dhsm.audit.write{action=\"x\"}'"))
  t.eq(r.status, 1)
  t.ok(r.stderr:find("audit: cannot open the audit log " .. dir .. "/file/audit.jsonl", 1, true), r.stderr)
end)

t.test("killing the process mid-run cuts at most the record being written, on a line of its own", function()
  local dir = t.tmpdir()
  local path = dir .. "/audit.jsonl"
  local writer = ([[
    local pad = string.rep("x", 3000)
    for i = 1, 1e9 do dhsm.audit.write{ action = "a", target = "t" .. i, pad = pad } end
  ]])
  -- killed once the log has grown past 200 KB, however slow the machine is
  -- that day (a fixed delay wrote too little under load)
  t.sh(("%s & pid=$!; for i in $(seq 600); do [ \"$(stat -c %%s %s 2>/dev/null || echo 0)\" -gt 200000 ] && break; "
    .. "sleep 0.05; done; kill -KILL $pid; wait $pid"):format(t.cmd("--audit " .. path .. " exec -e " .. util.shell_quote(writer)),
    util.shell_quote(path)))
  local data = util.read_file(path)
  t.ok(#data > 100000, "wrote only " .. #data .. " bytes")
  -- the kill may cut the record being written (a write spanning a page);
  -- the next process ends that line before it appends
  local r = t.sh(t.cmd("--audit " .. path .. " exec -e " .. util.shell_quote([[dhsm.audit.write{ action = "b" }]])))
  t.eq(r.status, 0, r.stderr)
  data = util.read_file(path)
  t.eq(data:sub(-1), "\n", "the file ends in a whole line")
  local lines = {}
  for line in data:gmatch("[^\n]+") do lines[#lines + 1] = line end
  local torn = 0
  for i, line in ipairs(lines) do
    local ok, rec = pcall(cjson.decode, line)
    if i == #lines then
      t.ok(ok and rec.action == "b", "the next record is whole and alone on its line: " .. line:sub(1, 80))
    elseif i == #lines - 1 and not ok then
      torn = torn + 1                          -- at most the one the kill cut, on a line of its own
      t.ok(line:find('^{"'), "a torn record, not two run together: " .. line:sub(1, 80))
    else
      t.ok(ok and rec.action == "a", "not a whole record: " .. line:sub(1, 80))
    end
  end
  t.ok(#lines > 10, "only " .. #lines .. " records")
  t.ok(torn <= 1)
end)
