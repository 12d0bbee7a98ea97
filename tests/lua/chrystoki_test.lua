-- dhsm.chrystoki: reading, editing and writing Chrystoki.conf without
-- disturbing what it does not touch.
local t = require "dhsm.test"
local chrystoki = require "dhsm.chrystoki"
local util = require "dhsm.util"

local here = t.here()
local FIXTURE = here .. "/../fixtures/chrystoki/Chrystoki.conf"

t.test("unchanged, it is written back byte for byte", function()
  local c = chrystoki.load(FIXTURE)
  t.eq(c:text(), util.read_file(FIXTURE))
end)

t.test("values, sections and typed views", function()
  local c = chrystoki.load(FIXTURE)
  t.eq(c:get("Chrystoki2", "LibUNIX64"), "/usr/safenet/lunaclient/lib/libCryptoki2_64.so")
  t.eq(c:get("LunaSA Client", "UnknownVendorKey"), "keep me")
  t.eq(c:get("Luna", "Nope"), nil)
  t.eq(c:sections(), { "Chrystoki2", "Luna", "CardReader", "Misc", "LunaSA Client", "VirtualToken",
    "HASynchronize", "HAConfiguration" })
  t.eq(c:client_cert(), { cert = "/usr/safenet/lunaclient/cert/client/app1.pem",
    key = "/usr/safenet/lunaclient/cert/client/app1Key.pem", ca = "/usr/safenet/lunaclient/cert/server/CAFile.pem" })
  t.eq(c:servers(), { { index = 0, name = "10.0.2.4", port = 1792, htl = 0 },
    { index = 1, name = "10.0.2.5", port = 1792, htl = 0 } })
  t.eq(c:ha_groups(), { { index = 0, label = "myHA", serial = "11880771001",
    members = { "1880771001", "1397642001" }, synchronize = true } })
  t.eq(c:ha_config(), { reconnAtt = -1, AutoReconnectInterval = 60, HAOnly = 1 })
end)

t.test("a changed value replaces only that value", function()
  local c = chrystoki.load(FIXTURE)
  c:set("HAConfiguration", "reconnAtt", 5)
  c:set("LunaSA Client", "ServerPort00", 2792)
  local want = util.read_file(FIXTURE):gsub("reconnAtt = %-1;", "reconnAtt = 5;")
    :gsub("ServerPort00 = 1792;", "ServerPort00 = 2792;")
  t.eq(c:text(), want)
  t.eq(chrystoki.parse(c:text()):get("HAConfiguration", "reconnAtt"), "5")
end)

t.test("new keys go in their section with its indentation; new sections at the end", function()
  local c = chrystoki.load(FIXTURE)
  c:set("Misc", "NewKey", "v1")
  c:set("CardReader", "Other", 2)
  c:set("Extra", "A", "b")
  local text = c:text()
  t.ok(text:find("   ToolsDir = /usr/safenet/lunaclient/bin;\n   NewKey = v1;\n}", 1, true), text)
  t.ok(text:find("CardReader = { RemoteCommand = 1; Other = 2; }", 1, true), text)
  t.ok(text:find("\nExtra = {\n   A = b;\n}\n$"), text)
  local again = chrystoki.parse(text)
  t.eq({ again:get("Misc", "NewKey"), again:get("CardReader", "Other"), again:get("Extra", "A") }, { "v1", "2", "b" })
end)

t.test("removing a key takes its line (or just its entry on a shared line)", function()
  local c = chrystoki.load(FIXTURE)
  c:remove("Misc", "PE1746Enabled")
  c:remove("LunaSA Client", "ServerHtl00")
  local text = c:text()
  t.ok(not text:find("PE1746Enabled", 1, true))
  t.ok(text:find("Misc = {\n   ToolsDir", 1, true), text)
  t.ok(text:find("ServerName00 = 10.0.2.4; ServerPort00 = 1792; \n", 1, true) or
       text:find("ServerName00 = 10.0.2.4; ServerPort00 = 1792;", 1, true), text)
  t.eq(chrystoki.parse(text):get("LunaSA Client", "ServerHtl00"), nil)
end)

t.test("save writes atomically and keeps the mode", function()
  local dir = t.tmpdir()
  local path = t.write(dir .. "/Chrystoki.conf", util.read_file(FIXTURE), tonumber("640", 8))
  local c = chrystoki.load(path)
  c:set("Misc", "ToolsDir", "/opt/luna/bin")
  c:save()
  t.eq(chrystoki.load(path):get("Misc", "ToolsDir"), "/opt/luna/bin")
  t.eq(require("dhsm.sys").stat(path).mode, tonumber("640", 8))
end)

t.test("a malformed file is refused with the line and column", function()
  local cases = {
    { "Misc = {\n   ToolsDir = /bin\n}\n", "x:2:13: the value of 'ToolsDir' must end with ';' on its line" },
    { "Misc {\n}\n", "x:1:1: expected 'Section = {'" },
    { "Misc = \n  [\n", "x:2:3: expected '{' after 'Misc ='" },
    { "Misc = {\n   A = 1;\n", "x:1:8: section 'Misc' is not closed with '}'" },
    { "Misc = {\n   = 1;\n}", "x:2:4: a key is missing before '='" },
  }
  for _, case in ipairs(cases) do
    local err = t.raises(function() chrystoki.parse(case[1], "x") end, "BadChrystokiConf")
    t.eq(err.message, case[2])
  end
  t.raises(function() chrystoki.load("/no/such/Chrystoki.conf") end, "cannot read")
  t.raises(function() chrystoki.parse("A = { B = 1; }"):set("A", "B", "x;y") end, "cannot contain")
end)
