-- ha-recover: bring a Luna client's HA groups back to health, the
-- troubleshooting guide's "HA group" way.
--
--   dhsm run ha-recover -e co_password=file:/path [-e group=myHA] [-e retry_count=-1] [-e retry_interval=60]
--        [-e fix_cloning=true -e cloning_domain=prompt -e pso_password=prompt [-e so_password=...] [-e new_partition=par2]]
--
-- Reads the groups (Chrystoki.conf and `lunacm hagroup listGroups`), probes
-- every member's appliance (TCP to NTLS, then TLS with the client's
-- certificate) and shows one table.  A member that is down while its
-- appliance answers again is recovered (`hagroup recover`) and checked to
-- have rejoined; one whose appliance does not answer is left, with the
-- probe's reason.  A retry count of 0 (the default: no auto-recovery, as the
-- guide warns) is set, with the interval, and read back from Chrystoki.conf.
-- The members' objects (class and label, over PKCS#11 as the Crypto
-- Officer) are compared, and a group whose members differ is synchronized
-- (`hagroup synchronize`: it clones, it destroys nothing), then compared
-- again.  Their cloning domains are not compared: no appliance output shows
-- a partition's, so they are unknown until synchronize tells, and the plan
-- and the run say so.  When lunacm warns that members have conflicting
-- settings for private key cloning (the guide's HA Group Doesn't Sync), the
-- run stops with the guide's remedy as a plan, which -e fix_cloning=true
-- carries out as confirmed steps (a new partition on the bad member's
-- appliance: LunaSH `partition create` + `client assignPartition`, lunacm
-- `partition init` in the group's cloning domain as the operator gives it,
-- the Crypto Officer's password set as the Partition SO; `hagroup
-- addMember`; `hagroup removeMember` of the bad one), then synchronizes
-- again: only that synchronize running without the warning shows the new
-- partition is in the group's domain.  Every step looks at the real state
-- first, so a second run (or --resume) does only what is left.  A member
-- left out (its appliance does not answer) ends the run "goal not
-- reached" (exit status 1), naming it.
local ha = require "dhsm.client.ha"
local net = require "dhsm.net"
local schema = require "dhsm.schema"
local steps = require "dhsm.client.steps"

local REMEDY = "the guide's remedy for a cloning conflict (HA Group Doesn't Sync: conflicting settings for private key "
  .. "cloning): members of one group must share a cloning domain, which cannot be changed on an initialized partition"

-- What no appliance output shows, said in the plan and in the run.
local UNKNOWN = "the members' cloning domains are not shown by any appliance output, so they are unknown until "
  .. "hagroup synchronize tells (it warns of conflicting settings for private key cloning)"
-- What a synchronize meets when the domains differ - which nothing shows
-- before it: a conflict only then, never for certain.
local SYNC_UNKNOWN = "the members' cloning domains are unknown: should they differ, synchronize reports a conflict"
-- What a plan's synchronize depends on: the real run compares first.
local IF_DIFFER = "only if the members' objects differ (a plan does not read them: that is a Crypto Officer login)"

local client = steps.client

-- The name this client is registered under on the appliances (its certificate's CN).
local function ntls_client_name(ctx)
  return net.cert(client(ctx):conf():client_cert().cert).subject:match("CN=([^,/]+)")
end

-- One line per member: group, serial, appliance, the client's view, the probe.
local function table_lines(groups)
  local lines = { ("%-12s %-14s %-8s %-8s %s"):format("group", "member", "hsm", "client", "appliance") }
  for _, g in ipairs(groups) do
    for _, m in ipairs(g.members) do
      lines[#lines + 1] = ("%-12s %-14s %-8s %-8s %s"):format(g.label, m.serial, m.hsm or "?", m.status,
        m.probe_ok and "answers" or ("does not answer: " .. tostring(m.reason)))
    end
  end
  return lines
end

-- The first partition name parN that appliance `name` does not have.
local function free_partition(ctx, name)
  local taken = {}
  for _, part in ipairs(ctx:appliance(name):partitions()) do taken[part.name] = true end
  local n = 1
  while taken["par" .. n] do n = n + 1 end
  return "par" .. n
end

local function member_names(list)
  local out = {}
  for i, m in ipairs(list) do out[i] = ("%s (%s)"):format(m.serial, m.hsm or "?") end
  return table.concat(out, ", ")
end

---------------------------------------------------------------------------
-- survey

-- The groups asked for (-e group, else all), each member with its state
-- and its appliance's probe.  m.hsm becomes the entry's name: the groups
-- are the step's result, journaled.
local function survey(ctx)
  local c, only = client(ctx), ctx.params.group
  local groups, members = {}, {}
  for _, g in ipairs(c:groups()) do
    if not only or g.label == only then
      groups[#groups + 1] = g
      for _, m in ipairs(g.members) do members[#members + 1] = m end
    end
  end
  dhsm.parallel(members, function(m)
    local entry = m.hsm
    m.hsm = entry and entry.name or nil
    if not entry then
      m.reason = ("no HSM of the inventory lists partition %s (hsms[].partitions) and no appliance that answers "
        .. "holds it"):format(m.serial)
      return
    end
    local probe = c:probe(entry)
    m.probe_ok, m.reason = probe.ok, probe.reason
  end)
  return groups
end

local function read_groups(ctx)
  return ctx:step("read the HA groups and probe their members", function()
    local groups, conf_path = survey(ctx), client(ctx).conf_path
    if ctx.params.group and #groups == 0 then
      dhsm.error { kind = "usage", code = "NoSuchGroup", details = { bad_input = "group" }, message = ("no HA group %s in %s"):format(ctx.params.group, conf_path) }
    end
    if #groups == 0 then ctx:note("no HA group is configured in " .. conf_path) end
    for _, line in ipairs(#groups > 0 and table_lines(groups) or {}) do ctx:note(line) end
    return groups
  end)
end

---------------------------------------------------------------------------
-- recover the down members

-- Whether every member of down is alive again in group label, as the client sees it.
local function rejoined(ctx, label, down)
  local state = {}
  for _, now in ipairs(client(ctx):groups()) do
    for _, m in ipairs(now.label == label and now.members or {}) do state[m.serial] = m.status end
  end
  for _, m in ipairs(down) do
    if state[m.serial] ~= "alive" then return false end
  end
  return true, { recovered = member_names(down) }
end

-- A member down while its appliance answers again is recovered, then
-- checked to have rejoined; one whose appliance does not answer is left,
-- with the probe's reason: `hagroup recover` cannot bring it back.
local function recover_members(ctx, g)
  local down = {}
  for _, m in ipairs(g.members) do
    if m.status ~= "alive" and m.probe_ok then down[#down + 1] = m end
  end
  for _, m in ipairs(g.members) do
    if m.status ~= "alive" and not m.probe_ok then
      ctx:note(("group %s: member %s on %s is %s and its appliance does not answer (%s): left as it is")
        :format(g.label, m.serial, m.hsm or "an appliance dhsm cannot name", m.status, tostring(m.reason)))
      -- the run goes on with the rest, but the group is not whole
      ctx:unmet(("group %s: member %s (%s) still out, its appliance does not answer"):format(g.label, m.serial,
        m.hsm or "?"))
    end
  end
  if #down == 0 then return end
  local names = member_names(down)
  ctx:step(("recover %s in group %s"):format(names, g.label), {
    done = function() return rejoined(ctx, g.label, down) end,
  }, function()
    client(ctx):recover(g.label)
    return { recovered = names }
  end)
  ctx:step(("verify %s rejoined group %s"):format(names, g.label), function()
    if ctx.check then
      ctx:would("find " .. names .. " alive")
      return { planned = true }
    end
    if not rejoined(ctx, g.label, down) then
      dhsm.error { kind = "luna", code = "NotRejoined",
        message = ("group %s: %s did not rejoin after hagroup recover"):format(g.label, names) }
    end
    return { rejoined = names }
  end)
end

---------------------------------------------------------------------------
-- compare

local comparable, read_objects, drifting = steps.comparable, steps.read_objects, steps.drifting

-- The groups this run compared itself (not replayed from a journal), by
-- label: their synchronize follows at once, so its done= need not log in
-- to every member again to learn what the comparison just said.
local compared_now = setmetatable({}, { __mode = "k" })

-- The members' objects compared, as a step -> {drift = bool}.  Their
-- cloning domains are not: the step says why.
local function compare_step(ctx, g, members)
  return ctx:step(("compare the objects of the members of %s"):format(g.label), function()
    ctx:note(UNKNOWN)
    read_objects(ctx, members)
    local found = ha.compare(members)
    compared_now[ctx] = compared_now[ctx] or {}
    compared_now[ctx][g.label] = true
    if ctx.check then
      ctx:would("read every member's objects as the Crypto Officer and compare them; synchronize only if they differ")
    end
    for serial, missing in pairs(found.drift or {}) do
      ctx:note(("member %s lacks %d object(s): %s"):format(serial, #missing, table.concat(missing, ", ")))
    end
    if not found.drift and not ctx.check then ctx:note("every member holds the same objects") end
    return { drift = found.drift ~= nil or ctx.check }
  end)
end

---------------------------------------------------------------------------
-- a cloning conflict, as lunacm's synchronize reports it: pairs of members
-- {a=, b=}, each {slot=, serial=, hsm=} (dhsm.client.ha's CloningConflict)

local function pairs_text(conflict)
  local function one(m) return ("%s (%s)"):format(m.serial or ("slot " .. m.slot), m.hsm or "?") end
  local out = {}
  for i, p in ipairs(conflict) do out[i] = one(p.a) .. " and " .. one(p.b) end
  return table.concat(out, "; ")
end

-- The group keeps its first member's cloning domain (the member it was
-- created from, whose serial names it): the remedy replaces the others the
-- warning names -> good {serial=, hsm=}, bad {{serial=, hsm=}...}.  A
-- warning that does not name the first member, or names a slot that is no
-- partition of an inventory HSM, leaves the remedy nothing sure to act on:
-- refused, fix_cloning or not.
local function sides(g, conflict)
  local first = g.members[1]
  local bad, seen, unsure = {}, {}, ("it does not name the group's first member %s (%s), whose domain the remedy "
    .. "keeps"):format(first.serial, tostring(first.hsm))
  for _, p in ipairs(conflict) do
    for _, m in ipairs { p.a, p.b } do
      if m.serial == first.serial then
        unsure = nil
      elseif not seen[m.serial or m.slot] then
        seen[m.serial or m.slot] = true
        bad[#bad + 1] = m
      end
    end
  end
  for _, m in ipairs(bad) do
    if not (m.serial and m.hsm) then unsure = ("slot %d is no partition of the inventory's HSMs"):format(m.slot) end
  end
  if unsure then
    dhsm.error { kind = "safety", code = "CloningConflict", details = { group = g.label, pairs = conflict },
      message = ("group %s: hagroup synchronize reports conflicting settings for private key cloning between %s, "
        .. "but %s: which member is in another cloning domain cannot be told; fix the group by hand (guide: HA "
        .. "Group Doesn't Sync)"):format(g.label, pairs_text(conflict), unsure) }
  end
  return { serial = first.serial, hsm = first.hsm }, bad
end

-- The guide's remedy for the members in another cloning domain than the
-- group's, as notes: the plan fix_cloning carries out.
local function note_remedy(ctx, g, good, bad)
  ctx:note(REMEDY .. ". Plan:")
  for i, m in ipairs(bad) do
    ctx:note(("  %d. on %s, create a partition and initialize it in the group's cloning domain (that of %s on %s: "
      .. "-e cloning_domain=)"):format(3 * i - 2, m.hsm, good.serial, tostring(good.hsm)))
    ctx:note(("  %d. hagroup addMember -group %s with the new partition"):format(3 * i - 1, g.label))
    ctx:note(("  %d. hagroup removeMember -group %s -serialNumber %s (the member in the other domain)"):format(3 * i,
      g.label, m.serial))
  end
  ctx:note(("  %d. hagroup synchronize -group %s, which must run without the warning"):format(3 * #bad + 1, g.label))
end

-- A cloning conflict without fix_cloning: synchronizing cannot clone
-- private keys across domains, so the run stops here.
local function refuse_conflict(g, good, bad, conflict)
  dhsm.error { kind = "safety", code = "CloningConflict", details = { group = g.label, pairs = conflict },
    message = ("group %s: hagroup synchronize reports conflicting settings for private key cloning between %s: "
      .. "member%s %s %s in another cloning domain than %s (%s), and private keys cannot be cloned between them: "
      .. "stopped (see the plan above; -e fix_cloning=true carries it out)"):format(g.label, pairs_text(conflict),
      #bad > 1 and "s" or "", member_names(bad), #bad > 1 and "are" or "is", good.serial, tostring(good.hsm)) }
end

---------------------------------------------------------------------------
-- fix cloning: the guide's remedy for one member in another cloning
-- domain, as confirmed steps, each looking first at what is done.  A
-- replacement is {group=, bad = {serial=, hsm=}, entry=, name=, label=}:
-- the new partition `name` on the bad member's appliance, its token
-- `label`, initialised in the cloning domain the operator gives as the
-- group's.  No output shows a partition's domain: the steps check what
-- can be read (the partition, its slot, its token and Crypto Officer, the
-- group's members), and the synchronize after them shows whether the
-- domain was the group's.

-- The new partition as LunaSH lists it ({name=, serial=}), or nil.
local function new_partition(ctx, r)
  return ha.partition_on(r.entry, r.name, ctx:appliance(r.entry.name))
end

-- The HSM SO password a new partition on entry's appliance is created
-- with, or bad input naming where it may come from.
local function so_password(ctx, entry)
  local so = ctx.params.so_password or entry.so_password
  if not so then
    dhsm.error { kind = "usage", code = "BadParameters", details = { bad_input = "so_password" },
      message = ("creating a partition on %s needs its HSM SO "
      .. "password: %s, or so_password in its inventory entry"):format(entry.name, schema.give("so_password=...")) }
  end
  return so
end

local function create_partition(ctx, r)
  ctx:step(("create partition %s on %s for group %s"):format(r.name, r.bad.hsm, r.group),
    { destructive = true, target = r.bad.hsm, done = function()
      local part = new_partition(ctx, r)       -- created and assigned to this client: lunacm shows its slot
      return part ~= nil and client(ctx):find_slot(part.serial) ~= nil
    end }, function()
    ha.create_partition(r.entry, so_password(ctx, r.entry), r.name, ntls_client_name(ctx))
  end)
end

local function init_partition(ctx, r)
  local c, p = client(ctx), ctx.params
  ctx:step(("initialize %s on %s in the group's cloning domain, -e cloning_domain (its contents destroyed)")
    :format(r.name, r.bad.hsm),
    -- target: the token label lunacm's `partition init -label` names, so the
    -- operator's word covers that command (dhsm.act) and nothing else
    { destructive = true, target = r.label, done = function()
      local tok = c:token(r.label)             -- initialised by us: our label, its Crypto Officer set
      return tok ~= nil and tok.user_pin_initialized
    end }, function()
    if not c:token(r.label) then c:init_partition(new_partition(ctx, r).serial, r.label, p.pso_password, p.cloning_domain) end
    if not c:token(r.label).user_pin_initialized then c:init_co(r.label, p.pso_password, p.co_password) end
  end)
end

-- The new partition joins the group, then the bad member leaves it.
local function swap_members(ctx, r)
  local c = client(ctx)
  ctx:step(("add %s (%s) to group %s"):format(r.name, r.bad.hsm, r.group), { destructive = true, target = r.group,
    done = function() return client(ctx):in_group(r.group, new_partition(ctx, r).serial) end }, function()
    c:add_member(r.group, new_partition(ctx, r).serial, ctx.params.co_password)
  end)
  ctx:step(("remove member %s (%s, the other cloning domain) from group %s"):format(r.bad.serial, r.bad.hsm, r.group),
    { destructive = true, target = r.group, done = function() return not client(ctx):in_group(r.group, r.bad.serial) end },
    function() c:remove_member(r.group, r.bad.serial) end)
end

local function replace_member(ctx, g, bad)
  local entry = ctx.inventory:hsm(bad.hsm)
  -- chosen once and journaled: a resumed run must look for the partition
  -- it may have created, not pick the next free name
  local name = ctx.params.new_partition or ctx:step(("choose the new partition's name on %s"):format(bad.hsm),
    function() return free_partition(ctx, bad.hsm) end)
  local r = { group = g.label, bad = bad, entry = entry, name = name, label = bad.hsm .. "-" .. name }
  create_partition(ctx, r)
  init_partition(ctx, r)
  swap_members(ctx, r)
end

-- Every bad member replaced -> the group as it is now.
local function fix_cloning(ctx, g, bad)
  -- the rule of every step to come, before the first asks for confirmation
  for _, m in ipairs(bad) do so_password(ctx, ctx.inventory:hsm(m.hsm)) end
  for _, m in ipairs(bad) do replace_member(ctx, g, m) end
  return client(ctx):group(g.label)
end

---------------------------------------------------------------------------
-- synchronize

-- synchronize(ctx, g [, again]) -> the conflict lunacm reported, or nil
-- once the members are checked to hold the same objects.  The conflict is
-- the step's result (journaled: a resumed run goes on to the remedy).
local function synchronize(ctx, g, again)
  local c = client(ctx)
  local found = ctx:step(("synchronize group %s%s"):format(g.label, again and ", again" or ""), {
    done = function()
      if ctx.check or (compared_now[ctx] or {})[g.label] then return false end   -- just found to differ
      return not drifting(ctx, comparable(ctx, g))
    end,
  }, function()
    local said = SYNC_UNKNOWN .. (again and ", if -e cloning_domain was not the group's" or ", and the run stops there "
      .. "with the guide's remedy")
    -- a plan does not read the members' objects (a Crypto Officer login), so it cannot know they differ
    if ctx.check then
      ctx:would(("synchronize group %s as it is, %s; %s"):format(g.label, IF_DIFFER, said))
    else
      ctx:note(("synchronizing group %s: %s"):format(g.label, said))
    end
    if ctx.check and ctx.params.fix_cloning then
      ctx:would("on a conflict, carry out the guide's remedy for the members lunacm names (fix_cloning=true, each "
        .. "step confirmed), then synchronize again")
    end
    local ok, err = pcall(c.synchronize, c, g.label, ctx.params.co_password)
    if ok then return nil end
    if not (dhsm.error.is(err, "luna") and err.code == "CloningConflict") then error(err, 0) end
    ctx:note(err.message)
    return { conflict = err.details.pairs }
  end)
  if found then return found.conflict end
  steps.verify_synchronized(ctx, g.label, function() return comparable(ctx, g) end)
end

-- One group with two comparable members or more: its objects compared,
-- synchronized when they differ; a cloning conflict that synchronize
-- reports stops the run with the remedy, or is fixed (fix_cloning) and the
-- group synchronized again, which must not warn.
local function heal_group(ctx, g)
  local members = comparable(ctx, g)
  if #members < 2 then return end
  if not compare_step(ctx, g, members).drift then
    ctx:note(("group %s is not synchronized (its members hold the same objects): its members' cloning domains stay "
      .. "unknown"):format(g.label))
    return
  end
  if not ctx.params.synchronize then return end
  local conflict = synchronize(ctx, g)
  if not conflict then return end
  local good, bad = sides(g, conflict)
  note_remedy(ctx, g, good, bad)
  if not ctx.params.fix_cloning then refuse_conflict(g, good, bad, conflict) end
  conflict = synchronize(ctx, fix_cloning(ctx, g, bad), true)
  if conflict then
    dhsm.error { kind = "safety", code = "WrongCloningDomain", details = { group = g.label, pairs = conflict },
      message = ("group %s: after the remedy, hagroup synchronize still reports conflicting settings for private "
        .. "key cloning between %s: is -e cloning_domain the group's? The new partition was initialised in it"):format(
        g.label, pairs_text(conflict)) }
  end
end

return {
  description = "Recover failed HA group members, turn on auto-recovery, and synchronize members whose objects "
    .. "differ; a cloning-domain conflict that synchronize reports stops the run with the guide's remedy",
  inventory = "the client install and the appliances",
  params = {
    co_password = { type = "secret", required = true,
      description = "the members' Crypto Officer password (env:, file: or prompt): objects are read and synchronized as the CO" },
    group = { type = "string", pattern = "^[%w%-_%.]+$", expect = "an HA group label (letters, digits, - _ .)",
      description = "only this HA group (default: every group)" },
    retry_count = { type = "integer", default = -1, min = -1, max = 500,
      description = "HA auto-recovery retry count to set when it is 0 (-1 unlimited, 1-500)" },
    retry_interval = { type = "integer", default = 60, min = 60, max = 1200, description = "seconds between auto-recovery attempts" },
    synchronize = { type = "boolean", default = true, description = "synchronize a group whose members' objects differ" },
    fix_cloning = { type = "boolean", default = false, requires = { "cloning_domain", "pso_password" },
      description = "on a cloning-domain conflict hagroup synchronize reports, carry out the guide's remedy "
        .. "(confirmed steps): a new partition in the group's domain, added, the bad member removed, synchronized again" },
    cloning_domain = { type = "secret", description = "fix_cloning: the group's cloning domain (env:, file: or prompt); "
      .. "no output shows it: the synchronize after the remedy tells whether it was the group's" },
    pso_password = { type = "secret", description = "fix_cloning: the new partition's Partition SO password" },
    so_password = { type = "secret",
      description = "fix_cloning: the HSM SO password of the bad member's appliance (default: its inventory entry's)" },
    new_partition = { type = "string", pattern = "^[%w%-_]+$", expect = "a partition name (letters, digits, - _)",
      description = "fix_cloning: the new partition's name (default: the first free parN)" },
  },
  run = function(ctx, p)
    client(ctx)            -- an inventory without the client install stops here, before any step
    local groups = read_groups(ctx)
    for _, g in ipairs(groups) do recover_members(ctx, g) end
    if #groups > 0 then steps.auto_recovery(ctx) end
    for _, g in ipairs(groups) do heal_group(ctx, g) end
  end,
}
