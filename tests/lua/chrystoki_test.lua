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
  t.raises(function() chrystoki.parse("A = { B = 1; }"):set("A", "B", "x;y") end, "value of B")
end)

t.test("set refuses section names, keys and values that would inject entries, naming the field", function()
  local base = "Chrystoki2 = {\n   LibUNIX64 = /usr/lib/libCryptoki2_64.so;\n}\n"
  local cases = {
    { "section", "Chrystoki2 = { LibUNIX64 = /tmp/evil.so; } X", "K", "v" },
    { "section", "A\nB", "K", "v" },
    { "section", "{", "K", "v" },
    { "section", "", "K", "v" },
    { "section", "# comment", "K", "v" },
    { "section", "Misc ", "K", "v" },
    { "key", "Chrystoki2", "A = 1; LibUNIX64", "/tmp/evil.so" },
    { "key", "Chrystoki2", "K\nLibUNIX64", "v" },
    { "key", "Chrystoki2", "}", "v" },
    { "key", "Chrystoki2", "=", "v" },
    { "key", "Chrystoki2", "K\0", "v" },
    { "key", "Chrystoki2", 42, "v" },
    { "value of K", "Chrystoki2", "K", "1; LibUNIX64 = /tmp/evil.so" },
    { "value of K", "Chrystoki2", "K", "1\nLibUNIX64 = /tmp/evil.so;" },
    { "value of K", "Chrystoki2", "K", "1 } Evil = { A = 1" },
    { "value of K", "Chrystoki2", "K", "a\rb" },
    { "value of K", "Chrystoki2", "K", {} },
  }
  for _, case in ipairs(cases) do
    local conf = chrystoki.parse(base, "x")
    local err = t.raises(function() conf:set(case[2], case[3], case[4]) end, "usage")
    t.ok(err.message:find("chrystoki.set: " .. case[1], 1, true), err.message)
    t.eq(conf:text(), base, "nothing was changed by a refused set")
  end
  -- what is accepted parses back as exactly that entry
  local conf = chrystoki.parse(base, "x")
  conf:set("LunaSA Client", "ServerName00", "10.0.0.4"):set("HASynchronize", "my-group.1", 1)
  local again = chrystoki.parse(conf:text(), "x")
  t.eq({ again:get("LunaSA Client", "ServerName00"), again:get("HASynchronize", "my-group.1"),
    again:get("Chrystoki2", "LibUNIX64") }, { "10.0.0.4", "1", "/usr/lib/libCryptoki2_64.so" })
  t.eq(again:keys("Chrystoki2"), { "LibUNIX64" })
end)

t.test("install: the inventory's client install, the env its tools run in, the field that is missing", function()
  local c = chrystoki.install({ client = { chrystoki_conf = "/opt/client/Chrystoki.conf", vtl = "/opt/bin/vtl" } }, { "vtl" })
  t.eq({ c.conf_path, c.vtl, c.env.ChrystokiConfigurationPath }, { "/opt/client/Chrystoki.conf", "/opt/bin/vtl", "/opt/client" })
  local err = t.raises(function() chrystoki.install({ client = { chrystoki_conf = "/x/Chrystoki.conf" } }, { "lunacm" }) end, "usage")
  t.ok(err.message:find("client.lunacm", 1, true), err.message)
  err = t.raises(function() chrystoki.install({}) end, "usage")
  t.ok(err.message:find("client.chrystoki_conf", 1, true), err.message)
end)
