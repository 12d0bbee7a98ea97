-- dhsm.client.copies: what destroying partitions would lose - the objects
-- found on no partition that survives (the last copies).
--
--   local copies = require "dhsm.client.copies"
--   copies.census(session)  --> {{class=, label=, id=, key_type=, size=, fingerprint=, matched_by=}, ...}
--   copies.read(install, serial [, slots])  --> {partition=, token=, objects = census}: the partition's
--                                   objects through the client install (dhsm.client.ha), a read-only
--                                   Crypto Officer login with the inventory's crypto_officers secret
--   copies.last_copies(doomed, survivors)  --> {{partition=, object=}, ...}: doomed objects on no survivor
--   copies.describe(object)  --> "secret_key 'k1' id 0a1b aes 256 kcv:1a2b3c"
--   copies.clear(install, hsm_serial, partitions, survivors, named)  --> a last-copy clearance (dhsm.evidence)
--                                   for that appliance: its partitions and the survivors read now, each object
--                                   on a survivor or among `named`
--
-- An object is told by class, label, CKA_ID, key type and size, and by a
-- fingerprint where one is readable: "sha256:" of the public value for a
-- public key (RSA modulus and exponent, EC point) and for a private key
-- (its own public part, else the public key of its CKA_ID); "kcv:" of a
-- secret key's CKA_CHECK_VALUE; "sha256:" of a certificate's value.  The
-- value of a private or secret key is never asked for: sensitive keys are
-- compared by these attributes only.  An object with no fingerprint
-- matches by its other attributes alone, and says so (matched_by =
-- "attributes").
--
-- A partition that cannot be read (no secret for it, no slot, a login
-- refused) is never taken for an empty one: read raises safety
-- CensusUnreadable naming the partition and what to do.
local dhsm = require "dhsm"
local evidence = require "dhsm.evidence"
local proc = require "dhsm.proc"
local schema = require "dhsm.schema"
local sys = require "dhsm.sys"

local M = {}

-- The one maker of last-copy clearances (dhsm.evidence), taken now.
local issue = evidence.clearance_issuer()

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- What is read of every object, whatever its class: never "value".
local COMMON = { "class", "label", "id", "key_type", "modulus_bits", "value_len", "ec_params" }
-- What a fingerprint is made of, per class (never a private or secret key's value).
local FINGERPRINT = {
  public_key = { "modulus", "public_exponent", "ec_point" },
  private_key = { "modulus", "public_exponent" },
  secret_key = { "check_value" },
  certificate = { "value" },
}

local CURVES = { ["\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07"] = "P-256", ["\x06\x05\x2b\x81\x04\x00\x22"] = "P-384",
  ["\x06\x05\x2b\x81\x04\x00\x23"] = "P-521" }

-- The key's size: RSA bits, a secret's bits, an EC key's curve.
local function size_of(a, pub)
  if a.modulus_bits then return a.modulus_bits end
  if a.modulus then return #a.modulus * 8 end
  if a.value_len then return a.value_len * 8 end
  local params = a.ec_params or pub.ec_params
  if params then return CURVES[params] or ("ec:" .. hex(params)) end
end

-- The public value of a key's attributes, or nil.  Lengths first, so no
-- two different pairs hash alike.
local function public_value(a)
  if a.modulus and a.public_exponent then return string.pack(">s4s4", a.modulus, a.public_exponent) end
  return a.ec_point
end

local function sha256(data)
  return "sha256:" .. sys.sha256(data)
end

-- The fingerprint of object a (its attributes) or nil; pub: the public
-- key sharing a private key's CKA_ID, read when the key shows no public part.
local function fingerprint(a, pub)
  if a.class == "secret_key" then return a.check_value and a.check_value ~= "" and "kcv:" .. hex(a.check_value) or nil end
  if a.class == "certificate" then return a.value and sha256(a.value) end
  local public = public_value(a) or public_value(pub)
  return public and sha256(public)
end

-- The attributes of the public key with the private key's CKA_ID (the pair), or {}.
local function paired_public(session, a)
  if not a.id or a.id == "" then return {} end
  local found = session:find { class = "public_key", id = a.id }
  if #found ~= 1 then return {} end
  return session:attributes(found[1], { "modulus", "public_exponent", "ec_point", "ec_params" })
end

local function census_entry(session, h)
  local a = session:attributes(h, COMMON)
  local more = FINGERPRINT[a.class]
  if more then
    for k, v in pairs(session:attributes(h, more)) do a[k] = v end
  end
  local pub = {}
  if a.class == "private_key" and not public_value(a) then pub = paired_public(session, a) end
  local fp = fingerprint(a, pub)
  return { class = tostring(a.class), label = a.label or "", id = hex(a.id or ""), key_type = a.key_type and tostring(a.key_type),
    size = size_of(a, pub), fingerprint = fp, matched_by = fp and "fingerprint" or "attributes" }
end

-- The identity two copies of one object share (a size read back from a
-- journal may be a float: 256.0 is 256).
local function identity(o)
  local size = math.type(o.size) and ("%d"):format(o.size) or tostring(o.size)
  return table.concat({ o.class, o.label, o.id, tostring(o.key_type), size, o.fingerprint or "" }, "\0")
end

-- census(session) -> the objects of a logged-in session's token, sorted
-- (class, label, id, fingerprint): plain data, the same for the same token.
function M.census(session)
  if type(session) ~= "table" and type(session) ~= "userdata" or not pcall(function()
    assert(session.find and session.attributes) end) then
    dhsm.error { kind = "usage", code = "BadArgument", message = ("copies.census: session: expected a logged-in PKCS#11 "
      .. "session (dhsm.pkcs11), got %s"):format(schema.show(session)) }
  end
  local out = {}
  for _, h in ipairs(session:find {}) do out[#out + 1] = census_entry(session, h) end
  table.sort(out, function(x, y) return identity(x) < identity(y) end)
  return out
end

-- describe(object) -> one line: class, label, id, type, size, fingerprint
function M.describe(o)
  return ("%s '%s' id %s %s %s %s"):format(o.class, o.label, o.id ~= "" and o.id or "(none)", tostring(o.key_type or "-"),
    tostring(o.size or "-"), o.fingerprint or "(no fingerprint: matched by class, label, id, type and size)")
end

-- The refusal of a partition that cannot be read.
local function unreadable(serial, why, todo, cause)
  dhsm.error { kind = "safety", code = "CensusUnreadable", details = { partition = serial, cause = cause },
    message = ("cannot tell which objects partition %s holds: %s; nothing is destroyed while a partition's keys cannot "
      .. "be listed (an unreadable partition is not an empty one). %s"):format(serial, why, todo) }
end

-- read(install, serial [, slots]) -> {partition=, token=, objects=}
function M.read(install, serial, slots)
  schema.argument("copies.read", "serial", serial, { type = "string", required = true, pattern = "^%d+$",
    expect = "a partition serial (digits)" })
  local co = install.inventory:crypto_officer(serial)
  if not co then
    unreadable(serial, "the inventory has no Crypto Officer secret for it",
      ('Add {"partition": "%s", "password": "env:NAME"} (or file:, prompt) to hsms[].crypto_officers of its appliance '
        .. "(and the serial to that entry's partitions)"):format(serial))
  end
  local slot = (slots or install:slots())[serial]
  if not slot then
    unreadable(serial, "lunacm's slot list shows no slot for it",
      "Assign it to this client (LunaSH client assignPartition) and make sure its appliance answers (vtl verify)")
  end
  local lib <close> = install:library()
  local s <close> = lib:open { serial = serial }           -- read-only
  local ok, err = pcall(s.login, s, "user", co, { read_only = true })
  if not ok then
    local e = dhsm.error.normalize(err)
    unreadable(serial, ("the Crypto Officer login was refused (%s: %s)"):format(tostring(e.code), tostring(e.message)),
      "Check the secret in hsms[].crypto_officers, and the partition's Crypto Officer (lunacm role show)", e.code)
  end
  -- no logout: closing the session (the library's last) ends the login, and
  -- a logout is a change the plan would list
  return { partition = serial, token = slot.label, objects = M.census(s) }
end

-- last_copies(doomed, survivors) -> {{partition=, object=}, ...}: each
-- object of a doomed census found on no surviving one (censuses as read gives).
function M.last_copies(doomed, survivors)
  local spec = { type = "table", required = true, expect = "a list of censuses {partition=, objects=}" }
  schema.argument("copies.last_copies", "doomed", doomed, spec)
  schema.argument("copies.last_copies", "survivors", survivors, spec)
  local kept = {}
  for _, c in ipairs(survivors) do
    for _, o in ipairs(c.objects) do kept[identity(o)] = true end
  end
  local out = {}
  for _, c in ipairs(doomed) do
    for _, o in ipairs(c.objects) do
      if not kept[identity(o)] then out[#out + 1] = { partition = c.partition, object = o } end
    end
  end
  return out
end

-- The censuses of the partitions of `serials` that can be read; those
-- that cannot are not survivors (CensusUnreadable), any other error is raised.
local function readable(install, serials, slots)
  local out = {}
  for _, sn in ipairs(serials) do
    local ok, c = pcall(M.read, install, sn, slots)
    if ok then
      out[#out + 1] = c
    elseif not (dhsm.error.is(c, "safety") and c.code == "CensusUnreadable") then
      error(c, 0)
    end
  end
  return out
end

-- clear(install, hsm_serial, partitions, survivors, named [, slots]) -> a
-- clearance (dhsm.evidence) for the appliance of that HSM serial: the
-- partitions (serials) it holds and the survivors (serials) are read here,
-- now, and every object of the first is on one of the second or among
-- `named` (objects the operator named to destroy, as census gave them;
-- audited); else safety LastCopyUnchecked listing the others.  The
-- clearance covers the partitions read, no other.
function M.clear(install, serial, partitions, survivors, named, slots)
  schema.argument("copies.clear", "serial", serial, { type = "string", required = true, pattern = "^%w+$",
    expect = "an HSM serial" })
  slots = slots or install:slots()
  local doomed, covered, count = {}, {}, 0
  for i, sn in ipairs(partitions) do
    doomed[i] = M.read(install, sn, slots)
    covered[sn], count = true, count + #doomed[i].objects
  end
  local ok = {}
  for _, o in ipairs(named or {}) do ok[identity(o)] = true end
  local left, lines = {}, {}
  for _, l in ipairs(M.last_copies(doomed, readable(install, survivors, slots))) do
    if not ok[identity(l.object)] then
      left[#left + 1] = l
      lines[#lines + 1] = ("  %s: %s"):format(l.partition, M.describe(l.object))
    end
  end
  if #left > 0 then
    dhsm.error { kind = "safety", code = "LastCopyUnchecked", details = { last_copies = left },
      message = ("HSM %s: %d object(s) would be destroyed that are on no partition that survives and were not named "
        .. "(the estate changed since the last-copy check?):\n%s"):format(serial, #left, table.concat(lines, "\n")) }
  end
  if #(named or {}) > 0 then
    dhsm.audit.write { action = "copies.named", target = serial, outcome = "cleared with named last copies",
      count = #named }
  end
  return issue(serial, count, covered)
end

return M
