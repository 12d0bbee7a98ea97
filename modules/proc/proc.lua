-- dhsm.proc: running local tools (lunacm, vtl, openssl ...) without a shell.
--
--   local r = proc.run{ argv = { "vtl", "verify" }, env = { ChrystokiConfigurationPath = dir },
--                       stdin = secret_or_text, cwd = dir, timeout = 30 }
--   --> {status=, signal=, stdout=, stderr=, duration=}; a timeout kills the
--   --  process group and raises a "timeout" error carrying what was captured.
--   proc.run{ argv = { "az", "account", "get-access-token" }, secret_json_field = "accessToken" }
--   --> stdout is a JSON object: its field accessToken is taken out in C as
--   --  .secret (never a Lua string) and .stdout is the rest of it; output
--   --  that is not such an object is withheld (.secret_missing = true).
--   local p <close> = proc.spawn{ argv = { "openssl", "s_client", ... } }
--   p:read_until("CONNECTED", 10); p:write("Q\n"); p:wait(5)
--   proc.lunacm_login{ argv = { lunacm, "-c", "hagroup", "addMember", "-group", "g", "-serialNumber", sn },
--                      password = co_pin, env =, timeout =, allow_destructive_login = }
--   --> the run, with ok= (Command Result : No Error) and code= (the CKR name)
--   proc.run{ argv = { lunacm, "-c", "partition", "init", ... }, stdin = { pw, "\n", ..., "proceed\n" },
--             questions = { "Type 'proceed' to continue, or 'quit' to quit now" } }
--   --> the confirmations lunacm's stdin answers, checked against those its output shows
--   proc.lunacm_slots(opts) --> {{id=, label=, serial=}} (`slot list`)
--   proc.lunacm_groups(opts) --> {{label=, serial=, members={{serial=, status=}}}, retry=, interval=}
--
-- lunacm's exit status is not an interface (Thales documents its return
-- codes as unsupported): every lunacm run, login or not, gets ok= and code=
-- from the `Command Result` line it prints, and nothing here reads .status
-- to decide whether lunacm succeeded.
--
-- Runs happen on the scheduler: many tools can run at once in dhsm.parallel.
-- Secrets go to stdin or env, never argv.  Every run is audited (argv only).
--
-- lunacm's partition logins (role login, role changepw, hagroup createGroup
-- and addMember) count towards the Partition SO's and Crypto Officer's
-- thresholds, so they go through the failed-login guard: lunacm_login
-- finds the partition (`slot list`), reads its attempts left (`role show`)
-- and makes the attempt inside the guard's lock for that partition and
-- role, counted under the partition's serial (dhsm.guard.device) - the key
-- PKCS#11 logins to it are counted under too.  A login on an HA group's
-- virtual slot, and `hagroup synchronize`, log in on every member lunacm
-- reaches: lunacm_login finds the members (`hagroup listGroups`) and their
-- slots and makes one guard attempt for all of them (every member's lock,
-- refused when any member is at its last attempt, recorded on each).
-- run() refuses these logins, however abbreviated; spawn() refuses lunacm
-- (an interactive lunacm could be sent any login), and so does run()
-- without -c (the commands would come on stdin), or with a secret on stdin
-- for a command that does not set a new password.
--
-- lunacm's answers are written ahead on its stdin (it runs over pipes,
-- never interactively: see above), so a confirmation is answered before
-- dhsm can read it.  A run whose stdin says `proceed` names the questions
-- it answers (questions=, as lunacm prints them); after every lunacm run
-- the confirmations its output shows (dhsm.luna.prompts.asked; password
-- and domain prompts aside) must be exactly those, in order, or the call
-- fails with UnexpectedQuestion naming what was asked - with what lunacm
-- did unknown, since the answer was already there.
--
-- lunacm and vtl are recognised by what runs, not by argv[1]'s name alone:
-- a name starting lunacm (vtl), the tool's own file through any link, or a
-- copy of it under another name.  Any other program whose arguments name
-- lunacm or vtl (a shell, an interpreter, env, nice, find -exec, the
-- dynamic loader ...) is refused: run the tool itself.  What this cannot
-- see: a script file that runs the tool, a program that builds the tool's
-- name as it runs, a changed copy (code the operator wrote; docs/safety.md,
-- "What dhsm cannot stop").
local act = require "dhsm.act"
local dhsm = require "dhsm"
local commands = require "dhsm.guard.commands"
local guard = require "dhsm.guard"
local parse = require "dhsm.luna.parse"
local prompts = require "dhsm.luna.prompts"
local schema = require "dhsm.schema"
local secret = require "dhsm.secret"
local sys = require "dhsm.sys"
local util = require "dhsm.util"
local core = util.native(select(3, ...), "dhsm.proc.core")

local M = {}

local usage = dhsm.usage_in("proc")

local function command_line(argv)
  local parts = {}
  for i, a in ipairs(argv) do parts[i] = tostring(a) end
  return table.concat(parts, " ")
end

-- What lunacm said of its command (ok=, code=), read from its output,
-- never from its exit status.
local function lunacm_result(r)
  local said = parse.lunacm_result(r.stdout)
  r.ok, r.code = said.ok, said.code
  return r
end

-- The confirmations lunacm's output shows, its password and domain
-- prompts aside (the secrets on its stdin answer those).
local function confirmations(output)
  local out = {}
  for _, q in ipairs(prompts.asked(output or "")) do
    if q.form.kind ~= "password" and q.form.kind ~= "domain" then out[#out + 1] = q.question end
  end
  return out
end

local function quoted(list)
  local out = {}
  for i, q in ipairs(list) do out[i] = ("%q"):format(q) end
  return #out > 0 and table.concat(out, ", ") or "nothing"
end

-- The confirmations lunacm asked must be those its stdin answers.
local function check_questions(r, argv, expected)
  local asked = confirmations(r.stdout)
  if util.same(asked, expected) then return end
  dhsm.error { kind = "luna", code = "UnexpectedQuestion", details = { asked = asked, expected = expected, output = r.stdout },
    message = ("%s asked %s, where the call answers %s; its answers were on its stdin before the question was read, "
      .. "so what it did is unknown: check before repeating"):format(command_line(argv), quoted(asked), quoted(expected)) }
end

local ARGV = { type = "table", required = true, expect = "a list of strings, the program first" }
local SECONDS = { type = "number", min = 0, expect = "seconds (a number >= 0)" }
local SPAWN_OPTIONS = { argv = ARGV, env = { type = "table" }, cwd = { type = "string" } }
local RUN_OPTIONS = util.merged(SPAWN_OPTIONS, { timeout = SECONDS,
  stdin = { type = { "string", "secret", "table" } }, secret_json_field = { type = "string" },
  questions = { type = "table", expect = "a list of lunacm's confirmations, as it prints them" } })
local LUNACM_OPTIONS = util.merged(SPAWN_OPTIONS, { timeout = SECONDS, password = { type = "secret" },
  allow_destructive_login = { type = "boolean" } })

---------------------------------------------------------------------------
-- what a command changes: dhsm's own table of commands that change nothing

local function program(argv)
  return tostring(argv[1] or ""):match("[^/]*$"):lower()
end

local function word(argv, i)
  return tostring(argv[i] or ""):lower()
end

-- ssh-keygen's signature commands that read a key and stdin and write to
-- stdout only (a plan's signatures, dhsm.plan): -Y sign with no file
-- operand (with one it writes FILE.sig), -Y verify, find-principals and
-- check-novalidate, and -l (a key's fingerprint).  Each option is one of
-- those that take a value, or -q/-U; anything else - a file operand, an
-- option of key generation or conversion - is a change.
local SSH_KEYGEN_VERBS = { sign = true, verify = true, ["find-principals"] = true, ["check-novalidate"] = true }
local SSH_KEYGEN_VALUED = { ["-f"] = true, ["-n"] = true, ["-s"] = true, ["-I"] = true, ["-O"] = true, ["-E"] = true }
local SSH_KEYGEN_FLAGS = { ["-q"] = true, ["-U"] = true }

local function options_only(argv, from)
  local i = from
  while i <= #argv do
    local a = tostring(argv[i])
    if SSH_KEYGEN_VALUED[a] and argv[i + 1] ~= nil then i = i + 2
    elseif SSH_KEYGEN_FLAGS[a] then i = i + 1
    else return false end
  end
  return true
end

local function ssh_keygen_reads(argv)
  if argv[2] == "-Y" then return SSH_KEYGEN_VERBS[tostring(argv[3])] == true and options_only(argv, 4) end
  return argv[2] == "-l" and options_only(argv, 3)
end

-- Programs whose read-only commands dhsm knows, each with the test of one
-- argv.  Anything else is a change: the gate describes it in check mode,
-- records its intent before it runs.  A caller cannot add to this table.
local READ_ONLY = {
  lunacm = function(argv)
    local words = commands.lunacm_words(argv)
    return words ~= nil and (commands.lunacm(words)) == "read"
  end,
  vtl = function(argv)
    local sub = word(argv, 2)
    return sub == "verify" or sub == "listservers" or sub == "listslots" or sub == "show"
  end,
  az = function(argv)
    return word(argv, 2) == "version" or word(argv, 2) == "account"
      and (word(argv, 3) == "get-access-token" or word(argv, 3) == "show")
  end,
  ["ssh-keygen"] = ssh_keygen_reads,
}
local VTL_DESTRUCTIVE = { createcert = true }     -- a new key pair every appliance must register again

-- $PATH as it was when dhsm started, before any code of the user's ran:
-- what a bare tool name means is judged by it, not by a $PATH changed since.
local START_PATH = os.getenv("PATH") or ""

-- The real file a program name runs: a path as given (relative to cwd when
-- the child starts there), a bare name through $PATH.
local function resolve(name, cwd)
  if type(name) ~= "string" or name == "" then return nil end
  if name:find("/", 1, true) then
    if name:sub(1, 1) ~= "/" and cwd then name = cwd .. "/" .. name end
    return sys.realpath(name)
  end
  for dir in START_PATH:gmatch("[^:]+") do
    local st = sys.stat(dir .. "/" .. name)
    if st and st.type == "file" then return sys.realpath(dir .. "/" .. name) end
  end
end

-- Environment a read-only tool may be given: its client install's, nothing
-- that changes which program or code runs (PATH, LD_PRELOAD ...).
local TOOL_ENV = { ChrystokiConfigurationPath = true, SOFTHSM2_CONF = true }

-- Whether the run is the tool `name` itself: argv[1] is what $PATH gave
-- for it at start, or the path the front end's inventory names - not any
-- file called so - run with no environment that could change what runs.
local function genuine(opts, name)
  for k in pairs(type(opts.env) == "table" and opts.env or {}) do
    if not TOOL_ENV[k] then return false end
  end
  local real = resolve(opts.argv[1], opts.cwd)
  if not real then return false end
  local known = require("dhsm.inventory").trusted_tools(name)
  known[#known + 1] = name
  for _, k in ipairs(known) do
    if resolve(k) == real then return true end
  end
  return false
end

---------------------------------------------------------------------------
-- lunacm and vtl, by whatever route they are started

-- The real files of client tool `name`: what $PATH gave for it at start and
-- the paths the front end's inventory names.
local function tool_files(name)
  local out = {}
  local known = require("dhsm.inventory").trusted_tools(name)
  known[#known + 1] = name
  for _, k in ipairs(known) do out[#out + 1] = resolve(k) end
  return out
end

-- Whether the file `real` is one of tool `name`'s files or a copy of one.
local function is_tool_file(real, name)
  local st = sys.stat(real)
  for _, f in ipairs(tool_files(name)) do
    if f == real then return true end
    local fst = sys.stat(f)
    if st and fst and st.size == fst.size and util.read_file(f) == util.read_file(real) then return true end
  end
  return false
end

local TOOLS = { "lunacm", "vtl" }

-- Whether a program name names tool `name` ("lunacm64.exe" does lunacm).
local function named(base, name)
  base = base:lower()
  return base:find("^" .. name) ~= nil and (name == "lunacm" or base:find("^vtl%f[%W]") ~= nil)
end

-- tool_of(argv [, cwd]) -> "lunacm" | "vtl" | nil: the tool argv[1] runs,
-- by its name, or by the file it is (a link, or a copy under another name).
local function tool_of(argv, cwd)
  if type(argv) ~= "table" or type(argv[1]) ~= "string" then return nil end
  for _, name in ipairs(TOOLS) do
    if named(program(argv), name) then return name end
  end
  local real = resolve(argv[1], cwd)
  if not real then return nil end
  for _, name in ipairs(TOOLS) do
    if named(real:match("[^/]*$"), name) or is_tool_file(real, name) then return name end
  end
end

local function is_lunacm(argv, cwd)
  return tool_of(argv, cwd) == "lunacm"
end

-- Whether one call's options (a snapshot: its argv cannot change) run
-- lunacm, worked out once a call: tool_of reads files.
local runs_lunacm = util.weak_memo(function(opts) return is_lunacm(opts.argv, opts.cwd) end)

-- The real file a bare word runs through any of the PATH lists given.
local function on_paths(word, paths)
  for _, list in ipairs(paths) do
    for dir in list:gmatch("[^:]+") do
      local st = sys.stat(dir .. "/" .. word)
      if st and st.type == "file" then return sys.realpath(dir .. "/" .. word) end
    end
  end
end

-- The tool a text names, if any: a word whose last part is a tool's name,
-- or that is - as a path, or as a bare name through `paths` - one of the
-- tool's files, a link to one or a copy.
local function names_tool(text, cwd, paths)
  for token in text:gmatch("[^%s;&|<>()`'\"=]+") do
    local base = token:match("[^/]*$")
    for _, name in ipairs(TOOLS) do
      if named(base, name) then return name end
    end
    local real
    if token:find("/", 1, true) then real = resolve(token, cwd) elseif base ~= "" then real = on_paths(token, paths) end
    for _, name in ipairs(real and TOOLS or {}) do
      if is_tool_file(real, name) then return name end
    end
  end
end

-- A program other than lunacm or vtl themselves whose arguments name one
-- of them is refused: a shell, an interpreter, env, nice, setarch, find
-- -exec, the dynamic loader ... would start it where dhsm cannot see the
-- command, and lunacm's logins must go through the guard
-- (proc.lunacm_login), which sees only lunacm run as itself.  A bare word
-- is looked up in $PATH as it was at start, in the PATH given in env= and
-- in any PATH= word.  A script file's contents are not read (a comment
-- naming vtl is no command; what a script runs cannot be told from its
-- text anyway).  dhsm itself may be named: a dhsm child applies the same
-- guard (the host's folder, unless its environment names another).
local SELF = sys.realpath("/proc/self/exe")

local function refuse_tool_named(argv, cwd, env)
  if tool_of(argv, cwd) then return end
  if SELF and resolve(argv[1], cwd) == SELF then return end      -- dhsm itself: the child keeps the same rules
  local paths = { START_PATH, type(env) == "table" and type(env.PATH) == "string" and env.PATH or "" }
  for i = 2, #argv do
    local path_list = tostring(argv[i]):match("PATH=(.*)$")
    if path_list then paths[#paths + 1] = path_list end
  end
  for i = 2, #argv do
    local found = names_tool(tostring(argv[i]), cwd, paths)
    if found then
      act.refusal { code = "AroundTheRules",
        message = ("refusing '%s': it would start %s through %s, where dhsm cannot see the command it runs; run %s "
          .. "itself (argv[1] = the tool, env= for its environment), so that its logins go through the "
          .. "failed-login guard (proc.lunacm_login)"):format(command_line(argv), found, program(argv), found) }
    end
  end
end

-- read_only(argv [, {env=, cwd=}]) -> true when dhsm knows the command to
-- change nothing (its own table, and the tool itself)
function M.read_only(argv, opts)
  schema.argument("proc.read_only", "argv", argv, ARGV)
  schema.argument("proc.read_only", "opts", opts, { type = "table" })
  local name = tool_of(argv, opts and opts.cwd) or program(argv)
  local test = READ_ONLY[name]
  return test ~= nil and test(argv) == true
    and genuine({ argv = argv, env = opts and opts.env, cwd = opts and opts.cwd }, name)
end

-- A refused command is a refused change: a plan counts it even when a body catches it (dhsm.act).
local function refuse(code, fmt, ...)
  act.refusal { code = code, message = fmt:format(...) }
end

-- Remote shells and copies are not run here at all: an appliance is
-- reached through dhsm.luna only, where its rules (the login guard, the
-- reboot fix, the network path) hold, and which host an ssh command line
-- reaches cannot be told from its words (aliases in ~/.ssh/config,
-- localhost, ssh:// URLs, -oHostName=).
local REMOTE = { ssh = true, scp = true, sftp = true, sshpass = true, ["ssh-copy-id"] = true, rsync = true,
  slogin = true, ["ssh-argv0"] = true, autossh = true, dbclient = true, mosh = true }

local function refuse_remote(argv, cwd)
  local real = resolve(argv[1], cwd)              -- slogin is a link to ssh: what runs counts
  if not REMOTE[program(argv)] and not (real and REMOTE[real:match("[^/]*$"):lower()]) then return end
  act.refusal { code = "AroundTheRules",
    message = ("refusing '%s': dhsm.proc runs no remote shell or copy - an appliance is reached through dhsm.luna, "
      .. "where the login guard, the reboot fix and the network-path rules hold"):format(command_line(argv)) }
end

-- The gate's description of a command that may change something (dhsm.act).
local function change_of(argv, what, cwd)
  local tool = tool_of(argv, cwd)
  local target, destructive, name = program(argv), nil, program(argv)
  if tool == "lunacm" then
    local words = commands.lunacm_words(argv) or {}
    local _, cmd = commands.lunacm(words)
    target, destructive, name = commands.lunacm_target(words), commands.LUNACM_DESTRUCTIVE[cmd], "lunacm " .. cmd
  elseif tool == "vtl" then
    destructive = VTL_DESTRUCTIVE[word(argv, 2)]
    target, name = commands.option(argv, 2, "n", "n") or "vtl", "vtl " .. word(argv, 2)
  end
  local line = command_line(argv)
  return { kind = "proc", action = name, target = target, destructive = destructive, audit = "proc.run",
    what = what or ("run %s"):format(line), fields = { command = line },
    planned = function() return { check = true, would = what or ("run " .. line), ok = true, status = 0,
      stdout = "", stderr = "" } end,
    outcome = function(r)
      if r.ok ~= nil then return r.ok and "No Error" or tostring(r.code or "no Command Result") end
      return "exit " .. tostring(r.status)
    end }
end

-- The run itself, lunacm's word read from its output.
local function execute(opts)
  local r = core.run(opts)
  if runs_lunacm(opts) then
    lunacm_result(r)
    check_questions(r, opts.argv, opts.questions or {})
  end
  return r
end

-- run(opts [, what]): a read-only command is run and audited once; any
-- other passes the gate (`what`: its description, when the caller's says more).
local function run(opts, what)
  schema.options("proc.run", opts, RUN_OPTIONS, true)
  local argv = opts.argv
  if type(argv[1]) ~= "string" or argv[1] == "" then usage("'argv' is empty: give the program, then its arguments") end
  refuse_remote(argv, opts.cwd)
  refuse_tool_named(argv, opts.cwd, opts.env)
  if not M.read_only(argv, opts) then return act.change(change_of(argv, what, opts.cwd), function() return execute(opts) end) end
  local t0 = dhsm.now()
  local ok, r = pcall(execute, opts)
  local outcome = ok and change_of(argv, nil, opts.cwd).outcome(r) or ("error " .. tostring(dhsm.error.normalize(r).code))
  dhsm.audit.write { action = "proc.run", target = tostring(argv[1]), command = command_line(argv),
    outcome = outcome, duration_ms = (dhsm.now() - t0) * 1000 }
  if not ok then error(r, 0) end
  return r
end

---------------------------------------------------------------------------
-- lunacm and the failed-login guard

-- lunacm answers that mean no attempt was made.
local NOT_ATTEMPTED = { CKR_CANCEL = true, CKR_ARGUMENTS_BAD = true, CKR_SLOT_ID_INVALID = true,
  CKR_USER_ALREADY_LOGGED_IN = true, CKR_TOKEN_NOT_PRESENT = true, CKR_PIN_LOCKED = true,
  CKR_FUNCTION_NOT_SUPPORTED = true, CKR_DEVICE_ERROR = true, CKR_USER_TYPE_INVALID = true }

-- Whether lunacm's stdin holds anything it could read as a password: a
-- secret, or text other than blanks and line ends (an empty answer is how
-- a read skips a password prompt).
local function carries_answer(stdin)
  local parts = type(stdin) == "table" and stdin or { stdin }
  for _, v in ipairs(parts) do
    if secret.is(v) or (type(v) == "string" and v:find("%S")) then return true end
  end
  return false
end


-- Whether stdin holds the plain answer `proceed` (a line of its own).
local function says_proceed(stdin)
  for _, v in ipairs(type(stdin) == "table" and stdin or { stdin }) do
    if type(v) == "string" and ("\n" .. v:lower() .. "\n"):find("\n%s*proceed%s*\n") then return true end
  end
  return false
end

-- questions= is a list of strings, for lunacm only; a `proceed` on
-- lunacm's stdin needs it.  (Checked here, not by the schema's list type:
-- its refusal does not name the entry that is wrong.)
local function check_questions_option(opts, lunacm)
  local q = opts.questions
  if q ~= nil and not lunacm then usage("'questions' is for lunacm runs only (its confirmations)") end
  for i, v in ipairs(q or {}) do
    if type(v) ~= "string" then usage("questions[%d]: expected a confirmation as lunacm prints it, got %s", i, type(v)) end
  end
  if lunacm and says_proceed(opts.stdin) and (q == nil or #q == 0) then
    usage("lunacm's stdin answers 'proceed' to a question the call does not name: give questions = { the "
      .. "confirmation as lunacm prints it }, which its output is then checked against")
  end
end

-- check_lunacm(opts) -> nil (not lunacm) | verb, what, role, words
local function check_lunacm(opts)
  local lunacm = runs_lunacm(opts)
  check_questions_option(opts, lunacm)
  if not lunacm then return end
  local words = commands.lunacm_words(opts.argv)
  if not words then
    refuse("UnguardedLogin", "refusing lunacm without -c: it would read its commands from stdin, where a login "
      .. "could not be told apart; give one command after -c")
  end
  local verb, what, role = commands.lunacm(words)
  if not role and carries_answer(opts.stdin) and not commands.LUNACM_NEW_PASSWORD[what] then
    refuse("UnguardedLogin", "refusing an answer on lunacm's stdin for '%s': lunacm could take it as a password "
      .. "(hagroup listGroups logs in to every member with one); logins go through proc.lunacm_login", what)
  end
  return verb, what, role, words
end

-- The caller's options as they are now: what is checked is what runs.  A
-- run yields (lunacm's slot list, a confirmation), and another task could
-- otherwise change argv between the guard's reading and the start.
-- (raw reads: no metamethod of the caller's decides what is copied).
local function raw_copy(t)
  local copy = {}
  for k, v in next, t do copy[k] = v end
  return copy
end

local function snapshot(opts)
  local copy = raw_copy(opts)
  for _, field in ipairs { "argv", "env", "stdin", "questions" } do
    if type(copy[field]) == "table" and not secret.is(copy[field]) then copy[field] = raw_copy(copy[field]) end
  end
  return copy
end

-- run{argv=, stdin=, env=, cwd=, timeout=} -> {status=, signal=, stdout=, stderr=, duration=}
-- (and ok=, code= for lunacm)
function M.run(opts)
  schema.options("proc.run", opts, RUN_OPTIONS, true)
  opts = snapshot(opts)
  local verb = check_lunacm(opts)
  if verb and verb:match("^login") then
    refuse("UnguardedLogin", "refusing '%s': a partition login that only proc.lunacm_login sends, through the "
      .. "failed-login guard", command_line(opts.argv))
  end
  return run(opts)
end

-- spawn{argv=, env=, cwd=} -> process; never lunacm (see above).  What an
-- interactive process will do cannot be described in advance: in check
-- mode a spawn is refused (dhsm.act).
function M.spawn(opts)
  schema.options("proc.spawn", opts, SPAWN_OPTIONS, true)
  opts = snapshot(opts)
  if type(opts) == "table" and is_lunacm(opts.argv, opts.cwd) then
    refuse("UnguardedLogin", "refusing an interactive lunacm: any line written to it could be a login; "
      .. "use proc.run with -c, and proc.lunacm_login for logins")
  end
  refuse_remote(opts.argv, opts.cwd)
  refuse_tool_named(opts.argv, opts.cwd, opts.env)
  if act.checking() then act.refuse("proc.spawn", command_line(opts.argv)) end
  local change = change_of(opts.argv, nil, opts.cwd)
  change.outcome = function() return "started" end
  return act.change(change, function() return core.spawn(opts) end)
end

-- A read-only lunacm command with lunacm_login's env, cwd and timeout.
local function lunacm_read(opts, words, stdin)
  local argv = { opts.argv[1], "-c" }
  for _, w in ipairs(words) do argv[#argv + 1] = w end
  local r = run { argv = argv, env = opts.env, cwd = opts.cwd, timeout = opts.timeout, stdin = stdin }
  if not r.ok then
    dhsm.error { kind = "luna", code = r.code or "NoCommandResult", details = { output = r.stdout },
      message = ("lunacm %s failed: %s"):format(table.concat(words, " "), r.code or "no Command Result line") }
  end
  return r
end

-- slots(opts) -> {{id=, slot=, label=, serial=, ...}} from `lunacm -c slot
-- list` (dhsm.luna.parse.lunacm_slots; id: the slot number as -slot takes it)
function M.lunacm_slots(opts)
  schema.options("proc.lunacm_slots", opts, LUNACM_OPTIONS, true)
  local slots = parse.lunacm_slots(lunacm_read(opts, { "slot", "list" }).stdout)
  for _, s in ipairs(slots) do s.id = tostring(s.slot) end
  return slots
end

-- lunacm_groups(opts) -> {groups = {{label=, serial=, slot=, members = {{serial=, status=, slot=}}}},
--   retry=, interval=, auto_recovery=} from `hagroup listGroups` (its password
-- prompt answered with an empty line: the sync data is not needed)
function M.lunacm_groups(opts)
  schema.options("proc.lunacm_groups", opts, LUNACM_OPTIONS, true)
  return parse.lunacm_groups(lunacm_read(opts, { "hagroup", "listGroups" }, "\n").stdout)
end

-- An HA group's members that lunacm reaches (has a slot for): those its
-- login logs in to.
local function members_of(opts, group)
  local by_serial = {}
  for _, s in ipairs(M.lunacm_slots(opts)) do
    if not s.virtual then by_serial[s.serial] = s end
  end
  local out = {}
  for _, m in ipairs(group.members) do out[#out + 1] = by_serial[m.serial] end
  return out
end

local function group_where(opts, field, value)
  for _, g in ipairs(M.lunacm_groups(opts).groups) do
    if g[field] == value then return g end
  end
end

-- The partitions a lunacm login command logs in to: the one it names with
-- -serialNumber or -slot - every member when that is an HA group's virtual
-- slot - or for synchronize every member of -group.
local function target_slots(opts, words, role)
  if role == "members" then
    local label = commands.option(words, 1, "group", "g")
    if not label then usage("lunacm_login: hagroup synchronize needs -group, so its members' attempts can be counted") end
    local group = group_where(opts, "label", label)
    if not group then usage("lunacm_login: no HA group %s in `lunacm -c hagroup listGroups`", label) end
    return members_of(opts, group)
  end
  local serial = commands.option(words, 1, "serialnumber", "se")
  local slot = commands.option(words, 1, "slot", "sl", "s")
  if serial and slot then
    act.refusal { code = "AmbiguousOption", message = ("lunacm_login: '%s' names the partition twice, by -slot and "
      .. "-serialNumber; name it once, so its attempts are counted where they are made"):format(table.concat(words, " ")) }
  end
  if not serial and not slot then
    usage("lunacm_login: name the partition with -slot or -serialNumber, so its attempts can be counted")
  end
  for _, s in ipairs(M.lunacm_slots(opts)) do
    if (serial and s.serial == serial) or (slot and s.id == slot) then
      if not s.virtual then return { s } end
      local group = group_where(opts, "serial", s.serial)
      if not group then
        act.refusal { code = "DeviceUnknown",
          message = ("lunacm_login: slot %s is HA group %s's virtual slot, but `hagroup listGroups` shows no group "
            .. "with serial %s: its members, each of which the login reaches, cannot be counted"):format(
            s.id, tostring(s.label), tostring(s.serial)) }
      end
      return members_of(opts, group)
    end
  end
  usage("lunacm_login: no slot %s in `lunacm -c slot list`", serial and ("with serial number " .. serial) or slot)
end

-- What `role show` says is left for role on the slot.  A run that fails
-- or a table that does not read raises (the guard then refuses): lunacm
-- shows both counts, so not reading one is never "nothing said".
local function role_left(opts, slot, role)
  local r = run({ argv = { opts.argv[1], "-c", "role", "show", "-slot", slot.id }, env = opts.env,
    cwd = opts.cwd, timeout = opts.timeout })
  if not r.ok then
    dhsm.error { kind = "luna", code = r.code or "NoCommandResult", details = { output = r.stdout },
      message = ("lunacm role show -slot %s failed: the attempts left cannot be read"):format(slot.id) }
  end
  return parse.lunacm_role_show(r.stdout)[role]
end

-- lunacm_login{argv=, password=, env=, cwd=, timeout=, allow_destructive_login=}
function M.lunacm_login(opts)
  schema.options("proc.lunacm_login", opts, LUNACM_OPTIONS, true)      -- a table from here on
  opts = snapshot(opts)
  if opts.stdin ~= nil then usage("lunacm_login: the password is lunacm's only input; stdin= is not taken") end
  refuse_tool_named(opts.argv, opts.cwd, opts.env)
  local verb, what, role, words = check_lunacm(opts)
  if not verb then usage("lunacm_login: argv must run lunacm, got %s", tostring(type(opts.argv) == "table" and opts.argv[1])) end
  if verb == "login:unsupported" then
    refuse("UnsupportedLogin", "refusing '%s': it logs in to an unknown role, which the failed-login guard "
      .. "cannot count", what)
  end
  if not role then usage("lunacm_login: '%s' is not a login; use proc.run", what) end
  if not secret.is(opts.password) then usage("lunacm_login: password must be a secret (secret.env/file/prompt)") end
  local slots = target_slots(opts, words, role)
  if #slots == 0 then
    dhsm.error { kind = "luna", code = "NoMemberReached",
      message = ("lunacm %s: no member of the group has a slot (none reachable)"):format(what) }
  end
  local devices, slot_of, names = {}, {}, {}
  for i, s in ipairs(slots) do
    devices[i] = guard.device("partition", s.serial, s.label)
    slot_of[devices[i].key], names[i] = s, devices[i].label
  end
  local guarded = role == "members" and "co" or role
  return guard.attempt(devices, guarded, opts, {
    device_left = function(dev) return role_left(opts, slot_of[dev.key], guarded) end,
    try = function()
      local r = run({ argv = opts.argv, env = opts.env, cwd = opts.cwd, timeout = opts.timeout,
        stdin = { opts.password, "\n" } }, ("log in as %s on partition%s %s (lunacm %s)"):format(
          guard.ROLE_NAMES[guarded], #names > 1 and "s" or "", table.concat(names, ", "), what))
      if r.check then return nil, r end
      if r.ok then return true, r end
      if NOT_ATTEMPTED[r.code] then return nil, r end
      return false, r                         -- a wrong PIN, or an answer we cannot read: counted
    end,
  })
end

-- What read_until read past its match, per process (a userdata has no fields).
local pending = setmetatable({}, { __mode = "k" })

-- p:read_until(pattern, timeout) -> everything read up to and including the
-- first match of the Lua pattern; raises "timeout" (with .output) or, at the
-- end of the output, an error saying so.
function core.methods:read_until(pattern, timeout)
  timeout = timeout or 30
  local deadline = dhsm.now() + timeout
  local buf = pending[self] or ""
  while true do
    local _, e = buf:find(pattern)
    if e then
      pending[self] = buf:sub(e + 1)
      return buf:sub(1, e)
    end
    local left = deadline - dhsm.now()
    local data = left > 0 and self:read(left) or ""
    if data == nil then
      pending[self] = ""
      dhsm.error { kind = "net", code = "EndOfOutput", details = { output = buf },
        message = ("%s ended its output before %q appeared"):format(tostring(self), pattern) }
    end
    if data == "" then
      pending[self] = buf
      dhsm.error { kind = "timeout", code = "ProcessTimeout", retryable = true, details = { output = buf },
        message = ("%q did not appear within %g s"):format(pattern, timeout) }
    end
    buf = buf .. data
  end
end

return M
