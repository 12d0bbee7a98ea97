-- dhsm.util: small helpers shared by the Lua half of the runtime.
local M = {}

-- Edit distance between two short strings (for "did you mean").
local function distance(a, b)
  local prev, cur = {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    cur[0] = i
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev, cur = cur, prev
  end
  return prev[#b]
end
M.distance = distance

-- The candidate closest to name, or nil when none is plausibly meant.
function M.closest(name, candidates)
  local best, best_d
  for _, c in ipairs(candidates) do
    local d = distance(name:lower(), c:lower())
    if d < (best_d or math.huge) then best, best_d = c, d end
  end
  if best and best_d <= math.max(2, #name // 3) then return best end
end

-- " (did you mean 'x'?)" or ""
function M.did_you_mean(name, candidates)
  local c = M.closest(name, candidates)
  return c and (" (did you mean '%s'?)"):format(c) or ""
end

function M.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "number" or ta == "string" then return a < b end
    return tostring(a) < tostring(b)
  end)
  return keys
end

function M.trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- Quote a word for /bin/sh.
function M.shell_quote(s)
  s = tostring(s)
  if s:match("^[%w%./_=:,+-]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- native(natives, name): a private native module (runtime/modules.c), as
-- the host hands it to the chunk of the embedded module that owns it.  A
-- copy of that module loaded from DHSM_PATH gets none: it cannot get
-- around a safety rule by going under it.
function M.native(natives, name)
  local m = type(natives) == "table" and natives[name]
  if not m then
    error(("%s is private to dhsm's built-in module; a copy loaded from elsewhere cannot use it"):format(name), 2)
  end
  return m
end

-- sealed(t) -> a read-only view of t and of the tables in it, for the
-- modules a safety rule consults (dhsm.luna.guard, dhsm.luna.cli): a
-- runbook that assigns to them gets an error, not a weaker rule.  (rawset
-- and the debug library still reach anything: this is not a sandbox.)
function M.sealed(t)
  for k, v in pairs(t) do
    if type(v) == "table" and getmetatable(v) == nil then t[k] = M.sealed(v) end
  end
  return setmetatable({}, {
    __index = t,
    __newindex = function(_, k) error(("'%s' is read-only: the safety rules depend on it"):format(tostring(k)), 2) end,
    __pairs = function() return next, t, nil end,
    __len = function() return #t end,
    __metatable = "sealed",
  })
end

function M.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local data = f:read("a")
  f:close()
  return data
end

-- Pad s to width w (counting UTF-8 characters).
function M.pad(s, w)
  s = tostring(s)
  return s .. string.rep(" ", w - utf8.len(s))
end

-- Deep equality of plain data (JSON-like values).
function M.same(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not M.same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- "3.2 s", "4 min 12 s", "2 h 5 min"
function M.duration(s)
  if s < 60 then return ("%.1f s"):format(s) end
  if s < 3600 then return ("%d min %d s"):format(s // 60, s % 60) end
  return ("%d h %d min"):format(s // 3600, s % 3600 // 60)
end

return M
