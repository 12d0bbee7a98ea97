-- Fuzz the small parsers of the runtime: dhsm.util (trim, lines, suffix,
-- closest, shell_quote, pad) and the parameter coercion of dhsm.schema (what
-- `-e key=value` goes through).
local fuzz = dofile(arg[0]:match("^(.-)[^/]*$") .. "harness.lua")
local util = require "dhsm.util"
local schema = require "dhsm.schema"

local SPECS = {
  { type = "string", pattern = "^[%w%-]+$" }, { type = "integer", min = 1, max = 65535 }, { type = "number" },
  { type = "boolean" }, { type = "enum", values = { "a", "b" } }, { type = "list" },
  { type = "list", items = { type = "integer" } }, { type = "table" }, { type = "secret" },
  { type = "object", fields = { a = { type = "integer" }, b = { type = "list" } } },
}

local function quoted_round_trip(s)
  if s:find("\0", 1, true) then return end            -- a shell word cannot hold NUL
  local q = util.shell_quote(s)
  fuzz.property(q:match("^[%w%./_=:,+-]+$") or (q:sub(1, 1) == "'" and q:sub(-1) == "'"), "shell_quote %q -> %q", s, q)
end

fuzz.main {
  name = "util",
  seeds = { "  a b  ", "hsm1,hsm2, hsm3", '{"a": 1, "b": [1, 2]}', "[1, 2, 3]", "yes", "65535", "0x10", "1e9",
    "env:AZURE_SECRET", "file:/tmp/x", "prompt", "line1\r\nline2\n", "it's", "é→x" },
  dictionary = { ",", "'", '"', "\\", "$(", "`", "env:", "file:", "prompt", "[", "{", "true", "no", "%", " " },
  target = function(input)
    local t = util.trim(input)
    fuzz.property(not t:find("^%s") and not t:find("%s$"), "trim left blanks")
    fuzz.each({ { "lines", util.lines } }, input)
    util.suffix(input, "%w")
    util.closest(input, { "provision", "decommission", "diagnose" })
    util.did_you_mean(input, { "hsm1", "hsm2" })
    quoted_round_trip(input)
    util.pad(input, 20)
    util.duration(#input * 37.5)
    for _, spec in ipairs(SPECS) do
      local problems = {}
      schema.check(input, spec, "param", problems, true)
    end
  end,
}
