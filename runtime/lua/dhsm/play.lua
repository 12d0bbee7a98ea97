-- dhsm.play: loading and running playbooks.
--
-- A playbook file returns
--   { name=, description=, params = { key = {type=, required=, default=, description=} },
--     run = function(ctx, params) ... end }
-- and works in named steps: ctx:step("wait for gateway", fn) or
-- ctx:step(title, {destructive=true, target="hsm1"}, fn).
local dhsm = require "dhsm"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

local function bad(found, fmt, ...)
  dhsm.error { kind = "usage", message = ("playbook %s (%s): "):format(found.name, found.path) .. fmt:format(...) }
end

-- load(found) where found comes from dhsm.paths.find_playbook.
function M.load(found)
  local src = found.source
  if not src then
    local err
    src, err = util.read_file(found.path)
    if not src then bad(found, "cannot read: %s", err) end
  end
  local chunk, err = load(src, "@" .. found.path, "t")
  if not chunk then bad(found, "%s", err) end
  local ok, pb = pcall(chunk)
  if not ok then bad(found, "error while loading: %s", tostring(pb)) end
  if type(pb) ~= "table" then bad(found, "must return a table {name=, description=, params=, run=}, got %s", type(pb)) end
  if type(pb.description) ~= "string" then bad(found, "field 'description' must be a string") end
  if type(pb.run) ~= "function" then bad(found, "field 'run' must be a function(ctx, params)") end
  if pb.params ~= nil and type(pb.params) ~= "table" then bad(found, "field 'params' must be a table") end
  pb.name = pb.name or found.name
  pb.params = pb.params or {}
  pb.path = found.path
  return pb
end

function M.doc(pb)
  local lines = { pb.name, "", pb.description, "" }
  local keys = util.sorted_keys(pb.params)
  if #keys == 0 then
    lines[#lines + 1] = "no parameters"
  else
    lines[#lines + 1] = "parameters:"
    local w = 4
    for _, k in ipairs(keys) do w = math.max(w, #k) end
    for _, k in ipairs(keys) do
      local p = pb.params[k]
      local attrs = { p.type or "string" }
      if p.required then attrs[#attrs + 1] = "required" end
      if p.default ~= nil then attrs[#attrs + 1] = "default " .. tostring(p.default) end
      lines[#lines + 1] = ("  %s  %-28s %s"):format(util.pad(k, w), table.concat(attrs, ", "), p.description or "")
    end
  end
  return table.concat(lines, "\n")
end

local Ctx = {}
Ctx.__index = Ctx

local function say(fmt, ...)
  io.stderr:write(fmt:format(...), "\n")
end

-- ctx:step(title, [opts], fn) -> fn's result
function Ctx:step(title, opts, fn)
  if fn == nil then opts, fn = {}, opts end
  if type(title) ~= "string" then dhsm.error { kind = "usage", message = "ctx:step: the title must be a string" } end
  if type(fn) ~= "function" then dhsm.error { kind = "usage", message = "ctx:step: expected a function" } end
  if opts.destructive and not self.opts.yes then
    dhsm.error { kind = "safety", code = "NotConfirmed",
      message = ("step '%s' is destructive (target %s): rerun with --yes to confirm"):format(title, tostring(opts.target)) }
  end
  local context = dhsm.context()
  local saved = context.step
  context.step = title
  dhsm.audit.write { action = "step.start", target = opts.target, outcome = "started" }
  say("- %s", title)
  local t0 = dhsm.now()
  local r = table.pack(pcall(fn, self))
  local ms = (dhsm.now() - t0) * 1000
  if r[1] then
    dhsm.audit.write { action = "step.end", target = opts.target, outcome = "ok", duration_ms = ms }
    say("ok %s (%.1f s)", title, ms / 1000)
  else
    local err = dhsm.error.normalize(r[2])
    dhsm.audit.write { action = "step.end", target = opts.target, outcome = "failed", duration_ms = ms, error = err.message }
    say("FAILED %s: %s", title, tostring(err))
  end
  context.step = saved
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end

function Ctx:progress(msg)
  say("  %s", msg)
end

function M.run(pb, params, opts)
  local context = dhsm.context()
  context.playbook = pb.name
  dhsm.check_mode = opts.check == true
  local ctx = setmetatable({ playbook = pb, params = params, opts = opts, run_id = context.run }, Ctx)
  dhsm.audit.write { action = "run.start", target = pb.name, outcome = "started",
    check = dhsm.check_mode, pid = sys.getpid() }
  local t0 = dhsm.now()
  local ok, err = pcall(pb.run, ctx, params)
  dhsm.audit.write { action = "run.end", target = pb.name, outcome = ok and "ok" or "failed",
    duration_ms = (dhsm.now() - t0) * 1000 }
  if not ok then error(err, 0) end
  return 0
end

return M
