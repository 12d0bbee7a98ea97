-- The Azure CLI credential: `az account get-access-token` runs through
-- dhsm.proc (no shell), its accessToken becomes a secret in C.  The `az`
-- here is a stand-in on PATH that gets a real token from the estate's AAD
-- (as az would) and prints the CLI's JSON; the token works against ARM
-- and is never visible: not in tostring, errors, the audit log, the
-- journal nor any output.
local t = require "dhsm.test"
local cjson = require "cjson"
local util = require "dhsm.util"

local q = util.shell_quote
local estate = require("support.estate").start { args = "--appliances 0" }

-- A folder with `az` in it; az logs its argv to DIR/argv and its token to DIR/token.
local function fake_az(mode)
  local dir = t.tmpdir()
  local azure = cjson.decode(util.read_file(estate.dir .. "/inventory.json")).azure
  t.write(dir .. "/az", ([[#!/usr/bin/python3
import json, ssl, sys, time, urllib.parse, urllib.request
open(%q + "/argv", "w").write(json.dumps(sys.argv[1:]))
if %q == "fail":
    sys.stderr.write("ERROR: Please run 'az login' to setup account.\n")
    sys.exit(1)
if %q == "garbage":
    print("accessToken: not json")
    sys.exit(0)
secret = open(%q).read().strip()
form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": %q,
    "client_secret": secret, "scope": sys.argv[sys.argv.index("--resource") + 1] + ".default"}).encode()
ctx = ssl.create_default_context(cafile=%q)
with urllib.request.urlopen(%q + "/" + %q + "/oauth2/v2.0/token", form, context=ctx) as r:
    token = json.load(r)["access_token"]
open(%q + "/token", "w").write(token)
print(json.dumps({"accessToken": token, "expiresOn": "2099-01-01 00:00:00.000000",
    "expires_on": int(time.time()) + 3600, "subscription": "s", "tenant": "t", "tokenType": "Bearer"}, indent=2))
]]):format(dir, mode, mode, azure.credential.secret:gsub("^file:", ""), azure.credential.client_id, azure.ca_file,
    azure.authority, azure.tenant, dir))
  os.execute("chmod +x " .. q(dir .. "/az"))
  local inv = cjson.decode(util.read_file(estate.dir .. "/inventory.json"))
  inv.azure.credential = { type = "azure_cli" }
  t.write(dir .. "/inventory.json", cjson.encode(inv))
  return dir
end

local function exec(dir, code)
  local audit = dir .. "/audit.jsonl"
  local r = t.sh(("PATH=%s:$PATH %s"):format(q(dir), t.cmd(("--audit %s -i %s exec -e %s"):format(q(audit),
    q(dir .. "/inventory.json"), q(code)))))
  r.audit = util.read_file(audit) or ""
  return r
end

t.test("the az token works and is never a visible string", function()
  local dir = fake_az("ok")
  local r = exec(dir, [[
local tok = az:token()
print("token:", tostring(tok), "secret:", secret.is(tok))
print("status:", az:get(az:group_path()).status)
print("client:", tostring(az.bearer))
local ok, err = pcall(error, tok)
print("error:", tostring(err))
]])
  t.eq(r.status, 0, r.stderr)
  local token = util.read_file(dir .. "/token")
  t.ok(token and #token > 20, "az was asked for a token")
  t.ok(r.stdout:find("token:\t<secret>\tsecret:\ttrue", 1, true), r.stdout)
  t.ok(r.stdout:find("status:\t200", 1, true), r.stdout)
  t.eq(cjson.decode(util.read_file(dir .. "/argv")),
    { "account", "get-access-token", "--resource", cjson.decode(util.read_file(dir .. "/inventory.json")).azure.audience
      or "https://management.azure.com/", "--output", "json" })
  for where, text in pairs { stdout = r.stdout, stderr = r.stderr, audit = r.audit } do
    t.ok(not text:find(token, 1, true), "the token shows in " .. where)
  end
  t.ok(r.audit:find('"proc.run"', 1, true), "the az run is audited (its argv): " .. r.audit)
end, { timeout = 60 })

t.test("a failing az is an azure error with its stderr, and garbage output is withheld", function()
  local r = exec(fake_az("fail"), "az:get(az:group_path())")
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("AzureCliFailed", 1, true), r.stderr)
  t.ok(r.stderr:find("exit status 1, ERROR: Please run 'az login'", 1, true), r.stderr)
  r = exec(fake_az("garbage"), "az:get(az:group_path())")
  t.eq(r.status, 1, r.stderr)
  t.ok(r.stderr:find("its output has no accessToken", 1, true), r.stderr)
  t.ok(not r.stderr:find("not json", 1, true), "output that is not the expected JSON is not shown: " .. r.stderr)
end, { timeout = 60 })

t.test("proc.run's secret_json_field: the field is a secret, the rest is the document, escapes decoded", function()
  local proc = require "dhsm.proc"
  local r = proc.run { argv = { "printf", "%s", [[{"a": [1, {"c": "x"}], "accessToken": "p\u00e9\/q\"", "b": 2}]] },
    secret_json_field = "accessToken" }
  t.ok(require("dhsm.secret").is(r.secret), "a secret")
  t.eq(cjson.decode(r.stdout), { a = { 1, { c = "x" } }, accessToken = cjson.null, b = 2 })
  local echo = proc.run { argv = { "cat" }, stdin = r.secret }
  t.eq(echo.stdout, 'p\u{e9}/q"')
  r = proc.run { argv = { "printf", "%s", "not json" }, secret_json_field = "accessToken" }
  t.eq({ r.stdout, r.secret, r.secret_missing }, { nil, nil, true })
  -- the key again, nested or repeated: the rest would hold a token, so all is withheld
  for _, doc in ipairs { [[{"a": {"accessToken": "x"}, "accessToken": "y"}]], [[{"accessToken": "x", "accessToken": "y"}]] } do
    r = proc.run { argv = { "printf", "%s", doc }, secret_json_field = "accessToken" }
    t.eq({ r.stdout, r.secret, r.secret_missing }, { nil, nil, true }, doc)
  end
end)
