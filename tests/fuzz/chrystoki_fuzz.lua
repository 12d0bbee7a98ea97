-- Fuzz the Chrystoki.conf reader and editor (dhsm.chrystoki).  Properties:
-- a file read and not changed is written back byte for byte; what set()
-- accepts parses back as exactly that one entry (no injection).
local fuzz = dofile(arg[0]:match("^(.-)[^/]*$") .. "harness.lua")
local chrystoki = require "dhsm.chrystoki"
local util = require "dhsm.util"

local seeds = { fuzz.file("../fixtures/chrystoki/Chrystoki.conf") }
for _, block in ipairs(fuzz.corpus("luna")) do
  if block:find("Chrystoki2 = {", 1, true) then seeds[#seeds + 1] = block end
end

local function views(conf)
  conf:servers()
  conf:ha_groups()
  conf:ha_config()
  conf:client_cert()
  for _, s in ipairs(conf:sections()) do
    for _, k in ipairs(conf:keys(s)) do conf:get(s, k) end
  end
end

-- a piece of the input as a name or a value
local function piece(input)
  local a = math.random(#input + 1)
  return input:sub(a, a + math.random(0, 40))
end

fuzz.main {
  name = "chrystoki",
  seeds = seeds,
  dictionary = { "Section = {", "}", "Key = value;", ";", "=", "{", "#", "# comment\n", "LunaSA Client = {",
    "ServerName00 = 10.0.0.4;", "ServerPort00 = 1792;", "VirtualToken00Label = myHA;",
    "VirtualToken00Members = 1,2;", "HASynchronize = { myHA = 1; }", "HAConfiguration = { reconnAtt = -1; }" },
  target = function(input)
    local conf = chrystoki.parse(input, "fuzz")
    fuzz.property(conf:text() == input, "an unchanged file is not written back as it was")
    views(conf)
    local sections = conf:sections()
    local section = #sections > 0 and math.random() < 0.7 and sections[math.random(#sections)] or piece(input)
    local keys = conf:keys(section)
    local key = #keys > 0 and math.random() < 0.5 and keys[math.random(#keys)] or piece(input)
    local value = piece(input)
    local ok = pcall(conf.set, conf, section, key, value)
    if ok then
      local again = chrystoki.parse(conf:text(), "fuzz (after set)")
      fuzz.property(again:get(section, key) == util.trim(value), "set %q %q %q reads back as %q", section, key,
        value, tostring(again:get(section, key)))
      views(again)
    end
  end,
}
