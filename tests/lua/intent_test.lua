-- The gate writes a change's intent to the audit log, on disk, before the
-- act (dhsm.act): a dhsm killed (SIGKILL) between the intent and the act's
-- end leaves the intent, with no outcome, for dhsm.proc and dhsm.pkcs11
-- alike - the record that says the change may have happened.
local t = require "dhsm.test"
local util = require "dhsm.util"
local p11 = require "support.p11"

local q = util.shell_quote

-- Start `dhsm exec -e code` in the background: -> its pid and audit log path.
local function start(code, env)
  local state = t.tmpdir()
  local r = t.sh(("XDG_STATE_HOME=%s DHSM_AUDIT=%s %s %s & echo $! >&2"):format(q(state),
    q(state .. "/audit.jsonl"), env or "", t.cmd("exec -e " .. q(code))))
  local pid = tonumber(r.stderr:match("(%d+)%s*$"))
  t.ok(pid, "started: " .. r.stderr)
  t.cleanup(function() t.sh("kill -9 " .. pid .. " 2>/dev/null") end)
  return pid, state .. "/audit.jsonl"
end

-- The records of `action` in the log: how many intents, how many outcomes.
local function intents(audit, action)
  local sent, done = 0, 0
  for _, rec in ipairs(t.audit_records(audit)) do
    if rec.action == action then
      if rec.outcome == "sending" then sent = sent + 1 else done = done + 1 end
    end
  end
  return sent, done
end

-- Kill pid (SIGKILL) the moment the log holds an intent of `action` with no outcome yet.
local function kill_in_the_act(pid, audit, action)
  local deadline = dhsm.now() + 60
  while dhsm.now() < deadline do
    local sent, done = intents(audit, action)
    if sent > done then
      t.sh("kill -9 " .. pid)
      return
    end
    dhsm.sleep(0.01)
  end
  error("no intent of " .. action .. " appeared within 60 s", 2)
end

t.test("dhsm.proc: killed while the command runs, the intent is in the log and no outcome", function()
  local dir = t.tmpdir()
  local marker = "intent-" .. require("dhsm.sys").random_hex(6)
  t.cleanup(function() t.sh("pkill -f " .. q(marker) .. " 2>/dev/null") end)
  local code = ("require('dhsm.proc').run { argv = { 'sh', '-c', 'sleep 20; touch %s/made', %q } }"):format(dir, marker)
  local pid, audit = start(code)
  kill_in_the_act(pid, audit, "proc.run")
  dhsm.sleep(0.2)
  t.eq({ intents(audit, "proc.run") }, { 1, 0 }, "the intent, and nothing after it")
  local rec = t.audit_records(audit)[#t.audit_records(audit)]
  t.eq({ rec.action, rec.kind, rec.target }, { "proc.run", "proc", "sh" })
  t.ok(rec.command:find("sleep 20", 1, true), rec.command)
end, { timeout = 90 })

if not p11.available() then
  t.test("dhsm.pkcs11 intent (needs SoftHSM2)", function() t.skip("libsofthsm2.so or softhsm2-util is not installed") end)
  return
end

t.test("dhsm.pkcs11: killed while a key pair is generated, the intent is in the log and no outcome", function()
  local hsm = p11.softhsm { "intent" }
  local code = ([[local lib = require('dhsm.pkcs11').load(%q, { env = { SOFTHSM2_CONF = %q } })
local s <close> = lib:open { label = 'intent', rw = true }
s:login('user', secret.env('PIN'))
for i = 1, 50 do s:generate_rsa { label = 'slow' .. i, bits = 4096 } end]]):format(p11.LIB, hsm.conf)
  local pid, audit = start(code, "PIN=" .. q(hsm.pins.intent.user))
  kill_in_the_act(pid, audit, "pkcs11.generate")
  dhsm.sleep(0.2)
  local sent, done = intents(audit, "pkcs11.generate")
  t.eq(sent, done + 1, "the last generation's intent has no outcome")
  local recs = t.audit_records(audit)
  local last = recs[#recs]
  t.eq({ last.action, last.outcome, last.kind }, { "pkcs11.generate", "sending", "pkcs11" })
  t.ok(last.what:find("RSA%-4096 key pair 'slow%d+' on token intent#"), last.what)
end, { timeout = 120 })
