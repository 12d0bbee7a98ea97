-- The fuzzing harness the drivers in tests/fuzz share.
--
--   local fuzz = dofile(arg[0]:match("^(.-)[^/]*$") .. "harness.lua")
--   fuzz.main { name = "luna_parse", seeds = fuzz.corpus("luna"), dictionary = {...},
--               target = function(input) ... end }
--
-- Each run feeds target one input: a seed mutated 1-6 times (bytes
-- flipped, inserted, deleted, ranges duplicated, seeds spliced, dictionary
-- words, NUL, CR, CRLF, runs of up to 8 KB of one character, interesting
-- numbers), or random bytes.  The property: target returns or raises a
-- dhsm error; a plain Lua error, or an input taking longer than
-- FUZZ_MAX_MS, is a failure, saved under FUZZ_FINDINGS/<name>/.
--
-- Environment: FUZZ_SECONDS (default 60), FUZZ_RUNS (stop after that many
-- runs: with FUZZ_SEED the same inputs every time), FUZZ_SEED (default from
-- the clock), FUZZ_MAX_MS (default 2000), FUZZ_FINDINGS (default
-- build/fuzz-findings), FUZZ_TRACE (a file each input is written to before
-- it runs: an input that never ends - a C pattern match no hook can stop -
-- is left there; `make fuzz` replays a hung seed with it).  Prints one
-- line: runs, runs/s, failures.  Exit status 1 when anything failed.
local dhsm = require "dhsm"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

M.here = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$")

local function env_number(name, default)
  local v = os.getenv(name)
  return v and v ~= "" and tonumber(v) or default
end

-- Every file of tests/fuzz/corpus/<folder> (and of each further folder,
-- relative to corpus/), as strings.
function M.corpus(...)
  local out = {}
  for _, folder in ipairs { ... } do
    local dir = M.here .. "corpus/" .. folder
    local p = io.popen("ls " .. util.shell_quote(dir) .. " 2>/dev/null")
    for name in p:lines() do out[#out + 1] = assert(util.read_file(dir .. "/" .. name)) end
    p:close()
  end
  return out
end

function M.file(path)
  return assert(util.read_file(M.here .. path))
end

---------------------------------------------------------------------------
-- mutations

local random = math.random
local MAX_INPUT = 64 * 1024
local RUN_CHARS = { " ", "a", ":", "1", "-", '"', "{", "(", ".", "\t", "=", ";", "/", "\0", "\n", "x" }
local NUMBERS = { "0", "-1", "1", "65535", "65536", "2147483648", "9223372036854775807", "9223372036854775808",
  "-9223372036854775809", "1e308", "1e999", "-0", "0x10", "nan", "inf", "3.5", ("9"):rep(400) }
local SPECIALS = { "\0", "\r", "\n", "\r\n", "\t", "\n\n", " ", "  ", "\255", "\xc3\x28", "\xf0\x9f\x92\xa9", "%", "%s" }

local function pick(list) return list[random(#list)] end

local function insert(s, at, piece) return s:sub(1, at - 1) .. piece .. s:sub(at) end

local function random_bytes(n)
  local t = {}
  for i = 1, n do t[i] = string.char(random(0, 255)) end
  return table.concat(t)
end

local mutators = {
  function(s) -- flip a byte
    if #s == 0 then return s end
    local at = random(#s)
    return s:sub(1, at - 1) .. string.char(random(0, 255)) .. s:sub(at + 1)
  end,
  function(s) return insert(s, random(#s + 1), random_bytes(random(1, 8))) end,
  function(s) -- delete a range
    if #s == 0 then return s end
    local a = random(#s)
    return s:sub(1, a - 1) .. s:sub(a + random(0, math.min(64, #s - a)) + 1)
  end,
  function(s) -- duplicate a range
    if #s == 0 then return s end
    local a = random(#s)
    local b = math.min(#s, a + random(0, 256))
    return insert(s, random(#s + 1), s:sub(a, b):rep(random(1, 4)))
  end,
  function(s, ctx) return insert(s, random(#s + 1), pick(ctx.dictionary)) end,
  function(s, ctx) -- splice with another seed
    local other = pick(ctx.seeds)
    return s:sub(1, random(0, #s)) .. other:sub(random(1, #other + 1))
  end,
  function(s) return insert(s, random(#s + 1), pick(SPECIALS)) end,
  function(s) -- a long run of one character (past util.MAX_LINE sometimes)
    return insert(s, random(#s + 1), pick(RUN_CHARS):rep(random(1, random() < 0.2 and 8192 or 300)))
  end,
  function(s) -- a number replaced by an interesting one
    local starts = {}
    for p in s:gmatch("()%d+") do starts[#starts + 1] = p end
    if #starts == 0 then return insert(s, random(#s + 1), pick(NUMBERS)) end
    local at = pick(starts)
    local stop = s:find("%D", at) or #s + 1
    return s:sub(1, at - 1) .. pick(NUMBERS) .. s:sub(stop)
  end,
  function(s) return s:sub(1, random(0, #s)) end, -- truncate
  function(s) -- a line repeated
    local lines = {}
    for l in s:gmatch("[^\n]*") do lines[#lines + 1] = l end
    local l = pick(lines)
    return insert(s, random(#s + 1), ("\n" .. l):rep(random(1, 50)))
  end,
  function(s) return random() < 0.5 and s:gsub("\n", "\r\n") or s:gsub("\r?\n", "\r") end,
  function(s) return random() < 0.5 and s:upper() or s:lower() end,
}

function M.mutate(s, ctx)
  for _ = 1, random(1, 6) do
    s = mutators[random(#mutators)](s, ctx)
  end
  if #s > MAX_INPUT then s = s:sub(1, MAX_INPUT) end
  return s
end

function M.input(ctx)
  local r = random()
  if r < 0.05 or #ctx.seeds == 0 then return random_bytes(random(0, 512)) end
  if r < 0.10 then return pick(ctx.seeds) end
  return M.mutate(pick(ctx.seeds), ctx)
end

---------------------------------------------------------------------------
-- properties

-- Call each fn(...) of list; dhsm errors are fine, the first plain one is
-- raised again naming the function.
function M.each(list, ...)
  for _, item in ipairs(list) do
    local ok, err = pcall(item[2], ...)
    if not ok and not dhsm.error.is(err) then
      error(("%s: %s"):format(item[1], tostring(err)), 0)
    end
  end
end

-- A broken property: a plain error, so the harness records it.
function M.property(cond, fmt, ...)
  if not cond then error("property: " .. fmt:format(...), 0) end
end

local Hang = setmetatable({}, { __tostring = function() return "hang: the input ran past FUZZ_MAX_MS" end })

local function put(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function save(ctx, input, why)
  ctx.saved = ctx.saved + 1
  if ctx.saved > 20 then return nil end
  local dir = ctx.findings .. "/" .. ctx.name
  os.execute("mkdir -p " .. util.shell_quote(dir))
  local base = ("%s/%d-%03d"):format(dir, ctx.seed, ctx.saved)
  put(base .. ".in", input)
  put(base .. ".txt", why .. "\n")
  return base .. ".in"
end

-- main{name=, seeds=, dictionary=, target=fn(input)}
function M.main(opts)
  local ctx = {
    name = opts.name, seeds = opts.seeds or {}, dictionary = opts.dictionary or { "" },
    seconds = env_number("FUZZ_SECONDS", 60), runs = env_number("FUZZ_RUNS", math.huge),
    seed = env_number("FUZZ_SEED", math.floor(sys.time() * 1000) % 2147483647),
    max_s = env_number("FUZZ_MAX_MS", 2000) / 1000,
    findings = os.getenv("FUZZ_FINDINGS") or "build/fuzz-findings",
    trace = (os.getenv("FUZZ_TRACE") or "") ~= "" and os.getenv("FUZZ_TRACE") or nil,
    saved = 0,
  }
  math.randomseed(ctx.seed)
  local failures, kinds, runs = 0, {}, 0
  local deadline_run = math.huge
  -- Lua code looping forever is stopped by a count hook; a C function
  -- (a pattern match) cannot be, and shows as an input over the limit.
  debug.sethook(function() if os.clock() > deadline_run then error(Hang) end end, "", 10000)
  local t0 = dhsm.now()
  local stop = t0 + ctx.seconds
  while runs < ctx.runs and (runs % 64 ~= 0 or dhsm.now() < stop) do
    local input = M.input(ctx)
    runs = runs + 1
    if ctx.trace then put(ctx.trace, input) end
    local c0 = os.clock()
    deadline_run = c0 + ctx.max_s
    local ok, err = pcall(opts.target, input)
    deadline_run = math.huge
    local why
    if not ok and dhsm.error.is(err, "interrupted") then error(err, 0) end
    if not ok and not dhsm.error.is(err) then
      why = "plain Lua error: " .. tostring(err)
    elseif os.clock() - c0 > ctx.max_s then
      why = ("slow: %.0f ms"):format((os.clock() - c0) * 1000)
    end
    if why then
      failures = failures + 1
      -- one report per kind of failure (its first words), at most 20
      local key = why:gsub("0x%x+", "0x"):gsub("%d+", "N"):sub(1, 48)
      if not kinds[key] and ctx.saved < 20 then
        kinds[key] = true
        local path = save(ctx, input, why)
        io.stderr:write(("%s: FAIL %s%s\n"):format(ctx.name, why:sub(1, 300), path and (" (input: " .. path .. ")") or ""))
      end
    end
  end
  debug.sethook()
  local spent = dhsm.now() - t0
  print(("%-14s %9d runs in %5.1f s  %8.0f runs/s  %d failures  (seed %d)"):format(ctx.name, runs, spent,
    runs / math.max(spent, 1e-6), failures, ctx.seed))
  if failures > 0 then os.exit(1) end
end

return M
