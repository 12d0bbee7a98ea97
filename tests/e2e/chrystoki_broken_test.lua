-- A Chrystoki.conf the Luna client cannot read unambiguously - malformed,
-- or a section or key given twice - is a usage error naming the file, line
-- and column, on every path that reads it: the parser, pkcs11.load taking
-- the library from it, and ha-recover before it runs lunacm (which says
-- only "no Command Result line" of such a file).  Nothing reaches lunacm
-- (the estate's own log).
local t = require "dhsm.test"
local chrystoki = require "dhsm.chrystoki"
local util = require "dhsm.util"
local support = require "support.estate"

local q = util.shell_quote

t.test("a section given twice is refused, naming both lines", function()
  local text = "Chrystoki2 = {\n  LibUNIX64 = /a.so;\n}\nMisc = { ToolsDir = /x; }\nChrystoki2 = {\n  LibUNIX64 = /b.so;\n}\n"
  local err = t.raises(function() chrystoki.parse(text, "/etc/Chrystoki.conf") end, "usage")
  t.eq(err.code, "BadChrystokiConf")
  t.eq(err.message, "/etc/Chrystoki.conf:5:1: section 'Chrystoki2' is given twice (first on line 1): keep one")
end)

t.test("a key given twice in one section is refused, naming both lines", function()
  local err = t.raises(function()
    chrystoki.parse("Misc = {\n  ToolsDir = /x;\n  ToolsDir = /y;\n}\n", "c.conf")
  end, "usage")
  t.eq(err.message, "c.conf:3:3: key 'ToolsDir' of section 'Misc' is given twice (first on line 2): keep one")
  t.eq(chrystoki.parse("A = { K = 1; }\nB = { K = 2; }\n", "c.conf"):get("B", "K"), "2", "one key in two sections is fine")
end)

t.test("pkcs11.load taking the library from a Chrystoki.conf with a section twice: exit 2 naming file and line", function()
  local dir = t.tmpdir()
  t.write(dir .. "/Chrystoki.conf", "Chrystoki2 = {\n  LibUNIX64 = /usr/lib/softhsm/libsofthsm2.so;\n}\n"
    .. "Chrystoki2 = {\n  LibUNIX64 = /nowhere.so;\n}\n")
  local r = t.run("exec -e 'require(\"dhsm.pkcs11\").load()'", { env = "ChrystokiConfigurationPath=" .. q(dir) })
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find(dir .. "/Chrystoki.conf:4:1: section 'Chrystoki2' is given twice (first on line 1)", 1, true),
    r.stderr)
end)

t.test("ha-recover on a broken Chrystoki.conf names the file and line before running lunacm (exit 2)", function()
  local e = support.start { args = "--appliances 1 --client-ready" }
  local conf = e.inventory.client.chrystoki_conf
  local text = util.read_file(conf)
  t.write(conf, text .. "\nBroken = { ToolsDir = /opt/x }\n")       -- no ';': lunacm cannot read it either
  local lines = select(2, text:gsub("\n", "")) + 2
  local before = #e:log()
  local r = e:run(("run ha-recover -e co_password=file:%s"):format(q(e.dir .. "/secrets/hsm1_par1_co_pin")))
  t.eq(r.status, 2, r.stderr)
  t.ok(r.stderr:find(("%s:%d:"):format(conf, lines), 1, true), r.stderr)
  t.ok(r.stderr:find("the value of 'ToolsDir' must end with ';' on its line", 1, true), r.stderr)
  t.ok(not r.stderr:find("no Command Result line", 1, true), r.stderr)
  t.eq(e:count_since(before, { lunacm = "^lunacm" }).lunacm, 0, "lunacm was not run")
end)
