-- dhsm.act: the one gate every change to the outside world passes.
--
--   local act = require "dhsm.act"
--   local r = act.change({
--     kind = "azure",                       -- azure | luna | proc | pkcs11 | file | login
--     action = "DELETE",                    -- the method, command or operation
--     target = "hsm1",                      -- what it changes: the name an operator types to confirm
--     where = "/subscriptions/.../hsm1",    -- (optional) the full address, for the records
--     what = "DELETE /subscriptions/...",   -- one line: the plan's, the question's
--     destructive = true,                   -- cannot be undone: confirmed first
--     rule = function(change) end,          -- the safety rule for this target: raises "safety"
--     fields = { correlation_id = id },     -- more of the structured record (never a secret's value)
--     generated = { "correlation_id" },     -- fields made afresh each time: a plan compares their role
--     audit = "azure.DELETE",               -- the records' action (default kind.action)
--     planned = function(change) return ... end,   -- what a check-mode call returns
--     outcome = function(...) return "202" end,    -- the outcome record's word for act's results
--   }, function(change) return ... end)     -- the act itself
--
-- The gate, in this order - whichever module, function or spelling the
-- caller used:
--   1. the rule for the target (so a plan shows the refusal the real run
--      would meet);
--   2. check mode: the change is described (the plan, the audit log) and
--      `planned` returned; nothing is sent;
--   3. an approved plan (dhsm.plan): a run applying one sends only the
--      changes it holds, in its order per target; under the host's policy
--      a destructive change without one is refused, whatever the route;
--   4. confirmation of a destructive change: the operator types the
--      target's name (dhsm.ask; --yes; refused without a terminal).  A
--      confirmed destructive playbook step covers the changes to its own
--      target, and only those;
--   5. the intent record, on disk (fsync'd) before anything leaves;
--   6. the act;
--   7. the outcome record (also when the act raised).
--
-- Check mode belongs to a task and the tasks it starts (the task context),
-- never to a global: act.checking() reads it; the REPL opens it per line
-- with act.check_scope(true), and `dhsm run --check` for the whole process
-- (act.check_process(), before the playbook is even loaded: its top-level
-- code, its check hook and a finaliser at exit are in check mode too).
-- Inside a check-mode scope it cannot be switched off - a step body cannot
-- make its own effects real.  Plain Lua's own effects (os.execute,
-- io.popen, io.open for writing, io.output, os.remove, os.rename,
-- os.tmpname, os.exit, and dhsm.sys's write_file, mkdir, mkdtemp, lock and
-- history_save, dhsm.audit.set_path) are refused in check mode with an
-- error naming the call, except in dhsm's own folders: the scratch folders
-- it made (act.scratch_dir) and the failed-login guard's lock folder.
--
-- What this does not stop: the debug library, and code that means to go
-- around it (rawset on what it was handed, a C module of its own).  Outside
-- check mode, os.execute and dhsm.proc can still reach an appliance or
-- Azure by other tools (ssh, az); docs/safety.md lists them.
local dhsm = require "dhsm"
local ask = require "dhsm.ask"       -- now, at start: it keeps the terminal's streams as they are
local audit = require "dhsm.audit"
local core = require "dhsm.core"
local sys = require "dhsm.sys"

local M = {}

local usage = dhsm.usage_in("act")

-- plain Lua's, dhsm.sys's and dhsm.audit's own effects, as they were
-- before the gate (its own folders and files are made with these)
local raw = { execute = os.execute, popen = io.popen, open = io.open, output = io.output, remove = os.remove,
  rename = os.rename, tmpname = os.tmpname, exit = os.exit, write_file = sys.write_file, mkdir = sys.mkdir,
  mkdtemp = sys.mkdtemp, lock = sys.lock, history_save = sys.history_save, set_path = audit.set_path }

---------------------------------------------------------------------------
-- check mode: a scope per task context, read through to the parents

-- context table -> {on=, locked=, tally=} of the scope opened there.  Only
-- this file holds it: a context's own fields are anyone's to write.
local scopes = setmetatable({}, { __mode = "k" })

-- The whole process is planning (dhsm run --check): nothing can end it.
-- Its scope, made once (checking() is asked on every write of a file).
local process_scope

local function new_tally()
  return { described = 0, refused = 0, changes = {}, identities = {} }
end

-- A context's parent: its metatable's __index, read past the protection
-- the scheduler puts on it (runtime/loop.c: no task can cut the chain).
local function parent_of(context)
  local mt = debug.getmetatable(context)
  local up = mt and rawget(mt, "__index")
  return type(up) == "table" and up or nil
end

local function scope_of(context)
  while context do
    local s = scopes[context]
    if s then return s end
    context = parent_of(context)
  end
end

-- The scope in force for the running task, or nil.  A planning process
-- (check_process) plans in every task, whatever scope a task opened before.
local function current_scope()
  return process_scope or scope_of(core.context())
end

-- checking() -> true when changes are only described
function M.checking()
  local s = current_scope()
  return s ~= nil and s.on
end

local function locked()
  M.refusal { code = "CheckModeLocked", message = "check mode cannot be switched off inside a check-mode run" }
end

-- check_scope(on) -> a value to close (<close>, or :close()): check mode
-- `on` for this task (and the tasks it starts) until closed, then as it
-- was.  Inside a check-mode scope, switching off is refused; a scope
-- opened inside another counts into the outer one's tally.
function M.check_scope(on)
  if type(on) ~= "boolean" then usage("check_scope: expected true or false, got %s", type(on)) end
  local context = core.context()
  local outer = current_scope()
  if not on and outer and outer.on and outer.locked then locked() end
  local saved = rawget(scopes, context)
  local tally = on and (outer and outer.on and outer.tally or new_tally()) or nil
  scopes[context] = { on = on, locked = on, tally = tally }
  local function close() scopes[context] = saved end
  return setmetatable({ tally = tally, close = close }, { __close = close })
end

-- check_process([product]) -> tally [, write]: the rest of this process
-- plans (dhsm run --check); never undone.  Called before the playbook is
-- loaded.  With `product`, the path of the plan file this run saves
-- (--out), `write(text)` is the one way to write it - once, handed only to
-- the front end that asked: the file a plan is for, not an effect of it.
function M.check_process(product)
  process_scope = process_scope or { on = true, locked = true, tally = new_tally() }
  if product == nil then return process_scope.tally end
  if type(product) ~= "string" or product == "" then usage("check_process: the product is a file path") end
  local written = false
  return process_scope.tally, function(text)
    if written then dhsm.error { kind = "safety", code = "ProductWritten", message = "the plan file is written once" } end
    written = true
    local ok, err = raw.write_file(product, text, tonumber("644", 8))
    if not ok then dhsm.error { kind = "usage", message = ("cannot write %s"):format(tostring(err)) } end
  end
end

-- tally() -> a copy of {described=, refused=} of the check-mode scope in
-- force, or nil outside check mode.
function M.tally()
  local s = current_scope()
  if not (s and s.on and s.tally) then return nil end
  return { described = s.tally.described, refused = s.tally.refused }
end

local function live_tally()
  local s = current_scope()
  return s and s.on and s.tally or nil
end

---------------------------------------------------------------------------
-- dhsm's own folders: plain writes there are not changes to the world

local own = {}            -- real path of a folder -> true

-- The real path a write to `path` lands on (links followed), or nil.
local function landing(path)
  if type(path) ~= "string" or path == "" or path:find("%z") then return nil end
  local real = sys.realpath(path)
  if real then return real end
  local dir, name = path:match("^(.*)/([^/]+)$")
  if not dir then dir, name = ".", path end
  local parent = sys.realpath(dir == "" and "/" or dir)
  if not parent or name == ".." or name == "." then return nil end
  -- a name that is there but does not resolve is a dangling link: where a
  -- write through it lands cannot be told from here
  for _, entry in ipairs(sys.readdir(parent) or {}) do
    if entry == name then return nil end
  end
  return parent .. "/" .. name
end

function M.is_private(path)
  local p = landing(path)
  if not p then return false end
  for dir in pairs(own) do
    if p == dir or p:sub(1, #dir + 1) == dir .. "/" then return true end
  end
  return false
end

-- scratch_dir(prefix) -> path, closer: a new folder (0700, under $TMPDIR
-- or /tmp) that is dhsm's own - written to in check mode too - removed
-- with its files when closer is closed (dhsm.util.scratch_dir).
function M.scratch_dir(prefix)
  if prefix ~= nil and (type(prefix) ~= "string" or not prefix:match("^[%w%-_%.]+$") or prefix:find("..", 1, true)) then
    usage("scratch_dir: the prefix is a name (letters, digits, '-', '_', '.'), got %s", tostring(prefix))
  end
  local dir = assert(raw.mkdtemp(prefix))
  local real = sys.realpath(dir) or dir
  own[real] = true
  return dir, setmetatable({}, { __close = function()
    for _, name in ipairs(sys.readdir(dir) or {}) do raw.remove(dir .. "/" .. name) end
    raw.remove(dir)
    own[real] = nil
  end })
end

---------------------------------------------------------------------------
-- refusals and descriptions

-- counted(err) -> err: a safety refusal met in check mode is a refusal of
-- the plan's too, even when a body catches it (the closing line counts it);
-- each error once.
local seen = setmetatable({}, { __mode = "k" })
function M.counted(err)
  local t = live_tally()
  if t and dhsm.error.is(err, "safety") and not seen[err] then
    seen[err] = true
    t.refused = t.refused + 1
  end
  return err
end

-- refusal{code=, message=, details=}: raise a safety refusal of a change,
-- counted as refused in a plan even when a body catches it - the one way
-- a rule says no (the gate's rules, the login guard, commands dhsm will not send).
function M.refusal(t)
  t.kind = "safety"
  error(M.counted(dhsm.error.new(t)), 0)
end

-- refuse(call, detail): an effect named `call` that check mode cannot
-- describe (plain Lua's, an interactive process): refused, and counted.
function M.refuse(call, detail)
  local shown = ("%s%s"):format(call, detail and (" (" .. detail .. ")") or "")
  audit.write { action = "check.refused", outcome = "refused", detail = call }
  -- shown where it happened, in the plan too: a body that catches the error still had it refused
  local show = core.context().refused
  if show then show(shown) else io.stderr:write("refused ", shown, "\n") end
  M.refusal { code = "CheckModeRefused",
    message = ("check mode: refusing %s: it could change something outside dhsm, and a plan changes nothing")
      :format(shown) }
end

-- What an intent or outcome record keeps of the description: its start
-- (a PUT's body may be kilobytes; fields such as body_sha256 tell it apart).
local WHAT_KEPT = 400

-- The change's records: its kind, action, target and fields, never a secret.
local function record(change, outcome, extra)
  local what = #change.what > WHAT_KEPT and (change.what:sub(1, WHAT_KEPT) .. "...") or change.what
  local r = { action = change.audit or (change.kind .. "." .. tostring(change.action)),
    target = change.where or change.target, outcome = outcome, kind = change.kind, what = what }
  for k, v in pairs(change.fields or {}) do r[k] = v end
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

-- describe(change): in check mode, the change as the plan shows it.
local function describe(change)
  local t = live_tally()
  if t then
    t.described = t.described + 1
    t.changes[#t.changes + 1] = { kind = change.kind, action = change.action, target = change.target,
      where = change.where, what = change.what }
    local planned = M.identity(change)          -- as a saved plan holds it (dhsm.play.plans)
    planned.destructive = change.destructive == true or nil
    t.identities[#t.identities + 1] = planned
  end
  local r = record(change, "planned", { action = "check.would", change = change.audit
    or (change.kind .. "." .. tostring(change.action)) })
  r.what = change.what                             -- the plan's line, whole
  audit.write(r)
  local show = core.context().would
  if show then show(change.what) else io.stderr:write("would ", change.what, "\n") end
end

-- planned(fn) -> true when this check-mode scope already described a
-- change for which fn(change) is true (a rule reads it: a group whose HSMs
-- the plan deletes first is empty by the time its own DELETE would go).
function M.planned(fn)
  local t = live_tally()
  for _, c in ipairs(t and t.changes or {}) do
    if fn({ kind = c.kind, action = c.action, target = c.target, where = c.where, what = c.what }) then return true end
  end
  return false
end

---------------------------------------------------------------------------
-- confirmation: the process's policy, and what a confirmed step covers

-- The front end says once, before any code of the user's runs, whether
-- --yes was given; nothing a runbook sets in its context changes it.
-- It also says how a destructive change is confirmed where no terminal
-- can ask (no_terminal): the advice its refusals print, typeable there.
local policy, no_terminal_advice

function M.confirm_policy(yes, no_terminal)
  if policy ~= nil then
    dhsm.error { kind = "safety", code = "PolicySet", message = "the confirmation policy is set once, by dhsm's front end" }
  end
  policy = yes == true
  no_terminal_advice = no_terminal
end

-- no_terminal() -> how to confirm without a terminal, in the front end's words
function M.no_terminal()
  return no_terminal_advice or "pass --yes to confirm in advance"
end

-- policy() -> true when --yes answers the questions in advance
function M.policy()
  return policy == true
end

-- What a confirmed destructive step covers: context -> its target.  Only
-- the playbook runner, which claims the key when it is loaded (before any
-- user code runs: dhsm.cli loads it with the safety modules), may set it.
local covers = setmetatable({}, { __mode = "k" })
local runner_key

function M.runner_key()
  if runner_key ~= nil then
    dhsm.error { kind = "safety", code = "RunnerKeyTaken", message = "the playbook runner's key is already taken" }
  end
  runner_key = {}
  return runner_key
end

-- cover(key, target) -> closer: the changes to `target` made by this task
-- (and its children) until closed are covered by the step's confirmation.
function M.cover(key, target)
  if key == nil or key ~= runner_key then
    dhsm.error { kind = "safety", code = "NotTheRunner", message = "only the playbook runner covers a confirmed step's target" }
  end
  local context = core.context()
  local saved = rawget(covers, context)
  covers[context] = target
  return setmetatable({}, { __close = function() covers[context] = saved end })
end

local function covered(target)
  local context = core.context()
  while context do
    local t = covers[context]
    if t ~= nil then return t == target end
    context = parent_of(context)
  end
  return false
end

-- The operator's word for a destructive change.
local function confirm(change)
  if covered(change.target) then
    audit.write(record(change, "covered by the confirmed step", { action = "confirm" }))
    return
  end
  local hook = dhsm.context().before_prompt        -- a live progress line clears itself
  ask.confirm { target = change.target, detail = change.what, yes = M.policy(),
    before_prompt = hook,
    question = ("%s is destructive. Type %s to go on: "):format(change.what, change.target),
    no_terminal = ("%s is destructive (%s) and there is no terminal to confirm it on; nothing was done "
      .. "(%s)"):format(change.what, change.target, M.no_terminal()),
    mismatch = ("not confirmed: %s was not done"):format(change.what) }
end

---------------------------------------------------------------------------
-- approved plans: a run held to the changes a reviewer approved

-- identity(change) -> {kind=, action=, target=, where=, what=, fields=}:
-- what a planned and a sent change are compared by.  A value the change
-- makes afresh each time (a correlation id; change.generated names such
-- fields) is compared by its role, never by its value; secrets never
-- reach a change's fields at all.
-- The run's own id (a name a playbook gives what it makes: provision's
-- tags) is compared by its role too: the plan's run and the run applying
-- it are two runs.
local function run_named(v)
  local run = core.context().run
  if type(v) ~= "string" or type(run) ~= "string" or run == "" then return v end
  return (v:gsub(run:gsub("%p", "%%%0"), "<run>"))
end

function M.identity(change)
  local generated = {}
  for _, name in ipairs(change.generated or {}) do generated[name] = true end
  local fields
  for k, v in pairs(change.fields or {}) do
    fields = fields or {}
    fields[k] = generated[k] and ("<" .. k .. ">") or run_named(v)
  end
  return { kind = change.kind, action = change.action, target = change.target, where = run_named(change.where),
    what = run_named(change.what), fields = fields }
end

local function same_change(planned, c)
  local util = require "dhsm.util"
  return planned.kind == c.kind and tostring(planned.action) == tostring(c.action) and planned.target == c.target
    and planned.where == c.where and planned.what == c.what and util.same(planned.fields or {}, c.fields or {})
end

-- The host's plan policy (dhsm.plan.policy) and the plan this process
-- applies, said once by the front end before any code of the user's runs.
local plan_rules, applying, plan_said = nil, nil, false

-- plan_policy(policy | nil [, applied]): applied = {digest=, changes=,
-- used = {index=true} (a resumed run's changes already sent), signers =
-- {fingerprint...}} - the approved plan this run is held to.
function M.plan_policy(policy, applied)
  if plan_said then
    dhsm.error { kind = "safety", code = "PolicySet", message = "the plan policy is set once, by dhsm's front end" }
  end
  plan_said, plan_rules = true, policy or nil
  if applied then
    applying = { digest = applied.digest, changes = applied.changes, used = applied.used or {},
      signers = applied.signers or {}, playbook = applied.playbook }
  end
end

-- plans() -> the policy in force (or nil), the plan applied (or nil)
function M.plans()
  return plan_rules, applying and { digest = applying.digest, playbook = applying.playbook,
    signers = table.move(applying.signers, 1, #applying.signers, 1, {}) } or nil
end

-- plan_refusal(code, message [, new_plan]): a refusal of the plan stage,
-- audited with the plan applied and its signers; `new_plan` (true when a
-- plan is applied here) says the way on is a new plan (dhsm.play.resume).
function M.plan_refusal(code, message, new_plan)
  if new_plan == nil then new_plan = applying ~= nil end
  audit.write { action = "plan.refused", outcome = "refused", code = code, plan = applying and applying.digest,
    signers = applying and applying.signers, detail = message }
  M.refusal { code = code, message = message, details = new_plan and { new_plan = true } or nil }
end
local plan_refusal = M.plan_refusal

-- plan_way(playbook) -> how a change goes under the policy: the three
-- commands of two-person control, for `playbook` (or PLAYBOOK).
function M.plan_way(playbook)
  return ("'dhsm run %s ... --check --out PLAN.json --key KEY', 'dhsm plan approve PLAN.json --key KEY' by %d other "
    .. "operator(s), then 'dhsm run --plan PLAN.json'"):format(playbook or "PLAYBOOK", plan_rules and plan_rules.approvals or 1)
end

-- The planned change this one is, by its target's order: the next one the
-- plan holds for the target, or (a retry, a resumed run's resend) one
-- already sent.  Anything else stops the run before it is sent.
local function planned_index(change)
  local c, first = M.identity(change), nil
  for i, p in ipairs(applying.changes) do
    if p.target == c.target then
      if applying.used[i] and same_change(p, c) then return i, true end
      if not applying.used[i] and not first then first = i end
    end
  end
  if first and same_change(applying.changes[first], c) then return first, false end
  local expected = first and applying.changes[first].what
  plan_refusal(first and "EstateChanged" or "NotInPlan", first
    and ("the estate changed since the plan was approved: the plan's next change to %s is '%s', the run now "
      .. "sends '%s'; stopped before sending it (nothing outside the plan is sent: make a new plan)")
      :format(c.target, expected, c.what)
    or ("the estate changed since the plan was approved: '%s' is not in the plan (it holds nothing more for %s); "
      .. "stopped before sending it (make a new plan)"):format(c.what, c.target))
end

-- plan_gate(change) -> fields for the intent record: a run applying a plan
-- sends only its changes; under a policy without one, a destructive change
-- is refused whatever route sent it (run, exec, the REPL; --yes is no approval).
local function plan_gate(change)
  if applying then
    local i, again = planned_index(change)
    applying.used[i] = true
    return { plan = applying.digest, plan_change = i, plan_retry = again or nil }
  end
  if plan_rules and plan_rules.destructive_changes and change.destructive then
    plan_refusal("PlanRequired", ("%s is destructive, and this host's policy (%s) lets a destructive change go only "
      .. "from an approved plan: %s"):format(change.what, tostring(plan_rules.source), M.plan_way()))
  end
end

---------------------------------------------------------------------------
-- the gate

local KINDS = { azure = true, luna = true, proc = true, pkcs11 = true, file = true, login = true }

local function check_change(change)
  if type(change) ~= "table" then usage("change: expected a description table, got %s", type(change)) end
  if not KINDS[change.kind] then usage("change: kind must be azure, luna, proc, pkcs11, file or login, got %s",
    tostring(change.kind)) end
  if type(change.target) ~= "string" or change.target == "" then
    usage("change: target must be the name of what is changed, got %s", tostring(change.target))
  end
  if type(change.what) ~= "string" or change.what == "" then usage("change: what must describe the change") end
  if change.action == nil then usage("change: action is required (method, command or operation)") end
end

-- The outcome record's word (and fields) for what the act gave.
local function outcome_of(change, ok, ...)
  if not ok then
    local e = dhsm.error.normalize((...))
    local word = e.status and ("%s %s"):format(tostring(e.status), tostring(e.code)) or ("error " .. tostring(e.code or e.kind))
    return word, { request_id = e.request_id or (type(e.details) == "table" and e.details.request_id or nil),
      attempts = e.attempts }
  end
  if change.outcome then
    local word, extra = change.outcome(...)
    return tostring(word), extra
  end
  return "ok"
end

-- change(change, fn) -> fn(change)'s results, or in check mode `planned`'s
function M.change(change, fn)
  check_change(change)
  if type(fn) ~= "function" then usage("change: expected the act as a function") end
  if change.rule then
    local ok, err = pcall(change.rule, change)
    if not ok then error(M.counted(err), 0) end
  end
  if M.checking() then
    describe(change)
    if type(change.planned) == "function" then return change.planned(change) end
    if change.planned ~= nil then return change.planned end
    return { check = true, would = change.what }
  end
  local under_plan = plan_gate(change)
  if change.destructive then confirm(change) end
  audit.write(record(change, "sending", under_plan))
  audit.sync()
  local t0 = dhsm.now()
  local r = table.pack(pcall(fn, change))
  local word, extra = outcome_of(change, table.unpack(r, 1, r.n))
  extra = extra or {}
  extra.duration_ms = (dhsm.now() - t0) * 1000
  audit.write(record(change, word, extra))
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end

-- write_file(path, text [, {mode=, what=}]): a file written for someone
-- else to read (Chrystoki.conf, a Prometheus textfile, a playbook's
-- output), atomically (temp file + rename), through the gate.
function M.write_file(path, text, opts)
  opts = opts or {}
  if type(path) ~= "string" or path == "" then usage("write_file: expected a path, got %s", tostring(path)) end
  if type(text) ~= "string" then usage("write_file: expected the text to write, got %s", type(text)) end
  return M.change({ kind = "file", action = "write", target = path, fields = { bytes = #text },
    what = ("write %s (%d bytes%s)"):format(path, #text, opts.what and (", " .. opts.what) or "") }, function()
    local ok, err = raw.write_file(path, text, opts.mode or tonumber("644", 8))
    if not ok then dhsm.error { kind = "usage", message = ("cannot write %s"):format(tostring(err)) } end
  end)
end

---------------------------------------------------------------------------
-- plain effects, refused in check mode

-- A write mode of io.open ("w", "a", "r+", "wb"...).
local function writes(mode)
  return type(mode) == "string" and mode:find("[wa+]") ~= nil
end

local function guarded(call, fn, when)
  return function(...)
    if M.checking() and when(...) then M.refuse(call, (...) ~= nil and tostring((...)):sub(1, 120) or nil) end
    return fn(...)
  end
end

local function always() return true end
local function outside_own(path) return not M.is_private(path) end

os.execute = guarded("os.execute", raw.execute, always)
io.popen = guarded("io.popen", raw.popen, always)
io.open = guarded("io.open for writing", raw.open, function(path, mode)
  return writes(mode) and not M.is_private(path)
end)
io.output = guarded("io.output to a file", raw.output, function(f)
  return type(f) == "string" and not M.is_private(f)
end)
os.remove = guarded("os.remove", raw.remove, outside_own)
os.rename = guarded("os.rename", raw.rename, function(from, to)
  return not (M.is_private(from) and M.is_private(to))
end)
os.tmpname = guarded("os.tmpname", raw.tmpname, always)
os.exit = guarded("os.exit", raw.exit, always)
sys.write_file = guarded("dhsm.sys.write_file", raw.write_file, outside_own)
sys.mkdir = guarded("dhsm.sys.mkdir", raw.mkdir, outside_own)
sys.mkdtemp = guarded("dhsm.sys.mkdtemp", raw.mkdtemp, always)
sys.lock = guarded("dhsm.sys.lock", raw.lock, outside_own)
sys.history_save = guarded("dhsm.sys.history_save", raw.history_save, outside_own)
audit.set_path = guarded("dhsm.audit.set_path", function(path)
  -- checked here, not by C's "bad argument #1 to 'fn'"
  require("dhsm.schema").argument("audit.set_path", "path", path, { type = "string",
    expect = "a file path (nil: the default again)" })
  return raw.set_path(path)
end, always)

-- The failed-login guard's lock files and the REPL's history are dhsm's
-- own (logins.json is not: clearing a count is a change, refused in check
-- mode like any other write).  The system guard folder is an
-- administrator's to make (dhsm.guard says how); a test's is made here.
do
  local state = os.getenv("XDG_STATE_HOME")
  if not state or state == "" then state = (os.getenv("HOME") or ".") .. "/.local/state" end
  local guard = require("dhsm.paths").guard_dir()
  local locks = guard .. "/locks"
  if guard ~= require("dhsm.paths").SYSTEM_GUARD_DIR or sys.stat(guard) then raw.mkdir(locks, tonumber("2770", 8)) end
  for _, path in ipairs { locks, state .. "/dhsm/history" } do
    local real = landing(path)
    if real then own[real] = true end
  end
end

-- Native code and precompiled chunks are not loaded in check mode: what
-- they would do cannot be described, and a binary chunk is not checked.
package.loadlib = guarded("package.loadlib", package.loadlib, always)
for i = 4, 5 do        -- the C searchers of require (runtime/state.c: dhsm's own, preload, Lua, C, C root)
  local search = package.searchers[i]
  if search then
    package.searchers[i] = function(name)
      if M.checking() then return "\n\tno C module in check mode (dhsm.act)" end
      return search(name)
    end
  end
end
raw.load = load
load = function(...)         -- its arguments passed as given: an absent env is not a nil one
  if not M.checking() then return raw.load(...) end
  local args, n = { ... }, select("#", ...)
  local chunk, name, mode = args[1], args[2], args[3]
  if (type(chunk) == "string" and chunk:sub(1, 1) == "\27") or (type(mode) == "string" and mode:find("b")) then
    M.refuse("load of a binary chunk", type(name) == "string" and name or nil)
  end
  args[3] = "t"                                     -- a reader function's pieces: text only
  return raw.load(table.unpack(args, 1, math.max(n, 3)))
end

-- loadfile and dofile: text only in check mode, as load
raw.loadfile, raw.dofile = loadfile, dofile
loadfile = function(...)
  if not M.checking() then return raw.loadfile(...) end
  local args, n = { ... }, select("#", ...)
  local f = type(args[1]) == "string" and raw.open(args[1], "rb")
  local first = f and f:read(1)
  if f then f:close() end
  if first == "\27" or (type(args[2]) == "string" and args[2]:find("b")) then
    M.refuse("loadfile of a binary chunk", tostring(args[1]))
  end
  args[2] = "t"
  return raw.loadfile(table.unpack(args, 1, math.max(n, 2)))
end
dofile = function(name)
  if not M.checking() then return raw.dofile(name) end
  return assert(loadfile(name, "t"))()
end

-- Writes on a file handle opened before check mode began (or on the
-- default output set then) land outside: refused like the open would be.
do
  local methods = getmetatable(io.stdout).__index
  local raw_write, raw_io_write, raw_io_output = methods.write, io.write, io.output
  local destination = setmetatable({}, { __mode = "k" })      -- handle -> the path it writes to
  local open = io.open
  io.open = function(path, mode, ...)
    local f, err, code = open(path, mode, ...)
    if f and writes(mode) then destination[f] = path end
    return f, err, code
  end
  local popen = io.popen
  io.popen = function(cmd, mode, ...)
    local f, err, code = popen(cmd, mode, ...)
    if f and mode == "w" then destination[f] = "the input of '" .. tostring(cmd):sub(1, 80) .. "'" end
    return f, err, code
  end
  local output = io.output
  io.output = function(f)
    local r = output(f)
    if type(f) == "string" then destination[r] = f end
    return r
  end
  local function refuse_write(f)
    local path = destination[f]             -- most writes are to handles not recorded: asked first
    if path and M.checking() and not M.is_private(path) then M.refuse("writing to " .. path) end
  end
  methods.write = function(f, ...)
    refuse_write(f)
    return raw_write(f, ...)
  end
  io.write = function(...)
    refuse_write(raw_io_output())
    return raw_io_write(...)
  end
end

return M
