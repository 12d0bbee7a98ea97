-- initialize: a factory-fresh appliance (new from Microsoft, or reset by
-- Microsoft) made a serving HA member, the guide's HSM Initialization way.
--
--   dhsm run initialize -e hsm=hsm3 -e partition=par1 [-e ha_group=myHA | -e new_ha_group=myHA]
--        -e credentials_stored=true -e so_password=prompt -e cloning_domain=prompt
--        -e pso_password=prompt -e co_password=prompt [-e new_password=prompt] [-e label=hsm3]
--
-- (1) first login: the administrator password the appliance demands is
-- changed (-e new_password; keep it where the inventory's `password`
-- points: dhsm writes no secret) -> (2) the reboot fix: reported (dhsm's
-- reboot guard refuses reboots without it; initialising needs none and
-- causes none) -> the guide's Lost Credentials warning, and
-- -e credentials_stored=true -> (3) `hsm init` (label, HSM SO password,
-- cloning domain: answered at LunaSH's prompts, never on a command line),
-- ONLY on an appliance that reads zeroized: one that holds partitions or
-- objects is refused, re-initialising a used HSM is decommission's job ->
-- (4) LunaSH `partition create` -> (5) NTLS both ways: the appliance's
-- server.pem into this client's trust, this client registered and the
-- partition assigned; `vtl verify` must list it -> (6) lunacm `partition
-- init` in the cloning domain (the HA group's: members of one group share
-- one) and the Crypto Officer's password -> (7) HA: with ha_group, the
-- partition joins it (`hagroup addMember`), the group is synchronized so
-- its key material is replicated, and the members' objects compared; a
-- cloning-domain conflict stops the run with the guide's remedy; with
-- new_ha_group, the group is created; auto-recovery set as ha-recover
-- does -> (8) verify: the appliance initialised with its label, the
-- partition listed by vtl verify, the member alive in its group.
--
-- Every step says how to tell it is done (done=), read from the appliance
-- and the client, so a run killed half-way and resumed (--resume ID) sends
-- no change twice.  --check shows the whole plan against the real state;
-- past a first login still to be made nothing can be read (the appliance
-- answers nothing else), and the plan says "unknown until first login".
-- The same playbook is the recovery path after Microsoft resets a device
-- (the guide's networking section: all configuration and key material is
-- lost; when the device joins the HA group the keys are replicated).
local dhsm_luna = require "dhsm.luna"
local ha = require "dhsm.client.ha"
local ntls = require "dhsm.client.ntls"
local steps = require "dhsm.client.steps"
local util = require "dhsm.util"

local LOST_CREDENTIALS = "the guide (Lost Credentials): losing the HSM administrator credentials loses the key "
  .. "material - Microsoft cannot recover them, only reset the device, which destroys every key; store the "
  .. "administrator, HSM SO, Partition SO and Crypto Officer passwords and the cloning domain as your policy requires"

local UNKNOWN = "unknown until first login (the appliance answers nothing before the password change)"

local function entry(ctx)
  return ctx.inventory:hsm(ctx.params.hsm)
end

-- The password this run's first login set, by run: its sessions log in
-- with it from then on (the inventory's reference may still hold the old
-- one until the operator stores the new one there).
local logins = setmetatable({}, { __mode = "k" })

local function session(ctx)
  return ctx:appliance(ctx.params.hsm, logins[ctx])
end

-- The HSM label hsm init gives.
local function hsm_label(ctx)
  return ctx.params.label or ctx.params.hsm
end

-- The token label of the new partition.
local function token_label(ctx)
  return ctx.params.partition_label or (ctx.params.hsm .. "-" .. ctx.params.partition)
end

-- The new partition as LunaSH lists it ({name=, serial=}), or nil; once
-- found, kept for the run (its serial does not change), so the steps after
-- its creation do not each list the appliance's partitions again.
local made = setmetatable({}, { __mode = "k" })

local function partition(ctx)
  made[ctx] = made[ctx] or ha.partition_on(entry(ctx), ctx.params.partition, session(ctx))
  return made[ctx]
end

-- The HA group the partition is to be in, or nil.
local function group_label(ctx)
  return ctx.params.ha_group or ctx.params.new_ha_group
end

-- In check mode: describe what a step would do (the client tools cannot be
-- asked about a partition the plan only creates) -> true.
local function planned(ctx, what)
  if not ctx.check then return false end
  ctx:would(what)
  return true
end

---------------------------------------------------------------------------
-- (1) first login

-- Whether the appliance still demands its first password change: it then
-- answers no command (dhsm.luna's PasswordChangeRequired).
local function demands_change(ctx)
  local ok, err = pcall(session, ctx)
  if ok then return false end
  if dhsm.error.is(err, "luna") and err.code == "PasswordChangeRequired" then return true end
  error(err, 0)
end

-- -> true when the plan cannot read past the first login (check mode)
local function first_login(ctx)
  local p = ctx.params
  local fresh = ctx:step("first login on " .. p.hsm .. ": change the administrator password it demands",
    { done = function() return not demands_change(ctx) end }, function()
    if not p.new_password then
      dhsm.error { kind = "usage", code = "BadParameters", details = { new_run = { new_password = "prompt" } },
        message = ("%s demands a new administrator password at its first login: give it with "
          .. "-e new_password=env:NAME|file:PATH|prompt"):format(p.hsm) }
    end
    local s = dhsm_luna.first_login(entry(ctx), { new_password = p.new_password })
    if ctx.check then return { fresh = true } end
    s:close()
    ctx:note(("the administrator password of %s is changed: keep it where the inventory's 'password' points "
      .. "(dhsm writes no secret); the rest of this run logs in with it"):format(p.hsm))
    return { changed = s.password_changed }
  end)
  if fresh and fresh.changed then logins[ctx] = { password = p.new_password } end
  return fresh and fresh.fresh
end

---------------------------------------------------------------------------
-- (2) the reboot fix, (3) hsm init

local function report_reboot_fix(ctx)
  ctx:step("report whether the reboot fix (KB0019789) is installed on " .. ctx.params.hsm, function()
    local found, want = session(ctx):reboot_fix()
    ctx:note(found and ("the reboot fix is installed (%s)"):format(found)
      or ("the reboot fix %s is not installed: dhsm refuses to reboot %s until it is (the guide: without it the "
        .. "appliance may hang on reboot); initialising needs no reboot and causes none"):format(want, ctx.params.hsm))
    return { installed = found ~= nil, package = found }
  end)
end

local function require_stored_credentials(ctx)
  ctx:step("require the credentials to be stored", function()
    ctx:note(LOST_CREDENTIALS)
    if not ctx.params.credentials_stored then
      dhsm.error { kind = "safety", code = "CredentialsNotStored", details = { new_run = { credentials_stored = true } },
        message = ("%s: store the credentials this run sets before the HSM is initialised, then run again with "
          .. "-e credentials_stored=true"):format(LOST_CREDENTIALS) }
    end
    dhsm.audit.write { action = "initialize.credentials_stored", target = ctx.params.hsm, outcome = "confirmed" }
  end)
end

-- Initialised by this playbook (this run or an earlier one): not zeroized,
-- with the label asked for, and this host's audit log holds the record an
-- initialize run writes before it sends `hsm init` to this appliance, by
-- its serial - so a kill after the sending still finds it.  A label alone
-- is no proof: anyone may have given the same one.
local function initialised(ctx, show)
  if show.zeroized or show.label ~= hsm_label(ctx) then return false end
  return #util.audit_records(function(r)
    return r.action == "initialize.hsm_init" and r.target == ctx.params.hsm and r.serial == show.serial
  end) > 0
end

-- Only a factory-fresh HSM is initialised here: one that reads otherwise
-- and is not ours (initialised) may hold partitions or objects an operator
-- needs.
local function refuse_used(ctx, show)
  if show.zeroized or initialised(ctx, show) then return end
  dhsm.error { kind = "safety", code = "HsmInUse", details = { serial = show.serial, label = show.label },
    message = ("%s (serial %s) is initialised (label %q, %s partition(s)) and not zeroized: initialize takes only a "
      .. "factory-fresh appliance; re-initialising a used HSM destroys its keys and is decommission's job (zeroize "
      .. "it there, with its backups confirmed); nothing was changed"):format(ctx.params.hsm, tostring(show.serial),
      tostring(show.label), tostring(show.partitions_created or (show.partitions and #show.partitions) or "?")) }
end

local function check_fresh(ctx)
  ctx:step(("check that %s reads factory-fresh (zeroized), or initialised by initialize"):format(ctx.params.hsm),
    function()
    local show = session(ctx):hsm_show()
    refuse_used(ctx, show)
    return { serial = show.serial, zeroized = show.zeroized }
  end)
end

local function hsm_init(ctx)
  local p = ctx.params
  ctx:step(("initialize the HSM of %s: hsm init -label %s (HSM SO password and cloning domain at its prompts)")
    :format(p.hsm, hsm_label(ctx)), { destructive = true, target = p.hsm,
    done = function() return initialised(ctx, session(ctx):hsm_show()) end }, function()
    local show = session(ctx):hsm_show()
    refuse_used(ctx, show)
    if group_label(ctx) then
      ctx:note(("the cloning domain must be the HA group %s's: the synchronize after the partition joins it "
        .. "tells (a conflict stops the run)"):format(group_label(ctx)))
    end
    if not ctx.check then
      dhsm.audit.write { action = "initialize.hsm_init", target = p.hsm, serial = show.serial, outcome = "intent",
        label = hsm_label(ctx) }
    end
    session(ctx):must("hsm init -label " .. hsm_label(ctx), { proceed = true, answers = {
      { match = "[Pp]assword", answer = p.so_password },
      { match = "cloning domain", answer = p.cloning_domain } } })
    return { serial = show.serial }
  end)
end

---------------------------------------------------------------------------
-- (4) partition, (5) NTLS

local function create_partition(ctx)
  local p = ctx.params
  ctx:step(("create partition %s on %s"):format(p.partition, p.hsm), { done = function() return partition(ctx) ~= nil end },
    function()
    if planned(ctx, ("log in as the HSM SO, then partition create -partition %s -force"):format(p.partition)) then
      return { planned = true }
    end
    local s = session(ctx)
    s:login_so(p.so_password)
    s:must(("partition create -partition %s -force"):format(p.partition))
    return { serial = partition(ctx).serial }
  end)
end

-- A fresh NTLS diagnosis of the appliance and this client (a handshake,
-- an SCP of server.pem, syslog tails), kept for the step's body: done=
-- makes it, and the body acts on it rather than diagnose again.
local diagnosed = setmetatable({}, { __mode = "k" })

local function diagnose_ntls(ctx)
  diagnosed[ctx] = ntls.diagnose(entry(ctx), ntls.client(ctx.inventory), session(ctx), { workdir = ctx:scratch_dir() })
  return diagnosed[ctx]
end

local function assigned(d, name)
  if not d.registered or d.client_rejected then return false end
  for _, x in ipairs(d.partitions or {}) do if x == name then return true end end
  return false
end

local function exchange_certificates(ctx)
  local p = ctx.params
  ctx:step(("exchange certificates with %s: its server.pem trusted here, this client registered there with %s")
    :format(p.hsm, p.partition), { done = function()
      local d = diagnose_ntls(ctx)
      return not d.server_changed and assigned(d, p.partition)
    end }, function()
    local d, c = diagnosed[ctx] or diagnose_ntls(ctx), ntls.client(ctx.inventory)
    diagnosed[ctx] = nil
    -- the server.pem the diagnosis fetched (d.server_pem) is the one to trust
    if d.server_changed then ntls.readd_server(c, entry(ctx), d.server_pem) end
    ntls.register_client(c, entry(ctx), session(ctx), d, { p.partition })
    return { client = d.client_name }
  end)
  ctx:step("verify: vtl verify lists " .. p.partition, function()
    if ctx.check then
      ctx:would("run vtl verify and find partition " .. p.partition)
      return { planned = true }
    end
    local serial = partition(ctx).serial
    for _, x in ipairs(ntls.vtl_verify(ntls.client(ctx.inventory)).partitions or {}) do
      if x.serial == serial then return { slot = x.slot, serial = serial } end
    end
    dhsm.error { kind = "net", code = "PartitionNotVisible", message = ("vtl verify does not list partition %s "
      .. "(serial %s) after the certificate exchange with %s"):format(p.partition, serial, p.hsm) }
  end)
end

---------------------------------------------------------------------------
-- (6) partition init and the Crypto Officer

local function init_partition(ctx)
  local p, c = ctx.params, steps.client(ctx)
  local label = token_label(ctx)
  ctx:step(("initialize partition %s as %s in the cloning domain -e cloning_domain (lunacm partition init)")
    :format(p.partition, label), { destructive = true, target = label,
    done = function() return not ctx.check and c:token(label) ~= nil end }, function()
    if planned(ctx, ("lunacm partition init -label %s on the new partition's slot, the Partition SO password and the "
      .. "cloning domain at its prompts"):format(label)) then return end
    c:init_partition(partition(ctx).serial, label, p.pso_password, p.cloning_domain)
  end)
  ctx:step(("initialize the Crypto Officer of %s (role init)"):format(label), {
    done = function()
      local tok = not ctx.check and c:token(label)
      return tok and tok.user_pin_initialized or false
    end }, function()
    if planned(ctx, "set the Crypto Officer's password as the Partition SO (C_InitPIN, what role init -name co does)") then
      return
    end
    c:init_co(label, p.pso_password, p.co_password)
  end)
end

---------------------------------------------------------------------------
-- (7) HA

-- The members of group label that can be compared, and whether the new
-- partition is one of them (a member that cannot be compared proves nothing).
local function compared_with_new(ctx, label)
  local serial = partition(ctx).serial
  steps.client(ctx):tell_owner(serial, entry(ctx))
  local g = steps.client(ctx):group(label)
  local members = g and steps.comparable(ctx, g) or {}
  for _, m in ipairs(members) do
    if m.serial == serial then return members, true end
  end
  return members, false
end

local function join_group(ctx)
  local p, c = ctx.params, steps.client(ctx)
  if p.new_ha_group then
    ctx:step(("create HA group %s with %s as its first member"):format(p.new_ha_group, p.partition),
      { done = function() return not ctx.check and c:in_group(p.new_ha_group, partition(ctx).serial) end }, function()
      if planned(ctx, ("lunacm hagroup createGroup -label %s with the new partition (a Crypto Officer login)")
        :format(p.new_ha_group)) then return end
      c:create_group(p.new_ha_group, partition(ctx).serial, p.co_password)
    end)
    return
  end
  ctx:step(("add %s to HA group %s"):format(p.partition, p.ha_group),
    { done = function() return not ctx.check and c:in_group(p.ha_group, partition(ctx).serial) end }, function()
    if planned(ctx, ("lunacm hagroup addMember -group %s with the new partition (a Crypto Officer login)")
      :format(p.ha_group)) then return end
    c:add_member(p.ha_group, partition(ctx).serial, p.co_password)
  end)
  ctx:step(("synchronize HA group %s: its key material replicated to %s"):format(p.ha_group, p.partition),
    { done = function()
      if ctx.check then return false end
      -- the same objects everywhere, the new member among them, and some: with
      -- none, lunacm's warning is the only word on the cloning domain
      local members, with_new = compared_with_new(ctx, p.ha_group)
      return with_new and #members >= 2 and not steps.drifting(ctx, members) and members[1].objects.count > 0
    end }, function()
    if planned(ctx, ("lunacm hagroup synchronize -group %s (Crypto Officer logins on every member); a conflict of "
      .. "cloning domains stops the run"):format(p.ha_group)) then return end
    local ok, err = pcall(c.synchronize, c, p.ha_group, p.co_password)
    if ok then return end
    if dhsm.error.is(err, "luna") and err.code == "CloningConflict" then
      dhsm.error { kind = "safety", code = "WrongCloningDomain", details = err.details,
        message = ("%s. The guide (HA Group Doesn't Sync): members of one group must share a cloning domain, which "
          .. "cannot be changed on an initialized partition, so -e cloning_domain was not group %s's. The new "
          .. "partition %s on %s holds no key yet: remove it from the group (lunacm hagroup removeMember), delete it "
          .. "(LunaSH partition delete), then run initialize again with the group's cloning domain"):format(
          err.message, p.ha_group, p.partition, p.hsm) }
    end
    error(err, 0)
  end)
  steps.verify_synchronized(ctx, p.ha_group, function() return compared_with_new(ctx, p.ha_group) end)
end

---------------------------------------------------------------------------
-- (8) verify

local function verify(ctx)
  local p = ctx.params
  return ctx:step("verify " .. p.hsm .. " serves: initialised, partition visible, member alive", function()
    if ctx.check then
      ctx:would("read hsm show, vtl verify and the group's members")
      return { planned = true }
    end
    local show = session(ctx):hsm_show()
    local part = partition(ctx)
    local out = { hsm = p.hsm, serial = show.serial, label = show.label, partition = p.partition,
      partition_serial = part.serial, token = token_label(ctx) }
    local label = group_label(ctx)
    if label then
      local g = steps.client(ctx):group(label)
      for _, m in ipairs(g and g.members or {}) do
        if m.serial == part.serial then out.member = m.status end
      end
      if out.member ~= "alive" then
        dhsm.error { kind = "luna", code = "NotAMember", message = ("partition %s (%s) is %s in group %s"):format(
          p.partition, part.serial, tostring(out.member or "not a member"), label) }
      end
      out.group = label
    end
    ctx:note(("%s: HSM %s labelled %s, partition %s (serial %s, token %s)%s"):format(p.hsm, show.serial, show.label,
      p.partition, part.serial, out.token, label and (", alive in HA group " .. label) or ""))
    local known = false
    for _, x in ipairs(entry(ctx).partitions or {}) do known = known or x == part.serial end
    if not known then
      ctx:note(("add %q to the partitions of %s's inventory entry: it names the member's appliance when that "
        .. "appliance does not answer (docs/inventory.md, hsms[].partitions)"):format(part.serial, p.hsm))
    end
    ctx:note(("next: dhsm run diagnose -e hsm=%s runs every check of the guide on it"):format(p.hsm))
    return out
  end)
end

-- What a plan that cannot read past the first login says of the rest.
local function plan_unknown(ctx)
  local p = ctx.params
  for _, what in ipairs { "check it reads zeroized", "report the reboot fix", "require -e credentials_stored=true",
    "hsm init -label " .. hsm_label(ctx) .. " (only if it reads zeroized)", "partition create -partition " .. p.partition,
    "exchange certificates and assign " .. p.partition, "lunacm partition init and the Crypto Officer's role init",
    group_label(ctx) and ("join HA group " .. group_label(ctx) .. " and synchronize") or nil, "verify" } do
    ctx:would(what .. ": " .. UNKNOWN)
  end
  return { planned = true, unknown = UNKNOWN }
end

-- The rules the parameter specs cannot say.
local function check(p)
  if p.ha_group and p.new_ha_group then
    return { "ha_group, new_ha_group: give one (join an existing group, or create one), not both" }
  end
  return {}
end

local NAME = { type = "string", pattern = "^[%w%-_]+$", expect = "letters, digits, - _" }

return {
  description = "Take a factory-fresh appliance to a serving HA member: first login, hsm init, partition, NTLS, "
    .. "partition init and Crypto Officer, HA membership and synchronisation",
  inventory = "the appliance, the client install (lunacm, vtl, Chrystoki.conf)",
  params = {
    hsm = { type = "string", required = true, pattern = "^[%w%-_%.]+$", inventory = "hsm",
      expect = "an inventory HSM name (letters, digits, - _ .)", description = "the inventory's name of the appliance" },
    partition = { type = "string", required = true, pattern = NAME.pattern, expect = "a partition name (" .. NAME.expect .. ")",
      description = "the partition to create" },
    ha_group = { type = "string", pattern = NAME.pattern, expect = "an HA group label (" .. NAME.expect .. ")",
      description = "the existing HA group the partition joins (its keys are replicated to it)" },
    new_ha_group = { type = "string", pattern = NAME.pattern, expect = "an HA group label (" .. NAME.expect .. ")",
      description = "create this HA group with the partition as its first member" },
    label = { type = "string", pattern = "^[%w%-_%.]+$", expect = "an HSM label (letters, digits, - _ .)",
      description = "the HSM label hsm init gives (default: the HSM's name)" },
    partition_label = { type = "string", pattern = "^[%w%-_%.]+$", expect = "a token label (letters, digits, - _ .)",
      description = "the partition's token label (default: HSM-PARTITION)" },
    new_password = { type = "secret", description = "the new administrator password, when the appliance demands one "
      .. "at its first login (env:, file: or prompt)" },
    so_password = { type = "secret", required = true, description = "the HSM SO password hsm init sets (env:, file: or prompt)" },
    cloning_domain = { type = "secret", required = true,
      description = "the cloning domain of the HSM and the partition: the HA group's (env:, file: or prompt)" },
    pso_password = { type = "secret", required = true, description = "the Partition SO password partition init sets" },
    co_password = { type = "secret", required = true, description = "the Crypto Officer password (the HA group's)" },
    credentials_stored = { type = "boolean", default = false,
      description = "true once the credentials this run sets are stored per policy (the guide: Lost Credentials)" },
    retry_count = { type = "integer", default = -1, min = -1, max = 500,
      description = "HA auto-recovery retry count to set when it is 0 (-1 unlimited, 1-500)" },
    retry_interval = { type = "integer", default = 60, min = 60, max = 1200, description = "seconds between auto-recovery attempts" },
  },
  check = check,
  run = function(ctx, p)
    steps.client(ctx)       -- an inventory without the client install stops here, before any step
    if first_login(ctx) then return plan_unknown(ctx) end
    check_fresh(ctx)
    report_reboot_fix(ctx)
    require_stored_credentials(ctx)
    hsm_init(ctx)
    create_partition(ctx)
    exchange_certificates(ctx)
    init_partition(ctx)
    if group_label(ctx) then
      join_group(ctx)
      steps.auto_recovery(ctx)
    end
    return verify(ctx)
  end,
}
