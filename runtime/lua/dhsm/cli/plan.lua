-- dhsm.cli.plan: `dhsm plan show | approve | verify PLAN.json` - a
-- reviewer's side of a signed plan (dhsm.plan).  Refusals (a tampered or
-- expired plan, too few approvals, the author approving) exit with 3 and
-- are audited with the keys ssh-keygen found.
local act = require "dhsm.act"
local dhsm = require "dhsm"
local plan = require "dhsm.plan"
local sys = require "dhsm.sys"

local M = {}

local usage = dhsm.usage
local out = io.stdout

-- The options each subcommand takes (the command's table has them all).
local TAKES = {
  show = {},
  approve = { key = true, principal = true },
  verify = { ["allowed-signers"] = true, approvals = true },
}
local OWN_OPTIONS = {}
for _, takes in pairs(TAKES) do
  for name in pairs(takes) do OWN_OPTIONS[name] = true end
end

-- Colour on a terminal only, and not under NO_COLOR (as dhsm.progress).
local function color()
  return sys.isatty(1) and (os.getenv("NO_COLOR") or "") == ""
end

local function show(p)
  out:write(plan.render(p, { color = color() }))
end

-- A refusal of the approval, audited with the keys involved.
local function refuse_approval(p, code, key, message)
  dhsm.audit.write { action = "plan.approve", outcome = "refused", code = code, digest = plan.digest(p),
    playbook = plan.playbook_name(p), approver_key = key }
  act.refusal { code = code, message = message }
end

local function approve(path, p, opts)
  if not opts.key then usage("plan approve needs --key KEY (your SSH key, or the .pub of an agent's or FIDO key)") end
  show(p)
  local key = plan.key_fingerprint(opts.key)
  local ok, author = pcall(plan.author_key, p)
  if not ok then
    if not dhsm.error.is(author, "safety") then error(author, 0) end
    refuse_approval(p, author.code, key, author.message)
  end
  if author == key then
    refuse_approval(p, "OwnApproval", key, ("%s is the author's key: a plan is approved by someone else "
      .. "(dual control); ask another operator to run dhsm plan approve"):format(key))
  end
  for i = 2, #p.signatures do
    if p.signatures[i].key == key then usage("%s has approved this plan already (signature %d)", key, i) end
  end
  local entry = plan.sign(p, opts.key, "approver", opts.principal)
  act.write_file(path, plan.encode(p), { what = "approval by " .. entry.key })
  dhsm.audit.write { action = "plan.approve", outcome = "approved", digest = plan.digest(p),
    playbook = plan.playbook_name(p), approver_key = entry.key, principal = entry.principal }
  out:write(("approved: plan sha256:%s signed with %s%s; written to %s\n"):format(plan.digest(p), entry.key,
    entry.principal and (" as " .. entry.principal) or "", path))
  -- an approval never makes a plan applicable past its expiry (plan.verify):
  -- said here, not refused, so a reviewer's word is on record either way
  if not pcall(plan.check_fresh, p) then
    io.stderr:write(("dhsm: note: this plan expired at %s: it cannot be applied; its author makes a new one\n")
      :format(p.body.expires))
  end
  return 0
end

-- The host's policy, or - with none in force - the one given by hand.
local function policy_for(opts)
  local policy = plan.policy()
  local given = opts["allowed-signers"] ~= nil or opts.approvals ~= nil
  if policy then
    if given then
      usage("the host's policy %s is in force: --allowed-signers and --approvals cannot replace it", policy.source)
    end
    return policy
  end
  if not (opts["allowed-signers"] and opts.approvals) then
    usage("no policy is in force (%s absent, $DHSM_POLICY unset): give --allowed-signers FILE and --approvals N "
      .. "to check by hand", plan.SYSTEM_POLICY)
  end
  local n = math.tointeger(tonumber(opts.approvals))
  if not n or n < 1 then usage("--approvals: expected a whole number >= 1, got '%s'", opts.approvals) end
  local st = sys.stat(opts["allowed-signers"])
  if not st or st.type ~= "file" then
    usage("--allowed-signers: expected an OpenSSH allowed_signers file, got '%s'", opts["allowed-signers"])
  end
  return { approvals = n, allowed_signers = opts["allowed-signers"], source = "(the command line)" }
end

local function verify(_, p, opts)
  local r = plan.verify(p, policy_for(opts))
  out:write(("approved: plan sha256:%s for playbook %s\n"):format(r.digest, plan.playbook_name(p)))
  out:write(("  author    %s@%s  %s\n"):format(p.body.author.user, p.body.author.host, r.author.key))
  for _, a in ipairs(r.approvers) do out:write(("  approver  %s  %s\n"):format(a.principal, a.key)) end
  for _, why in ipairs(r.rejected) do out:write(("  not counted: %s\n"):format(why)) end
  return 0
end

local RUN = {
  show = function(_, p) show(p) return 0 end,
  approve = approve,
  verify = verify,
}

-- main(opts, pos) -> exit status
function M.main(opts, pos)
  local sub = pos[1]
  if not RUN[sub] then
    usage("plan needs 'show', 'approve' or 'verify'%s (see 'dhsm plan --help')", sub and (", not '" .. sub .. "'") or "")
  end
  for name in pairs(OWN_OPTIONS) do
    if opts[name] ~= nil and not TAKES[sub][name] then
      usage("option --%s is not one of 'plan %s' (see 'dhsm plan --help')", name, sub)
    end
  end
  if not pos[2] then usage("plan %s needs the PLAN.json file", sub) end
  if pos[3] then usage("unexpected argument '%s'", pos[3]) end
  return RUN[sub](pos[2], plan.load(pos[2]), opts)
end

return M
