-- Signed plan files (dhsm.plan, `dhsm plan`): the canonical body and its
-- digest, OpenSSH signatures made and checked by the real ssh-keygen, the
-- host's policy, and the command line end to end.  Keys are made here, in
-- a folder of the test's own; no test reads the operator's keys or policy.
local t = require "dhsm.test"
local act = require "dhsm.act"
local cjson = require "cjson"
local plan = require "dhsm.plan"
local proc = require "dhsm.proc"
local util = require "dhsm.util"

if not proc.read_only { "ssh-keygen", "-l", "-f", "/dev/null" } then
  t.test("ssh-keygen is there", function() t.skip("no ssh-keygen on $PATH: make deps installs openssh-client") end)
  return
end

-- A folder with ed25519 keys for alice (the author), bob and carol (listed
-- approvers) and mallory (not listed), and an allowed_signers file.
local function keyring()
  local dir = t.tmpdir()
  local k = { dir = dir }
  local lines = {}
  for _, who in ipairs { "alice", "bob", "carol", "mallory" } do
    k[who] = dir .. "/" .. who
    local r = t.sh { "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f", k[who] }
    t.eq(r.status, 0, r.stderr)
    if who ~= "mallory" then
      local pub = util.read_file(k[who] .. ".pub"):match("^(%S+ %S+)")
      lines[#lines + 1] = who .. "@example " .. pub
    end
  end
  k.allowed = t.write(dir .. "/allowed_signers", table.concat(lines, "\n") .. "\n")
  return k
end

local keys = keyring()

local CHANGES = {
  { kind = "luna", action = "run", target = "hsm1", what = "show the partitions of hsm1" },
  { kind = "azure", action = "delete", target = "hsm1", what = "delete the dedicated HSM hsm1", destructive = true,
    fields = { etag = "W/\"7\"" } },
  { kind = "file", action = "write", target = "/tmp/x", what = "write the report" },
}

local function new_plan(o)
  o = o or {}
  return plan.new { playbook = "decommission", params = { name = "hsm1", password = "env:HSM1_SO" },
    inventory = { path = "/etc/dhsm/estate.json", sha256 = ("ab"):rep(32), fields = { hsms = 1 } },
    changes = o.changes or CHANGES, reads = { { step = "find", result = { serial = "1234", zeroized = false } } },
    ttl = o.ttl }
end

-- A plan signed by alice and approved by each of `approvers` (key names).
local function approved_by(approvers, o)
  local p = new_plan(o)
  plan.sign(p, keys.alice, "author")
  for _, who in ipairs(approvers) do plan.sign(p, keys[who], "approver", who .. "@example") end
  return plan.decode(plan.encode(p), "approved_by")        -- as a reviewer's file would be read
end

local function policy(n)
  return { approvals = n, allowed_signers = keys.allowed }
end

---------------------------------------------------------------------------
-- the canonical body

t.test("canonical JSON: keys sorted, no spaces, integral numbers as integers, one escaping", function()
  t.eq(plan.canonical { b = {}, a = { 1, 2.5, "x\n", 3.0, -0.5 }, c = { z = true, y = cjson.null } },
    '{"a":[1,2.5,"x\\n",3,-0.5],"b":{},"c":{"y":null,"z":true}}')
  t.eq(plan.canonical { ["é"] = "\"\\\t\r\1\127/€😀" }, '{"é":"\\"\\\\\\t\\r\\u0001\\u007f/€😀"}')
  t.eq(plan.canonical { a = 1, B = 2, ["é"] = 3, aa = 4, [""] = 5 }, '{"":5,"B":2,"a":1,"aa":4,"é":3}', "byte order")
  local a, b = {}, {}
  for i = 1, 30 do a["k" .. i] = i end
  for i = 30, 1, -1 do b["k" .. i] = i end
  t.eq(plan.canonical(a), plan.canonical(b), "insertion order does not matter")
end)

t.test("canonical round trip through the file: nested, empty tables, numbers, unicode and escapes", function()
  local p = new_plan { changes = { {
    kind = "pkcs11", action = "destroy", target = "p1", destructive = true, what = "tab\there \"quoted\" back\\slash",
    fields = { nested = { { deep = { {}, { 1, 2, { x = {} } } } } }, empty = {}, list = { {}, {} },
      numbers = { 0, -1, 2 ^ 53, -(2 ^ 53), 0.1, 1e300, -2.5e-300, 12345678901 },
      unicode = "Zürich ☃ 😀", control = "\0\1\31\127", slash = "a/b" } } } }
  local text = plan.encode(p)
  local again = plan.decode(text, "round trip")
  t.eq(plan.canonical(again.body), plan.canonical(p.body))
  t.eq(plan.digest(again), plan.digest(p))
  t.eq(plan.encode(again), text, "the file's text is stable too")
end)

t.test("canonical refuses what JSON cannot keep, naming where", function()
  t.raises(function() plan.canonical { x = { 1, 2, nil, 4 } } end, "body%.x.*mixed or sparse")
  t.raises(function() plan.canonical { x = { 1, a = 2 } } end, "body%.x")
  t.raises(function() plan.canonical { n = 0 / 0 } end, "'body%.n': expected a finite number")
  t.raises(function() plan.canonical { n = 2 ^ 60 } end, "'body%.n': expected an integer within")
  t.raises(function() plan.canonical { f = print } end, "'body%.f'")
  t.raises(function() plan.canonical { s = "\xff" } end, "UTF%-8")
  t.raises(function() plan.new { playbook = "x", params = { pw = require("dhsm.secret").env("HOME") } } end,
    "a secret's reference")
  t.raises(function() plan.new { playbook = "x", ttl = 8 * 86400 } end, "field 'ttl'")
  t.raises(function() plan.new { playbook = "x", ttl = 0 } end, "field 'ttl'")
  t.raises(function() plan.new { playbook = "a b" } end, "field 'playbook'")
  t.raises(function() plan.new { playbook = { name = "x" } } end, "field 'playbook'")
  t.raises(function() plan.new { playbook = { name = "relative/x.lua", sha256 = ("0"):rep(64) } } end, "field 'playbook'")
  t.raises(function() plan.new { playbook = "x", change = {} } end, "unknown field 'change'")
  t.raises(function() plan.new { playbook = "x", inventory = { path = "i.json", sha256 = "no" } } end, "inventory%.sha256")
end)

t.test("a playbook by path with the digest of its code, as dhsm run --check --out names it", function()
  local p = plan.new { playbook = { name = "/srv/playbooks/retire.lua", sha256 = ("c0"):rep(32) }, ttl = 60 }
  plan.sign(p, keys.alice, "author")
  plan.sign(p, keys.bob, "approver")
  local again = plan.decode(plan.encode(p), "by path")
  t.eq(plan.playbook_name(again), "/srv/playbooks/retire.lua")
  t.eq(#plan.verify(again, policy(1)).approvers, 1)
  t.ok(plan.render(again):find("playbook code sha256:" .. ("c0"):rep(32), 1, true))
end)

t.test("a new plan: author and times from the OS, the author's key in the body once signed", function()
  local p = new_plan { ttl = 3600 }
  t.ok(p.body.author.user ~= "" and p.body.author.host ~= "")
  t.eq(#p.signatures, 0)
  plan.sign(p, keys.alice, "author")
  t.eq(p.body.author.key, plan.key_fingerprint(keys.alice .. ".pub"))
  t.eq(p.signatures[1].key, p.body.author.key)
  t.eq(plan.message(p), "dhsm-plan sha256:" .. plan.digest(p) .. "\n")
  t.raises(function() plan.sign(p, keys.alice, "author") end, "signed by its author already")
  t.raises(function() plan.sign(new_plan(), keys.bob, "approver") end, "no author's signature")
  t.raises(function() plan.sign(p, keys.bob, "boss") end, "role")
  t.raises(function() plan.sign(p, keys.dir .. "/nokey", "approver") end, "could not sign with")
  local unsigned = new_plan()
  t.write(keys.dir .. "/not-a-key", "hello\n")
  t.raises(function() plan.sign(unsigned, keys.dir .. "/not-a-key", "author") end, "cannot read the key")
  t.eq(unsigned.body.author.key, nil, "no key in the body of a plan not signed")
  t.eq(#unsigned.signatures, 0)
end)

---------------------------------------------------------------------------
-- signatures and approvals

t.test("signed by the author, approved by a listed key: verifies; show puts destructive changes first", function()
  local p = approved_by { "bob" }
  local r = plan.verify(p, policy(1))
  t.eq(r.author.key, plan.key_fingerprint(keys.alice))
  t.eq(r.approvers, { { principal = "bob@example", key = plan.key_fingerprint(keys.bob) } })
  local text = plan.render(p)
  local destructive = text:find("delete the dedicated HSM hsm1", 1, true)
  t.ok(destructive and destructive < text:find("show the partitions of hsm1", 1, true)
    and destructive < text:find("write the report", 1, true), text)
  t.ok(text:find("DESTRUCTIVE", 1, true) < destructive, text)
  t.ok(text:find("password = env:HSM1_SO", 1, true), "params as references: " .. text)
  t.ok(not text:find("\27[", 1, true), "no colour unless asked")
  t.ok(plan.render(p, { color = true }):find("\27[1;31m", 1, true), "red when asked")
  local hostile = new_plan { changes = { { kind = "pkcs11", action = "destroy", target = "key\27[2K\r", what = "x\27[0m" } } }
  local shown = plan.render(hostile)
  t.ok(not shown:find("\27", 1, true) and shown:find("key\\x1b[2K\\x0d", 1, true), "control characters shown, not sent: " .. shown)
end)

t.test("verify trusts ssh-keygen, not the key and principal the file writes", function()
  local p = approved_by { "bob" }
  p.signatures[2].key, p.signatures[2].principal = p.signatures[1].key, "carol@example"
  local r = plan.verify(plan.decode(plan.encode(p)), policy(1))
  t.eq(r.approvers, { { principal = "bob@example", key = plan.key_fingerprint(keys.bob) } })
end)

t.test("a plan tampered with after approval (one byte of the body in the file) is refused PlanTampered", function()
  local audit = t.audit_log()
  local file = keys.dir .. "/tampered.json"
  local text = plan.encode(approved_by { "bob" })
  local at = text:find("hsm1", 1, true)
  t.write(file, text:sub(1, at + 2) .. "2" .. text:sub(at + 4))
  local err = t.raises(function() plan.load(file) end, "PlanTampered")
  t.ok(err.message:find("changed after it was signed", 1, true), err.message)
  local refused = {}
  for _, r in ipairs(t.audit_records(audit)) do
    if r.action == "plan.load" and r.outcome == "refused" then refused[#refused + 1] = r end
  end
  t.eq(#refused, 1)
  t.eq(#refused[1].claimed_keys, 2, "the audit names the keys the file claims")
end)

t.test("a signature over another plan does not approve this one", function()
  local p = approved_by {}
  local other = approved_by({ "bob" }, { ttl = 3600 })        -- another body, another digest
  p.signatures[2] = other.signatures[2]
  local err = t.raises(function() plan.verify(plan.decode(plan.encode(p)), policy(1)) end, "NotApproved")
  t.ok(err.message:find("bad signature", 1, true), err.message)
end)

t.test("an author's signature made by another key, over the very same plan, is refused", function()
  local p = approved_by { "bob" }
  local r = t.sh(("ssh-keygen -Y sign -f %s -n dhsm-plan"):format(util.shell_quote(keys.mallory)),
    { stdin = plan.message(p) })
  t.eq(r.status, 0, r.stderr)
  p.signatures[1].signature = r.stdout                      -- mallory's signature where alice's was
  local err = t.raises(function() plan.verify(plan.decode(plan.encode(p)), policy(1)) end, "NotApproved")
  t.ok(err.message:find("the author's signature does not hold", 1, true), err.message)
end)

t.test("an approval by an unlisted key is refused, saying why", function()
  local err = t.raises(function() plan.verify(approved_by { "mallory" }, policy(1)) end, "NotApproved")
  t.ok(err.message:find("0 valid approvals of the 1 required", 1, true), err.message)
  t.ok(err.message:find("is not in " .. keys.allowed, 1, true), err.message)
end)

t.test("the author's own key does not approve, even when listed", function()
  local err = t.raises(function() plan.verify(approved_by { "alice" }, policy(1)) end, "NotApproved")
  t.ok(err.message:find("the author's own key", 1, true), err.message)
end)

t.test("two approvals required: one is not enough, two distinct are, the same key twice counts once", function()
  t.raises(function() plan.verify(approved_by { "bob" }, policy(2)) end, "NotApproved")
  local r = plan.verify(approved_by { "bob", "carol" }, policy(2))
  t.eq(#r.approvers, 2)
  local err = t.raises(function() plan.verify(approved_by { "bob", "bob" }, policy(2)) end, "NotApproved")
  t.ok(err.message:find("counted once", 1, true), err.message)
end)

t.test("an expired plan is refused PlanExpired, saying when and what to do", function()
  local p = new_plan()
  local now = os.time()
  p.body.created = os.date("!%Y-%m-%dT%H:%M:%SZ", now - 7200)
  p.body.expires = os.date("!%Y-%m-%dT%H:%M:%SZ", now - 3600)
  plan.sign(p, keys.alice, "author")
  plan.sign(p, keys.bob, "approver")
  local err = t.raises(function() plan.verify(plan.decode(plan.encode(p)), policy(1)) end, "PlanExpired")
  t.ok(err.message:find(p.body.expires, 1, true) and err.message:find("new plan", 1, true), err.message)
end)

t.test("decode is fail-closed: each bad field is a usage error naming it", function()
  local good = cjson.decode(plan.encode(approved_by { "bob" }))
  local function with(change, field)
    local doc = cjson.decode(cjson.encode(good))
    change(doc)
    local p = { format = doc.format, body = doc.body, signatures = doc.signatures or {} }
    doc.digest = doc.digest and #doc.digest == 64 and plan.digest(p) or doc.digest   -- the digest of the bad body
    local text = cjson.encode(doc)
    local err = t.raises(function() plan.decode(text, "bad.json") end, "usage")
    t.ok(err.message:find("bad.json: field '" .. field .. "'", 1, true), err.message)
  end
  with(function(d) d.format = "dhsm-plan/2" end, "format")
  with(function(d) d.digest = "xyz" end, "digest")
  with(function(d) d.extra = 1 end, "extra")
  with(function(d) d.body.playbook = 7 end, "body.playbook")
  with(function(d) d.body.params = { 1, 2 } end, "body.params")
  with(function(d) d.body.expires = "tomorrow" end, "body.expires")
  with(function(d) d.body.created = "2026-02-30T00:00:00Z" end, "body.created")
  with(function(d) d.body.author.user = nil end, "body.author.user")
  with(function(d) d.body.changes = { 1 } end, "body.changes[1]")
  with(function(d) d.signatures[1].role = "approver" end, "signatures[1].role")
  with(function(d) d.signatures[2].signature = "hello" end, "signatures[2].signature")
  with(function(d) d.signatures[2].key = "MD5:aa" end, "signatures[2].key")
  t.raises(function() plan.decode("{", "x") end, "invalid JSON")
end)

t.test("ssh-keygen's signature commands are read-only; key making and file operands are not", function()
  t.eq(proc.read_only { "ssh-keygen", "-Y", "sign", "-f", keys.alice, "-n", "dhsm-plan" }, true)
  t.eq(proc.read_only { "ssh-keygen", "-Y", "sign", "-f", keys.alice, "-n", "dhsm-plan", "/etc/passwd" }, false,
    "a file operand: ssh-keygen writes FILE.sig")
  t.eq(proc.read_only { "ssh-keygen", "-Y", "verify", "-f", keys.allowed, "-I", "bob", "-n", "dhsm-plan", "-s", "x" }, true)
  t.eq(proc.read_only { "ssh-keygen", "-Y", "find-principals", "-s", "x", "-f", keys.allowed }, true)
  t.eq(proc.read_only { "ssh-keygen", "-Y", "check-novalidate", "-n", "dhsm-plan", "-s", "x" }, true)
  t.eq(proc.read_only { "ssh-keygen", "-l", "-f", keys.alice }, true)
  t.eq(proc.read_only { "ssh-keygen", "-t", "ed25519", "-f", keys.dir .. "/new" }, false)
  t.eq(proc.read_only { "ssh-keygen", "-Y", "verify", "-r", "revoked", "-s", "x" }, false)
  t.eq(proc.read_only { "ssh-keygen", "-p", "-f", keys.alice }, false)
end)

t.test("in check mode the author signs: ssh-keygen's read-only commands run, and are audited", function()
  local audit = t.audit_log()
  local p = new_plan()
  do
    local scope <close> = act.check_scope(true)
    plan.sign(p, keys.alice, "author")
    t.eq(scope.tally.described, 0, "nothing was only described")
  end
  t.eq(#p.signatures, 1)
  local signs = 0
  for _, r in ipairs(t.audit_records(audit)) do
    if r.action == "proc.run" and tostring(r.command):find("^ssh%-keygen %-Y sign") then
      signs = signs + 1
      t.eq(r.outcome, "exit 0")
    end
  end
  t.eq(signs, 1)
end)

---------------------------------------------------------------------------
-- the host's policy

local function policy_file(dir, doc, mode)
  local path = t.write(dir .. "/policy.json", type(doc) == "string" and doc or cjson.encode(doc))
  os.execute(("chmod %o %s"):format(mode or tonumber("644", 8), util.shell_quote(path)))
  return path
end

local GOOD_POLICY = { approvals = 2, allowed_signers = keys.allowed, playbooks = { "decommission" }, destructive_changes = true }

-- The policy a child dhsm reads, with DHSM_POLICY=rehearsal: plan.policy_at(system), as JSON.
local function child_policy(system, rehearsal)
  local code = ("local p = require('dhsm.plan').policy_at(%q) print(require('cjson').encode(p or {none = true}))"):format(system)
  local r = t.run({ "exec", "-e", code }, { env = "DHSM_POLICY=" .. util.shell_quote(rehearsal) })
  return r.status == 0 and cjson.decode(r.stdout) or nil, r
end

t.test("policy: the host's file wins; DHSM_POLICY counts only where it does not exist", function()
  local host, rehearsal = t.tmpdir(), t.tmpdir()
  local system = policy_file(host, GOOD_POLICY)
  local loose = util.merged(GOOD_POLICY, { approvals = 1 })
  local rehearsed = policy_file(rehearsal, loose)
  local p, r = child_policy(system, rehearsed)
  t.ok(p, r.stderr)
  t.eq(p.approvals, 2, "the host's, not DHSM_POLICY's")
  t.eq(p.source, system)
  t.eq(p.playbooks, { decommission = true })
  p, r = child_policy(host .. "/absent.json", rehearsed)
  t.ok(p, r.stderr)
  t.eq(p.approvals, 1)
  t.eq(p.source, rehearsed)
  -- a dangling link where the host's file would be is not "no policy"
  os.execute(("ln -s %s %s"):format(util.shell_quote(host .. "/gone"), util.shell_quote(host .. "/link.json")))
  p, r = child_policy(host .. "/link.json", rehearsed)
  t.eq(p, nil)
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("PolicyUnsafe", 1, true), r.stderr)
  if not os.getenv("DHSM_POLICY") then t.eq(plan.policy_at(host .. "/absent.json"), nil, "no policy at all") end
end)

t.test("policy: a group-writable file or folder is refused PolicyUnsafe with the fix", function()
  local dir = t.tmpdir()
  local path = policy_file(dir, GOOD_POLICY, tonumber("664", 8))
  local err = t.raises(function() plan.policy_at(path) end, "PolicyUnsafe")
  t.ok(err.message:find("chmod go-w " .. path, 1, true), err.message)
  os.execute("chmod 644 " .. util.shell_quote(path) .. " && chmod 770 " .. util.shell_quote(dir))
  err = t.raises(function() plan.policy_at(path) end, "PolicyUnsafe")
  t.ok(err.message:find("the folder of the policy", 1, true), err.message)
  os.execute("chmod 700 " .. util.shell_quote(dir))
  os.execute("chmod 666 " .. util.shell_quote(keys.allowed))
  t.cleanup(function() os.execute("chmod 644 " .. util.shell_quote(keys.allowed)) end)
  err = t.raises(function() plan.policy_at(path) end, "PolicyUnsafe")
  t.ok(err.message:find("allowed_signers", 1, true), err.message)
end)

t.test("policy: a bad field is refused naming it (never read as no policy)", function()
  local dir = t.tmpdir()
  local cases = {
    { util.merged(GOOD_POLICY, { approvals = 0 }), "'approvals'" },
    { util.merged(GOOD_POLICY, { approvals = "2" }), "'approvals'" },
    { util.merged(GOOD_POLICY, { allowed_signers = "relative" }), "'allowed_signers'" },
    { util.merged(GOOD_POLICY, { playbooks = { x = 1 } }), "'playbooks'" },
    { util.merged(GOOD_POLICY, { destructive_changes = "yes" }), "'destructive_changes'" },
    { util.merged(GOOD_POLICY, { aprovals = 2 }), "'aprovals'" },
    { "{ not json", "(the file)" },
  }
  for _, c in ipairs(cases) do
    local path = policy_file(dir, c[1])
    local err = t.raises(function() plan.policy_at(path) end, "PolicyInvalid")
    t.ok(err.message:find(c[2], 1, true), err.message)
  end
end)

---------------------------------------------------------------------------
-- the command line

local function has(records, action, outcome)
  local out = {}
  for _, r in ipairs(records) do
    if r.action == action and r.outcome == outcome then out[#out + 1] = r end
  end
  return out
end

t.test("dhsm plan show / approve / verify end to end, exit statuses 0, 2 and 3", function()
  if util.read_file(plan.SYSTEM_POLICY) then t.skip("this host has " .. plan.SYSTEM_POLICY .. ": DHSM_POLICY does not count") end
  local dir, state = t.tmpdir(), t.tmpdir()
  local file = dir .. "/plan.json"
  local p = new_plan()
  plan.sign(p, keys.alice, "author")
  t.write(file, plan.encode(p))
  local env = "DHSM_POLICY=" .. util.shell_quote(policy_file(t.tmpdir(), GOOD_POLICY))
  local function dhsm(args) return t.run(args, { env = env, state = state }) end

  local r = dhsm { "plan", "show", file }
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("delete the dedicated HSM", 1, true) < r.stdout:find("show the partitions", 1, true), r.stdout)
  t.ok(not r.stdout:find("\27[", 1, true), "no colour off a terminal")

  r = dhsm { "plan", "approve", file, "--key", keys.alice }
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("OwnApproval", 1, true), r.stderr)
  r = dhsm { "plan", "approve", file }
  t.eq(r.status, 2, r.stderr)
  r = dhsm { "plan", "approve", file, "--approvals", "1", "--key", keys.bob }
  t.eq(r.status, 2, r.stderr)
  r = dhsm { "plan", "frobnicate", file }
  t.eq(r.status, 2, r.stderr)

  r = dhsm { "plan", "approve", file, "--key", keys.bob, "--principal", "bob@example" }
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("plan for playbook decommission", 1, true), "the plan is shown first: " .. r.stdout)
  t.eq(#plan.load(file).signatures, 2)

  r = dhsm { "plan", "verify", file }
  t.eq(r.status, 3, "two approvals required, one given: " .. r.stderr)
  t.ok(r.stderr:find("NotApproved", 1, true), r.stderr)
  r = dhsm { "plan", "verify", file, "--approvals", "1", "--allowed-signers", keys.allowed }
  t.eq(r.status, 2, "the policy in force cannot be replaced: " .. r.stderr)

  r = dhsm { "plan", "approve", file, "--key", keys.carol, "--principal", "carol@example" }
  t.eq(r.status, 0, r.stderr)
  r = dhsm { "plan", "verify", file }
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("bob@example", 1, true) and r.stdout:find("carol@example", 1, true), r.stdout)

  local records = t.audit_records(state .. "/audit.jsonl")
  local approvals = has(records, "plan.approve", "approved")
  t.eq(#approvals, 2)
  t.eq(approvals[1].approver_key, plan.key_fingerprint(keys.bob))
  t.eq(approvals[1].digest, plan.digest(p))
  local refused = has(records, "plan.approve", "refused")
  t.eq(#refused, 1)
  t.eq(refused[1].approver_key, plan.key_fingerprint(keys.alice))
  t.eq(#has(records, "plan.verify", "refused"), 1)
  t.eq(has(records, "plan.verify", "approved")[1].approver_keys,
    { plan.key_fingerprint(keys.bob), plan.key_fingerprint(keys.carol) })
end)

t.test("dhsm plan verify by hand, with no policy in force", function()
  local dir = t.tmpdir()
  local file = t.write(dir .. "/plan.json", plan.encode(approved_by { "bob" }))
  if util.read_file(plan.SYSTEM_POLICY) then t.skip("this host has " .. plan.SYSTEM_POLICY) end
  local r = t.run { "plan", "verify", file, "--approvals", "1", "--allowed-signers", keys.allowed }
  t.eq(r.status, 0, r.stderr)
  r = t.run { "plan", "verify", file }
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find("no policy is in force", 1, true), r.stderr)
  r = t.run { "plan", "verify", file, "--approvals", "2", "--allowed-signers", keys.allowed }
  t.eq(r.status, 3, r.stderr)
end)

t.test("dhsm plan approve of an expired plan signs with a note; verify refuses it PlanExpired", function()
  if util.read_file(plan.SYSTEM_POLICY) then t.skip("this host has " .. plan.SYSTEM_POLICY) end
  local p = new_plan()
  local now = os.time()
  p.body.created = os.date("!%Y-%m-%dT%H:%M:%SZ", now - 7200)
  p.body.expires = os.date("!%Y-%m-%dT%H:%M:%SZ", now - 3600)
  plan.sign(p, keys.alice, "author")
  local file = t.write(t.tmpdir() .. "/expired.json", plan.encode(p))
  local r = t.run { "plan", "approve", file, "--key", keys.bob }
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stderr:find("expired at " .. p.body.expires, 1, true), r.stderr)
  r = t.run { "plan", "verify", file, "--approvals", "1", "--allowed-signers", keys.allowed }
  t.eq(r.status, 3, r.stderr)
  t.ok(r.stderr:find("PlanExpired", 1, true), r.stderr)
end)
