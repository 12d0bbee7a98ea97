-- dhsm.luna.rc: LunaSH return codes, hex <-> name, from the table the
-- simulator reads too (modules/luna/return_codes.tsv, compiled into dhsm).
--
--   rc.name("300002")  --> "LUNA_RET_TOKEN_LOCKED_OUT"   (nil when unknown)
--   rc.hex("LUNA_RET_UM_PIN_INCORRECT") --> "A00000"
--   rc.tag("A00000")   --> "V" (V seen, D SDK/docs, B built by BuildRC, K simulator's choice)
--
-- Hex as LunaSH prints it: upper case, no 0x, no leading zeros (luna-field.md
-- section 10.1); lookups normalise "0x00a00000" the same way.
local sys = require "dhsm.sys"

local M = {}

local FILE = "modules/luna/return_codes.tsv"
local by_hex, by_name, tags = {}, {}, {}

-- "0x00a00000" / "a00000" -> "A00000"; nil when not hex
function M.normalize(hex)
  if type(hex) ~= "string" then return nil end
  local digits = hex:match("^%s*0[xX](%x+)%s*$") or hex:match("^%s*(%x+)%s*$")
  if not digits or #digits > 16 then return nil end
  return (digits:upper():gsub("^0+(.)", "%1"))
end

local function load()
  local text = assert(sys.embedded_read("d", FILE), FILE .. " is not compiled in")
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local hex, name, tag = line:match("^(%x+)\t([%w_]+)\t(%u)\t")
      assert(hex, FILE .. ": malformed row " .. line)
      by_hex[hex] = by_hex[hex] or name
      by_name[name] = by_name[name] or hex
      tags[hex] = tag
    end
  end
end
load()

function M.name(hex)
  local h = M.normalize(hex)
  return h and by_hex[h]
end

function M.hex(name)
  return by_name[name]
end

function M.tag(hex)
  local h = M.normalize(hex)
  return h and tags[h]
end

-- every pair, for tests and the REPL: {{hex=, name=, tag=}, ...} sorted by hex
function M.all()
  local out = {}
  for hex, name in pairs(by_hex) do out[#out + 1] = { hex = hex, name = name, tag = tags[hex] } end
  table.sort(out, function(a, b) return a.hex < b.hex end)
  return out
end

return M
