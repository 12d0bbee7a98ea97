-- dhsm.client.lastcopy: no last copy destroyed - the steps a playbook
-- that destroys partitions takes (decommission), written once: each object
-- on the partitions it destroys must be found on what survives, or be
-- named by the operator.
--
--   local lastcopy = require "dhsm.client.lastcopy"
--   lastcopy.whole_groups(ctx)           before any step: one line per HA group every member of which goes
--   lastcopy.census(ctx, pt)             a partition's objects (pt from `partition list`), read as its CO
--   lastcopy.step(ctx, left)             the step: the last copies of the surveyed HSMs `left`, refused
--                                        (LastCopy) unless named -> {last_copies=, named={object...}}
--   lastcopy.clearance(ctx, h, left, named)   the clearance dhsm.luna asks for before h's key material goes
--
-- What survives: the other members of the doomed partitions' HA groups
-- (lunacm's `hagroup listGroups` on this client) and the partitions
-- ctx.params.backup names; the operator's word is
-- ctx.params.destroy_last_copies (labels, id:HEX, all, all:N).  The
-- objects and their fingerprints: dhsm.client.copies.  Each takes the
-- playbook's context (dhsm.play.context), as dhsm.client.steps does.
local dhsm = require "dhsm"
local copies = require "dhsm.client.copies"
local steps = require "dhsm.client.steps"
local schema = require "dhsm.schema"
local util = require "dhsm.util"

local M = {}

-- lunacm's slots, read once per run: {serial = slot}
local slots = util.weak_memo(function(ctx) return steps.client(ctx):slots() end)

-- A partition's objects, read as its Crypto Officer (read-only: in check
-- mode too); none to read when its appliance counts none.
function M.census(ctx, pt)
  if pt.objects == 0 then return {} end
  return copies.read(steps.client(ctx), pt.serial, slots(ctx)).objects
end

-- The partitions this run destroys, from the survey: {censuses}, {serial = true}
local function doomed(left)
  local list, set = {}, {}
  for _, h in ipairs(left) do
    for _, pt in ipairs(h.partitions or {}) do
      list[#list + 1] = { partition = pt.serial, objects = pt.census or {} }
      set[pt.serial] = true
    end
  end
  return list, set
end

local function holds_objects(list)
  for _, c in ipairs(list) do
    if #c.objects > 0 then return true end
  end
  return false
end

-- The members of the HA groups of the partitions in dead that are not in
-- dead: {{group=, serial=}}
local function other_members(ctx, dead)
  local out = {}
  for _, g in ipairs(steps.client(ctx):groups()) do
    local ours = false
    for _, m in ipairs(g.members) do ours = ours or dead[m.serial] end
    for _, m in ipairs(ours and g.members or {}) do
      if not dead[m.serial] then out[#out + 1] = { group = g, serial = m.serial } end
    end
  end
  return out
end

-- A survivor's census, or nil (noted) when it cannot be read: a member
-- that cannot be read is not a survivor.
local function read_member(ctx, g, serial)
  local ok, c = pcall(copies.read, steps.client(ctx), serial, slots(ctx))
  if ok then return c end
  if not (dhsm.error.is(c, "safety") and c.code == "CensusUnreadable") then error(c, 0) end
  ctx:note(("member %s of HA group %s is not counted as a copy: %s"):format(serial, g.label, c.message))
end

-- What survives: the other members of the doomed partitions' HA groups,
-- and the backup partitions named (which must be readable).
local function survivors(ctx, dead)
  local out = {}
  for _, m in ipairs(other_members(ctx, dead)) do out[#out + 1] = read_member(ctx, m.group, m.serial) end
  for _, serial in ipairs(ctx.params.backup or {}) do
    if dead[serial] then
      dhsm.error { kind = "usage", code = "BadParameter", details = { bad_input = "backup" },
        message = ("backup: partition %s is one this run destroys, not a backup"):format(serial) }
    end
    out[#out + 1] = copies.read(steps.client(ctx), serial, slots(ctx))
  end
  return out
end

-- "hsm1/123: secret_key 'k' id 01 aes 256 kcv:..." per last copy
local function listing(last)
  local lines = {}
  for i, l in ipairs(last) do lines[i] = ("  %s: %s"):format(l.partition, copies.describe(l.object)) end
  return table.concat(lines, "\n")
end

-- The names of the last copies, each once, in order: the way on (a label,
-- else id:HEX).
local function labels(last)
  local out, seen = {}, {}
  for _, l in ipairs(last) do
    -- a list parameter splits at commas: such a label is named by its id
    local usable = l.object.label ~= "" and not l.object.label:find(",", 1, true) and l.object.label:match("^all") == nil
    local name = usable and l.object.label or ("id:" .. l.object.id)
    if not seen[name] then out[#out + 1], seen[name] = name, true end
  end
  return out
end

local function refuse_last_copies(last, unnamed)
  local names = table.concat(labels(last), ",")
  dhsm.error { kind = "safety", code = "LastCopy", details = { new_run = { destroy_last_copies = names },
      last_copies = last },
    message = ("%d object(s) are found on no partition that survives (no other member of their HA group, no backup "
      .. "named)%s; destroying them cannot be undone:\n%s\nBack them up (a backup partition: %s), "
      .. "synchronize their HA group (dhsm run ha-recover), or name them to destroy them: "
      .. "%s (or %s)"):format(#last,
      unnamed and (", and these were not named in destroy_last_copies") or "", listing(unnamed or last),
      schema.give("backup=SERIAL"), schema.give("destroy_last_copies=" .. names),
      schema.give(("destroy_last_copies=all:%d"):format(#last))) }
end

-- The last copies destroy_last_copies does not name (a label, id:HEX).
local function not_named(last, names)
  local named, out = {}, {}
  for _, n in ipairs(names) do named[n] = true end
  for _, l in ipairs(last) do
    if not (named[l.object.label] or named["id:" .. l.object.id]) then out[#out + 1] = l end
  end
  return out
end

-- all: the count typed at a terminal; all:N: N, for no terminal.
local function all_confirmed(ctx, last, word)
  local n = tonumber(word:match("^all:(%d+)$"))
  if n then
    if n ~= #last then
      dhsm.error { kind = "safety", code = "LastCopy", details = { new_run = { destroy_last_copies = "all:" .. #last } },
        message = ("destroy_last_copies=all:%d, but there are %d last copies:\n%s"):format(n, #last, listing(last)) }
    end
    return
  end
  if ctx.check then
    ctx:would(("ask the operator to type %d, the number of last copies"):format(#last))
    return
  end
  require("dhsm.ask").confirm { target = "the last copies", detail = listing(last), answer = tostring(#last),
    question = ("%d object(s) are last copies:\n%s\nType their number, %d, to destroy them: "):format(#last,
      listing(last), #last),
    no_terminal = ("destroy_last_copies=all needs the count of last copies typed at a terminal, and there is none; "
      .. "nothing was destroyed (give %s)"):format(schema.give(("destroy_last_copies=all:%d"):format(#last))),
    mismatch = "not confirmed: the last copies were not destroyed" }
end

-- The operator's word for each last copy: every one named, or all.
local function consent(ctx, last)
  local names = ctx.params.destroy_last_copies
  if not names then refuse_last_copies(last) end
  if #names == 1 and (names[1] == "all" or names[1]:match("^all:%d+$")) then return all_confirmed(ctx, last, names[1]) end
  local unnamed = not_named(last, names)
  if #unnamed > 0 then refuse_last_copies(last, unnamed) end
end

-- The record of what is destroyed by consent: labels, ids, fingerprints (never a value).
local function audit_last_copies(ctx, last)
  local list = {}
  for i, l in ipairs(last) do
    list[i] = { partition = l.partition, class = l.object.class, label = l.object.label, id = l.object.id,
      fingerprint = l.object.fingerprint }
  end
  dhsm.audit.write { action = ctx.playbook.name .. ".last_copies", target = table.concat(ctx.params.hsm, ","),
    outcome = "named by the operator", count = #last, objects = list }
end

-- left: the HSMs still there.  -> {last_copies = n, named = {object...}}:
-- the last copies the operator named, as the census gave them
function M.step(ctx, left)
  return ctx:step("look for a copy of every object that will be destroyed", function()
    local list, dead = doomed(left)
    if not holds_objects(list) then return { last_copies = 0, named = {} } end
    local last = copies.last_copies(list, survivors(ctx, dead))
    if #last == 0 then
      ctx:note("every object on the partitions to be destroyed has a copy on a partition that survives")
      return { last_copies = 0, named = {} }
    end
    consent(ctx, last)
    audit_last_copies(ctx, last)
    ctx:note(("%d last copies named by the operator: destroyed with their partitions"):format(#last))
    local named = {}
    for i, l in ipairs(last) do named[i] = l.object end
    return { last_copies = #last, named = named }
  end)
end

-- The survivors of the partitions in dead: the other members of their HA
-- groups and the backups named (serials).
local function survivor_serials(ctx, dead)
  local out = {}
  for _, m in ipairs(other_members(ctx, dead)) do out[#out + 1] = m.serial end
  for _, sn in ipairs(ctx.params.backup or {}) do out[#out + 1] = sn end
  return out
end

-- The clearance dhsm.luna asks for before h's key material is destroyed
-- (dhsm.client.copies.clear): h's partitions and the survivors read again
-- now (a resumed run's check may be old), each object on a survivor or
-- among the last copies named.  dead: the partitions this run destroys.
function M.clearance(ctx, h, left, named)
  local _, dead = doomed(left)
  local s = ctx:appliance(h.name)
  local mine, gone = {}, util.merged(dead, {})
  for _, pt in ipairs(s:hsm_show().zeroized and {} or s:partitions()) do
    if pt.objects ~= 0 then mine[#mine + 1] = pt.serial end
    gone[pt.serial] = true
  end
  local others = #mine > 0 and survivor_serials(ctx, gone) or {}
  -- (nothing to read when no partition holds objects: no slot list either)
  return copies.clear(steps.client(ctx), h.serial, mine, others, named, #mine > 0 and slots(ctx) or {})
end

-- Before any step: an HA group every member of which this run destroys,
-- in one line with the count of objects it destroys on them (`partition
-- list`'s, read now: every one is a last copy).  What cannot
-- be read here is left to the steps, which refuse it.
function M.whole_groups(ctx)
  local counts, any = {}, false
  for _, name in ipairs(ctx.params.hsm) do
    local ok, parts = pcall(function()
      local s = ctx:appliance(name)
      return s:hsm_show().zeroized and {} or s:partitions()
    end)
    for _, pt in ipairs(ok and parts or {}) do
      counts[pt.serial] = pt.objects
      any = any or (pt.objects or 0) > 0
    end
  end
  if not any then return end
  local ok, groups = pcall(function() return steps.client(ctx):groups() end)
  for _, g in ipairs(ok and groups or {}) do
    local all, n = #g.members > 0, 0
    for _, m in ipairs(g.members) do
      all = all and counts[m.serial] ~= nil
      n = n + (counts[m.serial] or 0)
    end
    if all and n > 0 then
      ctx:note(("every member of HA group %s is decommissioned: its %d objects are last copies"):format(g.label, n))
    end
  end
end

return M
