-- dhsm.plan: a plan file - what a check run would change, signed by its
-- author, approved by other operators with their SSH keys, and checked
-- against the host's policy before it is applied (docs/safety.md, "A
-- destructive plan is applied only as approved").
--
--   local p = plan.new{ playbook = "decommission", params = {...}, inventory = {...},
--                       changes = {...}, reads = {...}, ttl = 86400 }
--   plan.sign(p, "/home/alice/.ssh/id_ed25519", "author")
--   act.write_file("PLAN.json", plan.encode(p))  -- the file's text
--   local p = plan.load("PLAN.json")             -- fail closed: PlanTampered, or a usage error naming the field
--   plan.sign(p, key, "approver", "bob@example")
--   plan.verify(p, plan.policy())                -- -> {author=, approvers=} or NotApproved/PlanExpired
--
-- What is signed is plan.message(p): "dhsm-plan sha256:<digest>\n", the
-- digest being SHA-256 of plan.canonical(body) - one JSON text per body
-- (keys sorted, no spaces, integral numbers as integers, strings escaped
-- one way), so the file's layout, its key order and cjson's do not matter.
-- Signatures are OpenSSH's (ssh-keygen -Y, namespace dhsm-plan: the
-- author's and approvers' keys may be files, agent or FIDO keys); who
-- signed is always read from ssh-keygen, never from the file.
local act = require "dhsm.act"
local dhsm = require "dhsm"
local proc = require "dhsm.proc"
local secret = require "dhsm.secret"
local sys = require "dhsm.sys"
local util = require "dhsm.util"
local cjson = require "cjson"

local M = {}

M.FORMAT = "dhsm-plan/1"
M.NAMESPACE = "dhsm-plan"
local DAY = 86400
M.MAX_TTL = 7 * DAY

-- The host's policy.  A local, not a field: no code loaded later can point
-- plan.policy() elsewhere (M.SYSTEM_POLICY only tells where it is).
local SYSTEM_POLICY = "/etc/dhsm/policy.json"
M.SYSTEM_POLICY = SYSTEM_POLICY

local usage = dhsm.usage_in("plan")

-- bad(where, what, expected, got): the one wording of a field that is
-- wrong (where: the file or call it is in; nil for data being encoded).
local function bad(where, what, expected, got)
  usage("%sfield '%s': expected %s, got %s", where and (where .. ": ") or "", what, expected, got)
end

local function shown(v)
  if type(v) == "string" then return ("%q"):format(#v > 60 and (v:sub(1, 60) .. "...") or v) end
  if v == cjson.null then return "null" end
  return type(v) == "table" and "a table" or tostring(v)
end

---------------------------------------------------------------------------
-- canonical JSON (and the file's indented form of it)

local MAX_DEPTH = 64
local MAX_EXACT = 2 ^ 53            -- integers beyond this are not kept exactly by JSON readers

local ESCAPES = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function json_string(s, path)
  if not utf8.len(s) then bad(nil, path, "UTF-8 text", "bytes that are not") end
  return '"' .. s:gsub('[%c"\\]', function(c) return ESCAPES[c] or ("\\u%04x"):format(c:byte()) end) .. '"'
end

local function json_number(v, path)
  if v ~= v or v == math.huge or v == -math.huge then bad(nil, path, "a finite number", tostring(v)) end
  local i = math.tointeger(v)
  if not i then return ("%.17g"):format(v) end
  if i > MAX_EXACT or i < -MAX_EXACT then bad(nil, path, "an integer within +-2^53", tostring(v)) end
  return ("%d"):format(i)
end

-- "list" (keys 1..n, n > 0), "object" (string keys) or "empty": cjson
-- decodes [] and {} alike, so both are written {} and mean the same.
local function shape(t, path)
  if getmetatable(t) ~= nil then bad(nil, path, "plain data", "an object with a metatable") end
  local count, strings = 0, 0
  for k in pairs(t) do
    count = count + 1
    if type(k) == "string" then strings = strings + 1 end
  end
  if count == 0 then return "empty" end
  if strings == count then return "object" end
  for i = 1, count do
    if rawget(t, i) == nil then bad(nil, path, "a list (keys 1..n) or an object (string keys)", "mixed or sparse keys") end
  end
  return "list"
end

-- Keys in byte order, whatever the locale (Lua's < on strings is strcoll's):
-- the canonical text must be the same on every host that checks a signature.
local function byte_order(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, byte_order)
  return keys
end

local encode_value

local function encode_table(t, path, depth, nl)
  if depth > MAX_DEPTH then bad(nil, path, ("at most %d levels"):format(MAX_DEPTH), "deeper (or a cycle)") end
  local kind = shape(t, path)
  if kind == "empty" then return "{}" end
  local inner, colon = nl and (nl .. "  "), nl and ": " or ":"
  local parts = {}
  if kind == "list" then
    for i = 1, #t do parts[i] = (inner or "") .. encode_value(t[i], ("%s[%d]"):format(path, i), depth + 1, inner) end
    return "[" .. table.concat(parts, ",") .. (nl or "") .. "]"
  end
  for _, k in ipairs(sorted_keys(t)) do
    parts[#parts + 1] = (inner or "") .. json_string(k, path) .. colon
      .. encode_value(t[k], path .. "." .. k, depth + 1, inner)
  end
  return "{" .. table.concat(parts, ",") .. (nl or "") .. "}"
end

-- nl: nil for canonical text, else the line break and indentation before a line.
function encode_value(v, path, depth, nl)
  local ty = type(v)
  if v == cjson.null then return "null" end
  if secret.is(v) then bad(nil, path, "a secret's reference (env:NAME, file:PATH, prompt), never its value", "a secret") end
  if ty == "boolean" then return tostring(v) end
  if ty == "number" then return json_number(v, path) end
  if ty == "string" then return json_string(v, path) end
  if ty == "table" then return encode_table(v, path, depth, nl) end
  bad(nil, path, "JSON data (a string, number, boolean, list or object)", ty)
end

-- canonical(body) -> bytes: the body's one JSON text, what the digest is of
function M.canonical(body)
  if type(body) ~= "table" then usage("canonical: expected the plan's body (a table), got %s", type(body)) end
  return encode_value(body, "body", 1, nil)
end

---------------------------------------------------------------------------
-- times (UTC, to the second)

local function rfc3339(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end

-- epoch(text) -> seconds, or nil: "2026-12-07T20:00:00Z" only, a real date.
local function epoch(text)
  local y, mo, d, h, mi, s = tostring(text):match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)Z$")
  if not y then return nil end
  y, mo, d, h, mi, s = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(s)
  local yy = mo <= 2 and y - 1 or y                      -- days from the civil date (proleptic Gregorian)
  local era = yy // 400
  local yoe = yy - era * 400
  local doy = (153 * (mo > 2 and mo - 3 or mo + 9) + 2) // 5 + d - 1
  local days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
  local t = days * DAY + h * 3600 + mi * 60 + s
  if rfc3339(t) ~= text then return nil end              -- 2026-02-30, 25:00 ...
  return t
end

---------------------------------------------------------------------------
-- building a plan

local NAME = "^[%w_][%w_.-]*$"
local FINGERPRINT = "^SHA256:[%w+/]+=*$"
local SHA256_HEX = "^%x+$"

local function is_list(v, path, where)
  if type(v) ~= "table" then bad(where, path, "a list", shown(v)) end
  if shape(v, path) == "object" then bad(where, path, "a list", "an object") end
  return v
end

local function check_inventory(v, where)
  if v == nil then return end
  if type(v) ~= "table" then bad(where, "inventory", "{path=, sha256=, fields=}", shown(v)) end
  if type(v.path) ~= "string" or v.path == "" then bad(where, "inventory.path", "the inventory file's path", shown(v.path)) end
  if type(v.sha256) ~= "string" or #v.sha256 ~= 64 or not v.sha256:match(SHA256_HEX) then
    bad(where, "inventory.sha256", "the SHA-256 of the inventory (64 hex digits)", shown(v.sha256))
  end
  if v.fields ~= nil and type(v.fields) ~= "table" then bad(where, "inventory.fields", "a table", shown(v.fields)) end
end

-- A plan's playbook: its name, or {name=, sha256=} - a built-in by name,
-- any other by absolute path, with the digest of its code (dhsm.play.plans).
local PLAYBOOK_EXPECTED = "a playbook's name, or {name=NAME or absolute path, sha256=64 hex digits}"

local function playbook_name(v)
  return type(v) == "table" and v.name or v
end

local function check_playbook(v, where, field)
  local name = playbook_name(v)
  local ok = type(name) == "string" and (name:match(NAME) or name:match("^/[^%z]+$")) ~= nil
  if type(v) == "table" then
    ok = ok and type(v.sha256) == "string" and #v.sha256 == 64 and v.sha256:match(SHA256_HEX) ~= nil
    for k in pairs(v) do ok = ok and (k == "name" or k == "sha256") end
  end
  if not ok then bad(where, field, PLAYBOOK_EXPECTED, shown(v)) end
end

local NEW_FIELDS = { playbook = true, params = true, inventory = true, changes = true, reads = true, ttl = true }

-- new{playbook=, params=, inventory=, changes=, reads=, ttl=} -> an unsigned plan
function M.new(o)
  if type(o) ~= "table" then usage("new: expected a table {playbook=, params=, ...}, got %s", type(o)) end
  for k in pairs(o) do
    if not NEW_FIELDS[k] then usage("new: unknown field '%s' (playbook, params, inventory, changes, reads, ttl)", tostring(k)) end
  end
  check_playbook(o.playbook, "new", "playbook")
  if o.params ~= nil and type(o.params) ~= "table" then bad("new", "params", "a table of parameters", shown(o.params)) end
  check_inventory(o.inventory, "new")
  local ttl = o.ttl == nil and DAY or o.ttl
  if math.type(ttl) ~= "integer" or ttl <= 0 or ttl > M.MAX_TTL then
    bad("new", "ttl", ("whole seconds, 1 to %d (7 days)"):format(M.MAX_TTL), shown(ttl))
  end
  local me = assert(sys.whoami())
  local now = os.time()
  local body = {
    playbook = o.playbook, params = o.params or {}, inventory = o.inventory,
    changes = is_list(o.changes or {}, "changes", "new"), reads = is_list(o.reads or {}, "reads", "new"),
    dhsm_version = dhsm.version, author = { user = me.user, host = me.host },
    created = rfc3339(now), expires = rfc3339(now + ttl),
  }
  M.canonical(body)                      -- plain data, or the usage error naming the field now
  return { format = M.FORMAT, body = body, signatures = {} }
end

---------------------------------------------------------------------------
-- the file

local function check_plan(p, where)
  if type(p) ~= "table" or type(p.body) ~= "table" or type(p.signatures) ~= "table" then
    usage("%s: expected a plan (from plan.new or plan.load), got %s", where, type(p))
  end
end

-- digest(p) -> hex SHA-256 of canonical(p.body)
function M.digest(p)
  check_plan(p, "digest")
  return sys.sha256(M.canonical(p.body))
end

-- message(p) -> the bytes every signature is of
function M.message(p)
  return ("%s sha256:%s\n"):format(M.NAMESPACE, M.digest(p))
end

-- encode(p) -> the file's text: indented, keys sorted (a diff reads it)
function M.encode(p)
  check_plan(p, "encode")
  return encode_value({ format = p.format, body = p.body, digest = M.digest(p), signatures = p.signatures },
    "plan", 0, "\n") .. "\n"
end

local ARMOR = "^%-%-%-%-%-BEGIN SSH SIGNATURE%-%-%-%-%-\n[%w+/=\n]+%-%-%-%-%-END SSH SIGNATURE%-%-%-%-%-\n?$"
local TOP = { format = true, body = true, digest = true, signatures = true }
local SIGNATURE_FIELDS = { role = true, key = true, principal = true, time = true, signature = true }

local function check_signature(s, i, source)
  local at = ("signatures[%d]"):format(i)
  if type(s) ~= "table" then bad(source, at, "an object", shown(s)) end
  for k in pairs(s) do
    if not SIGNATURE_FIELDS[k] then bad(source, at .. "." .. tostring(k), "no such field (role, key, principal, time, signature)", "one") end
  end
  local want = i == 1 and "author" or "approver"
  if s.role ~= want then bad(source, at .. ".role", ("%q (the author signs first, once)"):format(want), shown(s.role)) end
  if type(s.key) ~= "string" or not s.key:match(FINGERPRINT) then bad(source, at .. ".key", "SHA256:... (a key fingerprint)", shown(s.key)) end
  if s.principal ~= nil and (type(s.principal) ~= "string" or s.principal == "") then
    bad(source, at .. ".principal", "a principal's name", shown(s.principal))
  end
  if s.time ~= nil and not epoch(s.time) then bad(source, at .. ".time", "a UTC time like 2026-12-07T20:00:00Z", shown(s.time)) end
  if type(s.signature) ~= "string" or not s.signature:match(ARMOR) then
    bad(source, at .. ".signature", "an SSH signature (-----BEGIN SSH SIGNATURE----- ...)", shown(s.signature))
  end
end

local function check_text(v, path, source, what)
  if type(v) ~= "string" or v == "" then bad(source, path, what, shown(v)) end
end

local function check_body(b, source)
  check_playbook(b.playbook, source, "body.playbook")
  if type(b.params) ~= "table" or shape(b.params, "body.params") == "list" then bad(source, "body.params", "an object", shown(b.params)) end
  check_inventory(b.inventory, source)
  is_list(b.changes, "body.changes", source)
  for i, c in ipairs(b.changes) do
    if type(c) ~= "table" then bad(source, ("body.changes[%d]"):format(i), "an object", shown(c)) end
  end
  is_list(b.reads, "body.reads", source)
  check_text(b.dhsm_version, "body.dhsm_version", source, "dhsm's version")
  if type(b.author) ~= "table" then bad(source, "body.author", "{user=, host=, key=}", shown(b.author)) end
  check_text(b.author.user, "body.author.user", source, "the author's user name")
  check_text(b.author.host, "body.author.host", source, "the author's host")
  if b.author.key ~= nil and not tostring(b.author.key):match(FINGERPRINT) then
    bad(source, "body.author.key", "SHA256:... (the author's key fingerprint)", shown(b.author.key))
  end
  local created, expires = epoch(b.created), epoch(b.expires)
  if not created then bad(source, "body.created", "a UTC time like 2026-12-07T20:00:00Z", shown(b.created)) end
  if not expires or expires <= created or expires - created > M.MAX_TTL then
    bad(source, "body.expires", "a UTC time after body.created, at most 7 days after", shown(b.expires))
  end
end

-- The keys a file's signatures say they are by: for a refusal's audit
-- record only (a tampered file's word is not trusted for anything else).
local function claimed_keys(signatures)
  local keys = {}
  for _, s in ipairs(type(signatures) == "table" and signatures or {}) do
    keys[#keys + 1] = type(s) == "table" and type(s.key) == "string" and s.key:sub(1, 100) or "?"
  end
  return keys
end

-- decode(text [, source]) -> plan: every field checked; a body that is not
-- the one its digest names is PlanTampered.
function M.decode(text, source)
  source = source or "(plan)"
  if type(text) ~= "string" then usage("decode: expected the plan's text, got %s", type(text)) end
  local doc, why = util.json_object(text)
  if not doc then usage("%s: %s", source, why) end
  for k in pairs(doc) do
    if not TOP[k] then bad(source, tostring(k), "no such field (format, body, digest, signatures)", "one") end
  end
  if doc.format ~= M.FORMAT then bad(source, "format", ("%q"):format(M.FORMAT), shown(doc.format)) end
  if type(doc.digest) ~= "string" or #doc.digest ~= 64 or not doc.digest:match(SHA256_HEX) then
    bad(source, "digest", "the body's SHA-256 (64 hex digits)", shown(doc.digest))
  end
  if type(doc.body) ~= "table" then bad(source, "body", "an object", shown(doc.body)) end
  local p = { format = doc.format, body = doc.body, signatures = is_list(doc.signatures, "signatures", source) }
  if M.digest(p) ~= doc.digest:lower() then
    dhsm.audit.write { action = "plan.load", outcome = "refused", code = "PlanTampered", source = source,
      digest = doc.digest, claimed_keys = claimed_keys(doc.signatures) }
    act.refusal { code = "PlanTampered", details = { source = source, digest = doc.digest },
      message = ("%s: the plan was changed after it was signed (its body's digest is not the one written, "
        .. "sha256:%s); ask its author for the plan as signed, or a new one"):format(source, doc.digest) }
  end
  check_body(p.body, source)
  for i, s in ipairs(p.signatures) do check_signature(s, i, source) end
  return p
end

-- load(path) -> plan (decode of the file)
function M.load(path)
  if type(path) ~= "string" or path == "" then usage("load: expected a plan file's path, got %s", shown(path)) end
  local text, err = util.read_file(path)
  if not text then usage("cannot read the plan %s", tostring(err)) end
  return M.decode(text, path)
end

---------------------------------------------------------------------------
-- ssh-keygen (through dhsm.proc: read-only, so run and audited in check mode too)

local function keygen(args, stdin)
  local argv = { "ssh-keygen" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return proc.run { argv = argv, stdin = stdin, timeout = 120 }
end

local function first_line(s)
  return (tostring(s):match("[^\n]*[^\n%s][^\n]*") or "(no message)")
end

-- The fingerprint a "Good ... signature ... key SHA256:..." line ends with.
local function good_key(r)
  if r.status ~= 0 then return nil end
  return r.stdout:match('^Good "dhsm%-plan" signature.- key (SHA256:[%w+/]+=*)%s*$')
end

-- With the signature in a file of dhsm's own (ssh-keygen reads it by name).
local function with_signature_file(signature, fn)
  local dir, gone <close> = act.scratch_dir("dhsm-plan-")
  local path = dir .. "/plan.sig"
  local f = assert(io.open(path, "wb"))
  f:write(signature)
  f:close()
  return fn(path)
end

-- The key that made signature over the plan's message, or nil, why.
local function signer(p, signature)
  return with_signature_file(signature, function(path)
    local r = keygen({ "-Y", "check-novalidate", "-n", M.NAMESPACE, "-s", path }, M.message(p))
    local key = good_key(r)
    if key then return key end
    return nil, "bad signature: " .. first_line(r.stderr .. r.stdout)
  end)
end

-- key_fingerprint(key_path) -> "SHA256:..." of a key file (private or .pub)
local function key_fingerprint(key)
  local r = keygen({ "-l", "-f", key })
  local fp = r.status == 0 and r.stdout:match("^%d+ (SHA256:[%w+/]+=*) ")
  if not fp then usage("cannot read the key %s: %s", key, first_line(r.stderr .. r.stdout)) end
  return fp
end
M.key_fingerprint = key_fingerprint

-- The author's signature, checked: its key (and the body's author.key, the same).
local function author_key(p)
  check_plan(p, "author_key")
  local s = p.signatures[1]
  if not s or s.role ~= "author" then
    act.refusal { code = "NotApproved", message = "the plan has no author's signature: its author signs it when it is made" }
  end
  local key, why = signer(p, s.signature)
  if not key or key ~= p.body.author.key then
    act.refusal { code = "NotApproved", details = { author_key = key },
      message = ("the author's signature does not hold (%s): the plan cannot be trusted as its author made it")
        :format(why or ("made with " .. key .. ", not the author's key " .. tostring(p.body.author.key))) }
  end
  return key
end
M.author_key = author_key

local ROLES = { author = true, approver = true }

-- signed(p, key [, expected]) -> the key that signed, the signature:
-- ssh-keygen's, checked (made by the key `expected` names, or with
-- expected = true by the key file given itself).
local function signed(p, key, expected)
  local r = keygen({ "-Y", "sign", "-f", key, "-n", M.NAMESPACE }, M.message(p))
  if r.status ~= 0 or not r.stdout:match(ARMOR) then
    usage("ssh-keygen could not sign with %s: %s", key, first_line(r.stderr))
  end
  local made_by, why = signer(p, r.stdout)
  if not made_by then usage("ssh-keygen's signature with %s does not verify: %s", key, why) end
  if expected == true then expected = key_fingerprint(key) end      -- the key given, read once it signed
  if expected and made_by ~= expected then
    usage("ssh-keygen signed with %s, not with %s's key %s (an agent holding another key?)", made_by, key, expected)
  end
  return made_by, r.stdout
end

-- sign(p, key_path, role [, principal]) -> the signature appended: the
-- author's first (the key's fingerprint goes into the body), then approvals.
function M.sign(p, key, role, principal)
  check_plan(p, "sign")
  if type(key) ~= "string" or key == "" then usage("sign: expected the path of an SSH key (or its .pub, for an agent's key), got %s", shown(key)) end
  if not ROLES[role] then usage("sign: role: expected \"author\" or \"approver\", got %s", shown(role)) end
  if principal ~= nil and (type(principal) ~= "string" or not principal:match("^[^%s,]+$")) then
    usage("sign: principal: expected a name as allowed_signers has it (no spaces or commas), got %s", shown(principal))
  end
  if role == "author" then
    if #p.signatures > 0 then usage("sign: the plan is signed by its author already; a changed plan is a new plan") end
    p.body.author.key = key_fingerprint(key)          -- signed with the body (taken out again if signing fails)
  elseif #p.signatures == 0 then
    usage("sign: the plan has no author's signature yet; its author signs first")
  end
  -- made by the key given, whoever signs: an agent holding another key is not that key
  local ok, made_by, signature = pcall(signed, p, key, role == "author" and p.body.author.key or true)
  if not ok then
    if role == "author" then p.body.author.key = nil end
    error(made_by, 0)
  end
  local entry = { role = role, key = made_by, principal = principal, time = rfc3339(os.time()), signature = signature }
  p.signatures[#p.signatures + 1] = entry
  return entry
end

---------------------------------------------------------------------------
-- checking a plan against a policy

-- The principals allowed_signers names for a signature's key, then the one
-- of them it verifies for: principal, key | nil, why.
local function approver(p, s, allowed)
  return with_signature_file(s.signature, function(path)
    local found = keygen({ "-Y", "find-principals", "-s", path, "-f", allowed })
    if found.status ~= 0 then return nil, "its key is not in " .. allowed end
    for name in found.stdout:gmatch("[^\n]+") do
      local r = keygen({ "-Y", "verify", "-f", allowed, "-I", name, "-n", M.NAMESPACE, "-s", path }, M.message(p))
      local key = good_key(r)
      if key then return name, key end
    end
    return nil, "bad signature (not of this plan, or not by the key it names)"
  end)
end

local function check_policy_arg(policy)
  if type(policy) ~= "table" or math.type(policy.approvals) ~= "integer" or policy.approvals < 1
    or type(policy.allowed_signers) ~= "string" then
    usage("verify: expected a policy {approvals=N>=1, allowed_signers=PATH} (plan.policy()), got %s", shown(policy))
  end
end

local function keys_of(approvers)
  local keys = {}
  for i, a in ipairs(approvers or {}) do keys[i] = a.key end
  return keys
end


-- playbook_name(p) -> the name (or path) of the plan's playbook
function M.playbook_name(p)
  check_plan(p, "playbook_name")
  return playbook_name(p.body.playbook)
end

-- Whether a body's time is up (an expiry that does not read is up).
local function expired(body)
  local expires = epoch(body.expires)
  return not expires or os.time() >= expires
end

-- check_fresh(p): PlanExpired once the plan's time is up.
function M.check_fresh(p)
  check_plan(p, "check_fresh")
  if expired(p.body) then
    act.refusal { code = "PlanExpired", message = ("the plan expired at %s: make a new plan (dhsm run --check --out) "
      .. "and have it approved again"):format(tostring(p.body.expires)) }
  end
end

-- The approvals that count, each verified against allowed_signers (seen:
-- what was found, for the audit record, also when it refuses).
local function judge(p, policy, seen)
  M.check_fresh(p)
  seen.author = author_key(p)
  local approvers, rejected, counted = {}, {}, {}
  seen.approvers, seen.rejected = approvers, rejected
  for i = 2, #p.signatures do
    local name, key = approver(p, p.signatures[i], policy.allowed_signers)
    local why
    if not name then why = key                 -- approver's reason
    elseif key == seen.author then why = "the author's own key (" .. key .. ") does not approve its plan"
    elseif counted[key] then why = "a second approval by " .. key .. " (counted once)"
    end
    if why then
      rejected[#rejected + 1] = ("signature %d (%s): %s"):format(i, tostring(p.signatures[i].principal or "no principal"), why)
    else
      counted[key] = true
      approvers[#approvers + 1] = { principal = name, key = key }
    end
  end
  if #approvers < policy.approvals then
    act.refusal { code = "NotApproved", details = { rejected = rejected },
      message = ("the plan has %d valid approval%s of the %d required%s%s"):format(#approvers, #approvers == 1 and "" or "s",
        policy.approvals, #rejected > 0 and "; not counted: " or "", table.concat(rejected, "; ")) }
  end
end

-- verify(p, policy) -> {digest=, author = {key=}, approvers = {{principal=, key=}, ...}, rejected = {why, ...}}
-- (audited, refusals too, with the keys ssh-keygen found)
function M.verify(p, policy)
  check_plan(p, "verify")
  check_policy_arg(policy)
  local seen = {}
  local ok, err = pcall(judge, p, policy, seen)
  local digest = M.digest(p)
  dhsm.audit.write { action = "plan.verify", outcome = ok and "approved" or "refused",
    code = not ok and dhsm.error.normalize(err).code or nil, digest = digest, playbook = playbook_name(p.body.playbook),
    author_key = seen.author, approver_keys = keys_of(seen.approvers) }
  if not ok then error(err, 0) end
  return { digest = digest, author = { key = seen.author }, approvers = seen.approvers, rejected = seen.rejected }
end

---------------------------------------------------------------------------
-- the host's policy

local function unsafe(message)
  act.refusal { code = "PolicyUnsafe", message = message }
end

-- A file (or its folder) that only root - or, for a rehearsal's policy,
-- the user running dhsm - can change; else PolicyUnsafe with the fix.
local function check_owner(path, owners, what)
  local st = sys.stat(path)
  if not st then unsafe(("%s %s cannot be read: dhsm will not act on a policy it cannot check"):format(what, path)) end
  if not owners[st.uid] then
    unsafe(("%s %s is owned by uid %d, not root: anyone who owns it could weaken the policy (chown root:root %s)")
      :format(what, path, st.uid, path))
  end
  if st.mode & 18 ~= 0 then                                   -- 0022: group or others may write
    unsafe(("%s %s is writable by %s: anyone who can write it could weaken the policy (chmod go-w %s)")
      :format(what, path, st.mode & 16 ~= 0 and "its group" or "others", path))
  end
end

local function folder_of(path)
  local dir = path:match("^(.*)/[^/]*$")
  return (dir == nil or dir == "") and "/" or dir
end

-- The file a link leads to is what is read: it and its folder are checked.
local function check_safe(path, owners, what)
  local real = sys.realpath(path)
  if not real then unsafe(("%s %s cannot be resolved: dhsm will not act on a policy it cannot check"):format(what, path)) end
  check_owner(real, owners, what)
  check_owner(folder_of(real), owners, "the folder of " .. what)
end

local POLICY_FIELDS = { approvals = true, allowed_signers = true, playbooks = true, destructive_changes = true }

local function invalid(source, field, expected, got)
  act.refusal { code = "PolicyInvalid", message = ("policy %s: field '%s': expected %s, got %s; dhsm refuses to act "
    .. "under a policy it cannot read (never 'no policy')"):format(source, field, expected, got) }
end

local function read_policy(source, owners)
  check_safe(source, owners, "the policy")
  local text, err = util.read_file(source)
  if not text then unsafe(("the policy %s cannot be read: %s"):format(source, tostring(err))) end
  local doc, why = util.json_object(text)
  if not doc then invalid(source, "(the file)", "a JSON object", why) end
  for k in pairs(doc) do
    if not POLICY_FIELDS[k] then invalid(source, tostring(k), "one of approvals, allowed_signers, playbooks, destructive_changes", "it") end
  end
  local approvals = type(doc.approvals) == "number" and math.tointeger(doc.approvals)
  if not approvals or approvals < 1 then invalid(source, "approvals", "a whole number of approvers >= 1", shown(doc.approvals)) end
  if type(doc.allowed_signers) ~= "string" or doc.allowed_signers:sub(1, 1) ~= "/" then
    invalid(source, "allowed_signers", "the absolute path of an OpenSSH allowed_signers file", shown(doc.allowed_signers))
  end
  if type(doc.playbooks) ~= "table" or shape(doc.playbooks, "playbooks") == "object" then
    invalid(source, "playbooks", "a list of playbook names", shown(doc.playbooks))
  end
  local playbooks = {}
  for i, name in ipairs(doc.playbooks) do
    if type(name) ~= "string" or not name:match(NAME) then invalid(source, ("playbooks[%d]"):format(i), "a playbook's name", shown(name)) end
    playbooks[name] = true
  end
  if type(doc.destructive_changes) ~= "boolean" then
    invalid(source, "destructive_changes", "true or false (whether destructive changes need an approved plan)", shown(doc.destructive_changes))
  end
  check_safe(doc.allowed_signers, owners, "the allowed_signers file")
  return { approvals = approvals, allowed_signers = doc.allowed_signers, playbooks = playbooks,
    destructive_changes = doc.destructive_changes, source = source }
end

-- Whether a file is there: listed in its folder even when stat cannot
-- follow it (a dangling link is "there": never read as "no policy").
local ENOENT = 2

local function present(path)
  local st, _, errno = sys.stat(path)
  if st or errno ~= ENOENT then return true end   -- cannot tell (EACCES ...): there, and read_policy refuses
  local name = path:match("[^/]*$")
  local entries, _, why = sys.readdir(folder_of(path))
  if not entries then return why ~= ENOENT end     -- a folder that cannot be listed: cannot tell, so there
  for _, entry in ipairs(entries) do
    if entry == name then return true end
  end
  return false
end

-- policy_at(system_path) -> the policy plan.policy() would read were the
-- host's file at system_path (the tests' seam: plan.policy() itself
-- always reads /etc/dhsm/policy.json).  $DHSM_POLICY counts only when
-- there is no host file, so nothing but root can weaken a host's policy.
function M.policy_at(system_path)
  if type(system_path) ~= "string" or system_path:sub(1, 1) ~= "/" then
    usage("policy_at: expected an absolute path, got %s", shown(system_path))
  end
  if present(system_path) then return read_policy(system_path, { [0] = true }) end
  local rehearsal = os.getenv("DHSM_POLICY")
  if rehearsal == nil or rehearsal == "" then return nil end
  return read_policy(rehearsal, { [0] = true, [assert(sys.whoami()).uid] = true })
end

-- policy() -> nil (no policy in force) | {approvals=, allowed_signers=, playbooks={name=true}, destructive_changes=, source=}
function M.policy()
  return M.policy_at(SYSTEM_POLICY)
end

---------------------------------------------------------------------------
-- what a reviewer reads

local function paint(on, code, s)
  return on and ("\27[" .. code .. "m" .. s .. "\27[0m") or s
end

-- A value on one line: text as it is, anything else as its JSON (3, not
-- 3.0); control characters shown as \xNN, so that text from the estate
-- (a label) cannot move the cursor or recolour a reviewer's terminal.
local function one_line(v)
  local text = v
  if type(v) ~= "string" then
    local ok, json = pcall(encode_value, v, "value", 1, nil)
    text = ok and json or tostring(v)
  end
  return (text:gsub("%c", function(c) return ("\\x%02x"):format(c:byte()) end))
end

local function change_line(i, c, color)
  local mark = c.destructive == true and "DESTRUCTIVE" or ""
  local line = ("  %-11s %3d. %s %s %s%s\n  %16s %s"):format(mark, i, one_line(c.kind or "?"), one_line(c.action or ""),
    one_line(c.target or ""), c.where and ("  (" .. one_line(c.where) .. ")") or "", "", one_line(c.what or ""))
  return c.destructive == true and paint(color, "1;31", line) or line
end

-- render(p [, {color=}]) -> text for a reviewer: who, when, the approvals
-- written in the file, the parameters, the changes destructive first
-- (numbered in the order they run), the reads they depend on.
function M.render(p, opts)
  check_plan(p, "render")
  opts = opts or {}
  if type(opts) ~= "table" then usage("render: expected options {color=}, got %s", type(opts)) end
  local b, color = p.body, opts.color == true
  local out = {
    paint(color, "1", ("plan for playbook %s"):format(one_line(playbook_name(b.playbook)))),
    ("digest   sha256:%s"):format(M.digest(p)),
    ("author   %s@%s  key %s"):format(one_line(b.author.user), one_line(b.author.host), one_line(b.author.key or "(not signed)")),
    ("created  %s  expires %s%s"):format(one_line(b.created), one_line(b.expires),
      expired(b) and paint(color, "1;31", "  EXPIRED") or ""),
    ("dhsm     %s"):format(one_line(b.dhsm_version)),
  }
  if type(b.playbook) == "table" then out[#out + 1] = ("playbook code sha256:%s"):format(one_line(b.playbook.sha256)) end
  local approvals = {}
  for i = 2, #p.signatures do
    local s = p.signatures[i]
    approvals[#approvals + 1] = ("  %s  key %s  at %s"):format(one_line(s.principal or "?"), one_line(s.key), one_line(s.time or "?"))
  end
  out[#out + 1] = ("approvals written in the file: %d (dhsm plan verify checks them)"):format(#approvals)
  for _, a in ipairs(approvals) do out[#out + 1] = a end
  if b.inventory then out[#out + 1] = ("inventory %s  sha256:%s"):format(one_line(b.inventory.path), one_line(b.inventory.sha256)) end
  out[#out + 1] = "params:"
  for _, k in ipairs(sorted_keys(b.params)) do out[#out + 1] = ("  %s = %s"):format(one_line(k), one_line(b.params[k])) end
  local destructive = 0
  for _, c in ipairs(b.changes) do if c.destructive == true then destructive = destructive + 1 end end
  out[#out + 1] = ("changes: %d, %d destructive (destructive first; numbers: the order they run)"):format(#b.changes, destructive)
  for pass = 1, 2 do
    for i, c in ipairs(b.changes) do
      if (c.destructive == true) == (pass == 1) then out[#out + 1] = change_line(i, c, color) end
    end
  end
  out[#out + 1] = ("reads: %d"):format(#b.reads)
  for _, r in ipairs(b.reads) do
    out[#out + 1] = type(r) == "table" and ("  %s: %s"):format(one_line(r.step or "?"), one_line(r.result)) or ("  " .. one_line(r))
  end
  return table.concat(out, "\n") .. "\n"
end

return M
