-- dhsm.client.ha: a Luna client's HA groups, as the troubleshooting guide's
-- "HA group" section checks and repairs them.
--
--   local ha = require "dhsm.client.ha"
--   local c = ha.client(inventory)                 -- the client install (lunacm, Chrystoki.conf, PKCS#11)
--   c.timeout = 10                                 -- seconds a lunacm run may take (default 60)
--   c:groups()     --> {{label=, serial=, members = {{serial=, status=, label=, hsm=entry|nil}}}}, settings
--   c:hsm_of(member_serial) --> inventory entry | nil; c:partition_owners() --> {serial = entry}
--   c:probe(entry) --> {tcp = net.tcp answer, tls = net.tls answer (dhsm.client.ntls's handshake), ok=, reason=}
--   c:recover(label); c:set_retry(count, interval); c:settings()
--   c:objects(member, co_pin) --> {count=, keys = {"secret_key:k1", ...}} over PKCS#11
--   ha.compare(members) --> {drift = {member serial = {missing...}} | nil}
--   c:synchronize(label, co_pin)                   -- through the failed-login guard (proc.lunacm_login); the
--                                                  -- guide's warning raised as luna/CloningConflict naming the members
--   the guide's remedy for a cloning conflict: ha.partition_on(entry, name [, session]), ha.create_partition(entry,
--   so_pw, name, client), c:init_partition(serial, label, pso_pw, domain), c:token(label),
--   c:init_co(label, pso_pw, co_pw), c:add_member(group, serial, co_pw), c:remove_member(group, serial)
--
-- A member's cloning domain is not read from anywhere: no appliance output
-- shows a partition's (luna-field.md 3.5, 3.6), so it is unknown until
-- `hagroup synchronize` warns of conflicting settings for private key
-- cloning, which c:synchronize raises as CloningConflict.
--
-- lunacm's success is what it prints (proc adds ok= and code= from the
-- `Command Result` line), never its exit status.  Member state is the
-- client's (listGroups); whether an appliance answers is our own probe
-- (TCP 1792, then TLS with the client's certificate), so "down, and its
-- appliance still does not answer: here is why" can be said.
local chrystoki = require "dhsm.chrystoki"
local dhsm = require "dhsm"
local luna = require "dhsm.luna"
local ntls = require "dhsm.client.ntls"
local parse = require "dhsm.luna.parse"
local pkcs11 = require "dhsm.pkcs11"
local proc = require "dhsm.proc"
local schema = require "dhsm.schema"

local M = {}

-- The lines lunacm printed for its command (after the banner), joined.
local function said(out)
  local body = out:match("Current Slot Id:[^\n]*\n(.*)Command Result") or ""
  local lines = {}
  for l in body:gmatch("[^\n]+") do
    l = l:match("^%s*(.-)%s*$")
    if l ~= "" then lines[#lines + 1] = l end
  end
  return #lines > 0 and table.concat(lines, " ") or nil
end

local Client = {}
Client.__index = Client

-- client(inventory) -> the client install the inventory describes
function M.client(inv)
  local c = chrystoki.install(inv, { "lunacm" })
  c.inventory = inv
  return setmetatable(c, Client)
end

-- The argv of a lunacm command, once Chrystoki.conf reads: lunacm says
-- only "no Command Result" of a file it cannot read, the parser names
-- the file, line and column (a usage error, as the PKCS#11 path says it).
function Client:argv(...)
  self:conf()
  local argv = { self.lunacm, "-c" }
  for _, w in ipairs { ... } do argv[#argv + 1] = w end
  return { argv = argv, env = self.env, timeout = self.timeout or 60 }
end

-- A lunacm command that logs in to nothing; raises when lunacm says it failed.
function Client:must(...)
  local r = proc.run(self:argv(...))
  if not r.ok then
    dhsm.error { kind = "luna", code = r.code or "NoCommandResult", details = { output = r.stdout },
      message = ("lunacm %s: %s"):format(table.concat({ ... }, " "),
        said(r.stdout) or "no Command Result line") }
  end
  return r
end

function Client:conf()
  return chrystoki.load(self.conf_path)
end

-- settings() -> {retry=, interval=} in effect (0 and 60 when unset), and
-- held = {retry=, interval=}: what Chrystoki.conf itself holds (nil: unset)
function Client:settings()
  local cfg = self:conf():ha_config()
  local held = { retry = tonumber(cfg.reconnAtt), interval = tonumber(cfg.AutoReconnectInterval) }
  return { retry = held.retry or 0, interval = held.interval or 60, held = held }
end

-- hsm_of(member_serial) -> the inventory's HSM the member partition lives
-- on: the entry whose `partitions` list it, else the appliance that lists
-- it now (partition_owners); nil when neither tells (its appliance does
-- not answer and the inventory does not list it) - never guessed from
-- the serial's digits.
function Client:hsm_of(member_serial)
  if (self.told or {})[member_serial] then return self.told[member_serial] end
  for _, h in ipairs(self.inventory.hsms or {}) do
    for _, p in ipairs(h.partitions or {}) do
      if p == member_serial then return h end
    end
  end
  return self:partition_owners()[member_serial]
end

-- tell_owner(serial, entry): the caller made that partition on entry's
-- appliance (initialize): hsm_of answers it without reading the appliances,
-- whose LunaSH may not take the inventory's password yet (a first login
-- this run made).
function Client:tell_owner(serial, entry)
  self.told = self.told or {}
  self.told[serial] = entry
end

-- partition_owners() -> {partition serial = inventory entry}: what each
-- appliance of the inventory that answers lists (LunaSH `partition
-- list`), read once per client.  A partition serial says nothing of its
-- appliance (7.x numbers partitions by their creation time), so this, or
-- the inventory's `partitions`, is the only way to tell.
function Client:partition_owners()
  if self.owners then return self.owners end
  local owners = {}
  for _, h in ipairs(self.inventory.hsms or {}) do     -- one after the other: an interrupt ends it plainly
    local ok, listed = pcall(function()
      local s <close> = luna.open(h, { timeout = self.timeout or 10 })
      return s:partitions()
    end)
    if ok then
      for _, p in ipairs(listed) do owners[p.serial] = h end
    else
      local e = dhsm.error.normalize(listed)
      if e.kind == "interrupted" or e.kind == "cancelled" then error(listed, 0) end
    end
  end
  self.owners = owners
  return owners
end

-- groups() -> groups of Chrystoki.conf with each member's state from lunacm
function Client:groups()
  local listed = {}
  for _, g in ipairs(proc.lunacm_groups(self:argv()).groups) do listed[g.label] = g end
  local out = {}
  for _, g in ipairs(self:conf():ha_groups()) do
    local state = {}
    for _, m in ipairs((listed[g.label] or { members = {} }).members) do state[m.serial] = m end
    local members = {}
    for i, serial in ipairs(g.members) do
      members[i] = { serial = serial, status = (state[serial] or {}).status or "unknown", hsm = self:hsm_of(serial) }
    end
    out[#out + 1] = { label = g.label, serial = g.serial, members = members }
  end
  return out
end

-- probe(entry) -> {ok=, reason=, tcp=, tls=}: TCP to NTLS, then the TLS
-- handshake with this client's certificate (what the HA library needs).
function Client:probe(entry)
  local port = ntls.port(entry)
  local tcp = ntls.tcp(entry)
  if not tcp.open then
    return { ok = false, reason = ("TCP %d %s"):format(port, tostring(tcp.reason)), tcp = tcp }
  end
  -- not strict: a server certificate the client does not trust is a reason
  -- (tls.verify.error) to show, the handshake carried to its end; a client
  -- install without its trusted certificates file is broken, not a reason
  -- the member is down (ha-recover stops before changing anything)
  local tls = ntls.handshake(self, entry, { server_name = entry.name, need_trust = true })
  if not (tls.ok and tls.verify and tls.verify.ok) then
    return { ok = false, tcp = tcp, tls = tls, reason = ("TLS on %d: %s"):format(port,
      tostring(tls.reason or tls.alert or (tls.verify and tls.verify.error) or "handshake failed")) }
  end
  return { ok = true, tcp = tcp, tls = tls }
end

-- recover(label) -> lunacm's run.  lunacm reports a failure when any member
-- stays out (its appliance still down): the caller reads the members again
-- to see which came back.
function Client:recover(label)
  return proc.run(self:argv("hagroup", "recover", "-group", label))
end

-- set_retry(count, interval): HA auto-recovery, as Chrystoki.conf keeps it;
-- only what the file does not hold yet is sent (a resumed run finds half of it done)
function Client:set_retry(count, interval)
  local held = self:settings().held
  local send = {}
  if held.retry ~= count then send[#send + 1] = { "retry", "-count", tostring(count) } end
  if held.interval ~= interval then send[#send + 1] = { "interval", "-interval", tostring(interval) } end
  for _, words in ipairs(send) do self:must("hagroup", table.unpack(words)) end
end

-- The PKCS#11 library of the client install.
function Client:library()
  return pkcs11.load(self.pkcs11_lib, { env = self.library_env })
end

-- objects(label, co_pin) -> {count=, keys = {"class:label", ...} sorted}: what
-- the member partition holds, read as its Crypto Officer (through the guard)
function Client:objects(token_label, co_pin)
  local lib <close> = self:library()
  local s <close> = lib:open { label = token_label }
  s:login("user", co_pin)
  local keys = {}
  for i, h in ipairs(s:find {}) do
    local a = s:attributes(h, { "class", "label" })
    keys[i] = ("%s:%s"):format(tostring(a.class), tostring(a.label))
  end
  s:logout()
  table.sort(keys)
  return { count = #keys, keys = keys }
end

-- compare's argument, checked first: a usage error, not a Lua error from inside
local MEMBER = "a member {serial=, objects={keys=}} (objects from c:objects)"
local MEMBERS = { type = "table", required = true, expect = "a list of members {serial=, objects={keys=}}" }

-- compare(members) with each member {serial=, objects={keys=}} ->
-- {drift = {serial = {keys missing there}} | nil}
function M.compare(members)
  schema.argument("ha.compare", "members", members, MEMBERS)
  for i, m in ipairs(members) do
    local ok = type(m) == "table" and type(m.objects) == "table" and type(m.objects.keys) == "table"
    if not ok then
      dhsm.error { kind = "usage", code = "BadArgument",
        message = ("ha.compare: members[%d]: expected %s, got %s"):format(i, MEMBER, schema.show(m)) }
    end
  end
  local union, drift = {}, {}
  for _, m in ipairs(members) do
    for _, k in ipairs(m.objects.keys) do union[k] = true end
  end
  for _, m in ipairs(members) do
    local has, missing = {}, {}
    for _, k in ipairs(m.objects.keys) do has[k] = true end
    for k in pairs(union) do
      if not has[k] then missing[#missing + 1] = k end
    end
    table.sort(missing)
    if #missing > 0 then drift[m.serial] = missing end
  end
  return { drift = next(drift) and drift or nil }
end

-- The guide's remedy for a member in another cloning domain, in its parts
-- (each looks at nothing: the playbook's done= checks look first).

-- partition_on(entry, name [, session]) -> {name=, serial=} of partition
-- name on entry's appliance (LunaSH `partition list`; over session when
-- given), or nil when there is none
function M.partition_on(entry, name, session)
  schema.argument("ha.partition_on", "name", name, "string")
  if session == nil then
    schema.argument("ha.partition_on", "entry", entry, { type = "table", required = true,
      expect = "an inventory HSM entry (inv:hsm(NAME))" })
  elseif type(session) ~= "table" or type(session.partitions) ~= "function" then
    schema.bad_argument("ha.partition_on", "session", "a LunaSH session (luna.open(entry))", session)
  end
  local own <close> = not session and luna.open(entry) or nil
  for _, p in ipairs((session or own):partitions()) do
    if p.name == name then return { name = name, serial = p.serial } end
  end
end

-- create_partition(entry, so_password, name, client_name): LunaSH as the
-- HSM SO: `partition create` (unless there already), then `client
-- assignPartition` so this client sees it as a slot
function M.create_partition(entry, so_password, name, client_name)
  local s <close> = luna.open(entry)
  s:login_so(so_password)
  if not M.partition_on(entry, name, s) then s:must(("partition create -partition %s -force"):format(name)) end
  s:must(("client assignPartition -client %s -partition %s"):format(client_name, name))
end

-- slots() -> {serial = slot}: lunacm's `slot list` now, by partition
-- serial (slots move from one lunacm run to the next: read it again)
function Client:slots()
  local out = {}
  for _, slot in ipairs(proc.lunacm_slots(self:argv())) do
    if slot.serial then out[slot.serial] = slot end
  end
  return out
end

-- The slot lunacm gives the partition with this serial (slots move), or
-- nil when lunacm shows none (not assigned to this client, or unreachable).
function Client:find_slot(serial)
  return self:slots()[serial]
end

-- The same, raising NoSlot when there is none.
function Client:slot_of(serial)
  local slot = self:find_slot(serial)
  if slot then return slot end
  dhsm.error { kind = "luna", code = "NoSlot", message = ("lunacm shows no slot for partition %s: is it assigned to "
    .. "this client (client assignPartition) and its appliance reachable?"):format(serial) }
end

-- lunacm's confirmation of `partition init` (luna-field.md 7.1).
local INIT_CONFIRMATION = "Type 'proceed' to continue, or 'quit' to quit now"

-- init_partition(serial, label, pso_password, domain): lunacm `partition
-- init` (the new Partition SO password and the cloning domain on its
-- stdin, never in argv; contents destroyed).  The `proceed` answers the
-- published confirmation only: lunacm asking anything else fails the call
-- (dhsm.proc, UnexpectedQuestion).
function Client:init_partition(serial, label, pso_password, domain)
  local slot = self:slot_of(serial)
  local o = self:argv("partition", "init", "-label", label, "-slot", slot.id)
  o.stdin = { pso_password, "\n", pso_password, "\n", domain, "\n", domain, "\n", "proceed\n" }
  o.questions = { INIT_CONFIRMATION }
  local r = proc.run(o)
  if not r.ok then
    dhsm.error { kind = "luna", code = r.code or "NoCommandResult", details = { output = r.stdout },
      message = ("lunacm partition init -slot %s: %s"):format(slot.id, said(r.stdout) or "failed") }
  end
end

-- token(label) -> the partition token's PKCS#11 info (flags: user_pin_initialized = the
-- Crypto Officer has a password), or nil: no initialised partition with that label
function Client:token(token_label)
  local lib <close> = self:library()
  return lib:find_token { label = token_label }
end

-- init_co(label, pso_password, co_password): the Crypto Officer's first
-- password, what `role init -name co` does: C_InitPIN as the Partition SO
-- (that login goes through the failed-login guard)
function Client:init_co(token_label, pso_password, co_password)
  local lib <close> = self:library()
  local s <close> = lib:open { label = token_label, rw = true }
  s:login("so", pso_password)
  s:init_pin(co_password)
  s:logout()
end

-- A lunacm command that logs in as the Crypto Officer (through the guard);
-- raises when lunacm says it failed, as must() does.
local function must_login(self, co_pin, ...)
  local o = self:argv(...)
  o.password = co_pin
  local r = proc.lunacm_login(o)
  if not r.check and not r.ok then
    dhsm.error { kind = "luna", code = r.code or "NoCommandResult", details = { output = r.stdout },
      message = ("lunacm %s: %s"):format(table.concat({ ... }, " "), said(r.stdout) or "failed") }
  end
end

-- add_member(label, serial, co_pin): `hagroup addMember`, a CO login on the
-- new member through the guard
function Client:add_member(label, serial, co_pin)
  must_login(self, co_pin, "hagroup", "addMember", "-group", label, "-serialNumber", serial)
end

-- create_group(label, serial, co_pin): `hagroup createGroup` with the
-- partition of that serial as its first member, a CO login on it through
-- the guard.  lunacm asks "copy or remove" only of a member that holds
-- objects; the password is its only input (proc.lunacm_login), so that
-- question finds end of input and is cancelled, never answered `remove`.
function Client:create_group(label, serial, co_pin)
  must_login(self, co_pin, "hagroup", "createGroup", "-label", label, "-serialNumber", serial)
end

-- in_group(label, serial) -> whether serial is a member of group label in
-- Chrystoki.conf (the client's own record of its groups)
function Client:in_group(label, serial)
  for _, g in ipairs(self:conf():ha_groups()) do
    if g.label == label then
      for _, m in ipairs(g.members) do if m == serial then return true end end
    end
  end
  return false
end

-- group(label) -> the group of that label as groups() gives it, or nil
function Client:group(label)
  for _, g in ipairs(self:groups()) do if g.label == label then return g end end
end

-- remove_member(label, serial): `hagroup removeMember`
function Client:remove_member(label, serial)
  self:must("hagroup", "removeMember", "-group", label, "-serialNumber", serial)
end

-- The member a slot of lunacm's warning names -> {slot=, serial=, hsm=}:
-- the slot as that run's own start-up listing numbered it (slots move
-- from one lunacm run to the next), else as `slot list` numbers it now;
-- serial and hsm nil when neither lists it.
local function warned_member(c, slot_id, listed)
  local slot = listed[slot_id]
  if not slot then
    for _, s in ipairs(proc.lunacm_slots(c:argv())) do
      if s.slot == slot_id then slot = s end
    end
  end
  local hsm = slot and slot.serial and c:hsm_of(slot.serial)
  return { slot = slot_id, serial = slot and slot.serial, hsm = hsm and hsm.name or nil }
end

local function member_text(m)
  return ("slot %d (%s on %s)"):format(m.slot, m.serial or "no partition lunacm lists", m.hsm or "?")
end

-- The guide's warning in a synchronize's output, raised as luna
-- CloningConflict naming the members (details.pairs = {{a=, b=}} of
-- warned_member): whatever lunacm's Command Result says (with nothing to
-- clone it may be No Error), members that cannot clone private keys to
-- each other are not a synchronized group.
local function check_cloning(c, label, out)
  local warned = parse.lunacm_sync_conflicts(out)
  if #warned == 0 then return end
  local listed, named = {}, {}
  for _, slot in ipairs(parse.lunacm_slots(out)) do listed[slot.slot] = slot end
  for i, p in ipairs(warned) do
    warned[i] = { a = warned_member(c, p.a, listed), b = warned_member(c, p.b, listed) }
    named[i] = member_text(warned[i].a) .. " and " .. member_text(warned[i].b)
  end
  dhsm.error { kind = "luna", code = "CloningConflict", details = { group = label, pairs = warned, output = out },
    message = ("lunacm hagroup synchronize -group %s: the members in %s have conflicting settings for private key "
      .. "cloning (different cloning domains): private keys cannot be cloned between them"):format(label,
      table.concat(named, "; the members in ")) }
end

-- synchronize(label, co_pin) -> lunacm's run: a CO login on every member,
-- through the guard.  Raises CloningConflict when lunacm warns of one
-- (check_cloning), else when lunacm says it failed.
function Client:synchronize(label, co_pin)
  local o = self:argv("hagroup", "synchronize", "-group", label)
  o.password = co_pin
  local r = proc.lunacm_login(o)
  if r.check then return r end
  check_cloning(self, label, r.stdout)
  if not r.ok then
    dhsm.error { kind = "luna", code = r.code or "NoCommandResult", details = { output = r.stdout },
      message = ("lunacm hagroup synchronize -group %s: %s"):format(label, said(r.stdout) or "failed") }
  end
  return r
end

return M
