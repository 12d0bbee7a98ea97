-- dhsm.journal: what a run did, step by step, so `--resume ID` can skip
-- what is done.  One JSON file per run in $XDG_STATE_HOME/dhsm/runs/ID.json
-- (0600), rewritten atomically (temp file + rename) after every step.
-- Secret parameters are never written; only their names are.  Plain
-- values are written as they are (no redaction by name: a parameter called
-- token_name comes back as given), since secrets are dhsm.secret values,
-- never plain ones (schema type "secret" refuses literals).
local cjson = require "cjson"
local dhsm = require "dhsm"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

function M.dir()
  local state = os.getenv("XDG_STATE_HOME")
  if not state or state == "" then state = (os.getenv("HOME") or ".") .. "/.local/state" end
  return state .. "/dhsm/runs"
end

local function path_of(id)
  return M.dir() .. "/" .. id .. ".json"
end

local Journal = {}
Journal.__index = Journal

function M.new(fields)
  local j = setmetatable(fields, Journal)
  j.steps = j.steps or {}
  j.state = j.state or "running"
  j.started = j.started or sys.rfc3339()
  j.pid = sys.getpid()
  return j
end

function Journal:save()
  self.updated = sys.rfc3339()
  local ok, err = sys.mkdir(M.dir(), tonumber("700", 8))
  if ok then ok, err = sys.write_file(path_of(self.id), sys.json_encode(self, { redact = false }), tonumber("600", 8)) end
  if not ok then
    dhsm.error { kind = "audit", message = "cannot write the run journal: " .. tostring(err) }
  end
end

-- JSON gives floats; the run saw integers.  Give them back.
local function restore(v)
  if v == cjson.null then return nil end
  if type(v) == "number" and math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2^53 then
    return math.tointeger(v)
  end
  if type(v) == "table" then
    for k, x in pairs(v) do v[k] = restore(x) end
  end
  return v
end

local function check_id(id)
  if type(id) ~= "string" or not id:match("^[%w%-_]+$") then
    dhsm.error { kind = "usage", message = ("--resume %s: not a run id (see 'dhsm runs')"):format(tostring(id)) }
  end
end

function M.load(id)
  check_id(id)
  local data = util.read_file(path_of(id))
  if not data then
    dhsm.error { kind = "usage", message = ("no run %s in %s (see 'dhsm runs')"):format(id, M.dir()) }
  end
  local ok, t = pcall(cjson.decode, data)
  if not ok or type(t) ~= "table" then
    dhsm.error { kind = "usage", message = ("the journal of run %s is damaged: %s"):format(id, path_of(id)) }
  end
  t = restore(t)
  if next(t.steps or {}) == nil then t.steps = {} end
  return M.new(t)
end

-- Recent runs, newest first: {id, playbook, state, started, updated, done, total}
function M.list(limit)
  local out = {}
  for _, f in ipairs(sys.readdir(M.dir()) or {}) do
    local id = f:match("^([%w%-_]+)%.json$")
    local ok, j = pcall(M.load, id)
    if id and ok then
      local done = 0
      for _, s in ipairs(j.steps) do
        if s.status == "ok" or s.status == "replayed" then done = done + 1 end
      end
      out[#out + 1] = { id = j.id, playbook = j.playbook, state = j.state, started = j.started,
        updated = j.updated or j.started, done = done, total = #j.steps }
    end
  end
  table.sort(out, function(a, b) return a.updated > b.updated end)
  while limit and #out > limit do table.remove(out) end
  return out
end

-- lock(id) -> the run's lock, held until closed.  One run has one runner:
-- runs/ID.lock is taken for the whole run, the first attempt included, so
-- a second `--resume ID` (or a resume while the first attempt still runs)
-- is refused.  flock dies with its holder, SIGKILL included.
function M.lock(id)
  check_id(id)
  local ok, err = sys.mkdir(M.dir(), tonumber("700", 8))
  if not ok then dhsm.error { kind = "audit", message = "cannot make the run journal folder: " .. tostring(err) } end
  local lk, holder = sys.lock(M.dir() .. "/" .. id .. ".lock", 0)
  if lk then return lk end
  if math.type(holder) ~= "integer" and holder ~= "unknown" then
    dhsm.error { kind = "audit", message = "cannot lock the run: " .. tostring(holder) }
  end
  dhsm.error { kind = "safety", code = "RunInProgress",
    message = ("run %s is being run right now by another dhsm (pid %s); one run has one runner: "
      .. "wait for it to end (or stop it), then resume"):format(id, tostring(holder)),
    details = { pid = holder } }
end

return M
