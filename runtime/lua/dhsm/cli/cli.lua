-- dhsm.cli: the command line.  main(args) returns the exit status:
-- 0 ok, 1 failed, 2 usage or bad input, 3 refused by a safety rule,
-- 130 interrupted.  User mistakes get one line on stderr, never a traceback
-- (unless --verbose); a traceback means a bug.
local dhsm = require "dhsm"
local sys = require "dhsm.sys"
local paths = require "dhsm.paths"
local util = require "dhsm.util"
local cjson = require "cjson"

local M = {}

local GLOBAL_OPTIONS = {
  { "-i", "--inventory", arg = "FILE", help = "inventory of the environment (JSON); default $DHSM_INVENTORY" },
  { "-I", "--include", arg = "DIR", help = "look for playbooks in DIR first, and your own modules (not dhsm.*) (repeatable; also $DHSM_PATH)" },
  { nil, "--audit", arg = "FILE", help = "audit log; default $DHSM_AUDIT or $XDG_STATE_HOME/dhsm/audit.jsonl" },
  { "-v", "--verbose", help = "more detail, and tracebacks with errors" },
  { "-h", "--help", help = "show help and exit" },
  { nil, "--version", help = "print the versions of dhsm and its libraries and exit" },
}

-- Each command: usage line, one-line summary, longer text, options.
M.commands = {
  { name = "run", usage = "run PLAYBOOK [-e KEY=VALUE|@FILE.json]... [--check [--out PLAN.json --key KEY]] [--yes] "
      .. "[--resume ID] [--json] | run --plan PLAN.json [--yes]",
    summary = "run a playbook",
    text = [[Runs PLAYBOOK (a name from 'dhsm list' or a path to a .lua file) with the
given parameters.  Steps marked destructive ask you to type their target's
name unless --yes is given.  A value may contain any character (quotes,
commas, '='); '-e @file.json' reads many parameters from a JSON object.
--check --out PLAN.json --key KEY saves the plan, signed with your SSH key,
for another operator to approve ('dhsm plan approve'); --plan PLAN.json
applies an approved plan exactly: its own parameters and inventory, every
read it was made on read again, and no change it does not hold.]],
    options = {
      { "-e", "--extra", arg = "KEY=VALUE|@FILE", multi = true, help = "set a parameter (repeatable)" },
      { nil, "--check", help = "plan only: read, but make no change" },
      { "-y", "--yes", help = "do not ask before destructive steps (the audit log records it)" },
      { nil, "--resume", arg = "ID", help = "continue run ID with its own parameters and inventory, skipping the steps it completed" },
      { nil, "--inventory-changed", help = "with --resume: the run's inventory file changed on purpose; go on with it (audited)" },
      { nil, "--json", help = "print one JSON document describing the run on stdout" },
      { nil, "--out", arg = "PLAN.json", help = "with --check: save the plan to PLAN.json (a new file), signed with --key" },
      { nil, "--key", arg = "KEY", help = "with --out: your SSH key (private key file, or its .pub with the key in ssh-agent)" },
      { nil, "--valid-for", arg = "HOURS", help = "with --out: how long the plan may be applied (default 24, at most 168)" },
      { nil, "--plan", arg = "PLAN.json", help = "apply an approved plan (its playbook, parameters and inventory)" },
    } },
  { name = "runs", usage = "runs [--all]", summary = "list recent runs and their state",
    text = [[Lists the runs journaled in $XDG_STATE_HOME/dhsm/runs, newest first, with
their state and how many steps completed; 'dhsm run PLAYBOOK --resume ID'
continues one that failed or was interrupted.]],
    options = { { nil, "--all", help = "every run, not only the last 20" } } },
  { name = "list", usage = "list", summary = "list the playbooks on the search path",
    text = "Lists every playbook found in -I folders, $DHSM_PATH and the binary, with its description.",
    options = {} },
  { name = "doc", usage = "doc PLAYBOOK", summary = "describe a playbook and its parameters",
    text = "Prints the playbook's description and a table of its parameters.", options = {} },
  { name = "repl", usage = "repl", summary = "interactive Lua console with every module loaded",
    text = [[Each line runs as a task, so waits and dhsm.parallel work; an expression prints
its value.  Ctrl-C cancels the running line, Ctrl-D leaves.]], options = {} },
  { name = "exec", usage = "exec FILE [ARG]... | exec -e CODE [ARG]...", summary = "run a Lua runbook",
    text = [[Runs FILE (or CODE) as a task with the global 'dhsm' and every module
available; the arguments are in ... and in the global 'arg'.  With -i (or
$DHSM_INVENTORY) the inventory is loaded and checked first, and the runbook
finds what the REPL has: inv, az, hsm "name", p11 (and dhsm.inventory()).
A destructive module call asks you to type its target's name, as in the
REPL, unless --yes is given; without a terminal and without --yes it is
refused.]],
    options = {
      { "-e", "--code", arg = "CODE", help = "run CODE instead of a file" },
      { "-y", "--yes", help = "do not ask before destructive calls (the audit log records it)" },
      { nil, "--json", help = "print what the runbook returns as JSON on stdout (nothing else goes there)" },
    } },
  { name = "test", usage = "test [-v] [PATH]...", summary = "run *_test.lua files",
    text = [[Runs every *_test.lua file below each PATH (default tests/lua).  A test file
uses  local t = require "dhsm.test"  and  t.test(name, fn).  Prints one line
per failure and ends with "N passed, N failed".  Operators can test their
own runbooks the same way; require "support.NAME" finds helpers in the
nearest support/ folder above a test file.  A destructive call asks for its
target's name as in exec; --yes answers for the whole suite (tests of the
question set their own).]],
    options = { { nil, "--filter", arg = "PATTERN", help = "only tests whose name matches the Lua PATTERN" },
      { "-y", "--yes", help = "do not ask before destructive calls (the audit log records it)" } } },
  { name = "inventory", usage = "inventory discover [-g GROUP] [--subscription ID] [--tenant T] [-o FILE | --merge FILE] "
      .. "[--address-map FILE] [--known-hosts FILE] [--accept-new] [--yes] [--check] | inventory trust NAME "
      .. "--fingerprint SHA256:... [--yes] [--check]",
    summary = "write an inventory from Azure; accept a re-keyed appliance's host key",
    text = [[discover: lists the dedicated HSMs of resource group GROUP (Azure credential:
the inventory's, else AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, managed
identity, 'az login'), checks each appliance's SSH host key (recorded only on
your word: typed yes, or --accept-new) and writes an inventory to stdout, to
-o FILE (a new file), or merged into an existing one (--merge FILE: new HSMs
added, entries Azure no longer holds flagged, nothing else changed).  Secrets
are written as references ("prompt"), never values.
trust: accepts appliance NAME's new host key (an appliance Microsoft reset),
only when it has exactly the fingerprint given, on your word (typed yes, or
--yes), audited.]],
    options = {
      { "-g", "--group", arg = "GROUP", help = "the resource group (default: the inventory's)" },
      { nil, "--subscription", arg = "ID", help = "default: the inventory's, $AZURE_SUBSCRIPTION_ID, 'az account show'" },
      { nil, "--tenant", arg = "T", help = "the tenant (default: the credential's, else the subscription's)" },
      { "-o", "--output", arg = "FILE", help = "write the inventory to FILE, which must not exist (default: stdout)" },
      { nil, "--merge", arg = "FILE", help = "add the HSMs FILE lacks to it (asks first; --yes does not ask)" },
      { nil, "--address-map", arg = "FILE", help = "REHEARSAL ONLY: NIC address -> {host, ssh_port, ntls_port}" },
      { nil, "--known-hosts", arg = "FILE", help = "the known_hosts file (default ~/.ssh/known_hosts)" },
      { nil, "--accept-new", help = "record host keys not yet known without asking (audited)" },
      { nil, "--fingerprint", arg = "SHA256:...", help = "trust: the new key's fingerprint, as the console shows it" },
      { "-y", "--yes", help = "write (--merge) or replace (trust) without asking (audited)" },
      { nil, "--check", help = "show what would be written; write nothing" },
      { nil, "--endpoint", arg = "URL", help = "the ARM endpoint (another cloud, a rehearsal)" },
      { nil, "--authority", arg = "URL", help = "the token endpoint's base (another cloud, a rehearsal)" },
      { nil, "--imds-endpoint", arg = "URL", help = "where managed identity tokens come from (a rehearsal)" },
      { nil, "--ca-file", arg = "FILE", help = "a CA bundle to trust for ARM and the token endpoint" },
    } },
  { name = "plan", usage = "plan show PLAN.json | plan approve PLAN.json --key KEY [--principal NAME] | "
      .. "plan verify PLAN.json [--allowed-signers FILE --approvals N]",
    summary = "review, approve and verify a signed plan",
    text = [[show: prints the plan for a reviewer - who made it and when, its parameters,
its changes (destructive first) and the reads they depend on.
approve: shows the plan, checks it is the one its author signed and not
expired, then signs it with your SSH key (ssh-keygen -Y sign, namespace
dhsm-plan; a key file, or the .pub of an agent's or FIDO key) and writes the
file back.  The author's own key cannot approve.
verify: checks the signatures against the host's policy (/etc/dhsm/policy.json;
$DHSM_POLICY only where that file does not exist) and prints who approved;
with no policy in force, against --allowed-signers FILE and --approvals N.
A plan that fails is refused with exit status 3.]],
    options = {
      { nil, "--key", arg = "KEY", help = "approve: your SSH key (private key file, or the .pub of an agent key)" },
      { nil, "--principal", arg = "NAME", help = "approve: your name as the allowed_signers file has it" },
      { nil, "--allowed-signers", arg = "FILE", help = "verify, with no policy in force: the OpenSSH allowed_signers file" },
      { nil, "--approvals", arg = "N", help = "verify, with no policy in force: the distinct approvals required" },
    } },
  { name = "version", usage = "version", summary = "print the versions of dhsm and its libraries",
    text = "Prints dhsm, Lua, libcurl, libssh2 and OpenSSL versions.", options = {} },
  { name = "help", usage = "help [COMMAND]", summary = "show help for dhsm or a command",
    text = "Shows the help of a command ('dhsm COMMAND --help' does the same).", options = {} },
}

local by_name = {}
for _, c in ipairs(M.commands) do by_name[c.name] = c end

local usage_error = dhsm.usage

---------------------------------------------------------------------------
-- help text (the man page is docs/cli.md, made into docs/dhsm.1 by tools/man.lua)

local function option_label(o)
  local names = o[1] and (o[1] .. ", " .. o[2]) or ("    " .. o[2])
  return o.arg and (names .. " " .. o.arg) or names
end

local function format_options(list, out)
  for _, o in ipairs(list) do
    out[#out + 1] = ("  %-30s %s"):format(option_label(o), o.help)
  end
end

function M.help_text(cmd)
  local out = {}
  if cmd then
    out[#out + 1] = "usage: dhsm " .. cmd.usage
    out[#out + 1] = ""
    out[#out + 1] = cmd.text
    if #cmd.options > 0 then
      out[#out + 1] = ""
      out[#out + 1] = "options:"
      format_options(cmd.options, out)
    end
    return table.concat(out, "\n")
  end
  out[#out + 1] = "usage: dhsm [OPTIONS] COMMAND [ARGS]"
  out[#out + 1] = ""
  out[#out + 1] = "Automation for Azure Dedicated HSM (Thales Luna Network HSM 7): the Azure control"
  out[#out + 1] = "plane, the appliances' LunaSH, PKCS#11 partitions and the network path between."
  out[#out + 1] = ""
  out[#out + 1] = "commands:"
  for _, c in ipairs(M.commands) do
    out[#out + 1] = ("  %-10s %s"):format(c.name, c.summary)
  end
  out[#out + 1] = ""
  out[#out + 1] = "options:"
  format_options(GLOBAL_OPTIONS, out)
  out[#out + 1] = ""
  out[#out + 1] = "exit status: 0 ok, 1 failed, 2 usage or bad input, 3 refused by a safety rule, 130 interrupted"
  out[#out + 1] = "'dhsm COMMAND --help' describes a command."
  return table.concat(out, "\n")
end

---------------------------------------------------------------------------
-- argument parsing

-- Parse args[i..] against `specs` (plus the global options).  Returns the
-- options table and the positional arguments.  With stop_at_positional,
-- everything from the first positional on is left unparsed (exec's script
-- arguments).
local function parse(args, i, specs, cmdname, stop_at_positional)
  local all = {}
  for _, o in ipairs(GLOBAL_OPTIONS) do all[#all + 1] = o end
  for _, o in ipairs(specs) do all[#all + 1] = o end
  local function find(name)
    for _, o in ipairs(all) do
      if o[1] == name or o[2] == name then return o end
    end
  end
  local opts, pos = {}, {}
  while i <= #args do
    local a = args[i]
    if a == "--" then
      for j = i + 1, #args do pos[#pos + 1] = args[j] end
      break
    elseif a:sub(1, 1) == "-" and #a > 1 and not (stop_at_positional and #pos > 0) then
      local name, inline = a:match("^(%-%-[^=]+)=(.*)$")
      name = name or a
      if not name:match("^%-%-") and #name > 2 then      -- -eVALUE
        name, inline = a:sub(1, 2), a:sub(3)
      end
      local o = find(name)
      if not o then
        local names = {}
        for _, x in ipairs(all) do names[#names + 1] = x[2] end
        usage_error("unknown option '%s'%s%s (see 'dhsm %s--help')", name,
          cmdname and (" for '" .. cmdname .. "'") or "", util.did_you_mean(name, names),
          cmdname and (cmdname .. " ") or "")
      end
      local key = o[2]:sub(3)
      local value = true
      if o.arg then
        value = inline
        if value == nil then
          i = i + 1
          value = args[i]
          if value == nil then usage_error("option '%s' needs a value (%s)", name, o.arg) end
        end
      elseif inline ~= nil then
        usage_error("option '%s' takes no value", name)
      end
      if o.multi or key == "include" then
        opts[key] = opts[key] or {}
        table.insert(opts[key], value)
      else
        opts[key] = value
      end
    else
      pos[#pos + 1] = a
      if stop_at_positional then
        for j = i + 1, #args do pos[#pos + 1] = args[j] end
        break
      end
    end
    i = i + 1
  end
  return opts, pos
end

-- "-e key=value" and "-e @file.json" into one table.
function M.parse_params(list)
  local params = {}
  for _, item in ipairs(list or {}) do
    if item:sub(1, 1) == "@" then
      local path = item:sub(2)
      local data, err = util.read_file(path)
      if not data then usage_error("cannot read parameters from -e @%s: %s", path, err) end
      local obj, why, what = util.json_object(data)
      if what == "syntax" then usage_error("-e @%s: %s", path, why) end
      if not obj then usage_error("-e @%s: expected a JSON object of parameters, e.g. {\"name\": \"hsm1\"}", path) end
      for k, v in pairs(obj) do
        if v == cjson.null then v = nil end
        params[k] = v
      end
    else
      local key, value = item:match("^([^=]*)=(.*)$")
      if not key then
        usage_error("-e '%s': expected KEY=VALUE or @FILE.json", item)
      end
      if not key:match("^[%a_][%w_.-]*$") then
        usage_error("-e '%s': '%s' is not a parameter name (letters, digits, _ . -)", item, key)
      end
      params[key] = value
    end
  end
  return params
end

---------------------------------------------------------------------------
-- commands

local out = io.stdout

local function cmd_version()
  local v = sys.versions()
  out:write(("dhsm %s\n%s\nlibcurl %s\nlibssh2 %s\n%s\n"):format(
    v.dhsm, v.lua, v.curl, v.libssh2, v.openssl))
  return 0
end

local function cmd_help(opts, pos)
  local name = pos[1]
  if name == nil then
    out:write(M.help_text(), "\n")
    return 0
  end
  out:write(M.help_text(M.command(name)), "\n")
  return 0
end

-- The command called name, or a usage error suggesting the closest.
function M.command(name)
  local cmd = by_name[name]
  if not cmd then
    usage_error("unknown command '%s'%s; see 'dhsm --help'", name,
      util.did_you_mean(name, M.command_names()))
  end
  return cmd
end

function M.command_names()
  local names = {}
  for _, c in ipairs(M.commands) do names[#names + 1] = c.name end
  return names
end

local function find_playbook_or_fail(name)
  local found = paths.find_playbook(name)
  if not found then
    local names = {}
    for _, p in ipairs(paths.list_playbooks()) do names[#names + 1] = p.name end
    usage_error("no playbook '%s'%s; 'dhsm list' shows the ones on the search path", name,
      util.did_you_mean(name, names))
  end
  return found
end

local function cmd_list()
  local play = require "dhsm.play"
  local list = paths.list_playbooks()
  if #list == 0 then
    out:write("no playbooks found\n")
    return 0
  end
  local width = 0
  for _, p in ipairs(list) do width = math.max(width, #p.name) end
  for _, p in ipairs(list) do
    local ok, pb = pcall(play.describe, p)
    local desc = ok and pb.description:match("^[^\n]*") or ("(cannot describe: " .. tostring(pb) .. ")")
    out:write(util.pad(p.name, width + 2), desc, "\n")
  end
  return 0
end

local function cmd_doc(_, pos)
  if not pos[1] then usage_error("doc needs a PLAYBOOK name; 'dhsm list' shows them") end
  local play = require "dhsm.play"
  out:write(play.doc(play.describe(find_playbook_or_fail(pos[1]))), "\n")
  return 0
end

-- The options a plan's run takes: saving one goes with --check, applying
-- one takes the plan's own playbook, parameters and inventory.
local function check_plan_options(opts, pos)
  if opts.out or opts.key or opts["valid-for"] then
    if not (opts.check and opts.out and opts.key) then usage_error("--out, --key and --valid-for go together with --check: "
      .. "'dhsm run PLAYBOOK ... --check --out PLAN.json --key KEY'") end
    if sys.stat(opts.out) then usage_error("--out %s: the file exists; a plan is written to a new file", opts.out) end
    if not sys.stat(opts.key) then usage_error("--key %s: no such file (your SSH private key, or its .pub)", opts.key) end
    local hours = opts["valid-for"] and tonumber(opts["valid-for"])
    if opts["valid-for"] and not (hours and hours > 0 and hours <= 168) then
      usage_error("--valid-for: expected hours, a number more than 0 and at most 168, got %s", opts["valid-for"])
    end
    opts.ttl = hours and math.max(1, math.ceil(hours * 3600)) or nil
  end
  if opts.plan then
    if opts.check or opts.extra or opts.resume then
      usage_error("--plan takes the plan's own parameters: leave out %s", opts.check and "--check"
        or opts.extra and "-e" or "--resume (a run applying a plan is resumed with 'dhsm run --resume ID')")
    end
    if pos[1] then usage_error("--plan names the playbook itself: leave out '%s'", pos[1]) end
  elseif not pos[1] then
    usage_error("run needs a PLAYBOOK; 'dhsm list' shows them")
  end
  if pos[2] then usage_error("unexpected argument '%s' (parameters are given as -e KEY=VALUE)", pos[2]) end
end

-- The plan this run applies (--plan, or the one a resumed run applied),
-- verified against the host's policy -> plan, its path, act's record
local function plan_to_apply(opts, policy)
  local path = opts.plan
  if opts.resume then
    local ok, j = pcall(require("dhsm.journal").load, opts.resume)
    path = ok and type(j.plan) == "table" and j.plan.path or nil
  end
  if not path then return nil end
  local plans = require "dhsm.play.plans"
  local p, applied = plans.load(path, policy, opts.resume)
  applied.lock = plans.claim(applied.digest, opts.resume or dhsm.context().run)
  return p, path, applied
end

local function cmd_run(opts, pos)
  check_plan_options(opts, pos)
  local act = require "dhsm.act"
  -- a plan's whole process plans: the playbook's own top-level code, its
  -- check hook and any finaliser at exit included (dhsm.act)
  local write_plan
  if opts.check then write_plan = select(2, act.check_process(opts.out)) end
  act.confirm_policy(opts.yes == true)
  local policy = require("dhsm.plan").policy()
  local plan, plan_path, applied = plan_to_apply(opts, policy)
  local claimed <close> = applied and applied.lock or nil      -- held until the run ends
  act.plan_policy(policy, applied)
  local inventory = require "dhsm.inventory"        -- its client tools are the real ones (dhsm.proc)
  if opts.resume then                               -- a run is resumed with its own inventory
    opts.inventory = require("dhsm.play.resume").inventory_path(opts.resume, opts.inventory, opts.inventory_given)
  elseif plan and not opts.inventory_given then     -- and a plan applied with the plan's
    opts.inventory = plan.body.inventory and plan.body.inventory.path or opts.inventory
  end
  local inv = opts.inventory and inventory.load(opts.inventory) or nil
  inventory.trust_tools(inv)
  return M.run_playbook(plan and not opts.resume and require("dhsm.plan").playbook_name(plan) or pos[1], opts.extra, {
    -- the plan's parameters, as given when it was made (secrets by reference)
    params = plan and not opts.resume and util.merged(plan.body.params, {}) or nil,
    check = opts.check, yes = opts.yes, resume = opts.resume, json = opts.json,
    inventory_changed = opts["inventory-changed"],
    inventory = opts.inventory, inventory_loaded = inv,   -- read once, here
    plan = plan, plan_path = plan_path and (sys.realpath(plan_path) or plan_path), plan_digest = applied and applied.digest,
    out = opts.out, key = opts.key, ttl = opts.ttl, write_plan = write_plan,
  })
end

-- run_playbook(name, {"KEY=VALUE" | "@FILE.json", ...}, opts) -> exit status:
-- `dhsm run` and the REPL's :run, one runner (dhsm.play.run's opts; the
-- confirmation policy and the inventory's tools set by the caller)
function M.run_playbook(name, extra, opts)
  local play = require "dhsm.play"
  local pb = play.load(find_playbook_or_fail(name))
  return play.run(pb, opts.params or M.parse_params(extra), opts)
end

local function cmd_runs(opts)
  local runs = require("dhsm.journal").list(not opts.all and 20 or nil)
  if #runs == 0 then
    out:write("no runs journaled yet\n")
    return 0
  end
  local rows = { { "RUN", "PLAYBOOK", "STATE", "STEPS", "UPDATED" } }
  for _, r in ipairs(runs) do
    rows[#rows + 1] = { r.id, r.playbook or "?", r.state or "?", ("%d/%d"):format(r.done, r.total), r.updated or "" }
  end
  for _, line in ipairs(util.columns(rows)) do out:write(line, "\n") end
  return 0
end

local function cmd_exec(opts, pos)
  local chunk, err, name
  if opts.code then
    name = "=(command line)"
    chunk, err = load(opts.code, name, "t")
  else
    name = pos[1]
    if not name then usage_error("exec needs a FILE or -e CODE") end
    table.remove(pos, 1)
    local src, rerr = util.read_file(name)
    if not src then usage_error("cannot read %s", rerr) end
    chunk, err = load(src:gsub("^#![^\n]*", ""), "@" .. name, "t")
  end
  if not chunk then usage_error("%s", err) end
  local argt = { [0] = opts.code and "-e" or name }
  for i, a in ipairs(pos) do argt[i] = a end
  _G.arg = argt
  require("dhsm.cli.globals").install(opts.inventory)
  require("dhsm.act").confirm_policy(opts.yes == true)
  -- With --json, stdout carries only the document: the runbook's prints go to stderr.
  local real_stdout = opts.json and assert(sys.stdout_to_stderr())
  local r = table.pack(xpcall(chunk, M.catcher(opts.code and name or "@" .. name), table.unpack(pos)))
  if real_stdout then
    io.stdout:flush()
    sys.restore_stdout(real_stdout)
  end
  if not r[1] then error(r[2], 0) end
  if real_stdout then out:write(sys.json_encode(r[2], { redact = false }), "\n") end
  return 0
end

local function cmd_test(opts, pos)
  require("dhsm.act").confirm_policy(opts.yes == true)
  require("dhsm.inventory").trust_tools(nil)
  return require("dhsm.testrun").run(pos, { verbose = opts.verbose, filter = opts.filter })
end

-- The options of `inventory discover` that `inventory trust` has not (its
-- own is --fingerprint; --yes and --check are both's).
local DISCOVER_ONLY = { group = true, subscription = true, tenant = true, output = true, merge = true,
  ["address-map"] = true, ["known-hosts"] = true, ["accept-new"] = true, endpoint = true, authority = true,
  ["imds-endpoint"] = true, ["ca-file"] = true }

local function cmd_inventory(opts, pos)
  local sub = pos[1]
  if sub ~= "discover" and sub ~= "trust" then
    usage_error("inventory needs 'discover' or 'trust'%s (see 'dhsm inventory --help')",
      sub and (", not '" .. sub .. "'") or "")
  end
  local spec = by_name.inventory.options
  for _, o in ipairs(spec) do
    local key = o[2]:sub(3)
    if opts[key] ~= nil and (sub == "trust" and DISCOVER_ONLY[key] or sub == "discover" and key == "fingerprint") then
      usage_error("option %s is not one of 'inventory %s' (see 'dhsm inventory --help')", o[2], sub)
    end
  end
  if opts.check then require("dhsm.act").check_process() end
  local discover = require "dhsm.cli.discover"
  if sub == "trust" then
    if not pos[2] then usage_error("inventory trust needs the NAME of an inventory entry") end
    if pos[3] then usage_error("unexpected argument '%s'", pos[3]) end
    return discover.trust(opts, pos[2])
  end
  if pos[2] then usage_error("unexpected argument '%s' (inventory discover takes options only)", pos[2]) end
  return discover.discover(opts)
end

local function cmd_plan(opts, pos)
  return require("dhsm.cli.plan").main(opts, pos)
end

local function cmd_repl(opts)
  return require("dhsm.cli.repl").run { inventory = opts.inventory }
end

local handlers = {
  run = cmd_run, runs = cmd_runs, list = cmd_list, doc = cmd_doc, repl = cmd_repl,
  exec = cmd_exec, test = cmd_test, version = cmd_version, help = cmd_help, inventory = cmd_inventory,
  plan = cmd_plan,
}

-- The modules a safety rule lives in, loaded before a command runs code of
-- the user's (a runbook, a playbook, a test file, the REPL's lines): each
-- holds what it requires (the guard, the evidence check) as its own, so
-- code that later puts something else in package.loaded does not reach
-- them.  (The debug library still does: dhsm closes its API, it is not a
-- sandbox.)  The commands that run none (help, version, doc, list, runs)
-- start without them, in half the time.
local SAFETY_MODULES = { "dhsm.act", "dhsm.play", "dhsm.guard", "dhsm.guard.commands", "dhsm.evidence", "dhsm.luna", "dhsm.pkcs11", "dhsm.proc",
  "dhsm.azure", "dhsm.azure.hsm", "dhsm.azure.groups" }
local RUNS_USER_CODE = { run = true, repl = true, exec = true, test = true }

---------------------------------------------------------------------------
-- entry point

-- A message handler for xpcall that turns an error into a failure on its
-- way to main: the error, the traceback where it was raised, and whether
-- it is the runbook's own (raised by the code of chunk `chunkname` itself:
-- error("boom"), indexing nil), which the operator reads as "file:line:
-- message" (the traceback only with -v), not as a bug of dhsm.
local Failure = {}

function M.catcher(chunkname)
  return function(e)
    if getmetatable(e) == Failure then return e end
    local f = setmetatable({ err = e, traceback = debug.traceback("", 2):sub(2) }, Failure)
    if dhsm.error.is(e) or not chunkname then return f end
    for level = 2, 50 do                     -- the innermost Lua frame: whose code failed
      local info = debug.getinfo(level, "Sl")
      if not info then break end
      if info.what ~= "C" then
        if info.source == chunkname then
          f.own = true
          local mt = getmetatable(e)
          if type(e) ~= "string" and not (mt and mt.__tostring) then
            f.err = ("%s:%d: error object is a %s value"):format(info.short_src, info.currentline, type(e))
          end
        end
        break
      end
    end
    return f
  end
end

function M.exit_code(err)
  return require("dhsm.errors").exit_status(err)     -- the one map, shared with main.c
end

-- Print an error: its message for a dhsm error, with the traceback when
-- verbose or when it is not a dhsm error (a bug, in dhsm or in a runbook).
-- `traceback` is "stack traceback:\n..." or nil; `own`: a runbook's own
-- error, shown as its "file:line: message" (the traceback with -v).
function M.report(err, traceback, own)
  local plain = { usage = true, interrupted = true, cancelled = true }
  local line = dhsm.error.is(err) and (plain[err.kind] and err.message or tostring(err))
    or tostring(err)
  if dhsm.error.is(err) and rawget(err, "shown_above") then   -- a playbook step's failure line said it all
    line = ("%s%s: as the failed step says above"):format(err.kind, err.code and ("/" .. err.code) or "")
  end
  io.stderr:write("dhsm: ", line, "\n")
  if traceback and (dhsm.verbose or not (dhsm.error.is(err) or own)) then
    io.stderr:write(traceback, "\n")
  end
end

local function dispatch(args)
  -- the global options before the command, then the command and its own
  local gopts, rest = parse(args, 1, {}, nil, true)
  if gopts.version then return cmd_version() end
  local name = rest[1]
  if name == nil then
    if gopts.help then return cmd_help({}, {}) end
    usage_error("no command given; see 'dhsm --help'")
  end
  local specs = M.command(name).options
  local opts, pos = parse(rest, 2, specs, name, name == "exec")
  for k, v in pairs(gopts) do
    if k == "include" then
      opts.include = opts.include or {}
      for j, d in ipairs(v) do table.insert(opts.include, j, d) end
    elseif opts[k] == nil then
      opts[k] = v
    end
  end
  if opts.help then return cmd_help({}, { name }) end
  if opts.version then return cmd_version() end
  dhsm.verbose = opts.verbose == true
  local dirs = {}
  for _, d in ipairs(opts.include or {}) do dirs[#dirs + 1] = d end
  for _, d in ipairs(paths.split(os.getenv("DHSM_PATH"))) do dirs[#dirs + 1] = d end
  paths.set(dirs)
  if opts.audit then dhsm.audit.set_path(opts.audit) end
  opts.inventory_given = opts.inventory ~= nil       -- -i, not $DHSM_INVENTORY
  opts.argv = args                                   -- as typed (a refusal's command to type again)
  opts.inventory = opts.inventory or os.getenv("DHSM_INVENTORY")
  if RUNS_USER_CODE[name] then
    for _, m in ipairs(SAFETY_MODULES) do require(m) end
    -- the host's plan policy, read before any code of the user's (run reads
    -- it with the plan it applies)
    if name ~= "run" then require("dhsm.act").plan_policy(require("dhsm.plan").policy()) end
  end
  return handlers[name](opts, pos)
end

-- A run's id: its UTC start and a random suffix (the journal's file name).
function M.new_run_id()
  return os.date("!%Y%m%dT%H%M%S") .. "-" .. sys.random_hex(3)
end

function M.main(args)
  local context = dhsm.context()
  context.run = context.run or M.new_run_id()
  local ok, r = xpcall(dispatch, M.catcher(), args)
  io.stdout:flush()
  if ok then return r end
  M.report(r.err, r.traceback, r.own)
  return M.exit_code(r.err)
end

return M
