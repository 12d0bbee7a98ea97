-- The layout of the tree, as docs/design.md states it ("Layout of the
-- tree" and "Names"), checked against the files themselves:
--
--   * one rule from a require name to its file: `dhsm.a.b` is a/b.lua
--     below modules/ or runtime/lua/dhsm/ (never both), a folder's own
--     module the file named after the folder; a native module is a line
--     of runtime/modules.c.  Every `require "dhsm..."` written anywhere in
--     the tree (code, tests, benchmarks, docs) names a module the rule
--     finds, and the binary embeds each Lua module under that name;
--   * no loop between folders: the module graph drawn from the require
--     calls of runtime/, modules/ and playbooks/, folder by folder, has no
--     cycle (a room may use the rooms below it, never one that uses it);
--   * include/ is the whole contract of a native module: a C file under
--     modules/ includes system headers, dhsm/*.h and its own folder's, never
--     a path through ".." (the Makefile builds modules without -Iruntime).
local t = require "dhsm.test"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local ROOT = t.here() .. "/../.."

local function exists(rel)
  local st = sys.stat(ROOT .. "/" .. rel)
  return st ~= nil and st.type == "file"
end

-- Every file below rel (a folder of the tree) whose name ends in one of
-- suffixes, as paths relative to the root.
local function files_below(rel, suffixes, out)
  out = out or {}
  for _, name in ipairs(sys.readdir(ROOT .. "/" .. rel) or {}) do
    local path = rel .. "/" .. name
    local st = sys.stat(ROOT .. "/" .. path)
    if st and st.type == "dir" then
      if name ~= "sim" and name ~= "corpus" then files_below(path, suffixes, out) end
    elseif st then
      for _, s in ipairs(suffixes) do
        if name:sub(-#s) == s then out[#out + 1] = path break end
      end
    end
  end
  return out
end

-- The native modules: name -> the C file that opens it (runtime/modules.c's lines).
local function natives()
  local c_files = files_below("runtime", { ".c" })
  files_below("modules", { ".c" }, c_files)
  local opener_file = {}
  for _, f in ipairs(c_files) do
    for fn in util.read_file(ROOT .. "/" .. f):gmatch("\nint (luaopen_[%w_]+)%(lua_State") do opener_file[fn] = f end
  end
  local out = {}
  for name, fn in util.read_file(ROOT .. "/runtime/modules.c"):gmatch('{"([%w_.]+)", (luaopen_[%w_]+)') do
    out[name] = opener_file[fn] or "(linked library)"
  end
  return out
end

-- The rule, written out again here (not taken from tools/embedlua.c):
-- the Lua files a name may be; exactly one of them must exist.
local function candidates(name)
  if name == "dhsm" then return { "runtime/lua/dhsm/dhsm.lua" } end
  local rel = name:match("^dhsm%.(.+)$"):gsub("%.", "/")
  local last = rel:match("[^/]+$")
  local out = {}
  for _, root in ipairs { "modules/", "runtime/lua/dhsm/" } do
    out[#out + 1] = root .. rel .. ".lua"
    out[#out + 1] = root .. rel .. "/" .. last .. ".lua"
  end
  return out
end

local NATIVE = natives()

-- file_of(name) -> the file the rule gives, or nil and why not.  (A file
-- directly in modules/ is in no module folder: embedlua refuses it.)
local function file_of(name)
  if NATIVE[name] then return NATIVE[name] end
  local found = {}
  for _, c in ipairs(candidates(name)) do
    if exists(c) and not c:match("^modules/[^/]+%.lua$") and found[#found] ~= c then found[#found + 1] = c end
  end
  if #found == 1 then return found[1] end
  if #found == 0 then return nil, "no file: looked for " .. table.concat(candidates(name), ", ") end
  return nil, "two files: " .. table.concat(found, " and ")
end

-- Every `require "dhsm..."` (or require("dhsm..."), quoted or escaped in
-- a string) of a file: {{name=, line=}}; code_only: not in a comment.
local function requires_of(path, code_only)
  local out, n = {}, 0
  for line in (util.read_file(ROOT .. "/" .. path) .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if code_only then line = line:gsub("^%s*%-%-.*$", ""):gsub("%s%-%-%s.*$", "") end
    for name in line:gmatch("require%s*%(?%s*\\?[\"']([%w_%.]+)\\?[\"']") do
      if name:match("^dhsm$") or name:match("^dhsm%.[%w_]+[%w_.]*[%w_]$") and not name:find("..", 1, true) then
        out[#out + 1] = { name = name, line = n }
      end
    end
  end
  return out
end

local CODE_ROOTS = { "runtime/lua", "modules", "playbooks" }

local function code_files()
  local out = {}
  for _, r in ipairs(CODE_ROOTS) do files_below(r, { ".lua" }, out) end
  return out
end

t.test("every require of a dhsm module, anywhere in the tree, names a file by the one rule", function()
  local everywhere = code_files()
  for _, r in ipairs { "tests", "bench", "tools", "docs" } do files_below(r, { ".lua", ".md" }, everywhere) end
  everywhere[#everywhere + 1] = "README.md"
  local bad, count = {}, 0
  for _, f in ipairs(everywhere) do
    if not f:match("^tests/fixtures/lib/") then            -- user-folder stand-ins, on purpose
      for _, r in ipairs(requires_of(f)) do
        count = count + 1
        local file, why = file_of(r.name)
        if not file then bad[#bad + 1] = ("%s:%d: require %q: %s"):format(f, r.line, r.name, why) end
      end
    end
  end
  t.ok(count > 300, "found only " .. count .. " requires: is the pattern still right?")
  t.eq(bad, {})
end)

t.test("the binary embeds each Lua module under the name the rule gives its file", function()
  local embedded = {}
  for _, e in ipairs(sys.embedded("m")) do
    embedded[e.path] = e.name
    local file, why = file_of(e.name)
    t.eq(file, e.path, ("%s: %s"):format(e.name, tostring(why)))
  end
  for _, f in ipairs(code_files()) do
    if not f:match("^playbooks/") then t.ok(embedded[f], f .. " is not embedded as a module") end
  end
end)

-- The folder graph: folder -> {folder -> "file:line require name"}.
local function folder_graph()
  local edges = {}
  for _, f in ipairs(code_files()) do
    local from = f:match("^(.*)/[^/]*$")
    edges[from] = edges[from] or {}
    for _, r in ipairs(requires_of(f, true)) do
      local target = file_of(r.name)
      local to = target and target:match("^(.*)/[^/]*$")
      if to and to ~= from and not edges[from][to] then
        edges[from][to] = ("%s:%d requires %s"):format(f, r.line, r.name)
      end
    end
  end
  return edges
end

-- A cycle of the graph as a list of edge descriptions, or nil.
local function find_cycle(edges)
  local state, stack = {}, {}
  local function visit(node)
    state[node] = "open"
    stack[#stack + 1] = node
    for _, to in ipairs(util.sorted_keys(edges[node] or {})) do
      if state[to] == "open" then
        local cycle, from = {}, nil
        for i = #stack, 1, -1 do
          from = stack[i]
          table.insert(cycle, 1, edges[from][i == #stack and to or stack[i + 1]])
          if from == to then break end
        end
        return cycle
      elseif state[to] == nil then
        local c = visit(to)
        if c then return c end
      end
    end
    stack[#stack] = nil
    state[node] = "done"
  end
  for _, node in ipairs(util.sorted_keys(edges)) do
    if state[node] == nil then
      local c = visit(node)
      if c then return c end
    end
  end
end

t.test("no loop between folders: each room uses only the rooms below it", function()
  local edges = folder_graph()
  t.ok(edges["modules/client"] and edges["modules/client"]["modules/luna"], "the graph holds the client room's requires")
  local cycle = find_cycle(edges)
  t.eq(cycle, nil, "a loop between folders:\n  " .. table.concat(cycle or {}, "\n  "))
end)

t.test("the cycle finder finds a loop when there is one", function()
  local cycle = find_cycle { a = { b = "a->b" }, b = { c = "b->c" }, c = { a = "c->a" }, d = { a = "d->a" } }
  t.eq(cycle, { "a->b", "b->c", "c->a" })
  t.eq(find_cycle { a = { b = "a->b" }, b = {}, c = { a = "c->a", b = "c->b" } }, nil)
end)

t.test("a native module includes from include/ and its own folder only", function()
  local bad, seen = {}, 0
  for _, f in ipairs(files_below("modules", { ".c", ".h" })) do
    local folder = f:match("^(.*)/[^/]*$")
    local n = 0
    for line in (util.read_file(ROOT .. "/" .. f) .. "\n"):gmatch("([^\n]*)\n") do
      n = n + 1
      local inc = line:match('^%s*#%s*include%s+["<]([^">]+)[">]')
      local quoted = line:match('^%s*#%s*include%s+"')
      seen = seen + (quoted and 1 or 0)
      if inc and (inc:find("..", 1, true) or quoted and not inc:match("^dhsm/") and not exists(folder .. "/" .. inc)) then
        bad[#bad + 1] = ("%s:%d: #include %s (not dhsm/*.h, not in %s)"):format(f, n, inc, folder)
      end
    end
  end
  t.ok(seen >= 5, ("read %d quoted #includes in modules/: the walk found the sources"):format(seen))
  t.eq(bad, {})
end)

-- tools/embedlua, next to the binary under test (build/ or build-san/).
local function embedlua()
  local dir = t.dhsm:match("^(.*)/[^/]*$") or "."
  for _, p in ipairs { dir .. "/tools/embedlua", dir .. "/build/tools/embedlua" } do
    local st = sys.stat(p)
    if st and st.type == "file" then return p end
  end
end

t.test("embedlua names files by the rule and refuses two files for one name", function()
  local tool = embedlua() or t.skip("tools/embedlua is not built next to " .. t.dhsm)
  local dir = t.tmpdir()
  local q = util.shell_quote
  for _, f in ipairs { "runtime/lua/dhsm/x.lua", "runtime/lua/dhsm/x/x.lua", "modules/y/y.lua", "modules/y/z.lua" } do
    os.execute("mkdir -p " .. q(dir .. "/" .. f:match("^(.*)/")))
    t.write(dir .. "/" .. f, "return {}\n")
  end
  local function run(...)
    return t.sh(("cd %s && %s out.c %s"):format(q(dir), q(sys.realpath(tool)), table.concat({ ... }, " ")))
  end
  local r = run("runtime/lua/dhsm/x.lua", "modules/y/y.lua", "modules/y/z.lua")
  t.eq(r.status, 0, r.stderr)
  local out = util.read_file(dir .. "/out.c")
  for _, name in ipairs { '"dhsm.x", "runtime/lua/dhsm/x.lua"', '"dhsm.y", "modules/y/y.lua"', '"dhsm.y.z", "modules/y/z.lua"' } do
    t.ok(out:find(name, 1, true), name)
  end
  r = run("runtime/lua/dhsm/x.lua", "runtime/lua/dhsm/x/x.lua")
  t.eq({ r.status, r.stderr }, { 1, "embedlua: two files for one name: dhsm.x\n" })
end)
