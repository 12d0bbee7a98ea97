-- dhsm.chrystoki: the Luna client's Chrystoki.conf, read and written.
--
--   local conf = chrystoki.load("/etc/Chrystoki.conf")    -- or chrystoki.parse(text, name)
--   conf:get("Chrystoki2", "LibUNIX64"); conf:set("Misc", "ToolsDir", "/opt/x"); conf:remove(s, k)
--   conf:client_cert()   --> {cert=, key=, ca=}
--   conf:servers()       --> {{index=0, name="10.0.0.4", port=1792, htl=0}, ...}
--   conf:ha_groups()     --> {{index=0, label=, serial=, members={...}, synchronize=}}
--   conf:ha_config()     --> {reconnAtt=, AutoReconnectInterval=, HAOnly=, ...}
--   conf:text(); conf:save([path])
--   chrystoki.install(inventory, {"lunacm", ...}) --> the inventory's client install:
--     {conf_path=, env = {ChrystokiConfigurationPath=}, lunacm=, vtl=, pkcs11_lib=, softhsm_conf=,
--      key_passphrase= (a secret: the client key's, when it is encrypted)}
--
-- The format is `Section = { Key = value; Key2 = value; }`, sections and
-- keys possibly on one line, `#` comments.  The text is kept as it was:
-- unchanged, it is written back byte for byte; a changed value replaces
-- only that value; a new key goes before its section's closing brace in
-- the indentation of its neighbours.  A malformed file is refused with the
-- line and column of the problem, a section or key given twice too.
local dhsm = require "dhsm"
local schema = require "dhsm.schema"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

local Conf = {}
Conf.__index = Conf

local function position(text, at)
  local before = text:sub(1, at - 1)
  local _, newlines = before:gsub("\n", "")
  return newlines + 1, at - (before:match(".*\n()") or 1) + 1
end

local function fail(name, text, at, what)
  local line, col = position(text, at)
  dhsm.error { kind = "usage", code = "BadChrystokiConf",
    message = ("%s:%d:%d: %s"):format(name, line, col, what), details = { line = line, column = col } }
end

-- Skip blanks and # comments from i; returns the next significant position.
local function skip(text, i)
  while true do
    local j = text:find("[^%s]", i)
    if not j then return #text + 1 end
    if text:sub(j, j) ~= "#" then return j end
    local nl = text:find("\n", j, true)
    if not nl then return #text + 1 end
    i = nl + 1
  end
end

-- A name given twice (a section, or a key in one section) is refused:
-- the Luna client reads one of them, and which is not ours to guess.
local function once(seen, key, name, text, at, what)
  if seen[key] then
    fail(name, text, at, ("%s is given twice (first on line %d): keep one"):format(what, (position(text, seen[key]))))
  end
  seen[key] = at
end

-- Parse text into sections: {name=, first=, close=, entries={{key=, vstart=, vend=, value=}}}
local function parse(text, name)
  util.check_lines(text, name)                -- no line over util.MAX_LINE
  local sections, i, section_at = {}, 1, {}
  while true do
    i = skip(text, i)
    if i > #text then break end
    local eq = text:find("[={};\n]", i)
    if not eq or text:sub(eq, eq) ~= "=" then fail(name, text, i, "expected 'Section = {'") end
    local sname = util.trim(text:sub(i, eq - 1))
    if sname == "" then fail(name, text, i, "a section needs a name before '='") end
    local brace = skip(text, eq + 1)
    if text:sub(brace, brace) ~= "{" then fail(name, text, brace, ("expected '{' after '%s ='"):format(sname)) end
    once(section_at, sname, name, text, i, ("section '%s'"):format(sname))
    local sec, key_at = { name = sname, first = i, entries = {} }, {}
    i = brace + 1
    while true do
      i = skip(text, i)
      if i > #text then fail(name, text, brace, ("section '%s' is not closed with '}'"):format(sname)) end
      if text:sub(i, i) == "}" then
        sec.close = i
        i = i + 1
        break
      end
      local keq = text:find("[=;{}\n]", i)
      if not keq or text:sub(keq, keq) ~= "=" then fail(name, text, i, ("expected 'Key = value;' in section '%s'"):format(sname)) end
      local key = util.trim(text:sub(i, keq - 1))
      if key == "" then fail(name, text, i, "a key is missing before '='") end
      once(key_at, key, name, text, i, ("key '%s' of section '%s'"):format(key, sname))
      local semi = text:find("[;{}\n]", keq + 1)
      if not semi or text:sub(semi, semi) ~= ";" then
        fail(name, text, keq, ("the value of '%s' must end with ';' on its line"):format(key))
      end
      local raw = text:sub(keq + 1, semi - 1)
      local lead, trail = #raw:match("^%s*"), #util.suffix(raw, "%s")
      local vstart, vend = keq + 1 + lead, semi - 1 - (lead == #raw and 0 or trail)
      sec.entries[#sec.entries + 1] = { key = key, vstart = vstart, vend = vend, value = util.trim(raw), line_start = i }
      i = semi + 1
    end
    sections[#sections + 1] = sec
  end
  return sections
end

function M.parse(text, name)
  name = name or "Chrystoki.conf"
  if type(text) ~= "string" then
    dhsm.error { kind = "usage", message = ("chrystoki.parse: expected the text of %s, got %s"):format(name, type(text)) }
  end
  local self = setmetatable({ name = name, original = text, edits = {}, added = {}, new_sections = {} }, Conf)
  self.parsed = parse(text, name)
  return self
end

function M.load(path)
  schema.argument("chrystoki.load", "path", path, "string")
  local text, err = util.read_file(path)
  if not text then dhsm.error { kind = "usage", code = "BadChrystokiConf", message = "cannot read " .. tostring(err) } end
  local c = M.parse(text, path)
  c.path = path
  return c
end

-- install(inventory, needed) -> the client install the inventory's client
-- section describes, with the environment its tools run in (the folder of
-- Chrystoki.conf, as for a client whose configuration is not in /etc);
-- every field named in needed must be there.
function M.install(inv, needed)
  schema.argument("chrystoki.install", "needed", needed, { type = "table", expect = "a list of client field names" })
  local c = type(inv) == "table" and inv.client or {}
  local fields = { "chrystoki_conf" }
  for _, f in ipairs(needed or {}) do fields[#fields + 1] = f end
  for _, field in ipairs(fields) do
    if type(c[field]) ~= "string" then
      dhsm.error { kind = "usage", message = ("the inventory's client.%s is needed (the Luna client install)"):format(field) }
    end
  end
  local conf_dir = c.chrystoki_conf:match("^(.*)/[^/]*$") or "."
  return { conf_path = c.chrystoki_conf, lunacm = c.lunacm, vtl = c.vtl, pkcs11_lib = c.pkcs11_lib,
    softhsm_conf = c.softhsm_conf, key_passphrase = c.key_passphrase, env = { ChrystokiConfigurationPath = conf_dir },
    -- what the client's PKCS#11 library reads: its Chrystoki.conf (HA groups), and a SoftHSM2 store's
    library_env = { ChrystokiConfigurationPath = conf_dir, SOFTHSM2_CONF = c.softhsm_conf } }
end

---------------------------------------------------------------------------
-- reading and editing

function Conf:section(name)
  for _, s in ipairs(self.parsed) do
    if s.name == name then return s end
  end
  for _, s in ipairs(self.new_sections) do
    if s.name == name then return s end
  end
end

local function entry_of(sec, key)
  for _, e in ipairs(sec.entries) do
    if e.key == key then return e end
  end
end

function Conf:get(section, key)
  local sec = self:section(section)
  local e = sec and entry_of(sec, key)
  if not e or e.removed then return nil end
  return e.value
end

function Conf:keys(section)
  local sec, out = self:section(section), {}
  for _, e in ipairs(sec and sec.entries or {}) do
    if not e.removed then out[#out + 1] = e.key end
  end
  return out
end

function Conf:sections()
  local out = {}
  for _, s in ipairs(self.parsed) do out[#out + 1] = s.name end
  for _, s in ipairs(self.new_sections) do out[#out + 1] = s.name end
  return out
end

-- What set() accepts, so that what it writes parses back as that one
-- entry: a name is letters, digits, '_', '.', '-' and inner spaces (real
-- ones: "LunaSA Client", "ServerName00", an HA group label); a value is one
-- line without ';', '{', '}' or control characters.
local NAME = "^[%w_%.%-][%w_%.%- ]*$"

local function bad(field, shown, expected)
  dhsm.error { kind = "usage", code = "BadChrystokiEntry",
    message = ("chrystoki.set: %s %s: expected %s"):format(field, shown, expected), details = { field = field } }
end

local function check_name(field, name)
  if type(name) ~= "string" then bad(field, "is a " .. type(name), "a string") end
  if #name > 256 or not name:match(NAME) or name:sub(-1) == " " then
    bad(field, ("%q"):format(name:sub(1, 80)), "letters, digits, '_', '.', '-' and inner spaces (no '=', ';', '{', '}', '#' or line breaks)")
  end
end

local function check_value(key, value)
  if type(value) ~= "string" and type(value) ~= "number" and type(value) ~= "boolean" then
    bad("value of " .. key, "is a " .. type(value), "a string or a number")
  end
  value = tostring(value)
  if #value > util.MAX_LINE or value:find("[;{}%c]") then
    bad("value of " .. key, ("%q"):format(value:sub(1, 80)), ("one line of at most %d bytes without ';', '{', '}' or control characters"):format(util.MAX_LINE))
  end
  return util.trim(value)
end

function Conf:set(section, key, value)
  check_name("section", section)
  check_name("key", key)
  value = check_value(key, value)
  local sec = self:section(section)
  if not sec then
    sec = { name = section, entries = {}, new = true }
    self.new_sections[#self.new_sections + 1] = sec
  end
  local e = entry_of(sec, key)
  if e then
    e.value, e.removed, e.changed = value, nil, true
  else
    sec.entries[#sec.entries + 1] = { key = key, value = value, new = true }
  end
  return self
end

function Conf:remove(section, key)
  local sec = self:section(section)
  local e = sec and entry_of(sec, key)
  if e then e.removed = true end
  return self
end

---------------------------------------------------------------------------
-- writing

-- The indentation used by a section's existing entries (default 3 spaces).
local function indentation(text, sec)
  for _, e in ipairs(sec.entries) do
    if e.line_start then
      local bol = text:sub(1, e.line_start - 1):match(".*\n()") or 1
      local ind = text:sub(bol, e.line_start - 1)
      if ind:match("^%s*$") then return ind end
    end
  end
  return "   "
end

local function render_new_section(sec)
  local lines = { sec.name .. " = {" }
  for _, e in ipairs(sec.entries) do
    if not e.removed then lines[#lines + 1] = ("   %s = %s;"):format(e.key, e.value) end
  end
  lines[#lines + 1] = "}"
  return table.concat(lines, "\n") .. "\n"
end

-- Replacements {at=, stop=, text=} applied from the end so offsets hold.
function Conf:text()
  local text, reps = self.original, {}
  for _, sec in ipairs(self.parsed) do
    local adds = {}
    for _, e in ipairs(sec.entries) do
      if e.new and not e.removed then
        adds[#adds + 1] = ("%s = %s;"):format(e.key, e.value)
      elseif e.removed and not e.new then
        local stop = text:find(";", e.vend + 1, true)
        local bol = text:sub(1, e.line_start - 1):match(".*\n()") or 1
        local eol = text:find("\n", stop, true)
        local whole_line = text:sub(bol, e.line_start - 1):match("^%s*$") and text:sub(stop + 1, (eol or #text + 1) - 1):match("^%s*$")
        if whole_line then reps[#reps + 1] = { at = bol, stop = eol or #text, text = "" }
        else reps[#reps + 1] = { at = e.line_start, stop = stop, text = "" } end
      elseif e.changed then
        reps[#reps + 1] = { at = e.vstart, stop = e.vend, text = e.value }
      end
    end
    if #adds > 0 then
      local ind = indentation(text, sec)
      local bol = text:sub(1, sec.close - 1):match(".*\n()") or 1
      local closing_alone = text:sub(bol, sec.close - 1):match("^%s*$")
      local spaced = text:sub(sec.close - 1, sec.close - 1):match("%s")
      local add = closing_alone and (ind .. table.concat(adds, "\n" .. ind) .. "\n")
        or ((spaced and "" or " ") .. table.concat(adds, " ") .. " ")
      reps[#reps + 1] = { at = closing_alone and bol or sec.close, stop = (closing_alone and bol or sec.close) - 1, text = add }
    end
  end
  table.sort(reps, function(a, b) return a.at > b.at end)
  for _, r in ipairs(reps) do text = text:sub(1, r.at - 1) .. r.text .. text:sub(r.stop + 1) end
  for _, sec in ipairs(self.new_sections) do
    if text ~= "" and not text:match("\n$") then text = text .. "\n" end
    text = text .. render_new_section(sec)
  end
  return text
end

-- save([path]): atomically, keeping the file's mode when it exists; a
-- change to the client's configuration, so through the gate (dhsm.act)
function Conf:save(path)
  path = path or self.path
  local st = sys.stat(path)
  return require("dhsm.act").write_file(path, self:text(), { mode = st and st.mode or tonumber("644", 8) })
end

---------------------------------------------------------------------------
-- typed views

local CLIENT = "LunaSA Client"

function Conf:client_cert()
  return { cert = self:get(CLIENT, "ClientCertFile"), key = self:get(CLIENT, "ClientPrivKeyFile"),
    ca = self:get(CLIENT, "ServerCAFile") }
end

-- Indexed keys Prefix00, Prefix01 ... of a section.
local function indexed(self, section, prefix)
  local out = {}
  for _, k in ipairs(self:keys(section)) do
    local n = k:match("^" .. prefix .. "(%d%d)$")
    if n then out[#out + 1] = tonumber(n) end
  end
  table.sort(out)
  return out
end

function Conf:servers()
  local out = {}
  for _, n in ipairs(indexed(self, CLIENT, "ServerName")) do
    local nn = ("%02d"):format(n)
    out[#out + 1] = { index = n, name = self:get(CLIENT, "ServerName" .. nn),
      port = tonumber(self:get(CLIENT, "ServerPort" .. nn)), htl = tonumber(self:get(CLIENT, "ServerHtl" .. nn)) }
  end
  return out
end

function Conf:ha_groups()
  local out = {}
  for _, k in ipairs(self:keys("VirtualToken")) do
    local nn = k:match("^VirtualToken(%d%d)Label$")
    if nn then
      local label = self:get("VirtualToken", k)
      local members = {}
      for m in (self:get("VirtualToken", "VirtualToken" .. nn .. "Members") or ""):gmatch("[^,%s]+") do
        members[#members + 1] = m
      end
      out[#out + 1] = { index = tonumber(nn), label = label, serial = self:get("VirtualToken", "VirtualToken" .. nn .. "SN"),
        members = members, synchronize = self:get("HASynchronize", label) == "1" }
    end
  end
  table.sort(out, function(a, b) return a.index < b.index end)
  return out
end

function Conf:ha_config()
  local out = {}
  for _, k in ipairs(self:keys("HAConfiguration")) do
    local v = self:get("HAConfiguration", k)
    out[k] = tonumber(v) or v
  end
  return out
end

return M
