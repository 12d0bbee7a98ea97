-- No Lua file of the tree reads or writes a global it did not mean to.
-- A misspelt or out-of-scope local (a merge that kept a use and lost its
-- `local`) is a global to Lua: nil at run time, found only on the path
-- that reaches it.  luac's listing shows every global access; each must
-- be a standard name, `dhsm`, or one the file declares below.
local t = require "dhsm.test"
local util = require "dhsm.util"

local root = t.here() .. "/../.."
local q = util.shell_quote

local STANDARD = {}
for name in ([[_G _VERSION _ENV arg assert collectgarbage coroutine debug dofile error getmetatable io ipairs
  load loadfile math next os package pairs pcall print rawequal rawget rawlen rawset require select
  setmetatable string table tonumber tostring type utf8 warn xpcall dhsm]]):gmatch("%S+") do
  STANDARD[name] = true
end

-- The globals a file sets or reads on purpose, and why.
local DECLARED = {
  -- the REPL's and exec's conveniences (one code path: dhsm.cli.globals)
  ["runtime/lua/dhsm/cli/globals.lua"] = { inv = true, az = true, hsm = true, p11 = true, secret = true },
}

local function lua_files()
  local p = assert(io.popen("cd " .. q(root) .. " && find runtime modules playbooks tools tests bench "
    .. "-name '*.lua' -not -path 'tests/fixtures/*' | sort"))
  local files = {}
  for line in p:lines() do files[#files + 1] = line end
  p:close()
  return files
end

-- globals(file) -> {name = line} of every global the file touches
local function globals(file)
  local r = t.sh("luac5.4 -l -l -p " .. q(root .. "/" .. file))
  t.eq(r.status, 0, file .. ": " .. r.stderr)
  local seen = {}
  for line, name in r.stdout:gmatch("%[(%d+)%]%s+[GS]ETTABUP[^\n]-_ENV \"([%w_]+)\"") do
    seen[name] = seen[name] or tonumber(line)
  end
  return seen
end

t.test("every global a Lua file touches is a standard one, dhsm, or declared", function()
  local files = lua_files()
  t.ok(#files > 50, "found only " .. #files .. " Lua files")
  local stray = {}
  for _, file in ipairs(files) do
    for name, line in pairs(globals(file)) do
      if not STANDARD[name] and not (DECLARED[file] or {})[name] then
        stray[#stray + 1] = ("%s:%d: global '%s'"):format(file, line, name)
      end
    end
  end
  table.sort(stray)
  t.eq(stray, {}, "a global where a local was meant")
end, { timeout = 120 })
