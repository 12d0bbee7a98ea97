-- docs/ against the code it describes.
--
-- The module reference (docs/modules.md) is checked against the live
-- modules: every public function of every documented module, and every
-- method of the object types built below, must have an entry, and every
-- entry must still exist.  The other checks: the inventory example of
-- docs/inventory.md loads through the real loader, every test that
-- docs/safety.md cites exists, docs/cli.md covers the CLI's own command
-- table, docs/dhsm.1 is what tools/man.lua makes of docs/cli.md now, the
-- README's module table names modules that exist (those of modules.md
-- among them), and every source path the docs name is there.
--
-- DOCS_DRAFT=1 dhsm test tests/lua/docs_test.lua prints a draft entry
-- (signature and the comment above the definition) for every undocumented
-- name, ready to paste.
local t = require "dhsm.test"
local util = require "dhsm.util"
local inventory = require "dhsm.inventory"
local support = require "support.estate"
local p11 = require "support.p11"

local ROOT = t.here() .. "/../.."
local DOC = "docs/modules.md"

-- The modules the reference covers, in the order of the document.  The
-- internal ones (dhsm.sys, dhsm.util, dhsm.core, dhsm.errors, dhsm.play,
-- dhsm.journal, dhsm.schema, dhsm.azure.classify, the private native
-- layers) are not for runbooks and are not listed.
local MODULES = {
  "dhsm", "dhsm.secret", "dhsm.audit", "dhsm.act", "dhsm.inventory", "dhsm.evidence", "dhsm.plan", "dhsm.test",
  "dhsm.azure", "dhsm.azure.hsm", "dhsm.azure.checks", "dhsm.azure.network", "dhsm.azure.groups", "dhsm.azure.rules",
  "dhsm.azure.deploy",
  "dhsm.luna", "dhsm.luna.parse", "dhsm.luna.prompts", "dhsm.luna.rc", "dhsm.pkcs11", "dhsm.net", "dhsm.proc", "dhsm.chrystoki",
  "dhsm.guard", "dhsm.guard.commands", "dhsm.client.ha", "dhsm.client.ntls", "dhsm.client.steps", "dhsm.client.lastcopy",
  "dhsm.client.copies",
}

local estate = support.start { args = "--appliances 1" }

-- The object types a runbook meets, each made the cheapest way there is,
-- named as the document names them (TYPE:method).
local function object_types()
  local dhsm = require "dhsm"
  local types = {}
  local function add(name, module, obj) types[#types + 1] = { name = name, module = module, obj = obj } end

  local task = dhsm.spawn(function() end)
  task:join()
  add("dhsm.Task", "dhsm", task)
  add("dhsm.Semaphore", "dhsm", dhsm.semaphore(1))
  add("dhsm.Secret", "dhsm.secret", estate:secret("hsm1_so_password"))
  add("inventory.Inventory", "dhsm.inventory", estate.inventory)
  add("azure.Client", "dhsm.azure", estate:azure())
  add("checks.Scope", "dhsm.azure.checks", require("dhsm.azure.checks").scope(estate:azure()))
  add("luna.Session", "dhsm.luna", estate:luna_session("hsm1"))
  if p11.available() then
    local lib = p11.softhsm({ "docs" }):load()
    add("pkcs11.Library", "dhsm.pkcs11", lib)
    local s = lib:open { label = "docs" }
    t.cleanup(function() s:close() end)
    add("pkcs11.Session", "dhsm.pkcs11", s)
  end
  local proc = require("dhsm.proc").spawn { argv = { "true" } }
  proc:wait(30)
  add("proc.Process", "dhsm.proc", proc)
  add("chrystoki.Conf", "dhsm.chrystoki", require("dhsm.chrystoki").parse("", "empty"))
  return types
end

-- name -> {module=, fn=}: every public function, live; and the set of
-- object types that could be made here (SoftHSM2 may be missing).
local function live_names()
  local names, made = {}, {}
  local modules = {}
  for _, m in ipairs(MODULES) do modules[require(m)] = m end
  local function callable(v)
    local mt = type(v) == "table" and getmetatable(v)
    return type(v) == "function" or (mt and mt.__call ~= nil)
  end
  local function walk(tbl, prefix, module, depth)
    for k, v in pairs(tbl) do
      if type(k) == "string" and not k:match("^_") then
        local name = prefix .. k
        if callable(v) then names[name] = { module = module, fn = v } end
        -- a table of functions under a module (dhsm.error.new), unless it is
        -- itself a documented module (dhsm.secret under dhsm)
        if type(v) == "table" and depth < 1 and not modules[v] then walk(v, name .. ".", module, depth + 1) end
      end
    end
  end
  for _, m in ipairs(MODULES) do walk(require(m), m .. ".", m, 0) end
  for _, ty in ipairs(object_types()) do
    made[ty.name] = true
    local index = debug.getmetatable(ty.obj).__index
    local seen = {}
    while type(index) == "table" and not seen[index] do
      seen[index] = true
      for k, v in pairs(index) do
        if type(k) == "string" and not k:match("^_") and type(v) == "function" then
          names[ty.name .. ":" .. k] = names[ty.name .. ":" .. k] or { module = ty.module, fn = v }
        end
      end
      index = getmetatable(index) and getmetatable(index).__index
    end
  end
  return names, made
end

-- name -> line: the entries of the reference, "- `NAME(...)` ..." lines;
-- section -> module: which "## MODULE" heading each module has.
local function documented()
  local text = assert(util.read_file(ROOT .. "/" .. DOC), DOC .. " is missing")
  local entries, sections, n = {}, {}, 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    local level, heading = line:match("^(##+) `?([%w%.]+)`?%s*$")
    if heading then sections[heading] = { line = n, level = level } end
    local name = line:match("^%- `([%w_%.:]+)[%({`%s]")
    if name then
      t.ok(not entries[name], ("%s:%d: %s documented twice (also line %s)"):format(DOC, n, name, tostring(entries[name])))
      entries[name] = n
    end
  end
  return entries, sections
end

-- A draft entry for name: its signature and the comment above it.
local function draft(name, fn)
  if type(fn) == "table" then fn = getmetatable(fn).__call end
  local params = {}
  local info = debug.getinfo(fn, "Su")
  local method = name:find(":", 1, true) ~= nil
  for i = 1, info.nparams do
    local p = debug.getlocal(fn, i)
    if not ((method or fn ~= nil) and i == 1 and (p == "self" or p == "_")) then params[#params + 1] = p end
  end
  if info.isvararg then params[#params + 1] = "..." end
  local sig = info.what == "C" and "(...)" or "(" .. table.concat(params, ", ") .. ")"
  local about = "WHAT IT DOES"
  local src = info.source:match("^@(.*)")
  local text = src and util.read_file(ROOT .. "/" .. src)
  if text and info.linedefined > 1 then
    local lines = {}
    for l in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
    local block, i = {}, info.linedefined - 1           -- the comment block above
    while i >= 1 and lines[i]:match("^%s*%-%-") do
      table.insert(block, 1, (lines[i]:gsub("^%s*%-%-+%s*", "")))
      i = i - 1
    end
    if #block > 0 then about = table.concat(block, " "):match("^(.-[%.:])%s") or table.concat(block, " ") end
  end
  return ("- `%s%s` — %s"):format(name, sig, about)
end

t.test("every public function and method is in docs/modules.md, and nothing more", function()
  local live, made = live_names()
  local entries, sections = documented()
  local problems = {}
  for _, name in ipairs(util.sorted_keys(live)) do
    if not entries[name] then
      local m = name:match("^(.-):") or live[name].module     -- a method goes under its type
      local where = sections[m] and ("under '%s %s' (line %d)"):format(sections[m].level, m, sections[m].line)
        or ("in a new section '%s %s' of '## %s'"):format(m == live[name].module and "##" or "###", m, live[name].module)
      problems[#problems + 1] = ("%s: `%s` is not documented: add %s the line\n    %s"):format(
        DOC, name, where, draft(name, live[name].fn))
    end
  end
  for _, name in ipairs(util.sorted_keys(entries)) do
    local ty = name:match("^(.-):")
    if not live[name] and (not ty or made[ty]) then
      problems[#problems + 1] = ("%s:%d: `%s` no longer exists: remove or rename that entry"):format(
        DOC, entries[name], name)
    end
  end
  for _, m in ipairs(MODULES) do
    if not sections[m] then problems[#problems + 1] = ("%s: no section '## %s'"):format(DOC, m) end
  end
  if os.getenv("DOCS_DRAFT") then io.stderr:write(table.concat(problems, "\n"), "\n") end
  t.ok(#problems == 0, #problems .. " difference(s) between the code and " .. DOC .. ":\n" .. table.concat(problems, "\n"))
end, { timeout = 120 })


-- The fenced blocks of a document marked with `lang` (```lang), in order.
local function fenced(path, lang)
  local text = assert(util.read_file(ROOT .. "/" .. path), path .. " is missing")
  local blocks = {}
  for body in text:gmatch("\n```" .. lang .. "\n(.-)\n```") do blocks[#blocks + 1] = body end
  return blocks, text
end

-- Every field path of a schema: "azure.credential.type", "hsms[].name".
local function schema_paths(spec, prefix, out)
  out = out or {}
  if spec.type == "list" and spec.items then return schema_paths(spec.items, prefix .. "[]", out) end
  for name, field in pairs(spec.fields or {}) do
    local path = prefix == "" and name or (prefix .. "." .. name)
    out[path] = true
    schema_paths(field, path, out)
  end
  return out
end

t.test("docs/inventory.md: its example loads through the real loader", function()
  local blocks = fenced("docs/inventory.md", "json")
  t.ok(#blocks >= 1, "docs/inventory.md has no ```json example")
  local inv = inventory.decode(blocks[1], "docs/inventory.md")
  t.eq(inv:hsm("hsm1").ssh_port, 22)
  t.eq(inv:hsm("hsm2").resource, "contoso-hsm-2")
  t.ok(require("dhsm.secret").is(inv.azure.credential.secret), "the client secret is a dhsm.secret")
end)

t.test("docs/inventory.md: one row per field of the schema, and none more", function()
  local _, text = fenced("docs/inventory.md", "json")
  local rows = {}
  for path in text:gmatch("\n| `([%w_%.%[%]]+)` |") do rows[path] = true end
  local fields = schema_paths(inventory.schema, "")
  local problems = {}
  for _, path in ipairs(util.sorted_keys(fields)) do
    if not rows[path] then
      problems[#problems + 1] = ("docs/inventory.md: field `%s` has no row in the Fields table: add "
        .. "| `%s` | type | default | meaning |"):format(path, path)
    end
  end
  for _, path in ipairs(util.sorted_keys(rows)) do
    if not fields[path] then
      problems[#problems + 1] = ("docs/inventory.md: the row `%s` is not a field of the inventory schema "
        .. "(runtime/lua/dhsm/inventory.lua): remove or rename it"):format(path)
    end
  end
  t.ok(#problems == 0, table.concat(problems, "\n"))
end)

t.test("docs/safety.md: every test it cites exists, by file and name", function()
  local text = assert(util.read_file(ROOT .. "/docs/safety.md"))
  local cited, problems = 0, {}
  for line in text:gmatch("[^\n]+") do
    local file, name = line:match("^%- test: (tests/[%w_/]+%.lua): \"(.*)\"$")
    if file then
      cited = cited + 1
      local src = util.read_file(ROOT .. "/" .. file)
      if not src then
        problems[#problems + 1] = ("docs/safety.md cites %s, which does not exist"):format(file)
      elseif not src:find(("t.test(%q"):format(name), 1, true) then
        problems[#problems + 1] = ("docs/safety.md cites %s: %q, which is not a test of that file"):format(file, name)
      end
    end
  end
  local lines = select(2, text:gsub("\n%- test:", ""))
  t.eq(cited, lines, "every '- test:' line of docs/safety.md reads FILE: \"NAME\"")
  t.ok(cited >= 10, "docs/safety.md cites " .. cited .. " tests")
  t.ok(#problems == 0, table.concat(problems, "\n"))
end)

t.test("docs/playbooks.md: its example runs, for real and with --check; it covers every shipped playbook", function()
  local blocks, text = fenced("docs/playbooks.md", "lua")
  t.ok(#blocks >= 1, "docs/playbooks.md has no ```lua example")
  local dir = t.tmpdir()
  local pb = dir .. "/rotate.lua"
  t.write(pb, blocks[1])
  local q = util.shell_quote
  local function run(extra)
    return t.run(("run %s -e dir=%s -e name=hsm1 --json %s"):format(q(pb), q(dir), extra), { state = dir })
  end
  t.write(dir .. "/hsm1.marker", "a")
  local plan = run("--check")
  t.eq(plan.status, 0, plan.stderr)
  t.eq(require("cjson").decode(plan.stdout).outcome, "planned")
  t.eq(util.read_file(dir .. "/hsm1.marker"), "a", "--check changed nothing")
  local r = run("--yes")
  t.eq(r.status, 0, r.stderr)
  t.eq(require("cjson").decode(r.stdout).outcome, "ok")
  t.eq(util.read_file(dir .. "/hsm1.marker"), "ax")

  local problems = {}
  for _, f in ipairs(require("dhsm.sys").readdir(ROOT .. "/playbooks")) do
    local name = f:match("^(.+)%.lua$")
    if name and not text:find("\n### " .. name .. "\n", 1, true) then
      problems[#problems + 1] = ("docs/playbooks.md: the shipped playbook %s has no section: add '### %s' "
        .. "under 'The shipped playbooks'"):format(name, name)
    end
  end
  for name in text:gmatch("\n### ([%w%-_]+)\n") do
    if not util.read_file(ROOT .. "/playbooks/" .. name .. ".lua") then
      problems[#problems + 1] = ("docs/playbooks.md: '### %s' is not a shipped playbook"):format(name)
    end
  end
  t.ok(#problems == 0, table.concat(problems, "\n"))
end)

t.test("README's playbook list and docs/cli.md's Shipped: line name every shipped playbook, and no other", function()
  local readme = util.read_file(ROOT .. "/README.md")
  local list = readme:match("\n## Playbooks\n\n[^\n]*\n\n(.-)\n\n")
  local shipped_line = util.read_file(ROOT .. "/docs/cli.md"):match("\nShipped: ([^\n]*)")
  t.ok(list and shipped_line, "README's '## Playbooks' or docs/cli.md's 'Shipped:' line is gone")
  local in_readme, in_cli, problems = {}, {}, {}
  for name in ("\n" .. list):gmatch("\n%- `(%a[%w%-_]*)[` ]") do in_readme[name] = true end
  for name in shipped_line:gmatch("`([%w%-_]+)`") do in_cli[name] = true end
  local shipped = {}
  for _, f in ipairs(require("dhsm.sys").readdir(ROOT .. "/playbooks")) do
    local name = f:match("^(.+)%.lua$")
    if name then shipped[name] = true end
  end
  for where, names in pairs { ["README.md"] = in_readme, ["docs/cli.md"] = in_cli } do
    for name in pairs(shipped) do
      if not names[name] then problems[#problems + 1] = where .. " does not list the shipped playbook " .. name end
    end
    for name in pairs(names) do
      if not shipped[name] then problems[#problems + 1] = where .. " lists " .. name .. ", not a shipped playbook" end
    end
  end
  table.sort(problems)
  t.eq(problems, {})
end)

t.test("docs/cli.md names every command and option of the CLI, and no other", function()
  local cli = require "dhsm.cli"
  local text = assert(util.read_file(ROOT .. "/docs/cli.md"))
  local sections, order, current = {}, {}, nil
  for line in text:gmatch("[^\n]*") do
    local usage = line:match("^### dhsm (.+)$")
    if usage then
      current = { usage = usage, body = "" }
      sections[usage:match("^(%S+)")] = current
      order[#order + 1] = usage:match("^(%S+)")
    elseif line:match("^##") then
      current = nil
    elseif current then
      current.body = current.body .. line .. "\n"
    end
  end
  local problems = {}
  for _, c in ipairs(cli.commands) do
    local s = sections[c.name]
    if not s then
      problems[#problems + 1] = ("docs/cli.md: command '%s' is missing: add a section '### dhsm %s' under "
        .. "'## COMMANDS'"):format(c.name, c.usage)
    else
      if s.usage ~= c.usage then
        problems[#problems + 1] = ("docs/cli.md: the heading '### dhsm %s' should read '### dhsm %s' "
          .. "(the CLI's usage line)"):format(s.usage, c.usage)
      end
      for _, o in ipairs(c.options) do
        if not s.body:find("`" .. o[2] .. "`", 1, true) then
          problems[#problems + 1] = ("docs/cli.md: option %s of '%s' is not described: add a line "
            .. "'- `%s` — ...' to its section"):format(o[2], c.name, o[2])
        end
      end
    end
  end
  for _, name in ipairs(order) do
    if not pcall(cli.command, name) then
      problems[#problems + 1] = ("docs/cli.md: '### dhsm %s' is not a command of the CLI"):format(name)
    end
  end
  local options = text:match("\n## OPTIONS\n(.-)\n## ") or ""
  for _, long in ipairs({ "--inventory", "--include", "--audit", "--verbose", "--help", "--version" }) do
    if not options:find("`" .. long .. "`", 1, true) then
      problems[#problems + 1] = ("docs/cli.md: global option %s is not under '## OPTIONS'"):format(long)
    end
  end
  t.ok(#problems == 0, table.concat(problems, "\n"))
end)

-- "line N: kept ... / now ..." for two texts
local function first_difference(a, b)
  local la, lb = {}, {}
  for l in (a .. "\n"):gmatch("([^\n]*)\n") do la[#la + 1] = l end
  for l in (b .. "\n"):gmatch("([^\n]*)\n") do lb[#lb + 1] = l end
  for i = 1, math.max(#la, #lb) do
    if la[i] ~= lb[i] then
      return ("line %d is\n  %s\nand should be\n  %s"):format(i, tostring(la[i]), tostring(lb[i]))
    end
  end
  return "they are the same"
end

t.test("docs/dhsm.1 is what tools/man.lua makes of docs/cli.md now, and man renders it without warnings", function()
  local man = dofile(ROOT .. "/tools/man.lua")
  local fresh = man.render(assert(util.read_file(ROOT .. "/docs/cli.md")), man.version(ROOT))
  local kept = util.read_file(ROOT .. "/docs/dhsm.1")
  if not kept then t.ok(false, "docs/dhsm.1 is missing: run 'make man'") end
  t.ok(fresh == kept, "docs/dhsm.1 is stale: run 'make man' and commit docs/dhsm.1; " .. first_difference(kept, fresh))
  t.ok(fresh:find("\n.SS dhsm run ", 1, true), "the man page has the run command")
  if t.sh("command -v man").status ~= 0 then t.skip("man is not installed: the rendering is not checked") end
  local r = t.sh("MANWIDTH=80 man --warnings -l " .. util.shell_quote(ROOT .. "/docs/dhsm.1"))
  t.eq(r.status, 0, r.stderr)
  t.eq(r.stderr, "", "man -l warns")
  t.ok(r.stdout:find("EXIT STATUS", 1, true), "man rendered the page")
end)

t.test("nothing in the repository points at a DESIGN.md: the design is docs/design.md", function()
  local dirs = { "README.md", "Makefile", "include", "runtime", "modules", "playbooks", "tools", "tests", "bench", "docs" }
  local args = {}
  for _, d in ipairs(dirs) do args[#args + 1] = util.shell_quote(ROOT .. "/" .. d) end
  local r = t.sh("grep -rIl --exclude=docs_test.lua 'DESIGN\\.md' " .. table.concat(args, " "))
  t.eq(r.status, 1, "files naming DESIGN.md:\n" .. r.stdout .. r.stderr)
end)

t.test("README's module table: each module it names exists, and it names every one docs/modules.md covers", function()
  local readme = util.read_file(ROOT .. "/README.md")
  local table_text = readme:match("\n## Modules\n(.-)\n## ")
  t.ok(table_text, "README.md has a Modules section")
  local named = {}
  for cell in table_text:gmatch("\n| ([^|]+) |") do
    for module, more in cell:gmatch("`(dhsm[%w%.]*)`%s*(%b())") do
      named[module] = true
      for suffix in more:gmatch("`(%.[%w%.]+)`") do named[module .. suffix] = true end
    end
    for module in cell:gmatch("`(dhsm[%w%.]*)`") do named[module] = true end
  end
  local missing, unknown = {}, {}
  for _, m in ipairs(MODULES) do
    if not named[m] then missing[#missing + 1] = m end
  end
  for _, m in ipairs(util.sorted_keys(named)) do
    if not pcall(require, m) then unknown[#unknown + 1] = m end
  end
  t.eq({ missing, unknown }, { {}, {} }, "modules.md's modules absent from README; README's that do not load")
end)

-- The tree's own folders: a path the docs give under one of them is a file of ours.
local TREE = { runtime = true, modules = true, tests = true, tools = true, playbooks = true, bench = true, include = true }

t.test("every source path the docs name exists", function()
  local gone, checked = {}, 0
  for _, doc in ipairs { "README.md", "docs/design.md", "docs/modules.md", "docs/playbooks.md", "docs/safety.md",
      "docs/cli.md", "docs/inventory.md" } do
    for path in (util.read_file(ROOT .. "/" .. doc) or ""):gmatch("[%w_%-%./]+%.%a+") do
      local clean = path:gsub("^%./", "")
      local source = clean:match("%.lua$") or clean:match("%.[ch]$")
      local placeholder = clean:find("%u%u%u") ~= nil            -- playbooks/NAME.lua: a form, not a file
      if TREE[clean:match("^([%w_]+)/")] and source and not placeholder then
        checked = checked + 1
        if not require("dhsm.sys").stat(ROOT .. "/" .. clean) then gone[#gone + 1] = doc .. ": " .. clean end
      end
    end
  end
  t.ok(checked >= 20, ("found %d source paths in the docs"):format(checked))
  t.eq(gone, {})
end)
