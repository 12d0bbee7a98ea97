-- The README's examples run as written.
--
-- Every ```sh block runs line by line (each line must exit 0) from the top
-- of the repository, unless the line before it is an HTML comment
-- "<!-- readme_test: not run (why) -->": `make demo` and `make test` are
-- excluded that way (minutes long, and `make test` runs this very file).
-- A ```lua block whose first line is "-- FILE: COMMAND" is saved as FILE in
-- a fresh folder and COMMAND is run there.  The block without a language
-- under "A tour of `dhsm --help`" is the synopsis: each of its commands must
-- be one the CLI has.
--
-- What is adapted, and only this: `dhsm` / `./dhsm` at the start of a line
-- is this very binary (under `make check`, the sanitizer build), /tmp/estate
-- is a fresh folder (the estate the README starts there is stopped at the
-- end, whatever happened), and the state (journals, audit log) goes to a
-- temporary XDG_STATE_HOME, as for every test.
local t = require "dhsm.test"
local util = require "dhsm.util"

local ROOT = t.here() .. "/../.."
local q = util.shell_quote

-- {lang=, line=, lines={...}, skip=reason|nil, heading=} for every fenced block
local function blocks(text)
  local out, current, before, heading = {}, nil, "", ""
  local n = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if current then
      if line:match("^```%s*$") then
        out[#out + 1] = current
        current = nil
      else
        current.lines[#current.lines + 1] = line
      end
    else
      local lang = line:match("^```(%S*)%s*$")
      if lang then
        current = { lang = lang, line = n, lines = {}, heading = heading,
          skip = before:match("^<!%-%- readme_test: not run %((.+)%) %-%->$") }
      elseif line:match("%S") then
        before = line
        heading = line:match("^#+ (.*)$") or heading
      end
    end
  end
  return out
end

local README = assert(util.read_file(ROOT .. "/README.md"), "README.md is missing")
local BLOCKS = blocks(README)

-- A README line as this test runs it.
local function adapt(line, estate_dir)
  line = line:gsub("/tmp/estate", estate_dir)
  local rest = line:match("^%.?/?dhsm%s(.*)$") or line:match("^%.?/?dhsm$") and ""
  if rest then line = t.cmd(rest) end
  return line
end

local function sh_in(dir, state, line)
  return t.sh(("cd %s && XDG_STATE_HOME=%s DHSM_AUDIT=%s/audit.jsonl %s"):format(q(dir), q(state), q(state), line))
end

local ran = { sh = 0, lua = 0, tour = 0 }

for _, b in ipairs(BLOCKS) do
  local where = ("README.md:%d"):format(b.line)
  if b.lang == "sh" and not b.skip then
    t.test(where .. ": the sh example runs, each line exiting 0", function()
      local tmp, state = t.tmpdir(), t.tmpdir()
      local estate_dir = tmp .. "/estate"
      t.cleanup(function()
        t.sh(("%s/tests/sim/estate stop --dir %s"):format(q(ROOT), q(estate_dir)))
      end)
      for i, line in ipairs(b.lines) do
        if line:match("%S") and not line:match("^%s*#") then
          local r = sh_in(ROOT, state, adapt(line, estate_dir))
          t.eq(r.status, 0, ("README.md:%d: %s\n%s%s"):format(b.line + i, line, r.stdout, r.stderr))
          ran.sh = ran.sh + 1
        end
      end
    end, { timeout = 120 })
  elseif b.lang == "lua" and b.lines[1]:match("^%-%- [%w_%.%-]+%.lua: ") then
    local file, command = b.lines[1]:match("^%-%- ([%w_%.%-]+%.lua): (.+)$")
    t.test(("%s: %s runs with '%s'"):format(where, file, command), function()
      local dir, state = t.tmpdir(), t.tmpdir()
      t.write(dir .. "/" .. file, table.concat(b.lines, "\n") .. "\n")
      local r = sh_in(dir, state, adapt(command, dir))
      t.eq(r.status, 0, ("README.md:%d: %s\n%s%s"):format(b.line + 1, command, r.stdout, r.stderr))
      ran.lua = ran.lua + 1
    end)
  elseif b.lang == "" and b.heading == "A tour of `dhsm --help`" then
    t.test(where .. ": the tour names the commands the CLI has", function()
      local cli = require "dhsm.cli"
      for _, line in ipairs(b.lines) do
        local name = line:match("^dhsm (%S+)")
        if name then
          t.ok(pcall(cli.command, name), ("README.md: 'dhsm %s' is not a command of the CLI"):format(name))
          ran.tour = ran.tour + 1
        end
      end
    end)
  end
end

t.test("the README's examples were found and run", function()
  -- The tests above run first, in order: by now they have counted.
  t.ok(ran.sh >= 4, ("%d sh lines ran"):format(ran.sh))
  t.ok(ran.lua >= 3, ("%d lua examples ran"):format(ran.lua))
  t.ok(ran.tour >= 7, ("%d tour lines checked"):format(ran.tour))
  local skipped = 0
  for _, b in ipairs(BLOCKS) do
    if b.skip then
      skipped = skipped + 1
      t.ok(table.concat(b.lines, "\n"):match("^make demo") ~= nil,
        ("README.md:%d: only the make demo / make test block is excluded (%s)"):format(b.line, b.skip))
    end
  end
  t.eq(skipped, 1, "blocks marked not run")
end)
