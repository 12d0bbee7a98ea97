-- dhsm.schema: checking values against small declarative specs, for the
-- parameters of playbooks and for the inventory.  Every problem is
-- collected (never only the first) as "path: expected X, got Y".
--
-- A spec: { type = "string"|"number"|"integer"|"boolean"|"enum"|"secret"|
--           "list"|"table"|"object"|"record", required=, default=,
--           values= (enum), pattern=, min_length=, max_length= (string),
--           min=, max= (numbers, finite), items=, unique= (list: true, or
--           the field of its record items that may not repeat), fields= (object: name ->
--           spec; record: an ordered list of {name, spec}), separator=
--           (record, default ":"), expect= (the words for what is expected,
--           instead of the pattern: required with one), description=, prompt= (secret),
--           inventory = "hsm" (a string naming an inventory HSM: checked
--           by the runner, which has the inventory), requires=, exclusive=
--           (rules between the fields of one object, or the parameters of
--           one playbook: see relations), from_inventory= (parameters) }
-- A record is a structured list item: "hsm-a:stamp1:10.2.1.5" is split on
-- its separator into its fields in order (empty parts are nil), or given
-- as an object of those fields (JSON); it comes out as a table of fields.
-- With `coerce`, strings from the command line are converted ("3" for an
-- integer, "yes" for a boolean, "a,b" or a JSON array for a list).  A
-- required list must hold an item, and no list an empty one ("a,,b").
-- A spec with a mistake in it is found by spec_problems, when a playbook
-- loads, not when a value meets it.
local cjson = require "cjson"
local secret = require "dhsm.secret"
local util = require "dhsm.util"

local M = {}

M.types = { string = true, number = true, integer = true, boolean = true, enum = true,
  secret = true, list = true, table = true, object = true, record = true }

local function show(v)
  if v == nil then return "nothing" end
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) == "table" then return #v > 0 and "a list" or "a table" end
  if secret.is(v) then return "a secret" end
  return tostring(v)
end
M.show = show

-- "a", "a and b", "a, b and c"
local function and_list(names)
  if #names == 1 then return names[1] end
  return table.concat(names, ", ", 1, #names - 1) .. " and " .. names[#names]
end

-- What a value given where a secret belongs is, never what it holds: a
-- password typed as a number or a plain string must not reach a message.
local function unshown(v)
  if type(v) == "table" or v == nil or secret.is(v) then return show(v) end
  return ("a %s (not shown)"):format(type(v))
end

-- The fields of an object or record spec: their names in the order they
-- are checked (an object's sorted, a record's as declared), and name -> spec.
-- A malformed field (spec_problems' to report) is passed over, not a
-- traceback: `dhsm doc` shows what it can of a spec it could not check.
local function fields_of(spec)
  local fields = type(spec.fields) == "table" and spec.fields or {}
  if spec.type ~= "record" then return util.sorted_keys(fields), fields end
  local names, by_name = {}, {}
  for _, f in ipairs(fields) do
    if type(f) == "table" and f[1] ~= nil then
      names[#names + 1], by_name[f[1]] = f[1], f[2] or {}
    end
  end
  return names, by_name
end

-- Whether a value checked by spec may carry a secret: a secret, or a list,
-- object or record with one inside (the whole of "web:hunter2", given for
-- a record with a secret field, is not shown either).
local function holds_secret(spec)
  if spec.type == "secret" then return true end
  if spec.type == "list" then return holds_secret(spec.items or {}) end
  if spec.type ~= "object" and spec.type ~= "record" then return false end
  local names, by_name = fields_of(spec)
  for _, k in ipairs(names) do
    if holds_secret(by_name[k]) then return true end
  end
  return false
end

-- "name[:stamp[:ip]]": the required fields, then each optional one nested.
local function record_words(spec)
  local sep = spec.separator or ":"
  local names, by_name = fields_of(spec)
  local head, tail = {}, ""
  for i = #names, 1, -1 do
    if by_name[names[i]].required then
      table.insert(head, 1, names[i])
    else
      tail = ("[%s%s%s]"):format(i > 1 and sep or "", names[i], tail)
    end
  end
  return table.concat(head, sep) .. tail
end

-- "3-24 characters", "at least 3 characters", or nil.
local function length_words(spec)
  local lo, hi = spec.min_length, spec.max_length
  if lo and hi then return ("%d-%d characters"):format(lo, hi) end
  if lo then return ("at least %d characters"):format(lo) end
  if hi then return ("at most %d characters"):format(hi) end
end

-- What a spec accepts, in words.
function M.expected(spec)
  if spec.expect then return spec.expect end
  local t = spec.type or "string"
  if t == "enum" then
    local vs = {}
    for _, v in ipairs(spec.values or {}) do vs[#vs + 1] = ("%q"):format(tostring(v)) end
    return "one of " .. table.concat(vs, ", ")
  end
  if t == "string" and spec.inventory == "hsm" then return "inventory HSM name" end
  if t == "string" and (spec.pattern or length_words(spec)) then
    -- a pattern is the spec's, never the operator's words (spec_problems asks for expect=)
    local words, len = "string", length_words(spec)
    if spec.pattern then words = words .. " in the form the spec requires" end
    if len then words = words .. (spec.pattern and ", " or " of ") .. len end
    return words
  end
  if (t == "integer" or t == "number") and (spec.min or spec.max) then
    return ("%s %s-%s"):format(t, spec.min or "", spec.max or "")
  end
  if t == "list" then return "list of " .. M.expected(spec.items or {}) end
  if t == "secret" then return "a secret reference (env:NAME, file:PATH or prompt)" end
  if t == "object" then return "an object" end
  if t == "record" then return record_words(spec) end
  return t
end

local JSON_OBJECT = 'a JSON object ({"key": value, ...})'

local function bad(problems, path, spec, value)
  local got = holds_secret(spec) and unshown(value) or show(value)
  problems[#problems + 1] = ("%s: expected %s, got %s"):format(path, M.expected(spec), got)
end

local BOOLEANS = { ["true"] = true, yes = true, on = true, ["1"] = true,
  ["false"] = false, no = false, off = false, ["0"] = false }

local function decode_json(s)
  local ok, v = pcall(cjson.decode, s)
  if ok then return v end
end

local function is_null(v) return v == nil or v == cjson.null end

local check

local function check_string(value, spec, path, problems)
  if type(value) ~= "string" then return bad(problems, path, spec, value) end
  local n = utf8.len(value) or #value
  if (spec.min_length and n < spec.min_length) or (spec.max_length and n > spec.max_length) then
    return bad(problems, path, spec, value)
  end
  if spec.pattern then
    -- a malformed pattern is refused when the spec is checked; one that
    -- fails only further into a value is still a problem, not a traceback
    local ok, found = pcall(string.find, value, spec.pattern)
    if not ok then
      problems[#problems + 1] = ("%s: the spec's pattern %q is malformed (%s)"):format(path, spec.pattern, found)
      return nil
    end
    if not found then return bad(problems, path, spec, value) end
  end
  return value
end

local function check_number(value, spec, path, problems, coerce)
  local n = value
  if coerce and type(value) == "string" then n = tonumber(value) end
  -- 1e999 and NaN (JSON) are numbers no bound refuses, and JSON (journal,
  -- audit log) cannot hold them: written as null, they would come back as nothing
  if type(n) ~= "number" or n ~= n or n == math.huge or n == -math.huge then
    return bad(problems, path, spec, value)
  end
  if spec.type == "integer" then
    n = math.tointeger(n)
    if n == nil then return bad(problems, path, spec, value) end
  end
  if (spec.min and n < spec.min) or (spec.max and n > spec.max) then
    return bad(problems, path, spec, value)
  end
  return n
end

-- Split s on the plain (not pattern) separator sep.
local function split(s, sep)
  local parts, from = {}, 1
  while true do
    local i, j = s:find(sep, from, true)
    if not i then
      parts[#parts + 1] = s:sub(from)
      return parts
    end
    parts[#parts + 1] = s:sub(from, i - 1)
    from = j + 1
  end
end

-- A list from the command line: a JSON array, or "a,b" split on its
-- commas, each item trimmed.  An empty item (" , ", "a,,b") is kept, to be
-- refused rather than quietly dropped; "" alone is the empty list.
local function split_list(value)
  if value:match("^%s*%[") then return decode_json(value) end
  if util.trim(value) == "" then return {} end
  local items = split(value, ",")
  for i, item in ipairs(items) do items[i] = util.trim(item) end
  return items
end

-- The problem of the items given more than once, or nil.  spec.unique:
-- true compares the items themselves, a field's name that field of each
-- (a record's name: two items for one HSM with other stamps are one HSM).
-- Items with problems of their own (nil in checked) are left out.
local function duplicates(checked, n, spec, path)
  local seen, twice = {}, {}
  for i = 1, n do
    local item = checked[i]
    local key = spec.unique == true and item or (type(item) == "table" and item[spec.unique] or nil)
    if key ~= nil then
      if seen[key] == 1 then twice[#twice + 1] = show(key) end
      seen[key] = (seen[key] or 0) + 1
    end
  end
  if #twice == 0 then return nil end
  local what = spec.unique == true and "" or (spec.unique .. " ")
  return ("%s: %s%s given more than once (each may be given once)"):format(path, what, and_list(twice))
end

-- A list: a required one must hold an item (-e hsm= is a mistake, not
-- "nothing to do"), no item may be empty, and with unique= none twice.
local function check_list(value, spec, path, problems, coerce)
  local list = value
  if coerce and type(value) == "string" then list = split_list(value) end
  if type(list) ~= "table" or (next(list) ~= nil and #list == 0) then
    return bad(problems, path, spec, value)
  end
  if spec.required and #list == 0 then
    problems[#problems + 1] = ("%s: expected %s, got an empty list"):format(path, M.expected(spec))
    return nil
  end
  local out, items = {}, spec.items or { type = "string" }
  for i, item in ipairs(list) do
    local where = ("%s[%d]"):format(path, i)
    if item == "" then
      bad(problems, where, items, item)
    else
      out[i] = check(item, items, where, problems, coerce)
    end
  end
  problems[#problems + 1] = spec.unique and duplicates(out, #list, spec, path) or nil
  return out
end

-- The fields of an object (or record) value: unknown ones are problems,
-- each known one is checked in `names` order, then the rules between them.
local function check_fields(value, spec, path, problems, coerce)
  local names, by_name = fields_of(spec)
  local out = {}
  for _, k in ipairs(util.sorted_keys(value)) do
    if not by_name[k] then
      problems[#problems + 1] = ("%s.%s: unknown field%s"):format(path, tostring(k),
        util.did_you_mean(tostring(k), util.sorted_keys(by_name)))
    end
  end
  local given = {}
  for _, k in ipairs(names) do
    given[k] = not is_null(value[k])
    out[k] = check(value[k], by_name[k], path .. "." .. k, problems, coerce)
  end
  M.relations(by_name, out, given, problems, { prefix = path .. "." })
  return out
end

local function check_object(value, spec, path, problems, coerce)
  if type(value) ~= "table" or (#value > 0) then return bad(problems, path, spec, value) end
  return check_fields(value, spec, path, problems, coerce)
end

-- A record: "a:b:c" in field order (too many parts is a problem, an empty
-- part is nil), or an object of its fields.
local function check_record(value, spec, path, problems, coerce)
  if type(value) == "string" then
    local names = fields_of(spec)
    local parts = split(value, spec.separator or ":")
    if #parts > #names then return bad(problems, path, spec, value) end
    local fields = {}
    for i, part in ipairs(parts) do
      if part ~= "" then fields[names[i]] = part end
    end
    value, coerce = fields, true             -- the parts are text, as from the command line
  end
  if type(value) ~= "table" or #value > 0 then return bad(problems, path, spec, value) end
  return check_fields(value, spec, path, problems, coerce)
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
  if is_null(value) then
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
    return check_string(value, spec, path, problems)
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
    -- given as text (-e extra=...), a table is a JSON object, and said so
    if type(v) ~= "table" then return bad(problems, path, coerce and { expect = JSON_OBJECT } or spec, value) end
    if coerce and (#v > 0 or type(value) == "string" and value:match("^%s*%[")) then
      -- a list has its own type (list)
      problems[#problems + 1] = ("%s: expected %s, got a list"):format(path, JSON_OBJECT)
      return nil
    end
    return v
  elseif t == "object" then
    return check_object(value, spec, path, problems, coerce)
  elseif t == "record" then
    return check_record(value, spec, path, problems, coerce)
  end
  problems[#problems + 1] = ("%s: the spec has an unknown type %s"):format(path, show(t))
end
M.check = check

-- walk(value, spec, path, visit): visit(v, spec, path) for a checked value
-- and every item and field inside it, for the rules that need more than
-- the value itself (a secret's source, the inventory's names).
function M.walk(value, spec, path, visit)
  if value == nil then return end
  visit(value, spec, path)
  local t = spec.type or "string"
  if type(value) ~= "table" then return end
  if t == "list" then
    for i, item in ipairs(value) do M.walk(item, spec.items or {}, ("%s[%d]"):format(path, i), visit) end
  elseif t == "object" or t == "record" then
    local names, by_name = fields_of(spec)
    for _, k in ipairs(names) do M.walk(value[k], by_name[k], path .. "." .. k, visit) end
  end
end

---------------------------------------------------------------------------
-- rules between fields (or parameters)
--
--   requires = {"a", "b"}          when this one is set (its checked value,
--                                  defaults applied, is neither nil nor
--                                  false), a and b must be set too
--   requires = { v = {"a"} }       an enum's: only when its value is v
--   exclusive = {"a"}              this one and a cannot both be given
--                                  (given explicitly and set: a default,
--                                  a value from the inventory, nil and
--                                  false do not count: every=false says
--                                  "not every", which goes with hsm=)

local function set(v) return v ~= nil and v ~= false end

-- requires_cases(spec) -> { {when=, names=} }: the cases of its requires=,
-- one with no `when` for a plain list (whenever set), else one per value.
function M.requires_cases(spec)
  local r = spec.requires
  if type(r) ~= "table" then return {} end
  if r[1] ~= nil or next(r) == nil then return { { names = r } } end
  local out = {}
  for _, v in ipairs(util.sorted_keys(r)) do out[#out + 1] = { when = v, names = r[v] } end
  return out
end

-- The names spec's requires= asks for when its checked value is v.
local function required_by(spec, v)
  if not set(v) then return {} end
  for _, case in ipairs(M.requires_cases(spec)) do
    if case.when == nil or case.when == v then return case.names end
  end
  return {}
end

-- How the value that needs the others is named: "true", "template"
-- (shown when it says which case this is), else nothing.
local function case_words(spec, v)
  if type(v) == "boolean" or spec.type == "enum" then return tostring(v) .. " " end
  return ""
end

-- relations(fields, values, given, problems [, opts]): the requires= and
-- exclusive= rules of the specs in fields (name -> spec), against the
-- checked values and the names given explicitly (given[name] true: by the
-- caller, not by a default or the inventory).  opts.prefix comes before
-- each name; opts.how(names) says how to give the names missing
-- ("(give -e a=...)").  A name that has a problem of its own is not
-- reported missing again.
function M.relations(fields, values, given, problems, opts)
  opts = opts or {}
  local prefix, seen = opts.prefix or "", {}
  for _, k in ipairs(util.sorted_keys(fields)) do
    local spec = fields[k]
    local missing = {}
    for _, other in ipairs(required_by(spec, values[k])) do
      if not set(values[other]) and not (given[other] and values[other] == nil) then
        missing[#missing + 1] = other
      end
    end
    if #missing > 0 then
      problems[#problems + 1] = ("%s%s: %sneeds %s%s"):format(prefix, k, case_words(spec, values[k]),
        and_list(missing), opts.how and (" " .. opts.how(missing)) or "")
    end
    for _, other in ipairs(type(spec.exclusive) == "table" and spec.exclusive or {}) do
      local pair = k < other and (k .. " " .. other) or (other .. " " .. k)
      if given[k] and given[other] and set(values[k]) and set(values[other]) and not seen[pair] then
        seen[pair] = true
        problems[#problems + 1] = ("%s%s: cannot go with %s (give only one of them)"):format(prefix, k, other)
      end
    end
  end
end

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
  if article[t] and not (spec.pattern or spec.min or spec.max or spec.min_length or spec.max_length) then
    return article[t]
  end
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
  if t:find("secret") or t:find("text") or tostring(k):lower():find("pass")
      or tostring(k):lower():find("secret") or tostring(k):lower():find("pin") then
    return unshown(v)
  end
  return show(v)
end

-- An options spec is checked (spec_problems) the first time it is used:
-- a mistake in it is the module's, raised as a Lua error, not the caller's.
local OPTION_SPEC_TYPES = util.merged(M.types, { ["function"] = true, text = true })
local sound_fields = setmetatable({}, { __mode = "k" })

local function check_option_spec(where, fields)
  if sound_fields[fields] then return end
  local problems = {}
  for _, k in ipairs(util.sorted_keys(fields)) do
    for _, p in ipairs(M.spec_problems(fields[k], tostring(k), { types = OPTION_SPEC_TYPES })) do
      problems[#problems + 1] = p
    end
  end
  if #problems > 0 then error(("%s: its option spec is wrong: %s"):format(where, table.concat(problems, "; ")), 3) end
  sound_fields[fields] = true
end

function M.options(where, opts, fields, opts_required)
  local usage = function(msg)
    error(require("dhsm").error.new { kind = "usage", code = "BadOption", message = where .. ": " .. msg }, 3)
  end
  check_option_spec(where, fields)
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

-- argument(where, name, value, spec) -> value: a public function's
-- argument, checked first by the option reader (its types: also
-- "function", "secret", "text", a list of types), so a wrong one is a
-- usage error "where: name: expected X, got Y", not a Lua error from deep
-- inside.  spec may be a type name: that type, required.  nil passes
-- unless spec.required.
-- The usage error of a bad argument, one wording for every checker below.
local function bad_argument(where, what, expected, got)
  error(require("dhsm").error.new { kind = "usage", code = "BadArgument",
    message = ("%s: %s: expected %s, got %s"):format(where, what, expected, got) }, 3)
end

function M.argument(where, name, value, spec)
  if type(spec) == "string" then spec = { type = spec, required = true } end
  if value == nil and not spec.required then return nil end
  if value == nil or not option_ok(value, spec, name) then
    bad_argument(where, name, option_words(spec), value == nil and "nothing" or shown(name, value, spec))
  end
  return value
end

-- give(setting, ...) -> how the operator adds "NAME=VALUE" settings to the
-- run they are in, for advice they can type: `-e NAME=VALUE` on dhsm run's
-- line, `:run ... NAME=VALUE` in the REPL (its tasks' context says
-- front = "repl").
function M.give(...)
  local settings = { ... }
  if require("dhsm").context().front == "repl" then return ":run ... " .. table.concat(settings, " ") end
  for i, s in ipairs(settings) do settings[i] = "-e " .. s end
  return table.concat(settings, " ")
end

---------------------------------------------------------------------------
-- spec_problems(spec, path [, opts]) -> list of strings
--
-- Mistakes in a spec itself (a playbook author's), found when the playbook
-- loads rather than when a value meets them: an unknown type or key (a
-- misspelt `requried`), a key of another type's (`pattern` on an
-- integer), a pattern Lua refuses, a default its own spec refuses, a
-- requires= or exclusive= naming no sibling, a record whose fields cannot
-- be told apart.  Item and field specs are looked into.  opts: siblings
-- (the specs beside this one, name -> spec: the playbook's parameters or
-- the object's fields), name (this one's among them), kind (what the
-- siblings are called: "parameter"; default "field"), types (the type
-- names allowed; default M.types).

-- Each key a spec may hold: true for every type, or the types it applies to.
local KEYS = {
  type = true, required = true, default = true, expect = true, description = true,
  from_inventory = true, requires = true, exclusive = true,
  pattern = { string = true }, min_length = { string = true }, max_length = { string = true },
  inventory = { string = true },
  min = { number = true, integer = true }, max = { number = true, integer = true },
  values = { enum = true }, items = { list = true }, unique = { list = true },
  fields = { object = true, record = true },
  separator = { record = true }, prompt = { secret = true },
}

-- What Lua says of a pattern it cannot use, or nil.  Matching against ""
-- meets the pattern's first items: what a later item hides is reported
-- when a value meets it (check_string), still not as a traceback.
local function pattern_error(pattern)
  local ok, err = pcall(string.find, "", pattern)
  if not ok then return (tostring(err):gsub("^.-malformed", "malformed")) end
end

local function is_name_list(v)
  if type(v) ~= "table" then return false end
  for k, x in pairs(v) do
    if math.type(k) ~= "integer" or type(x) ~= "string" then return false end
  end
  return true
end

-- The lists of names a requires= or exclusive= holds; requires= keyed by
-- value is for an enum, each key one of its values.
local function name_lists(spec, key, r, path, out)
  if key ~= "requires" then return { r } end
  local lists, values = {}, {}
  for _, v in ipairs(spec.type == "enum" and spec.values or {}) do values[v] = true end
  for _, case in ipairs(type(r) == "table" and M.requires_cases(spec) or { { names = r } }) do
    if case.when ~= nil and not values[case.when] then
      out[#out + 1] = ("%s.requires: %s is not one of its values (requires= keyed by value is for an enum)")
        :format(path, show(case.when))
    end
    lists[#lists + 1] = case.names
  end
  return lists
end

-- Each name must be another of the siblings (one that is not is said with
-- the closest that is).
local function names_problems(names, where, opts, out)
  if not is_name_list(names) then
    out[#out + 1] = ("%s: expected a list of names, got %s"):format(where, show(names))
    return
  end
  local others = {}
  for _, x in ipairs(util.sorted_keys(opts.siblings)) do
    if x ~= opts.name then others[#others + 1] = x end
  end
  for _, name in ipairs(names) do
    if opts.siblings[name] == nil or name == opts.name then
      out[#out + 1] = ("%s: %s is not another %s%s"):format(where, show(name), opts.kind or "field",
        util.did_you_mean(name, others))
    end
  end
end

-- requires= and exclusive= name the spec's siblings.
local function relation_problems(spec, path, opts, out)
  for _, key in ipairs { "requires", "exclusive" } do
    local r = spec[key]
    if r ~= nil and not opts.siblings then
      out[#out + 1] = ("%s.%s: only parameters and the fields of an object or record name each other"):format(path, key)
    elseif r ~= nil then
      for _, names in ipairs(name_lists(spec, key, r, path, out)) do
        names_problems(names, path .. "." .. key, opts, out)
      end
    end
  end
end

local function key_problems(spec, path, t, out)
  for _, k in ipairs(util.sorted_keys(spec)) do
    local applies = KEYS[k]
    if applies == nil then
      out[#out + 1] = ("%s: unknown key %s%s"):format(path, show(k), util.did_you_mean(tostring(k), util.sorted_keys(KEYS)))
    elseif applies ~= true and type(t) == "string" and not applies[t] then
      out[#out + 1] = ("%s: %s applies to %s, not %s"):format(path, show(k),
        table.concat(util.sorted_keys(applies), " or "), t)
    end
  end
end

local function value_problems(spec, path, out)
  if spec.pattern ~= nil then
    if type(spec.pattern) ~= "string" then
      out[#out + 1] = path .. ": 'pattern' must be a Lua pattern string"
    elseif pattern_error(spec.pattern) then
      out[#out + 1] = ("%s: pattern %q: %s"):format(path, spec.pattern, pattern_error(spec.pattern))
    elseif spec.expect == nil and (spec.type or "string") == "string" then
      out[#out + 1] = ("%s: a pattern needs expect=, the words shown for what is expected (e.g. \"3-24 letters, "
        .. "digits or '-'\"): a Lua pattern is not what an operator reads"):format(path)
    end
  end
  for _, k in ipairs { "min", "max" } do
    if spec[k] ~= nil and type(spec[k]) ~= "number" then out[#out + 1] = ("%s.%s: expected a number"):format(path, k) end
  end
  for _, k in ipairs { "min_length", "max_length" } do
    local n = spec[k]
    if n ~= nil and (math.type(n) ~= "integer" or n < 0) then
      out[#out + 1] = ("%s.%s: expected an integer >= 0, got %s"):format(path, k, show(n))
    end
  end
  if spec.inventory ~= nil and spec.inventory ~= "hsm" then
    out[#out + 1] = ("%s.inventory: expected \"hsm\" (the value names an inventory HSM), got %s"):format(path, show(spec.inventory))
  end
  for _, k in ipairs { "expect", "description", "separator", "prompt", "from_inventory" } do
    if spec[k] ~= nil and (type(spec[k]) ~= "string" or spec[k] == "") then
      out[#out + 1] = ("%s.%s: expected a non-empty string"):format(path, k)
    end
  end
end

-- unique= compares plain items (true), or one field of each record or
-- object item (its name): a table compared whole would never be equal.
local function unique_problems(spec, path, out)
  local u = spec.unique
  if u == nil then return end
  local items = type(spec.items) == "table" and spec.items or {}
  local it = items.type or "string"
  local composite = it == "list" or it == "table" or it == "object" or it == "record"
  if u == true then
    if composite then
      out[#out + 1] = ("%s.unique: true compares plain items; for %s items name the field to compare"):format(path, it)
    end
  elseif type(u) ~= "string" or u == "" then
    out[#out + 1] = ("%s.unique: expected true or the name of a field of its items, got %s"):format(path, show(u))
  elseif not ((it == "object" or it == "record") and select(2, fields_of(items))[u]) then
    out[#out + 1] = ("%s.unique: %s is not a field of its items"):format(path, show(u))
  end
end

-- A record's fields: {name, spec} pairs, distinct identifiers, the
-- required ones first (an optional field before a required one could not
-- be told apart when a part is left out).
local function record_problems(spec, path, out)
  if type(spec.fields) ~= "table" or #spec.fields == 0 then
    out[#out + 1] = path .. ": a record needs 'fields', a list of {name, spec}"
    return
  end
  local seen, optional = {}, nil
  for i, f in ipairs(spec.fields) do
    local name = type(f) == "table" and f[1]
    if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") or type(f[2]) ~= "table" then
      out[#out + 1] = ("%s.fields[%d]: expected {name, spec} with an identifier for a name"):format(path, i)
    else
      if seen[name] then out[#out + 1] = ("%s.fields[%d]: %s is already a field"):format(path, i, show(name)) end
      seen[name] = f[2]
      if f[2].required and optional then
        out[#out + 1] = ("%s.fields[%d]: required %s after optional %s: the parts could not be told apart")
          :format(path, i, name, optional)
      end
      optional = optional or (not f[2].required and name) or nil
    end
  end
  return seen
end

function M.spec_problems(spec, path, opts)
  if type(spec) ~= "table" then return { path .. ": must be a table" } end
  opts = opts or {}
  local types = opts.types or M.types
  local out = {}
  local t = spec.type or "string"
  local tlist = type(t) == "table" and t or { t }
  for _, x in ipairs(tlist) do
    if not types[x] then
      out[#out + 1] = ("%s: unknown type %s%s"):format(path, show(x), util.did_you_mean(tostring(x), util.sorted_keys(types)))
    end
  end
  key_problems(spec, path, t, out)
  value_problems(spec, path, out)
  relation_problems(spec, path, opts, out)
  unique_problems(spec, path, out)
  if t == "enum" and (type(spec.values) ~= "table" or #spec.values == 0) then
    out[#out + 1] = path .. ": an enum needs a non-empty 'values' list"
  end
  if t == "list" and spec.items ~= nil then
    for _, p in ipairs(M.spec_problems(spec.items, path .. ".items", { types = types })) do out[#out + 1] = p end
  end
  local fields = t == "object" and spec.fields or (t == "record" and record_problems(spec, path, out))
  if type(fields) == "table" then
    for _, k in ipairs(util.sorted_keys(fields)) do
      local inner = { siblings = fields, name = k, types = types }
      for _, p in ipairs(M.spec_problems(fields[k], path .. "." .. tostring(k), inner)) do out[#out + 1] = p end
    end
  end
  if #out == 0 and spec.default ~= nil and M.types[t] then   -- the rest is sound: does it take its own default?
    local problems = {}
    check(spec.default, spec, path .. ".default", problems, true)
    for _, p in ipairs(problems) do out[#out + 1] = p end
  end
  return out
end

---------------------------------------------------------------------------
-- The arguments of a module's public functions, checked first: a wrong one
-- is a usage error naming the function, the argument and what was
-- expected, never a Lua error from deep inside ("attempt to index a nil
-- value").

-- bad_argument(where, what, expected, v): raises that usage error
-- ("ntls.tcp: entry: expected an inventory HSM entry, got nil").
function M.bad_argument(where, what, expected, v)
  bad_argument(where, what, expected, type(v))
end

-- record_argument(where, what, v, fields, expected): a table, then its
-- fields as the option reader (M.options) reads them.
function M.record_argument(where, what, v, fields, expected)
  if type(v) ~= "table" then M.bad_argument(where, what, expected, v) end
  M.options(("%s: %s"):format(where, what), v, fields, true)
end

-- The kinds every module may name: kind -> {test=, expected=}.
local function lua_type(t, expected)
  return { test = function(v) return type(v) == t end, expected = expected }
end
local ARGUMENT_KINDS = {
  string = lua_type("string", "a string"), table = lua_type("table", "a table"),
  number = lua_type("number", "a number"), boolean = lua_type("boolean", "a boolean"),
  ["function"] = lua_type("function", "a function"),
  integer = { test = function(v) return math.type(v) == "integer" end, expected = "a whole number" },
  any = { test = function() return true end, expected = "anything" },
}

-- check_arguments(prefix, module, signatures [, kinds]): wraps each public
-- function named in signatures so that its arguments are checked before it
-- runs.  A signature lists its arguments in order as "name:kind", a kind
-- ending in "?" optional (nil accepted): "c:client name:string group:string?".
-- kinds: the module's own (name -> {test=, expected=}) beside the Lua types.
-- A function with good arguments runs as before, with every result.
function M.check_arguments(prefix, module, signatures, kinds)
  for fname, signature in pairs(signatures) do
    local fn = module[fname]
    assert(type(fn) == "function", prefix .. "." .. fname .. ": no such function")
    local args = {}
    for name, kind, optional in signature:gmatch("([%w_]+):([%w_]+)(%??)") do
      local k = (kinds or {})[kind] or ARGUMENT_KINDS[kind]
      assert(k, ("%s.%s: unknown argument kind %s"):format(prefix, fname, kind))
      args[#args + 1] = { name = name, kind = k, optional = optional == "?" }
    end
    local where = prefix .. "." .. fname
    module[fname] = function(...)
      for i, a in ipairs(args) do
        local v = select(i, ...)
        if not (v == nil and a.optional) and not a.kind.test(v) then
          M.bad_argument(where, a.name, a.kind.expected .. (a.optional and " or nothing" or ""), v)
        end
      end
      return fn(...)
    end
  end
end

return M
