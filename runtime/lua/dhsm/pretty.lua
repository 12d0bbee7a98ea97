-- dhsm.pretty: values as an operator wants to read them.
--
-- Tables are printed with sorted keys and indentation, cycles marked, long
-- output capped; secrets show as <secret>, dhsm errors as their message.
local errors = require "dhsm.errors"
local util = require "dhsm.util"

local M = {}

local function is_identifier(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
end

local function scalar(v)
  local t = type(v)
  if t == "string" then return ("%q"):format(v):gsub("\\\n", "\\n") end
  if t == "number" and math.type(v) == "float" and v == math.floor(v) and v > -1e15 and v < 1e15 then
    return ("%.1f"):format(v)
  end
  return tostring(v)      -- a dhsm error its message, a secret <secret>, the rest as Lua says
end

local function key_text(k)
  if is_identifier(k) then return k end
  return "[" .. scalar(k) .. "]"
end

-- The entries of t in print order: 1..#t positionally, then the other
-- keys sorted.  Each entry is {key_text or false, value}.
local function entries(t)
  local out, n = {}, #t
  for i = 1, n do out[i] = { false, t[i] } end
  for _, k in ipairs(util.sorted_keys(t)) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then
      out[#out + 1] = { key_text(k), t[k] }
    end
  end
  return out
end

-- One line when it fits in `width`, else nil.
local function inline(v, width, seen)
  if type(v) ~= "table" or errors.is(v) or getmetatable(v) and getmetatable(v).__tostring then
    return scalar(v)
  end
  if seen[v] then return "<cycle>" end
  seen[v] = true
  local parts, len = {}, 2
  for _, e in ipairs(entries(v)) do
    local s = inline(e[2], width - len, seen)
    if not s then seen[v] = nil return nil end
    if e[1] then s = e[1] .. " = " .. s end
    parts[#parts + 1] = s
    len = len + #s + 2
    if len > width then seen[v] = nil return nil end
  end
  seen[v] = nil
  if #parts == 0 then return "{}" end
  return "{ " .. table.concat(parts, ", ") .. " }"
end

local function block(v, indent, out, seen, opts)
  if #out > opts.max_lines then return end
  local one = inline(v, opts.width - #indent, {})
  if one and not one:find("<cycle>", 1, true) then
    out[#out] = out[#out] .. one
    return
  end
  if seen[v] then
    out[#out] = out[#out] .. "<cycle>"
    return
  end
  seen[v] = true
  out[#out] = out[#out] .. "{"
  local inner = indent .. "  "
  for _, e in ipairs(entries(v)) do
    out[#out + 1] = inner .. (e[1] and (e[1] .. " = ") or "")
    block(e[2], inner, out, seen, opts)
    out[#out] = out[#out] .. ","
    if #out > opts.max_lines then break end
  end
  out[#out + 1] = indent .. "}"
  seen[v] = nil
end

-- text(s) -> a multi-line string (command output: LunaSH, lunacm) as its
-- lines, CRs and trailing blank lines dropped; nil for a one-line string,
-- which prints quoted as Lua would.
function M.text(s)
  if type(s) ~= "string" or not s:find("\n") then return nil end
  return (s:gsub("\r\n", "\n"):gsub("\r", ""):gsub("%s+$", ""))
end

-- The parsers' raw material (dhsm.luna.parse: `fields`, every key/value the
-- output had; `sections`, the same by section title) would bury the parsed
-- record: a record shows how many there are; v.fields prints them.
local RAW = { fields = "raw fields", sections = "sections" }

local function raw_summary(k, x)
  if not RAW[k] or type(x) ~= "table" or getmetatable(x) then return nil end
  local n = 0
  for _ in pairs(x) do n = n + 1 end
  return ("<%d %s>"):format(n, RAW[k])
end

-- record(v [, {width=, max_lines=, raw=}]) -> a flat record (string keys,
-- no list part, too wide for one line) as aligned "key  value" lines, as
-- `hsm show` results read best; multi-line strings as their lines, raw
-- fields summarised unless raw=true; nil when v is not one.
function M.record(v, opts)
  opts = opts or {}
  local width = opts.width or 80
  if type(v) ~= "table" or errors.is(v) or #v > 0 then return nil end
  local mt = getmetatable(v)
  if mt and mt.__tostring then return nil end
  local keys = util.sorted_keys(v)
  if #keys < 2 or #keys > 60 or inline(v, width, {}) then return nil end
  local w = 0
  for _, k in ipairs(keys) do
    if type(k) ~= "string" then return nil end
    w = math.max(w, #k)
  end
  local lines = {}
  for _, k in ipairs(keys) do
    local text = M.text(v[k]) or (not opts.raw and raw_summary(k, v[k]))
      or M.format(v[k], { width = width - w - 2, max_lines = opts.max_lines })
    lines[#lines + 1] = util.pad(k, w) .. "  " .. text:gsub("\n", "\n" .. string.rep(" ", w + 2))
  end
  return table.concat(lines, "\n")
end

-- format(v [, {width=, max_lines=}]) -> text
function M.format(v, opts)
  opts = opts or {}
  opts.width = opts.width or 80
  opts.max_lines = opts.max_lines or 200
  local out = { "" }
  block(v, "", out, {}, opts)
  if #out > opts.max_lines then
    local total = #out
    out = { table.unpack(out, 1, opts.max_lines) }
    out[#out + 1] = ("... (output capped at %d lines; pretty.format(v, {max_lines=%d}) shows more)")
      :format(opts.max_lines, total * 2)
  end
  return table.concat(out, "\n")
end

return M
