-- dhsm.paths: where modules and playbooks are looked up, and where the
-- failed-login guard keeps its counts (guard_dir: dhsm.guard, dhsm.act).
--
-- User folders (-I DIR, then $DHSM_PATH) come first for playbooks, then
-- what is embedded in the binary.  In a user folder, module a.b is a/b.lua
-- (or a/b/init.lua) and playbook P is P.lua or playbooks/P.lua; a module
-- named dhsm or dhsm.* is never looked for there (runtime/state.c: dhsm's
-- own modules cannot be shadowed).
local sys = require "dhsm.sys"

local M = { dirs = {} }

-- The failed-login guard's folder: one per host, whatever the user's state
-- folder; $DHSM_GUARD_DIR moves it (for tests: it splits the guard).
M.SYSTEM_GUARD_DIR = "/var/lib/dhsm"

function M.guard_dir()
  local chosen = os.getenv("DHSM_GUARD_DIR")
  return (chosen and chosen ~= "") and chosen or M.SYSTEM_GUARD_DIR
end

function M.set(dirs)
  M.dirs = dirs
  local parts = {}
  for _, d in ipairs(dirs) do
    parts[#parts + 1] = d .. "/?.lua"
    parts[#parts + 1] = d .. "/?/init.lua"
  end
  package.path = table.concat(parts, ";")
end

-- Split $DHSM_PATH-style "a:b:c" into a list, dropping empty parts.
function M.split(s)
  local out = {}
  for part in (s or ""):gmatch("[^:]+") do out[#out + 1] = part end
  return out
end

local function is_file(path)
  local st = sys.stat(path)
  return st and st.type == "file"
end

-- Find playbook `name`: a path (contains "/" or ends in .lua), a user
-- folder, or the embedded set.  Returns {name=, path=, source=|nil, embedded=}.
function M.find_playbook(name)
  if name:find("/", 1, true) or name:match("%.lua$") then
    if is_file(name) then           -- by_path: a run is resumed by this absolute path
      return { name = name:match("([^/]+)%.lua$") or name, path = sys.realpath(name) or name, by_path = true }
    end
    return nil
  end
  for _, d in ipairs(M.dirs) do
    for _, p in ipairs { d .. "/" .. name .. ".lua", d .. "/playbooks/" .. name .. ".lua" } do
      if is_file(p) then return { name = name, path = p } end
    end
  end
  local src, path = sys.embedded_read("p", name)
  if src then return { name = name, path = path, source = src, embedded = true } end
end

-- Every playbook on the search path, first one of a name wins, sorted.
function M.list_playbooks()
  local seen, out = {}, {}
  local function add(name, path, embedded)
    if seen[name] then return end
    seen[name] = true
    out[#out + 1] = { name = name, path = path, embedded = embedded }
  end
  for _, d in ipairs(M.dirs) do
    for _, sub in ipairs { d, d .. "/playbooks" } do
      for _, f in ipairs(sys.readdir(sub) or {}) do
        local name = f:match("^(.+)%.lua$")
        if name and not name:match("_test$") and is_file(sub .. "/" .. f) then
          add(name, sub .. "/" .. f, false)
        end
      end
    end
  end
  for _, e in ipairs(sys.embedded("p")) do add(e.name, e.path, true) end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

return M
