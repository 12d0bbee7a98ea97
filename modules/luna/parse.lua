-- dhsm.luna.parse: LunaSH output as tables (formats: reference/luna.md,
-- real 7.2 transcripts).  Each parser takes the text of one command and
-- keeps every "Key: value" line it does not understand in .fields.
--
-- Every parser is linear in its input (no pattern that backtracks over a
-- run of blanks) and refuses a line longer than util.MAX_LINE with a luna
-- error InputTooLong: LunaSH never prints one, and a runaway device must
-- not stall the scheduler.
local util = require "dhsm.util"

local M = {}

local trim = util.trim

local function text_of(text)
  if text == nil then return "" end
  if type(text) ~= "string" then
    require("dhsm").error { kind = "usage", message = ("luna.parse: expected the text of a command, got %s"):format(type(text)) }
  end
  return text
end

local function lines(text)
  return util.lines(text_of(text), "LunaSH output", "luna")
end

-- "Key:   value" lines (first occurrence of a key wins); a key has no
-- run of two blanks inside (that is a table row) and does not start with '='.
function M.fields(text)
  local out = {}
  for _, l in ipairs(lines(text)) do
    local colon = l:find(":", 1, true)
    local k = colon and trim(l:sub(1, colon - 1))
    if k and k ~= "" and k:sub(1, 1) ~= "=" and out[k] == nil and not k:find("  %S") then
      out[k] = trim(l:sub(colon + 1))
    end
  end
  return out
end

local function yes(v)
  if v == nil then return nil end
  v = v:lower()
  return v == "yes" or v == "logged in" or v == "true" or v == "on" or v == "1"
end

local function int(v)
  return v and tonumber(v:match("%-?%d+"))
end

-- The "Command Result : N (what)" lines: the last one's code and text, and
-- where it starts.  Scanned with plain finds and one cached ')' position:
-- a gmatch with "%(([^)]*)%)" rescans to the end from every occurrence.
local function last_result(text)
  local code, what, last, close
  local pos = 1
  while true do
    local s, e = text:find("Command Result : ", pos, true)
    if not s then break end
    local c, open = text:match("^(%d+) %(()", e + 1)
    if c then
      if close ~= false and (close == nil or close < open) then close = text:find(")", open, true) or false end
      if close then code, what, last = tonumber(c), text:sub(open, close - 1), s end
    end
    pos = e + 1
  end
  return code, what, last
end

-- "Command Result : 0 (Success)" and "Error:  'cmd' failed. (HEX : RC_NAME)"
function M.result(text)
  local code, what, last = last_result(text)
  local r = { code = code, ok = code == 0, result = what }
  local errs = {}
  for _, l in ipairs(lines(text)) do
    local msg = l:match("^Error:%s+(.*)$")
    if msg then errs[#errs + 1] = msg end
  end
  if #errs > 0 or (code and code ~= 0) then
    local hex, name = text:match("failed%. %((%x+) : ([%w_]+)%)")
    r.error = { hex = hex, name = name, lines = errs }
  end
  r.text = text
  if last and text:find("^Command Result : %d+ %([^)\n]*%)%s*$", last) then
    r.text = text:sub(1, last - (text:sub(last - 1, last - 1) == "\n" and 2 or 1))
  end
  return r
end

-- hsm show -> {serial=, label=, firmware=, software_version=, model=, admin_logged_in=,
--   attempts_left=, zeroized=, manually_zeroized=, partitions={{serial=, name=}},
--   partitions_allowed=, partitions_created=, fips=, fields=}
function M.hsm_show(text)
  local f = M.fields(text)
  local attempts = f["HSM Admin login attempts left"] or ""
  local zeroized = attempts:find("ZEROIZED", 1, true) ~= nil or text:find("HSM IS ZEROIZED", 1, true) ~= nil
  local parts = {}
  for sn, name in text:gmatch("Partition:%s*(%d+),%s*Name:%s*([^\r\n]+)") do
    parts[#parts + 1] = { serial = sn, name = trim(name) }
  end
  return {
    serial = f["Serial #"], label = f["HSM Label"], firmware = f["Firmware"],
    software_version = f["Software Version"], model = f["HSM Model"],
    admin_logged_in = yes(f["HSM Admin login status"]),
    attempts_left = zeroized and 0 or int(attempts),
    zeroized = zeroized,
    manually_zeroized = yes(f["Manually Zeroized"]),
    partitions = parts,
    partitions_allowed = int(f["Number of partitions allowed"]),
    partitions_created = int(f["Number of partitions created"]),
    fips = not text:find("NOT in FIPS", 1, true),
    fields = f,
  }
end

-- partition list -> {{serial=, name=, objects=, total=, used=, free=}}
function M.partition_list(text)
  local out = {}
  for _, l in ipairs(lines(text)) do
    local sn, name, objects, total, used, free = l:match("^(%d+)%s+(%S+)%s+(%d+)%s+(%d+)%s+(%d+)%s+(%d+)%s*$")
    if sn then
      out[#out + 1] = { serial = sn, name = name, objects = tonumber(objects), total = tonumber(total),
        used = tonumber(used), free = tonumber(free) }
    end
  end
  return out
end

-- partition show -> {name=, serial=, label=, so_zeroized=, so_attempts_left=, co_locked=,
--   co_attempts_left=, objects=, fields=}
function M.partition_show(text)
  local f = M.fields(text)
  return {
    name = f["Partition Name"], serial = f["Partition SN"], label = f["Partition Label"],
    so_zeroized = yes(f["Partition SO Zeroized"]), so_attempts_left = int(f["Partition SO Login Attempts Left"]),
    co_locked = yes(f["Crypto Officer Locked Out"]), co_attempts_left = int(f["Crypto Officer Login Attempts Left"]),
    objects = int(f["Object Count"]), fields = f,
  }
end

-- client list -> {"name", ...}
function M.client_list(text)
  local out = {}
  for name in text:gmatch("registered client %d+: ([^\r\n]+)") do out[#out + 1] = trim(name) end
  return out
end

-- client show -> {id=, ip=, hostname=, partitions={...}}
function M.client_show(text)
  local f = M.fields(text)
  local parts = {}
  for p in (f["Partitions"] or ""):gmatch('"([^"]+)"') do parts[#parts + 1] = p end
  local host = f["Hostname"]
  return { id = f["ClientID"], ip = f["IPAddress"], hostname = host ~= "<none>" and host or nil, partitions = parts }
end

-- ntls show -> {device=, ip=, port=, running=, ipcheck=, fields=}
function M.ntls_show(text)
  local f = M.fields(text)
  local device, ip = text:match('NTLS bound to network device:%s*(%S+)%s+IP Address:%s*"([^"]*)"')
  return { device = device, ip = ip, port = int(f["NTLS TCP port"]), running = (f["NTLS status"] or ""):lower() == "running",
    ipcheck = (f["NTLS IP check"] or ""):lower() == "enabled", fields = f }
end

-- package list -> set of installed packages and fixes: {["KB0019789"]=true, ["lunash-..."]=true}
function M.package_list(text)
  local out = {}
  for _, l in ipairs(lines(text)) do
    local name = l:match("^%s+(%S+)%s*$")
    if name then out[name] = true end
    for kb in l:gmatch("(KB%d+)") do out[kb] = true end
  end
  return out
end

-- network show -> {hostname=, interfaces={eth0={ip=, mask=, gateway=, mac=}}, default_device=}
function M.network_show(text)
  local f = M.fields(text)
  local ifaces = {}
  for _, l in ipairs(lines(text)) do
    local key, dev, value = l:match("^(%a[%a ]-) %((%w+)%):(.*)$")
    if key then
      local i = ifaces[dev] or {}
      ifaces[dev] = i
      local map = { ["IP Address"] = "ip", ["HW Address"] = "mac", ["Mask"] = "mask", ["Gateway"] = "gateway" }
      value = trim(value)
      if map[key] and value ~= "" and not value:find("^<") then i[map[key]] = value end
    end
  end
  local default = text:match("\n0%.0%.0%.0%s+%S+%s+0%.0%.0%.0%s+%S+%s+(%S+)")
  return { hostname = f["Hostname"], interfaces = ifaces, default_device = default }
end

-- Every parser takes a string (nil reads as ""), checked for length once.
for name, parser in pairs(M) do
  M[name] = function(text)
    return parser(util.check_lines(text_of(text), "LunaSH output", "luna"))
  end
end

-- NTLS syslog lines -> events (the one parser lives in dhsm.net)
function M.ntls_log(text)
  return require("dhsm.net").ntls_log(text).events
end

return M
