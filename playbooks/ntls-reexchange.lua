-- ntls-reexchange: repair the certificate exchange between this Luna client
-- and one appliance, the guide's NTLS way: diagnose first, fix only what
-- was found, verify.
--
--   dhsm run ntls-reexchange -e hsm=hsm1 [-e partitions=par1,par2]
--
-- Diagnosis (dhsm.client.ntls): TCP to NTLS; the TLS handshake with the
-- client's certificate; the appliance's server.pem (SCP) against what the
-- client trusts; the certificate NTLS presents against server.pem; the NTLS
-- syslog lines our handshake left (`syslog tail`); the client's
-- registration; the client certificate's expiry.  Fixes, each only when
-- its finding is there: restart NTLS (a confirmed step: it drops every
-- client's sessions), re-add the server certificate (`vtl deleteServer` /
-- `addServer`), upload the client certificate and `client register` (a
-- stale registration is replaced: a confirmed step) and `client
-- assignPartition`.  An expired client certificate (or, with
-- renew_expiring=true, one about to expire) is renewed first, as a
-- confirmed step: `vtl createCert` makes a new key (encrypted) and
-- certificate, which is then registered in place of the old one.  Then `vtl
-- verify` must list the partitions and a fresh handshake succeed; the
-- syslog lines before and after are shown.  A closed port stops the run: no
-- certificate exchange fixes that.
local ntls = require "dhsm.client.ntls"

-- The diagnosis as a step result (JSON, journaled): no certificates.
local function summary(d)
  return { findings = d.findings, server_changed = d.server_changed, ntls_stale = d.ntls_stale,
    registered = d.registered, client_rejected = d.client_rejected, client_name = d.client_name,
    client_days_left = d.client_days_left, partitions = d.partitions, syslog = d.syslog, ok = d.ok,
    tls_ok = d.tls and d.tls.ok or false }
end

-- The diagnosis' finding of that code, or nil.
local function finding_of(d, code)
  for _, f in ipairs(d.findings) do
    if f.code == code then return f end
  end
end

local function has(d, code)
  return finding_of(d, code) ~= nil
end

-- The client install (Chrystoki.conf, its certificates, vtl): what the
-- inventory says of it, read from there when needed (nothing is opened).
local function client(ctx)
  return ntls.client(ctx.inventory)
end

-- The appliance's inventory entry.
local function appliance_entry(ctx)
  return ctx.inventory:hsm(ctx.params.hsm)
end

-- The run's latest diagnosis while no step has acted since it was made:
-- a done= check reads it rather than diagnose again (each diagnosis is a
-- handshake that adds lines to the appliance's log, an SCP and two syslog
-- tails).  A step that acts forgets it (acted); a resumed run starts
-- without one.
local latest = setmetatable({}, { __mode = "k" })

-- A fresh diagnosis (dhsm.client.ntls), over the run's session to the
-- appliance, its files in the run's scratch folder.
local function diagnose(ctx)
  local d = ntls.diagnose(appliance_entry(ctx), client(ctx), ctx:appliance(ctx.params.hsm), { workdir = ctx:scratch_dir() })
  latest[ctx] = d
  return d
end

local function acted(ctx)
  latest[ctx] = nil
end

-- For the done= checks: the state as it is now.
local function current(ctx)
  return latest[ctx] or diagnose(ctx)
end

-- Is the finding code gone?
local function now_ok(ctx, code)
  if ctx.check then return false end
  return not has(current(ctx), code)
end

---------------------------------------------------------------------------
-- diagnose first

-- -> the diagnosis' summary, and renew: whether the client certificate is
-- to be renewed.  A closed port stops the run: no certificate exchange
-- fixes that.
local function diagnosis(ctx)
  local p = ctx.params
  return ctx:step("diagnose NTLS between this client and " .. p.hsm, function()
    local d = diagnose(ctx)
    for _, f in ipairs(d.findings) do ctx:note(f.code .. ": " .. f.text) end
    if #d.findings == 0 then ctx:note("TCP, TLS with the client certificate, server.pem and the registration are all right") end
    for _, l in ipairs(d.syslog or {}) do ctx:note("syslog before: " .. l) end
    if has(d, "port_closed") then
      dhsm.error { kind = "net", code = "NtlsPortClosed", message = finding_of(d, "port_closed").text
        .. "; open it (NSG, firewall, `ntls bind`) before touching certificates: nothing was changed" }
    end
    local out = summary(d)
    out.renew = has(d, "client_expired") or (p.renew_expiring and has(d, "client_expiring")) or false
    return out
  end)
end

---------------------------------------------------------------------------
-- fix only what was found

local function restart_ntls(ctx)
  local hsm = ctx.params.hsm
  ctx:step("restart NTLS on " .. hsm .. " (it drops every client's NTLS sessions)",
    { destructive = true, target = hsm, done = function() return now_ok(ctx, "ntls_restart") end }, function()
    ctx:note("restarting NTLS drops the sessions of every client connected to " .. hsm .. "; they reconnect")
    acted(ctx)
    ctx:appliance(hsm):must("service restart ntls")
  end)
end

local function reexchange_server_cert(ctx)
  local hsm = ctx.params.hsm
  ctx:step("re-exchange " .. hsm .. "'s server certificate", { done = function() return now_ok(ctx, "server_changed") end },
    function()
    local pem = ctx:scratch_dir() .. "/" .. hsm .. "-server-now.pem"
    acted(ctx)
    ctx:appliance(hsm):get("server.pem", pem)
    ntls.readd_server(client(ctx), appliance_entry(ctx), pem)
  end)
end

-- A new key pair and certificate for the client: every appliance it uses
-- must register it, so the others are named.
local function renew_client_cert(ctx, d)
  ctx:step(("renew client certificate %s (vtl createCert: a new key pair, which every appliance must register)")
    :format(d.client_name), { destructive = true, target = d.client_name,
    done = function() return ntls.client_cert(client(ctx)).days_left >= ntls.EXPIRY_WARN_DAYS end }, function()
    ctx:note(("the certificate %s %s: a new one replaces it for every appliance this client uses"):format(
      d.client_name, d.client_days_left < 0 and "has expired" or ("expires in " .. d.client_days_left .. " days")))
    acted(ctx)
    local new = ntls.renew_client_cert(client(ctx), d.client_name)
    local others = {}
    for _, h in ipairs(ctx.inventory.hsms or {}) do
      if h.name ~= ctx.params.hsm then others[#others + 1] = h.name end
    end
    if #others > 0 then
      ctx:note("then run ntls-reexchange for " .. table.concat(others, ", ") .. ": they still hold the old certificate")
    end
    return new and { not_after = new.not_after, sha256 = new.sha256 } or { planned = true }
  end)
end

-- The partitions to assign: -e partitions, else those the client had,
-- else every partition of the appliance.
local function partitions_to_assign(ctx, d)
  for _, given in ipairs { ctx.params.partitions or {}, d.partitions or {} } do
    if #given > 0 then return given end
  end
  local parts = {}
  for _, part in ipairs(ctx:appliance(ctx.params.hsm):partitions()) do parts[#parts + 1] = part.name end
  return parts
end

-- done: registered with this client's certificate and every partition assigned
local function registered(now, parts)
  if has(now, "client_unknown") or has(now, "client_stale") then return false end
  local assigned = {}
  for _, part in ipairs(now.partitions or {}) do assigned[part] = true end
  for _, part in ipairs(parts) do
    if not assigned[part] then return false end
  end
  return true
end

-- What a plan registers from: the diagnosis, and after a renewal it only
-- described, the appliance still holding the old certificate - a
-- registration the new one will be rejected by, to be replaced.
local function planned_state(d)
  if not (d.renew and d.registered) then return d end
  local after = {}
  for k, v in pairs(d) do after[k] = v end
  after.client_rejected = true
  return after
end

-- The client registered anew, or its registration replaced (a confirmed
-- step: it holds another certificate), with its partitions.
local function register_client(ctx, d)
  local hsm, replace = ctx.params.hsm, d.registered
  local parts = partitions_to_assign(ctx, d)
  local title = (replace and "replace client %s's registration on %s" or "register client %s on %s")
    :format(d.client_name, hsm) .. (#parts > 0 and (" with partition(s) " .. table.concat(parts, ", ")) or "")
  ctx:step(title, { destructive = replace or nil, target = replace and hsm or nil,
    done = function()
      return not ctx.check and registered(current(ctx), parts)
    end }, function()
    -- the state as it is now (what done= read): a resumed run may find the delete or the registration done
    local now = ctx.check and planned_state(d) or current(ctx)
    acted(ctx)
    ntls.register_client(client(ctx), appliance_entry(ctx), ctx:appliance(hsm), now, parts)
  end)
end

---------------------------------------------------------------------------
-- verify

local function verify(ctx)
  ctx:step("verify: vtl verify lists the partitions, a fresh handshake succeeds", function()
    if ctx.check then
      ctx:would("run vtl verify and a fresh handshake with the client certificate")
      return { planned = true }
    end
    local again = diagnose(ctx)
    for _, l in ipairs(again.syslog or {}) do ctx:note("syslog after: " .. l) end
    local v = ntls.vtl_verify(client(ctx))
    if not again.ok or not again.tls.ok or not v.ok then
      local left = {}
      for _, f in ipairs(again.findings) do left[#left + 1] = f.text end
      dhsm.error { kind = "net", code = "NtlsStillFailing", message = ("NTLS to %s still fails: %s"):format(ctx.params.hsm,
        #left > 0 and table.concat(left, "; ") or tostring(v.error or again.tls.reason or "vtl verify lists nothing")) }
    end
    for _, part in ipairs(v.partitions) do
      ctx:note(("vtl verify: slot %d  %s  %s"):format(part.slot, part.serial, part.label))
    end
    local expiring = finding_of(again, "client_expiring")
    if expiring then ctx:note(expiring.text) end
    return { partitions = #v.partitions, handshake = again.tls.protocol }
  end)
end

return {
  description = "Diagnose the NTLS certificate exchange between this client and an appliance and fix only what is wrong",
  inventory = "the appliance and the client install",
  params = {
    hsm = { type = "string", required = true, pattern = "^[%w%-_%.]+$", inventory = "hsm", expect = "inventory HSM name",
      description = "the inventory's name of the appliance" },
    renew_expiring = { type = "boolean", default = false,
      description = "also renew a client certificate that expires within 30 days (an expired one is always renewed)" },
    partitions = { type = "list", items = { type = "string", pattern = "^[%w%-_%.]+$", expect = "a partition name" },
      unique = true,
      description = "partitions to assign when the client is registered anew (default: those it had, else every partition)" },
  },
  run = function(ctx, p)
    client(ctx)            -- an inventory without the client install stops here, before any step
    local d = diagnosis(ctx)
    if d.ntls_stale then restart_ntls(ctx) end
    if d.server_changed then reexchange_server_cert(ctx) end
    if d.renew then renew_client_cert(ctx, d) end
    if not d.registered or d.client_rejected or d.renew then register_client(ctx, d) end
    verify(ctx)
  end,
}
