-- dhsm.cli.repl: the console (`dhsm repl [-i inventory.json]`).
--
-- Input works like lua.c: an expression prints its value ("return" is
-- tried first), an incomplete statement continues on a second prompt,
-- "=expr" works.  Each entry runs as a task, so waits and dhsm.parallel
-- work; Ctrl-C cancels that entry (its <close> variables are closed) and
-- comes back to the prompt; Ctrl-D leaves.  Tab completes globals, fields,
-- the public methods of objects (a class's __public list), meta-commands
-- and inventory names.  On a terminal the line is read by a task through
-- the scheduler, so dhsm.spawn'ed tasks keep running at the prompt.
-- Command output (multi-line strings) prints as lines, records (hsm_show)
-- as aligned fields with their raw `fields` summarised.  History is kept in
-- $XDG_STATE_HOME/dhsm/history (0600), without entries that touch secrets.
-- Without a terminal there are no prompts and the exit status is that of
-- the last failing entry.
local dhsm = require "dhsm"
local core = require "dhsm.core"
local sys = require "dhsm.sys"
local pretty = require "dhsm.pretty"
local cli = require "dhsm.cli"
local util = require "dhsm.util"

local M = {}

local HELP = [[
Lua with every dhsm module; each entry runs as a task (waits, dhsm.parallel work).
  inv                 the inventory (dhsm repl -i FILE, or $DHSM_INVENTORY)
  az                  an azure client for inv.azure          az:get(az:group_path())
  hsm "name"          a LunaSH session, opened once, reused  hsm"hsm1":run"hsm show"
  p11                 the client's PKCS#11 library, loaded on first use
  dhsm, secret        the core (spawn, sleep, parallel, deadline, try) and secrets
meta-commands:
  :help               this text
  :doc NAME           a playbook's description and parameters
  :run NAME [KEY=VALUE|@FILE.json]... [--check] [--resume ID]
                      run a playbook as `dhsm run` does (asked, journaled, resumable)
  :trace              the traceback of the last error
  :check on|off       check mode: changes are described, not made
  :audit [N]          the last N audit records (default 10)
  :quit               leave (Ctrl-D too)
Ctrl-C cancels the running entry.  Tab completes.  Spawned tasks run while the prompt waits.
Ctrl-R/Ctrl-S history search is off (it could run another line than the one shown): Up/Down.]]

local META = { ":help", ":doc", ":run", ":trace", ":check", ":audit", ":quit" }

local function state_dir()
  local state = os.getenv("XDG_STATE_HOME")
  if not state or state == "" then state = (os.getenv("HOME") or ".") .. "/.local/state" end
  return state .. "/dhsm"
end

---------------------------------------------------------------------------
-- evaluation

local function compile(src)
  local code = src:gsub("^=", "return ")
  local chunk, err = load("return " .. code .. ";", "=stdin", "t")
  if chunk then return chunk end
  return load(code, "=stdin", "t")
end

local function incomplete(err)
  return err and err:find("<eof>$") ~= nil
end

-- One line.  On a terminal a task of its own reads it, so the scheduler
-- runs the other tasks (a dhsm.spawn'ed watcher) while the prompt waits;
-- Ctrl-C gives the line up: "", "interrupted".
local function read_line(tty, prompt)
  if not tty then return sys.readline("") end
  local reader = dhsm.spawn(function() return sys.readline(prompt) end)
  core.set_interrupt_target(reader)
  local ok, line, interrupted = pcall(reader.join, reader)
  core.set_interrupt_target(nil)
  if ok then return line, interrupted end
  sys.readline_cancel()
  if dhsm.error.is(line, "interrupted") then return "", "interrupted" end
  error(line, 0)
end

-- An entry: one line, or several when the statement is not complete.
local function read_entry(tty, prompt)
  local line, interrupted = read_line(tty, prompt)
  if line == nil then return nil end
  if interrupted then return "", nil, nil, true end
  local chunk, err = compile(line)
  while not chunk and incomplete(err) do
    local more, stop = read_line(tty, ">> ")
    if more == nil or stop then return "", nil, nil, stop end
    line = line .. "\n" .. more
    chunk, err = compile(line)
  end
  return line, chunk, err
end

-- Entries that name a secret source stay out of the history file.
local function historic(line)
  return line:find("%S") and not line:find("prompt", 1, true) and not line:find("secret.", 1, true)
end

-- One value: command text as its lines, a record as aligned lines;
-- several: each formatted, TAB-separated as lua.c does.
local function show(r)
  local parts = {}
  for i = 1, r.n do
    local one = r.n == 1 and (pretty.text(r[i]) or pretty.record(r[i]))
    parts[#parts + 1] = one or pretty.format(r[i])
  end
  if #parts > 0 then io.stdout:write(table.concat(parts, "\t"), "\n") end
  io.stdout:flush()
end

---------------------------------------------------------------------------
-- the environment: inv, az, hsm "name", p11

local function install_globals(session, inventory_path)
  local ok, inv = pcall(require("dhsm.cli.globals").install, inventory_path)
  if not ok then cli.report(inv) return end
  session.inv = inv
end

---------------------------------------------------------------------------
-- completion

local function starting(list, prefix, out)
  out = out or {}
  for _, name in ipairs(list) do
    if type(name) == "string" and name:sub(1, #prefix) == prefix then out[#out + 1] = name end
  end
  return out
end

-- What v's class offers: its declared public methods (a class's
-- __public list; a proxy's metatable may carry one for what it forwards),
-- else every function of its __index table.  Never runs any code.
local function class_names(v)
  local mt = getmetatable(v)
  if type(mt) ~= "table" then return {} end
  local idx = rawget(mt, "__index")
  local pub = rawget(mt, "__public")
  if pub == nil and type(idx) == "table" then pub = rawget(idx, "__public") end
  if type(pub) == "table" then return pub end
  local out = {}
  if type(idx) == "table" then
    for k, x in pairs(idx) do if type(x) == "function" then out[#out + 1] = k end end
  end
  return out
end

-- Names to complete after "v." (its fields and methods) or "v:" (methods).
local function fields_of(v, methods_only)
  local out, seen = {}, {}
  local function add(k)
    if type(k) == "string" and k:match("^[%a_][%w_]*$") and not seen[k] and not k:match("^_") then
      seen[k] = true
      out[#out + 1] = k
    end
  end
  if type(v) == "table" then
    for k, x in pairs(v) do
      if not methods_only or type(x) == "function" then add(k) end
    end
  end
  for _, k in ipairs(class_names(v)) do add(k) end
  table.sort(out)
  return out
end

-- Walk a.b.c through tables only (no __index functions, no calls).
local function resolve(path)
  local v = _G
  for part in path:gmatch("[^%.:]+") do
    if type(v) == "table" then v = rawget(v, part)
    else
      local mt = getmetatable(v)
      local idx = type(mt) == "table" and rawget(mt, "__index")
      v = type(idx) == "table" and rawget(idx, part) or nil
    end
    if v == nil then return nil end
  end
  return v
end

-- Inside a string literal (an odd number of unescaped quotes before the cursor)?
local function in_string(line)
  local quote
  local i = 1
  while i <= #line do
    local c = line:sub(i, i)
    if quote then
      if c == "\\" then i = i + 1 elseif c == quote then quote = nil end
    elseif c == '"' or c == "'" then
      quote = c
    end
    i = i + 1
  end
  return quote ~= nil
end

-- complete(line_before_cursor, word, session) -> candidates, or false
-- when a Tab there is text (inside a string: a paste must stay intact).
function M.complete(line, word, session)
  if line:match("^%s*:%a*$") then return starting(META, word) end
  local meta = line:match("^%s*:(%a+)%s+%S*$")
  if meta == "doc" or meta == "run" then                    -- :doc, :run: a playbook's name
    local names = {}
    for _, p in ipairs(require("dhsm.paths").list_playbooks()) do names[#names + 1] = p.name end
    return starting(names, word)
  end
  local partial = line:match("hsm%s*%(?%s*[\"']([%w%-_%.]*)$")
  if partial then
    local names = {}
    for _, h in ipairs(session.inv and session.inv.hsms or {}) do names[#names + 1] = h.name end
    return starting(names, partial)
  end
  if in_string(line) then return false end
  local base, sep, last = word:match("^(.*)([%.:])([%w_]*)$")
  if not base then
    local globals = {}
    for k in pairs(_G) do globals[#globals + 1] = k end
    table.sort(globals)
    return starting(globals, word)
  end
  local v = resolve(base)
  if v == nil then return {} end
  local out = {}
  for _, k in ipairs(starting(fields_of(v, sep == ":"), last)) do out[#out + 1] = base .. sep .. k end
  return out
end

---------------------------------------------------------------------------
-- meta-commands

local function last_audit(n)
  local data = util.read_file(dhsm.audit.path()) or ""
  local lines = {}
  for l in data:gmatch("[^\n]+") do lines[#lines + 1] = l end
  local cjson = require "cjson"
  for i = math.max(1, #lines - n + 1), #lines do
    local ok, r = pcall(cjson.decode, lines[i])
    if ok then
      io.stdout:write(("%s  %-22s %-12s %s\n"):format(r.ts or "?", r.action or "?", tostring(r.target or "-"),
        tostring(r.outcome or "")))
    end
  end
end

-- The words of a :run line: blanks separate, quotes group ('a b', "a b").
local function words_of(s)
  local out, i = {}, 1
  while true do
    i = s:find("%S", i)
    if not i then return out end
    local w = {}
    while i <= #s and not s:sub(i, i):match("%s") do
      local c = s:sub(i, i)
      local close = (c == '"' or c == "'") and s:find(c, i + 1, true)
      if (c == '"' or c == "'") and not close then dhsm.usage(":run: the quote %s at %d is not closed", c, i) end
      w[#w + 1] = close and s:sub(i + 1, close - 1) or c
      i = close and close + 1 or i + 1
    end
    out[#out + 1] = table.concat(w)
  end
end

-- :run PLAYBOOK [KEY=VALUE|@FILE.json]... [--check] [--resume ID] -> the
-- options of `dhsm run` (dhsm.cli.run_playbook).  --yes is not one: the
-- REPL asks on its terminal, and its policy is set once for the process.
local function run_line(arg, session)
  local words = words_of(arg)
  local name, extra, opts = nil, {}, { inventory = session.inventory, inventory_loaded = session.inv }
  local i = 1
  while i <= #words do
    local w = words[i]
    if w == "--check" then opts.check = true
    elseif w == "--resume" and words[i + 1] then opts.resume, i = words[i + 1], i + 1
    elseif w == "--yes" then
      dhsm.usage(":run: --yes is for `dhsm run`; the REPL asks for each destructive step on its terminal")
    elseif w:sub(1, 1) == "-" then
      dhsm.usage(":run: unknown option '%s' (--check, --resume ID; parameters as KEY=VALUE or @FILE.json)", w)
    elseif not name then name = w
    else extra[#extra + 1] = w end
    i = i + 1
  end
  if not name then dhsm.usage(":run needs a PLAYBOOK (:run NAME KEY=VALUE ...); 'dhsm list' shows them") end
  opts.check = opts.check or session.check           -- a check-mode REPL plans every run
  return name, extra, opts
end

local eval

local function meta(line, session)
  local cmd, arg = line:match("^:(%a+)%s*(.-)%s*$")
  if cmd == "help" then
    io.stdout:write(HELP, "\n")
  elseif cmd == "quit" then
    return "quit"
  elseif cmd == "trace" then
    io.stdout:write(session.trace or "no error yet", "\n")
  elseif cmd == "check" then
    -- on for the rest of the session: what its lines started, the finalisers
    -- at exit and the values it prints are in check mode too (dhsm.act)
    if arg == "on" then
      require("dhsm.act").check_process()
      session.check = true
    elseif arg == "off" and session.check then
      io.stdout:write("check mode stays on until this REPL ends: leave it (Ctrl-D) and start a new one to make changes\n")
    end
    io.stdout:write("check mode is ", session.check and "on: changes are described, not made" or "off", "\n")
  elseif cmd == "audit" then
    last_audit(tonumber(arg) or 10)
  elseif cmd == "run" then
    -- a run is a task of its own with an id of its own: journaled, resumable,
    -- cancelled by Ctrl-C like any entry (dhsm.cli.run_playbook, as `dhsm run`)
    session.failed = eval(function()
      dhsm.context().run = cli.new_run_id()
      local status = cli.run_playbook(run_line(arg, session))
      if status ~= 0 then session.status = status end
    end, session)
  elseif cmd == "doc" then
    local play = require "dhsm.play"
    local found = require("dhsm.paths").find_playbook(arg)
    if not found then io.stdout:write("no playbook '", arg, "'\n")
    else io.stdout:write(play.doc(play.describe(found)), "\n") end
  else
    io.stdout:write("unknown meta-command ", line, " (:help lists them)\n")
  end
end

-- Run one entry as its own task; returns nil or the error raised.
function eval(chunk, session)
  local task = dhsm.spawn(function() return table.pack(chunk()) end)
  core.set_interrupt_target(task)
  local ok, r = pcall(task.join, task)
  core.set_interrupt_target(nil)
  if ok then
    show(r)
    return nil
  end
  session.trace = tostring(r) .. "\n" .. (task:traceback() or "(cancelled: no traceback)")
  if dhsm.error.is(r, "interrupted") and sys.isatty(1) then io.stdout:write("\n") end   -- after the ^C
  cli.report(r, dhsm.verbose and task:traceback() or nil)
  return r
end

function M.run(opts)
  opts = opts or {}
  local tty = sys.isatty(0)
  local session = {}
  local history = state_dir() .. "/history"
  -- asked on a terminal; refused without one, saying what works instead
  require("dhsm.act").confirm_policy(false, "the REPL confirms on a terminal: start dhsm repl on one, or run the "
    .. "same with `dhsm run PLAYBOOK ... --yes` or `dhsm exec --yes FILE`")
  install_globals(session, opts.inventory)
  session.inventory = opts.inventory
  -- advice names the REPL's way of giving a parameter (schema.give), read by every task it starts
  dhsm.context().front = "repl"
  if tty then
    sys.mkdir(state_dir(), tonumber("700", 8))
    sys.history_load(history)
    sys.set_completer(function(line, word) return M.complete(line, word, session) end)
    io.stdout:write(("dhsm %s (%s)  :help for help, Ctrl-D to leave\n"):format(dhsm.version, _VERSION))
  end
  local last_status = 0                              -- the last failing entry's exit status
  local function failed(err) if err then last_status = cli.exit_code(err) end end
  while true do
    local prompt = session.check and "dhsm(check)> " or "dhsm> "
    local line, chunk, err, interrupted = read_entry(tty, prompt)
    if line == nil then break end
    if interrupted then io.stdout:write("\n") end
    if tty and historic(line) then
      sys.add_history(line)
      sys.history_save(history)
    end
    if line:match("^%s*:") then
      if meta(util.trim(line), session) == "quit" then break end
      failed(session.failed)
      if session.status then last_status = session.status end   -- a run that asked for 1 (diagnose's FAIL rows)
      session.failed, session.status = nil, nil
    elseif line:find("%S") then
      if chunk then
        failed(eval(chunk, session))
      else
        io.stderr:write("dhsm: ", err, "\n")
        failed(dhsm.error.new { kind = "usage", message = err })
      end
    end
  end
  if tty then io.stdout:write("\n") end
  return last_status
end

return M
