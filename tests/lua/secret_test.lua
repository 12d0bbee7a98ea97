-- dhsm.secret: sources, refusals, and that the bytes never show.
local t = require "dhsm.test"
local secret = require "dhsm.secret"

local q = require("dhsm.util").shell_quote

local SECRET = "S3cr3t-Bytes-7f1e"

t.test("a secret prints as <secret> and cannot be concatenated", function()
  local s = secret.value(SECRET)
  t.eq(tostring(s), "<secret>")
  t.eq(secret.is(s), true)
  t.eq(secret.is(SECRET), false)
  t.raises(function() return "x" .. s end, "cannot be concatenated")
  t.eq(getmetatable(s), "dhsm.secret")
  t.eq(s:origin(), "value")
end)

t.test("secret.file reads a 0600 file without its newline", function()
  local dir = t.tmpdir()
  t.write(dir .. "/pw", SECRET .. "\n", tonumber("600", 8))
  local s = secret.file(dir .. "/pw")
  t.ok(secret.equal(s, secret.value(SECRET)))
  t.ok(not secret.equal(s, secret.value(SECRET .. "x")))
  t.eq(s:origin(), "file:" .. dir .. "/pw")
end)

t.test("secret.file refuses a file open to group or others", function()
  local dir = t.tmpdir()
  t.write(dir .. "/pw", SECRET, tonumber("644", 8))
  local err = t.raises(function() secret.file(dir .. "/pw") end, "usage")
  t.eq(err.message, ("secret file %s/pw is open to group/others (mode 0644); run: chmod 600 %s/pw"):format(dir, dir))
  t.raises(function() secret.file(dir .. "/missing") end, "cannot read secret file")
  t.raises(function() secret.file(dir) end, "not a regular file")
end)

t.test("secret.ref is resolved on first use only", function()
  local dir = t.tmpdir()
  local path = dir .. "/later"
  local s = secret.ref("file:" .. path)              -- does not exist yet: fine
  t.eq(tostring(s), "<secret>")
  t.write(path, SECRET, tonumber("600", 8))
  t.ok(secret.equal(s, secret.value(SECRET)))
  t.raises(function() secret.ref("plain-password") end, "expected env:NAME, file:PATH or prompt")
end)

t.test("s:check() raises what the first use would, without reading the bytes", function()
  local dir = t.tmpdir()
  local path = dir .. "/pw"
  local s = secret.ref("file:" .. path)
  t.eq(t.raises(function() s:check() end, "usage").message,
    ("cannot read secret file %s: No such file or directory"):format(path))
  t.write(path, SECRET, tonumber("644", 8))
  t.eq(t.raises(function() s:check() end, "usage").message,
    ("secret file %s is open to group/others (mode 0644); run: chmod 600 %s"):format(path, path))
  t.raises(function() secret.ref("file:" .. dir):check() end, "not a regular file")
  t.raises(function() secret.ref("file:/dev/null"):check() end, "not a regular file")
  os.execute("mkfifo " .. dir .. "/fifo")
  t.raises(function() secret.ref("file:" .. dir .. "/fifo"):check() end, "not a regular file")   -- not a hang
  os.execute("chmod 600 " .. path)
  t.eq(s:check(), s)
  t.write(path, "changed", tonumber("600", 8))
  t.ok(secret.equal(s, secret.value("changed")), "check() read nothing: the first use reads the file as it is then")
  t.raises(function() secret.ref("env:DHSM_SURELY_UNSET_PW"):check() end,
    "environment variable DHSM_SURELY_UNSET_PW is not set")
  t.eq(secret.ref("env:HOME"):check():origin(), "env:HOME")
  local closed = secret.value("x")
  closed:close()
  t.raises(function() closed:check() end, "closed")
end)

t.test("s:check() of a prompt: refused without a terminal, as asking would be; on one it passes, asking nothing", function()
  -- the test runner's stdin is not a terminal under make test
  if require("dhsm.sys").isatty(0) then t.skip("stdin is a terminal") end
  local p = secret.ref("prompt", "never asked: ")
  t.eq(t.raises(function() p:check() end, "usage").message, 'cannot ask for "never asked: ": standard input is not '
    .. "a terminal (give the secret as env:NAME or file:PATH instead)")
  -- on a terminal (script gives one): it passes, and nothing is asked or read
  local code = [[local p = dhsm.secret.ref("prompt", "never asked: ")
    io.stdout:write(tostring(rawequal(p:check(), p)), " ", p:origin(), "\n")]]
  local r = t.sh("script -qec " .. q(t.cmd("exec -e " .. q(code))) .. " /dev/null </dev/null")
  t.eq(r.stdout, "true prompt\r\n", r.stderr)
end)

t.test("secret.prompt refuses without a terminal", function()
  -- the test runner's stdin is not a terminal under make test
  if require("dhsm.sys").isatty(0) then t.skip("stdin is a terminal") end
  t.raises(function() secret.prompt("HSM SO password: ") end, "standard input is not a terminal")
end)

t.test("a closed secret is wiped and refused", function()
  local s = secret.value(SECRET)
  s:close()
  t.raises(function() secret.equal(s, s) end, "closed")
  do local c <close> = secret.value("x") end      -- <close> works too
end)

t.test("modules ask for secrets and name what they got", function()
  t.raises(function() secret.equal("plain", secret.value("x")) end, "expected a secret")
end)

t.test("the bytes appear in no error, traceback, REPL output or audit record", function()
  local dir = t.tmpdir()
  local audit = dir .. "/audit.jsonl"
  -- in-process: errors and tracebacks around a secret argument
  local s = secret.value(SECRET)
  local ok, err = pcall(function(x) error({ kind = "usage", message = "bad " .. tostring(x) }) end, s)
  t.eq(ok, false)
  t.ok(not err.message:find(SECRET, 1, true))
  t.ok(not debug.traceback(tostring(s)):find(SECRET, 1, true))
  -- another process: the REPL printing, erroring and auditing with it
  local input = table.concat({
    "s = dhsm.secret.env('DHSM_TEST_PW')",
    "s",
    "{ password = s, nested = { s } }",
    "print(s)",
    "dhsm.audit.write{ action = 'login', target = 'hsm1', pin = s, password = 'literal-pass', note = s }",
    "error(s)",
    "dhsm.error{ kind = 'luna', message = tostring(s) }",
    "string.format('%s', s)",
  }, "\n")
  local r = t.sh(("DHSM_TEST_PW=%s %s --audit %s repl"):format(SECRET, t.cmd(""), audit), { stdin = input })
  local all = r.stdout .. r.stderr .. (require("dhsm.util").read_file(audit) or "")
  t.ok(r.stdout:find("<secret>", 1, true), r.stdout)
  t.ok(not all:find(SECRET, 1, true), "the secret leaked:\n" .. all)
  t.ok(not all:find("literal-pass", 1, true), "a password field leaked:\n" .. all)
end)
