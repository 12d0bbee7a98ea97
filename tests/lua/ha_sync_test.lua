-- The one real signal of HA members in different cloning domains: the
-- troubleshooting guide's warning from lunacm `hagroup synchronize` (HA
-- Group Doesn't Sync; luna-field.md section 9).  No appliance output shows
-- a partition's cloning domain, so this warning is all dhsm can go by.
-- The parser on the published line and its variants; then Client:synchronize
-- against the simulated client, the members' domains set in the estate.
local t = require "dhsm.test"
local ha = require "dhsm.client.ha"
local parse = require "dhsm.luna.parse"
local proc = require "dhsm.proc"
local util = require "dhsm.util"

-- word for word as published (two blanks after "fail.")
local WARNING = "Warning: Synchronize may fail.  The members in slot 0 and slot 1 have conflicting settings for "
  .. "private key cloning."

t.test("the published warning line -> its slot pair; none -> {}", function()
  t.eq(parse.lunacm_sync_conflicts(WARNING), { { a = 0, b = 1 } })
  t.eq(parse.lunacm_sync_conflicts(""), {})
  t.eq(parse.lunacm_sync_conflicts(nil), {})
  t.eq(parse.lunacm_sync_conflicts("\t3 object(s) cloned to the members missing them.\n\nCommand Result : No Error\n"), {})
end)

t.test("CRLF, a TAB indent, runs of blanks and TABs, trailing blanks: the same warning", function()
  local variants = {
    WARNING .. "\r\n",
    "\t" .. WARNING .. "\n",
    "  " .. WARNING .. " \t \r\n",
    (WARNING:gsub("  ", " ")),                      -- one blank after "fail."
    (WARNING:gsub(" ", " \t  ")),
  }
  for i, text in ipairs(variants) do
    t.eq(parse.lunacm_sync_conflicts("banner\n" .. text .. "\nCommand Result : No Error\n"), { { a = 0, b = 1 } },
      "variant " .. i)
  end
end)

t.test("every warning line counts, with its own slots", function()
  local text = table.concat({ "lunacm (64-bit) v7.2.0-220.", "\t" .. WARNING,
    "\t" .. (WARNING:gsub("slot 1", "slot 12")), "", "Command Result : 0x00000030 (CKR_DEVICE_ERROR)" }, "\n")
  t.eq(parse.lunacm_sync_conflicts(text), { { a = 0, b = 1 }, { a = 0, b = 12 } })
end)

t.test("a line that speaks like the warning but does not read as published is a ParseError naming it", function()
  local variants = {
    "Warning: Synchronize may fail.",                                              -- truncated
    WARNING:sub(1, -2),                                                            -- no final full stop
    (WARNING:gsub("slot 1", "slot one")),
    (WARNING:gsub("slot 1", "slot -1")),
    (WARNING:gsub("slot 1", "slot " .. ("9"):rep(30))),                            -- no slot number
    (WARNING:gsub("^Warning", "WARNING")),
    (WARNING:gsub("private key cloning", "private  key  cloning, object cloning")),
    "Note: the members have conflicting settings for private key cloning.",        -- worded otherwise
    WARNING .. " " .. WARNING,                                                     -- two on one line
  }
  for i, line in ipairs(variants) do
    local err = t.raises(function() parse.lunacm_sync_conflicts("banner\n\t" .. line .. "\n") end, "ParseError")
    t.eq(err.kind, "luna", "variant " .. i)
    t.eq(err.details.command, "hagroup synchronize", "variant " .. i)
    t.eq(err.details.line, line, "variant " .. i)
    t.ok(err.details.expected:find("Warning: Synchronize may fail.  The members in slot N and slot M", 1, true),
      err.details.expected)
  end
end)

t.test("a line over util.MAX_LINE is refused (InputTooLong); below it, blanks and digits cost linear time", function()
  t.raises(function() parse.lunacm_sync_conflicts(WARNING .. "\n" .. ("x "):rep(util.MAX_LINE)) end, "InputTooLong")
  local cap = util.MAX_LINE
  util.MAX_LINE = 1 << 20
  t.cleanup(function() util.MAX_LINE = cap end)
  local blanks = (" "):rep(256 * 1024)
  for i, line in ipairs { "Warning: Synchronize may fail." .. blanks .. "x", "private key cloning" .. blanks,
    "Warning: Synchronize may fail. The members in slot " .. ("1"):rep(256 * 1024) .. " and",
    ("synchronize may fail "):rep(10000) } do
    local c0 = os.clock()
    t.raises(function() parse.lunacm_sync_conflicts(line) end, "ParseError")
    t.ok(os.clock() - c0 < 2, ("hostile line %d took %.1f s"):format(i, os.clock() - c0))
  end
end)

---------------------------------------------------------------------------
-- Client:synchronize on the simulated client: two members of group myHA

local support = require "support.estate"
local e = support.start { args = "--appliances 2 --client-ready" }
local client = e.inventory.client
local co = e:secret("hsm1_par1_co_pin")
local env = { ChrystokiConfigurationPath = client.chrystoki_conf:match("^(.*)/[^/]*$") }

local serials, slots = {}, {}
for _, s in ipairs(proc.lunacm_slots { argv = { client.lunacm }, env = env }) do
  local name = s.label:match("^(hsm%d)%-par1$")
  if name then serials[name], slots[name] = s.serial, s.slot end
end
for _, words in ipairs { { "createGroup", "-label", "myHA", "-serialNumber", serials.hsm1 },
  { "addMember", "-group", "myHA", "-serialNumber", serials.hsm2 } } do
  local r = proc.lunacm_login { argv = { client.lunacm, "-c", "hagroup", table.unpack(words) }, env = env,
    password = co, timeout = 60 }
  t.ok(r.ok, r.stdout)
end

local function pin(name) return (util.read_file(e.dir .. "/secrets/" .. name):gsub("%s+$", "")) end

-- hsm2's partition initialised again in cloning domain `domain`, its PINs kept
local function domain_of_hsm2(domain)
  e:control("POST", "/appliances/hsm2/partitions/par1/init", { domain = domain, so_pin = pin("hsm2_par1_so_pin"),
    co_pin = pin("hsm2_par1_co_pin") })
end

-- the estate's own log of the synchronize runs (the client tools write a line each)
local function syncs(from)
  local out, log = {}, e:log()
  for i = from + 1, #log do out[#out + 1] = log[i]:match("^lunacm: (hagroup synchronize .*)$") end
  return out
end

local function put_key(label)
  local lib <close> = require("dhsm.pkcs11").load(client.pkcs11_lib, { env = { SOFTHSM2_CONF = client.softhsm_conf,
    ChrystokiConfigurationPath = env.ChrystokiConfigurationPath } })
  local s <close> = lib:open { label = "hsm1-par1", rw = true }
  s:login("user", co)
  s:generate_aes { label = label, sensitive = false, extractable = true }
  s:logout()
end

t.test("members in one cloning domain: synchronize runs, no conflict", function()
  local from = #e:log()
  local r = ha.client(e.inventory):synchronize("myHA", co)
  t.ok(r.ok, r.stdout)
  t.ok(not r.stdout:find("Warning", 1, true), r.stdout)
  t.eq(syncs(from), { "hagroup synchronize -group myHA -> No Error" })
end, { timeout = 120 })

t.test("members in two cloning domains: the warning is raised as CloningConflict naming both members, also when "
  .. "lunacm says No Error (nothing to clone) and when it fails (objects to clone)", function()
  domain_of_hsm2("another-domain")
  t.cleanup(function() domain_of_hsm2("defaultdomain") end)
  local c = ha.client(e.inventory)
  local from = #e:log()
  local err = t.raises(function() c:synchronize("myHA", co) end, "CloningConflict")
  t.eq(syncs(from), { "hagroup synchronize -group myHA -> No Error" }, "lunacm itself said No Error")
  t.eq(err.kind, "luna")
  t.eq(err.details.pairs, { { a = { slot = slots.hsm1, serial = serials.hsm1, hsm = "hsm1" },
    b = { slot = slots.hsm2, serial = serials.hsm2, hsm = "hsm2" } } })
  t.ok(err.message:find(("slot %d (%s on hsm1) and slot %d (%s on hsm2) have conflicting settings for private key "
    .. "cloning"):format(slots.hsm1, serials.hsm1, slots.hsm2, serials.hsm2), 1, true), err.message)
  put_key("k-sync")
  from = #e:log()
  err = t.raises(function() c:synchronize("myHA", co) end, "CloningConflict")
  t.eq(syncs(from), { "hagroup synchronize -group myHA -> 0x00000030 (CKR_DEVICE_ERROR)" }, "lunacm failed")
  t.eq(err.details.pairs[1].b.serial, serials.hsm2)
end, { timeout = 120 })
