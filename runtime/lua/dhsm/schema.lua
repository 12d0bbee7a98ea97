-- dhsm.schema: checking values against small declarative specs, for the
-- parameters of playbooks and for the inventory.  Every problem is
-- collected (never only the first) as "path: expected X, got Y".
--
-- A spec: { type = "string"|"number"|"integer"|"boolean"|"enum"|"secret"|
--           "list"|"table"|"object", required=, default=, values= (enum),
--           pattern= (string), min=, max= (numbers), items= (list),
--           fields= (object), expect= (the words for what is expected,
--           instead of e.g. the pattern), description= }
-- With `coerce`, strings from the command line are converted ("3" for an
-- integer, "yes" for a boolean, "a,b" or a JSON array for a list).
local cjson = require "cjson"
local secret = require "dhsm.secret"
local util = require "dhsm.util"

local M = {}

M.types = { string = true, number = true, integer = true, boolean = true, enum = true,
  secret = true, list = true, table = true, object = true }

local function show(v)
  if v == nil then return "nothing" end
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) == "table" then return #v > 0 and "a list" or "a table" end
  if secret.is(v) then return "a secret" end
  return tostring(v)
end
M.show = show

-- What a spec accepts, in words.
function M.expected(spec)
  if spec.expect then return spec.expect end
  local t = spec.type or "string"
  if t == "enum" then
    local vs = {}
    for _, v in ipairs(spec.values or {}) do vs[#vs + 1] = ("%q"):format(tostring(v)) end
    return "one of " .. table.concat(vs, ", ")
  end
  if t == "string" and spec.pattern then return "string matching " .. spec.pattern end
  if (t == "integer" or t == "number") and (spec.min or spec.max) then
    return ("%s %s-%s"):format(t, spec.min or "", spec.max or "")
  end
  if t == "list" then return "list of " .. M.expected(spec.items or {}) end
  if t == "secret" then return "a secret reference (env:NAME, file:PATH or prompt)" end
  if t == "object" then return "an object" end
  return t
end

local function bad(problems, path, spec, value)
  problems[#problems + 1] = ("%s: expected %s, got %s"):format(path, M.expected(spec), show(value))
end

local BOOLEANS = { ["true"] = true, yes = true, on = true, ["1"] = true,
  ["false"] = false, no = false, off = false, ["0"] = false }

local function decode_json(s)
  local ok, v = pcall(cjson.decode, s)
  if ok then return v end
end

local check

local function check_number(value, spec, path, problems, coerce)
  local n = value
  if coerce and type(value) == "string" then n = tonumber(value) end
  if type(n) ~= "number" then return bad(problems, path, spec, value) end
  if spec.type == "integer" then
    n = math.tointeger(n)
    if n == nil then return bad(problems, path, spec, value) end
  end
  if (spec.min and n < spec.min) or (spec.max and n > spec.max) then
    return bad(problems, path, spec, value)
  end
  return n
end

local function check_list(value, spec, path, problems, coerce)
  local list = value
  if coerce and type(value) == "string" then
    if value:match("^%s*%[") then
      list = decode_json(value)
    else
      list = {}
      for item in value:gmatch("[^,]+") do list[#list + 1] = util.trim(item) end
    end
  end
  if type(list) ~= "table" or (next(list) ~= nil and #list == 0) then
    return bad(problems, path, spec, value)
  end
  local out = {}
  for i, item in ipairs(list) do
    out[i] = check(item, spec.items or { type = "string" }, ("%s[%d]"):format(path, i), problems, coerce)
  end
  return out
end

local function check_object(value, spec, path, problems, coerce)
  if type(value) ~= "table" or (#value > 0) then return bad(problems, path, spec, value) end
  local out = {}
  local names = util.sorted_keys(spec.fields or {})
  for _, k in ipairs(util.sorted_keys(value)) do
    if not (spec.fields or {})[k] then
      problems[#problems + 1] = ("%s.%s: unknown field%s"):format(path, tostring(k), util.did_you_mean(tostring(k), names))
    end
  end
  for _, k in ipairs(names) do
    out[k] = check(value[k], spec.fields[k], path .. "." .. k, problems, coerce)
  end
  return out
end

local function check_secret(value, spec, path, problems)
  if secret.is(value) then return value end
  if type(value) ~= "string" then return bad(problems, path, spec, value) end
  local ok, s = pcall(secret.ref, value, spec.prompt or ("%s: "):format(spec.description or path))
  if ok then return s end
  problems[#problems + 1] = ("%s: expected %s, got a literal value (it would show in "
    .. "your shell history and process list)"):format(path, M.expected(spec))
end

-- check(value, spec, path, problems [, coerce]) -> the checked value
function check(value, spec, path, problems, coerce)
  if value == nil or value == cjson.null then
    if spec.default ~= nil then
      return check(spec.default, spec, path, problems, true)
    end
    if spec.required then
      problems[#problems + 1] = ("%s: missing, expected %s"):format(path, M.expected(spec))
    end
    return nil
  end
  local t = spec.type or "string"
  if t == "string" then
    if type(value) ~= "string" then return bad(problems, path, spec, value) end
    if spec.pattern and not value:match(spec.pattern) then return bad(problems, path, spec, value) end
    return value
  elseif t == "integer" or t == "number" then
    return check_number(value, spec, path, problems, coerce)
  elseif t == "boolean" then
    if type(value) == "boolean" then return value end
    if coerce and type(value) == "string" and BOOLEANS[value:lower()] ~= nil then
      return BOOLEANS[value:lower()]
    end
    return bad(problems, path, spec, value)
  elseif t == "enum" then
    for _, v in ipairs(spec.values or {}) do
      if v == value then return value end
    end
    return bad(problems, path, spec, value)
  elseif t == "secret" then
    return check_secret(value, spec, path, problems)
  elseif t == "list" then
    return check_list(value, spec, path, problems, coerce)
  elseif t == "table" then
    local v = value
    if coerce and type(value) == "string" then v = decode_json(value) end
    if type(v) ~= "table" then return bad(problems, path, spec, value) end
    return v
  elseif t == "object" then
    return check_object(value, spec, path, problems, coerce)
  end
  problems[#problems + 1] = ("%s: the spec has an unknown type %s"):format(path, show(t))
end
M.check = check

---------------------------------------------------------------------------
-- options(where, opts, fields [, opts_required]) -> opts
--
-- The one checked reader of the option tables modules take
-- (net.tls{ca_file=}, azure.client{timeout=}, proc.run{argv=} ...): a
-- value of the wrong type is a usage error naming the function, the field
-- and what was expected ("net.tls: ca_file: expected a file path, got
-- false"), never a raw Lua error from deeper down.  fields maps a name to
-- a spec as above; three more types exist for options:
--   "function", "secret" (a dhsm.secret, never a plain string) and
--   "text" (a string or a secret).
-- `type` may also be a list of types, any of which is accepted.  Fields
-- not named are left alone (an inventory entry carries more than a
-- function reads).  opts may be nil unless opts_required; opts itself is
-- returned, unchanged.
local OPTION_TYPES = {
  ["function"] = function(v) return type(v) == "function" end,
  secret = function(v) return secret.is(v) end,
  text = function(v) return type(v) == "string" or secret.is(v) end,
}

local function option_words(spec)
  if spec.expect then return spec.expect end
  local t = spec.type
  if type(t) == "table" then
    local words = {}
    for i, x in ipairs(t) do words[i] = option_words { type = x } end
    return table.concat(words, " or ")
  end
  if t == "secret" then return "a secret (dhsm.secret)" end
  if t == "text" then return "a string or a secret" end
  if t == "function" then return "a function" end
  local article = { string = "a string", table = "a table", boolean = "a boolean", number = "a number",
    integer = "an integer" }
  if article[t] and not (spec.pattern or spec.min or spec.max) then return article[t] end
  return M.expected(spec)
end

local function option_ok(value, spec, path)
  local t = spec.type or "string"
  if type(t) == "table" then
    for _, x in ipairs(t) do
      if option_ok(value, setmetatable({ type = x }, { __index = spec }), path) then return true end
    end
    return false
  end
  if OPTION_TYPES[t] then return OPTION_TYPES[t](value) end
  local problems = {}
  check(value, spec, path, problems)
  return #problems == 0
end

-- A wrong value is shown in the message unless it could be a secret put
-- where a dhsm.secret belongs (a password typed as a plain string).
local function shown(k, v, spec)
  local t = type(spec.type) == "table" and table.concat(spec.type, ",") or tostring(spec.type)
  if type(v) == "string" and (t:find("secret") or t:find("text") or tostring(k):lower():find("pass")
      or tostring(k):lower():find("secret") or tostring(k):lower():find("pin")) then
    return "a string (not shown)"
  end
  return show(v)
end

function M.options(where, opts, fields, opts_required)
  local usage = function(msg)
    error(require("dhsm").error.new { kind = "usage", code = "BadOption", message = where .. ": " .. msg }, 3)
  end
  if opts == nil and not opts_required then return nil end
  if type(opts) ~= "table" then usage(("expected a table of options, got %s"):format(show(opts))) end
  for _, k in ipairs(util.sorted_keys(fields)) do
    local v, spec = opts[k], fields[k]
    if v == nil then
      if spec.required then usage(("%s: missing, expected %s"):format(k, option_words(spec))) end
    elseif not option_ok(v, spec, k) then
      usage(("%s: expected %s, got %s"):format(k, option_words(spec), shown(k, v, spec)))
    end
  end
  return opts
end

-- Problems in a spec itself (a playbook author's mistake), as strings.
function M.spec_problems(spec, path)
  local out = {}
  if type(spec) ~= "table" then return { path .. ": must be a table" } end
  local t = spec.type or "string"
  if not M.types[t] then
    out[#out + 1] = ("%s: unknown type %s%s"):format(path, show(t),
      util.did_you_mean(tostring(t), util.sorted_keys(M.types)))
  end
  if t == "enum" and (type(spec.values) ~= "table" or #spec.values == 0) then
    out[#out + 1] = path .. ": an enum needs a non-empty 'values' list"
  end
  if spec.pattern ~= nil and type(spec.pattern) ~= "string" then
    out[#out + 1] = path .. ": 'pattern' must be a Lua pattern string"
  end
  return out
end

return M
