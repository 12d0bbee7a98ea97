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
-- Names longer than any plausible identifier are not compared: the edit
-- distance is quadratic and a 32 KB typo suggests nothing.
M.MAX_NAME = 256
function M.closest(name, candidates)
  if #name > M.MAX_NAME then return nil end
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

-- weak_memo(fn) -> f: f(key) is fn(key), worked out once per key (a table:
-- a run's context, one call's options) and forgotten with the key.
function M.weak_memo(fn)
  local memo = setmetatable({}, { __mode = "k" })
  return function(key)
    local v = memo[key]
    if v == nil then
      v = fn(key)
      memo[key] = v
    end
    return v
  end
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

-- Linear in #s: an unanchored "%s+$" retries from every blank of a long
-- run, which made a 32 KB line of spaces take seconds.
function M.trim(s)
  if not s:find("%S") then return "" end
  return s:match("^%s*(.*%S)")     -- greedy .* then one step back per trailing blank
end

-- The longest suffix of s made of characters of class (a pattern item such
-- as "[%w ]"), found from the end so it is linear however long s is.
function M.suffix(s, class)
  return s:reverse():match("^" .. class .. "*"):reverse()
end

-- Caps for text read from devices, logs and files: far above anything real,
-- low enough that a runaway input fails at once with a clear error.
M.MAX_LINE = 4096
M.MAX_TEXT = 16 * 1024 * 1024

-- Walk the lines of text (LF or CRLF; no trailing empty line) in linear
-- time, appending them to out when given.  A line longer than MAX_LINE, or
-- a text longer than MAX_TEXT, raises a dhsm error of kind `kind` (default
-- "usage") naming `what` and the line.
local function scan(text, what, kind, out)
  local function too_long(msg, details)
    require("dhsm").error { kind = kind or "usage", code = "InputTooLong",
      message = ("%s: %s"):format(what or "input", msg), details = details }
  end
  if #text > M.MAX_TEXT then
    too_long(("%d bytes, more than the %d accepted"):format(#text, M.MAX_TEXT), { bytes = #text })
  end
  local pos, n, line = 1, #text, 0
  while pos <= n do
    local nl = text:find("\n", pos, true) or n + 1
    local stop = nl - 1
    if stop >= pos and text:byte(stop) == 13 then stop = stop - 1 end
    line = line + 1
    if stop - pos + 1 > M.MAX_LINE then
      too_long(("line %d is %d bytes long, more than the %d accepted"):format(line, stop - pos + 1, M.MAX_LINE),
        { line = line, bytes = stop - pos + 1 })
    end
    if out then out[line] = text:sub(pos, stop) end
    pos = nl + 1
  end
end

-- lines(text [, what [, kind]]) -> the lines, checked as above.
function M.lines(text, what, kind)
  local out = {}
  scan(text, what, kind, out)
  return out
end

-- check_lines(text [, what [, kind]]) -> text: the same checks, no copies.
function M.check_lines(text, what, kind)
  scan(text, what, kind)
  return text
end

-- columns(rows) -> lines: rows of cells (strings) aligned in columns two
-- blanks apart, the last cell of each row not padded.
function M.columns(rows)
  local w, out = {}, {}
  for _, row in ipairs(rows) do
    for i, c in ipairs(row) do w[i] = math.max(w[i] or 0, #c) end
  end
  for _, row in ipairs(rows) do
    local cells = {}
    for i, c in ipairs(row) do cells[i] = i < #row and M.pad(c, w[i]) or c end
    out[#out + 1] = table.concat(cells, "  ")
  end
  return out
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
-- modules a safety rule consults (dhsm.guard, dhsm.guard.commands): a
-- runbook that assigns to them gets an error, not a weaker rule.  (rawset
-- and the debug library still reach anything: this is not a sandbox.)
function M.sealed(t)
  for k, v in pairs(t) do
    if type(v) == "table" and getmetatable(v) == nil then t[k] = M.sealed(v) end
  end
  return setmetatable({}, {
    __index = t,
    __newindex = function(_, k) error(("'%s' is read-only: the safety rules depend on it"):format(tostring(k)), 2) end,
    -- an iterator closing over t: pairs() must not hand out the table
    -- behind the view (`local _, inner = pairs(view)` would write to it)
    __pairs = function()
      local k
      return function()
        local v
        k, v = next(t, k)
        return k, v
      end
    end,
    __len = function() return #t end,
    __metatable = "sealed",
  })
end

-- scratch_dir(prefix) -> path, closer: a new private folder (0700, under
-- $TMPDIR or /tmp) for a run's own files, removed with them when closer is
-- closed (`local dir, gone <close> = util.scratch_dir("dhsm-x-")`).  It
-- holds files: each entry is unlinked (a link, never what it points to);
-- a subfolder someone left in it stays, and so does the folder then.
-- No shell is involved.
-- It is dhsm's own (made by dhsm.act): written to in check mode too.
function M.scratch_dir(prefix)
  return require("dhsm.act").scratch_dir(prefix)
end

-- The contents of a file, or nil and "PATH: reason" (a directory opens
-- but does not read: it says so instead of giving nil and no reason).
function M.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local data, rerr = f:read("a")
  f:close()
  if not data then return nil, ("%s: %s"):format(path, rerr or "cannot be read") end
  return data
end

-- Pad s to width w (counting UTF-8 characters; bytes when s is not UTF-8).
function M.pad(s, w)
  s = tostring(s)
  return s .. string.rep(" ", w - (utf8.len(s) or #s))
end

-- merged(a, b, ...) -> a new table with the fields of a, then b, ... (later win)
function M.merged(...)
  local out = {}
  for i = 1, select("#", ...) do
    for k, v in pairs((select(i, ...))) do out[k] = v end
  end
  return out
end

-- Deep equality of plain data (JSON-like values).
function M.same(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not M.same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- backoff(attempt, {base=, cap=, retry_after=}) -> seconds to wait before
-- attempt+1: the server's Retry-After when it gave one (a number of
-- seconds), else base * 2^(attempt-1), at most cap, with equal jitter -
-- between half and all of it - so that clients turned away together do
-- not all come back together.  The one back-off of dhsm: ARM requests
-- (base 0.5 s, cap 30 s) and provision's redeploys (base from -e backoff).
function M.backoff(attempt, o)
  local ra = tonumber(o.retry_after)
  if ra then return ra end
  local step = math.min(o.cap or math.huge, (o.base or 1) * 2 ^ (attempt - 1))
  return step / 2 + math.random() * step / 2
end

-- "3.2 s", "4 min 12 s", "2 h 5 min"
-- cjson's token names and expectations, in an operator's words.
local JSON_FOUND = { T_OBJ_BEGIN = "'{'", T_OBJ_END = "'}'", T_ARR_BEGIN = "'['", T_ARR_END = "']'",
  T_STRING = "a string", T_NUMBER = "a number", T_BOOLEAN = "true or false", T_NULL = "null", T_COLON = "':'",
  T_COMMA = "','", T_END = "the end of the text" }
local JSON_EXPECTED = { value = "a value", ["object key string"] = "a key (a string in double quotes)",
  ["comma or object end"] = "',' or '}'", colon = "':'", ["comma or array end"] = "',' or ']'",
  ["the end"] = "the end of the text" }

-- json_error(text, err) -> where and what cjson.decode(text) failed with
-- (err: its message), as an operator reads it: "line 3, column 2:
-- expected a value, found ']'" instead of "Expected value but found
-- T_ARR_END at character 14".
function M.json_error(text, err)
  local msg = tostring(err)
  local at = tonumber(msg:match("at character (%d+)"))
  local where = ""
  if at and type(text) == "string" then
    local before = text:sub(1, at - 1)
    local line = select(2, before:gsub("\n", "")) + 1
    where = ("line %d, column %d: "):format(line, at - (before:match(".*\n()") or 1) + 1)
  end
  local want, found = msg:match("Expected (.-) but found (.-) at character")
  if not want then return where .. (msg:gsub("%s*at character %d+", "")) end
  return ("%sexpected %s, found %s"):format(where, JSON_EXPECTED[want] or want, JSON_FOUND[found] or found)
end

function M.duration(s)
  if s ~= s or s == math.huge or s == -math.huge then return tostring(s) .. " s" end
  if s < 60 then return ("%.1f s"):format(s) end
  s = math.floor(s)
  if s < 3600 then return ("%d min %d s"):format(s // 60, s % 60) end
  return ("%d h %d min"):format(s // 3600, s % 3600 // 60)
end

-- without_bom(text) -> text without the UTF-8 byte order mark Windows
-- editors write first: no part of the JSON (RFC 8259 lets a parser skip
-- it).  For a caller that keeps the text itself (discover --merge rewrites it).
function M.without_bom(text)
  if type(text) ~= "string" then return text end
  return (text:gsub("^\239\187\191", ""))
end

-- json_object(text) -> the JSON object text holds; or nil, why ("invalid
-- JSON at line 3, column 2: ..."), "syntax"; or nil, why, "shape" when it
-- holds something else - cjson decodes [] and {} alike: the text says
-- which it was.  The one reader of a JSON file's text: a byte order mark
-- before it is skipped.
function M.json_object(text)
  text = M.without_bom(text)
  local ok, v = pcall(require("cjson").decode, text)
  if not ok then return nil, "invalid JSON at " .. M.json_error(text, v), "syntax" end
  if type(v) ~= "table" or text:match("^%s*%[") then return nil, "not a JSON object", "shape" end
  return v
end

-- audit_records(keep) -> the records of this host's audit log
-- (dhsm.audit.path()) for which keep(record) is true, oldest first.  A line
-- that is no JSON object (one half written when a process was killed) is
-- skipped: the log is evidence of what was sent, read as far as it goes.
function M.audit_records(keep)
  local cjson = require "cjson"
  local out = {}
  for line in (M.read_file(require("dhsm").audit.path()) or ""):gmatch("[^\n]+") do
    local ok, r = pcall(cjson.decode, line)
    if ok and type(r) == "table" and keep(r) then out[#out + 1] = r end
  end
  return out
end

return M
