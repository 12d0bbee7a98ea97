-- dhsm.azure: the Azure control plane (ARM) on the dhsm scheduler.
--
--   local azure = require "dhsm.azure"
--   local c = azure.client(inventory.azure)            -- or azure.client{subscription=, ...}
--   local r = c:get(c:group_path() .. "/providers/Microsoft.Network/virtualNetworkGateways/gw")
--   local put = c:put(path, { body = resource })
--   local done = c:wait(put, { timeout = 1800, on_progress = function(p) ctx:progress(p.text) end })
--
-- Requests go through libcurl (dhsm.azure.http): they overlap in
-- dhsm.parallel, reuse connections and verify TLS.  Tokens come from the
-- credential chain the Azure SDKs use (explicit config, environment,
-- managed identity, Azure CLI), are kept as dhsm.secret values and
-- refreshed before they expire.  429/5xx and connection failures are
-- retried with backoff and jitter, honouring Retry-After, within a
-- deadline; a POST is retried only when it cannot have been processed,
-- a DELETE whose connection failed once sent, or answered 5xx, only after
-- reading that ARM did not take it.  Every retry is shown as a progress line and audited.
-- Failures are dhsm errors of kind "azure" (or "net") carrying ARM's code,
-- message, details, the HTTP status, request ids and the raw body.
-- Every mutation passes dhsm.act's gate: the rules for what it changes
-- (dhsm.azure.rules: a group holding an HSM, an HSM without its evidence),
-- check mode (described: method, path and JSON body, secrets as
-- <secret>), the confirmation of a DELETE, the intent record ("sending",
-- on disk before the request leaves), then its outcome.
local act = require "dhsm.act"
local cjson = require "cjson"
local dhsm = require "dhsm"
local http = require "dhsm.azure.http"
local rules = require "dhsm.azure.rules"
local schema = require "dhsm.schema"
local secret = require "dhsm.secret"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

-- Each client's transport (an HTTP session of dhsm.azure.http), kept here
-- and not in its fields: requests reach it only through Client:request,
-- whose mutations pass the gate (dhsm.act).
local transports = setmetatable({}, { __mode = "k" })
local exchange, retrying

-- Sessions others open on dhsm.azure.http itself are raw: in check mode a
-- request that is not a read is refused there (it cannot describe itself);
-- outside check mode it meets no ARM rule (docs/safety.md says so).  The
-- clients here use the session as it is.
local raw_session = http.session
local READS = { GET = true, HEAD = true }
http.session = function(...)
  local s = raw_session(...)
  return setmetatable({}, { __index = function(_, k)
    if k == "request" then
      return function(_, req)
        if type(req) ~= "table" then return s:request(req) end
        local sent = {}                    -- read once, raw: what is judged is what is sent
        for key, v in next, req do sent[key] = v end
        local method = tostring(sent.method or "GET"):upper()
        if act.checking() and not READS[method] then
          act.refuse("dhsm.azure.http " .. method, tostring(sent.url))
        end
        return s:request(sent)
      end
    end
    local v = s[k]
    if type(v) == "function" then return function(_, ...) return v(s, ...) end end
    return v
  end, __close = function() s:close() end, __gc = function() s:close() end })
end

M.API = {
  hsm = "2021-11-30",
  network = "2023-09-01",
  resources = "2021-04-01",
  features = "2021-07-01",
  subscriptions = "2022-12-01",     -- GET /subscriptions/ID (its tenantId)
}

local ARM_AUDIENCE = "https://management.azure.com"
local RETRY_STATUS = { [429] = true, [500] = true, [502] = true, [503] = true, [504] = true }
-- Failures that mean the request never reached the server: safe to retry a POST.
local NOT_SENT = { ConnectionRefused = true, CouldNotResolveHost = true, TlsHandshakeFailed = true }

local usage = dhsm.usage

-- JSON null becomes nil, so playbooks can test fields with `if x then`.
local function drop_nulls(v)
  if type(v) ~= "table" then return v end
  for k, x in pairs(v) do
    if x == cjson.null then v[k] = nil else drop_nulls(x) end
  end
  return v
end

function M.uuid()
  local h = sys.random_hex(16)
  return ("%s-%s-4%s-%s-%s"):format(h:sub(1, 8), h:sub(9, 12), h:sub(14, 16), h:sub(17, 20), h:sub(21, 32))
end

---------------------------------------------------------------------------
-- replies: what the transport gave, read defensively.  Everything from the
-- wire may be malformed; what this client cannot understand becomes an
-- azure error BadResponse, never a Lua error in the middle of a playbook.

local function display(url)
  return (tostring(url):gsub("^https?://[^/]+", ""):gsub("%?.*$", ""))
end

local function header(r, name)
  local v = type(r.headers) == "table" and r.headers[name]
  return type(v) == "string" and v or nil
end

local function text(v)
  return type(v) == "string" and v or nil
end

-- Retry-After in seconds (delta-seconds only; a date, a negative or a
-- malformed value is ignored and our own backoff applies).
local function retry_after(r)
  local v = header(r, "retry-after")
  local n = v and v:match("^%s*(%d+)%s*$")
  return n and tonumber(n) or nil
end

local BODY_KEPT = 4096       -- bytes of a reply body kept in an error's details

-- What an error's text opens with: the HTTP status and ARM's request id
-- (the handle a support request and Microsoft's logs go by).
local function status_words(status, request_id)
  return request_id and ("HTTP %s, request id %s"):format(tostring(status), request_id)
    or ("HTTP %s"):format(tostring(status))
end

-- A reply this client cannot understand.
local function bad_response(method, url, r, what)
  local raw = text(r.raw) or text(r.body) or ""
  local rid = header(r, "x-ms-request-id")
  local err = dhsm.error.new {
    kind = "azure", code = "BadResponse", retryable = RETRY_STATUS[r.status] == true,
    message = ("%s %s: %s: unexpected reply: %s"):format(method, display(url), status_words(r.status, rid), what),
    details = { status = r.status, method = method, url = url, body = raw:sub(1, BODY_KEPT),
      request_id = rid, correlation_id = header(r, "x-ms-correlation-request-id") },
  }
  err.status = r.status
  return err
end
M.bad_response = bad_response

-- missing_permission(message) -> action, scope: what a 403's ARM message
-- ("... does not have authorization to perform action 'A' over scope 'S'
-- ...") says the credential lacks; nil when it does not say.  What it
-- finds is the error's details.permission, which classify reads.
local function missing_permission(message)
  return tostring(message or ""):match("perform action '([^']+)' over scope '([^']+)'")
end

-- An ARM, AAD or IMDS error reply as a dhsm error (json: the decoded body,
-- an object or nil); a body that is JSON of another shape is BadResponse.
-- Its text: "METHOD /path: HTTP 403, request id X: what ARM said", so that
-- every step that shows it shows the status and request id, once.
local function reply_error(method, url, r, json)
  local e = json and json.error
  local code, message, fields = nil, nil, {}
  if type(e) == "table" then                    -- ARM: {"error": {code, message, ...}}
    code, message = e.code, e.message
    fields = { target = e.target, details = e.details, innererror = e.innererror }
  elseif type(e) == "string" then               -- AAD / IMDS: {"error": "...", "error_description": "..."}
    code, message = e, json.error_description
  end
  if json and (type(e) ~= "table" and type(e) ~= "string" and e ~= nil
      or code ~= nil and type(code) ~= "string" or message ~= nil and type(message) ~= "string") then
    return bad_response(method, url, r, "the error is not {code, message} strings")
  end
  local raw = text(r.body) or ""
  code = code or ("HTTP" .. r.status)
  message = message or (raw ~= "" and raw:sub(1, 300)) or "no message"
  local request_id = header(r, "x-ms-request-id")
  -- a 403 naming the permission the credential lacks says that (ARM's whole text stays in details.body)
  local action, scope
  if r.status == 403 then action, scope = missing_permission(message) end
  if action then message = ("the credential lacks permission %s on %s"):format(action, scope) end
  local err = dhsm.error.new {
    kind = "azure", code = code, retryable = RETRY_STATUS[r.status] == true,
    message = ("%s %s: %s: %s"):format(method, display(url), status_words(r.status, request_id), message),
    details = {
      status = r.status, method = method, url = url, body = raw:sub(1, BODY_KEPT),
      request_id = request_id, correlation_id = header(r, "x-ms-correlation-request-id"),
      permission = action and { action = action, scope = scope } or nil,
      target = fields.target, details = fields.details, innererror = fields.innererror,
    },
  }
  err.status = r.status
  return err
end
M.reply_error = reply_error

-- interpret(method, url, r): r is what the transport gave ({status=,
-- headers=, body=} and, for a token, secret= and json=).  Returns
-- {status=, headers=, body=(decoded object or nil), raw=, secret=,
--  retry_after=, error=(a dhsm error when the reply is a failure)}.
-- Pure: no I/O, so it can be driven directly (tests/fuzz/arm_reply.lua).
function M.interpret(method, url, r)
  if type(r) ~= "table" then r = {} end
  local status = math.type(r.status) == "integer" and r.status or nil
  local raw = text(r.body) or ""
  local reply = { status = status, headers = type(r.headers) == "table" and r.headers or {}, raw = raw,
    secret = r.secret, retry_after = retry_after(r) }
  local json, decoded = nil, false
  if r.secret then
    json, decoded = type(r.json) == "table" and drop_nulls(r.json) or {}, true
  elseif raw:find("%S") then
    local ok, v = pcall(cjson.decode, raw)
    if ok then
      decoded = true
      if type(v) == "table" and v[1] == nil then json = drop_nulls(v) end
    end
  end
  if not status or status < 200 or status > 599 or (status >= 300 and status < 400) then
    reply.error = bad_response(method, url, r, "HTTP status " .. tostring(r.status))
  elseif status >= 400 then
    if decoded and not json then
      reply.error = bad_response(method, url, r, "an error body that is not a JSON object")
    else
      reply.error = reply_error(method, url, r, json)
    end
  elseif raw:find("%S") and not json then
    reply.error = bad_response(method, url, r, decoded and "a JSON body that is not an object" or "a body that is not JSON")
  end
  reply.body = json
  reply.code = reply.error and reply.error.code
  return reply
end

---------------------------------------------------------------------------
-- the shape of what a reply holds: a field the client reads is checked
-- once, where the reply comes in, so that no reader further on meets a
-- number where it indexes an object.
--
-- A shape: a kind ("object", "objects" (a list of objects), "string",
-- "number", "boolean"; kinds joined by "|" when ARM sends either; "!" at
-- the end: required), or a table {kind, field = shape, ..., items = shape
-- (the items of "objects")}.  Fields not named are not looked at.

local LUA_TYPE = { object = "table", objects = "table", string = "string", number = "number", boolean = "boolean" }
local KIND_WORDS = { object = "an object", objects = "a list of objects", string = "a string", number = "a number",
  boolean = "true or false" }

local function value_words(v)
  if type(v) == "table" then return "an object or list" end
  if type(v) == "string" then return ("a string (%q)"):format(v:sub(1, 40)) end
  if type(v) == "number" then return ("a number (%s)"):format(tostring(math.tointeger(v) or v)) end
  return ("%s (%s)"):format(type(v), tostring(v))
end

local function label(path) return path ~= "" and path or "the body" end

-- from: the reply, or the path the value was read from (a GET).
local function shape_error(from, path, what)
  if type(from) ~= "table" then from = { method = "GET", url = tostring(from), status = 200 } end
  error(bad_response(from.method or "GET", from.url or from.path or "?", from, what), 0)
end

local function conform(from, v, shape, path)
  local spec = type(shape) == "table" and shape or { shape }
  local kinds, required = spec[1]:match("^([%a|]+)(!?)$")
  if v == nil then
    if required ~= "" then shape_error(from, path, ("'%s' is missing, expected %s"):format(label(path),
      KIND_WORDS[kinds] or kinds)) end
    return
  end
  local kind
  for k in kinds:gmatch("%a+") do
    if type(v) == LUA_TYPE[k] then kind = k end
  end
  if not kind then
    local words = {}
    for k in kinds:gmatch("%a+") do words[#words + 1] = KIND_WORDS[k] end
    shape_error(from, path, ("'%s' is %s, expected %s"):format(label(path), value_words(v), table.concat(words, " or ")))
  end
  if kind == "objects" then
    for i, item in ipairs(v) do conform(from, item, spec.items or "object!", ("%s[%d]"):format(path, i)) end
  elseif kind == "object" then
    for _, k in ipairs(util.sorted_keys(spec)) do    -- in order: the first problem is always the same one
      if k ~= 1 and k ~= "items" then conform(from, v[k], spec[k], path == "" and k or (path .. "." .. k)) end
    end
  end
end

-- conform(from, value, shape [, path]) -> value, when it has the shape;
-- else a BadResponse of the reply `from` (or of a GET of the path `from`)
-- naming the field ("'properties.delegations[1]' is a number (5),
-- expected an object").  path: where value sits in the reply ("value[3]").
function M.conform(from, value, shape, path)
  conform(from, value, shape, path or "")
  return value
end

-- conform_list(from, items, shape) -> items, each with shape (items of a list reply)
function M.conform_list(from, items, shape)
  for i, item in ipairs(items) do conform(from, item, shape, ("value[%d]"):format(i)) end
  return items
end

---------------------------------------------------------------------------
-- credentials: each returns (token secret, lifetime in seconds)

local Client = {}
Client.__index = Client
-- What the REPL completes (and the docs list); tokens, retries and polling are internal.
Client.__public = { "get", "put", "patch", "post", "delete", "request", "find", "list", "wait", "gone",
  "group_path", "stats", "close" }

-- A token's lifetime in seconds: expires_in as AAD (a number) or IMDS (a
-- string) send it, within sane bounds.
local function lifetime_of(expires_in)
  local n = tonumber(expires_in)
  if not n or n ~= n then n = 3599 end
  return math.max(1, math.min(n, 86400))
end

-- The error a request ended with, saying what the client's retries did:
-- attempts, and retries_spent when the client would have retried it but
-- for max_attempts or the deadline.  This client is the one layer that
-- retries a request (docs/modules.md): a caller does not retry such an
-- error again (dhsm.azure.classify says retry = false).
local function spent(err, attempts, wanted_more)
  if attempts > 1 then err.attempts = attempts end
  if wanted_more then err.retries_spent = true end
  return err
end

-- A token request, retried like an ARM call (429, 5xx and transport
-- failures; Retry-After honoured) within retry_deadline (default the
-- client's): asking for a token changes nothing, so every failure that may
-- pass is worth another attempt.
local function token_request(c, what, req, retry_deadline)
  req.timeout = req.timeout or c.timeout
  req.secret_field = "access_token"
  local reply, err, attempts, more = retrying(c, retry_deadline or c.retry_deadline,
    { service = "the token endpoint", method = req.method, url = req.url }, function(n)
    return exchange(c, req, true, n)
  end)
  if reply and not err then
    if reply.secret then return reply.secret, lifetime_of(reply.body.expires_in) end
    err = bad_response(req.method, req.url, reply, "no access_token in the token reply")
  end
  err.message = ("cannot get a token (%s): %s"):format(what, err.message)
  error(spent(err, attempts, more), 0)
end

local function client_secret_token(c, cred)
  local url = ("%s/%s/oauth2/v2.0/token"):format(c.authority, c.tenant)
  return token_request(c, "client secret of " .. tostring(cred.client_id), {
    method = "POST", url = url,
    form = { grant_type = "client_credentials", client_id = cred.client_id,
      client_secret = cred.secret, scope = c.audience .. "/.default" },
  })
end

-- retry_deadline: 0 when probing for a managed identity in the chain (one
-- attempt; off Azure there is nothing at the IMDS address).
local function managed_identity_token(c, cred, retry_deadline)
  local query = "api-version=2018-02-01&resource=" .. M.escape(c.audience .. "/")
  if cred.client_id then query = query .. "&client_id=" .. M.escape(cred.client_id) end
  return token_request(c, "managed identity", { method = "GET", headers = { Metadata = "true" },
    url = c.imds_endpoint .. "/metadata/identity/oauth2/token?" .. query, timeout = math.min(c.timeout, 10) },
    retry_deadline)
end

-- `az account get-access-token`, run through dhsm.proc (no shell: the
-- command is an argv), its JSON output's accessToken taken out in C as a
-- secret: the token is never a Lua string, so no error, log or tostring
-- can show it.
local function azure_cli_token(c)
  local argv = { c.az_command, "account", "get-access-token", "--resource", c.audience .. "/", "--output", "json" }
  local function failed(why)
    dhsm.error { kind = "azure", code = "AzureCliFailed",
      message = ("'%s account get-access-token' gave no token (is 'az login' done?): %s"):format(c.az_command, why) }
  end
  local ok, r = pcall(require("dhsm.proc").run, { argv = argv, secret_json_field = "accessToken",
    timeout = math.max(c.timeout, 30) })
  if not ok then failed(tostring(dhsm.error.normalize(r).message)) end
  if r.status ~= 0 or not r.secret then
    local said = util.trim((r.stderr or ""):match("[^\n]*%S[^\n]*") or "")
    failed(r.status ~= 0 and ("exit status %d%s"):format(r.status, said ~= "" and (", " .. said) or "")
      or "its output has no accessToken")
  end
  local rest_ok, j = pcall(cjson.decode, r.stdout)
  local expires_on = rest_ok and type(j) == "table" and tonumber(j.expires_on)
  return r.secret, lifetime_of((expires_on or (sys.time() + 3000)) - sys.time())
end

local SOURCES = {
  client_secret = client_secret_token,
  environment = client_secret_token,
  managed_identity = managed_identity_token,
  azure_cli = azure_cli_token,
}

-- The credential to use, in the order the Azure SDKs try them.
local function choose_credential(cfg)
  if cfg.credential then return cfg.credential end
  local id, tenant = os.getenv("AZURE_CLIENT_ID"), os.getenv("AZURE_TENANT_ID")
  if id and os.getenv("AZURE_CLIENT_SECRET") then
    return { type = "environment", client_id = id, tenant = tenant, secret = secret.env("AZURE_CLIENT_SECRET") }
  end
  return { type = "chain" }
end

-- Fetch a token with the configured credential, or the first that works
-- of managed identity and Azure CLI; c.used_credential says which gave it
-- (what `dhsm inventory discover` writes down).
function Client:fetch_token()
  local cred = self.credential
  if cred.type ~= "chain" then
    local tok, lifetime = SOURCES[cred.type](self, cred)
    self.used_credential = cred.type
    return tok, lifetime
  end
  local ok, tok, lifetime = pcall(managed_identity_token, self, {}, 0)
  if ok then
    self.used_credential = "managed_identity"
    return tok, lifetime
  end
  local ok2, tok2, lifetime2 = pcall(azure_cli_token, self)
  if ok2 then
    self.used_credential = "azure_cli"
    return tok2, lifetime2
  end
  dhsm.error { kind = "azure", code = "NoCredential",
    message = "no Azure credential: set azure.credential in the inventory, or AZURE_CLIENT_ID/"
      .. "AZURE_TENANT_ID/AZURE_CLIENT_SECRET, or run on a managed identity, or 'az login' ("
      .. tostring(dhsm.error.normalize(tok).message) .. "; " .. tostring(dhsm.error.normalize(tok2).message) .. ")" }
end

-- The bearer token, refreshed ahead of expiry; concurrent callers share one fetch.
function Client:token()
  if self.bearer and dhsm.now() < self.refresh_at then return self.bearer end
  if not self.fetching then
    self.fetching = dhsm.spawn(function()
      local tok, lifetime = self:fetch_token()
      self.bearer = tok
      self.refresh_at = dhsm.now() + lifetime - math.min(300, lifetime * 0.2)
    end)
  end
  local fetch = self.fetching
  local ok, err = pcall(fetch.join, fetch)
  if self.fetching == fetch then self.fetching = nil end
  if not ok then error(err, 0) end
  return self.bearer
end

function Client:forget_token()
  self.bearer = nil
end

---------------------------------------------------------------------------
-- the client

function M.escape(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(ch) return ("%%%02X"):format(ch:byte()) end))
end

-- id_part(id, key) -> the name after `key` in an ARM id, and the id up to
-- and with that name; nil when the id has no such part.  An id is pairs of
-- /key/name ("/providers/Microsoft.Network" is one too), so only a key is
-- matched, never a name that spells one (a group called virtualNetworks).
-- ARM compares keys case-insensitively ("/virtualnetworks/" is
-- "/virtualNetworks/"); the names keep the case they were given in.  An
-- id may come as a URL (https://management.azure.com/subscriptions/...).
--   id_part("/subscriptions/S/resourcegroups/G/providers/Microsoft.Network/virtualnetworks/V/subnets/s",
--     "virtualNetworks") -> "V", "/subscriptions/S/resourcegroups/G/providers/Microsoft.Network/virtualnetworks/V"
function M.id_part(id, key)
  if type(id) ~= "string" then return nil end
  local want, pos, is_key, last_key = key:lower(), (id:match("^https?://[^/]+()") or 1), true, nil
  while true do
    local _, e, segment = id:find("^/([^/]*)", pos)
    if not e then return nil end
    if is_key then
      last_key = segment:lower()
    elseif last_key == want then
      return segment, id:sub(1, e)
    end
    is_key, pos = not is_key, e + 1
  end
end

-- "East US" -> "eastus": ARM takes a region by its display name or its
-- name and compares them lower-cased without blanks; so do the checks.
function M.location(name)
  if type(name) ~= "string" then return name end
  return (name:gsub("%s", ""):lower())
end

-- azure.client's options: the inventory's azure fields (dhsm.inventory,
-- where they are documented, sovereign clouds included), none required
-- but the subscription, checked by the one option reader.
local CLIENT_OPTIONS = { subscription = { type = "string", pattern = "^.+$", required = true,
  expect = "a subscription id" }, credential = { type = "table" },
  -- a stand-in for the HTTP transport (tests: {request = function(self, req) ... end}); it sits
  -- under the gate, which every mutation still passes
  transport = { type = "table" } }
for k, spec in pairs(require("dhsm.inventory").schema.fields.azure.fields) do
  if not CLIENT_OPTIONS[k] then CLIENT_OPTIONS[k] = setmetatable({ required = false }, { __index = spec }) end
end

local function check_config(cfg)
  if type(cfg) ~= "table" then usage("azure.client: expected a table (the inventory's azure section)") end
  schema.options("azure.client", cfg, CLIENT_OPTIONS)
  local cred = cfg.credential
  if cred ~= nil then
    if type(cred) ~= "table" or not SOURCES[cred.type] then
      usage("azure.client: credential.type must be client_secret, managed_identity, azure_cli or environment")
    end
    if cred.type == "client_secret" then
      if type(cred.client_id) ~= "string" then usage("azure.client: credential.client_id is required for client_secret") end
      if not secret.is(cred.secret) then
        usage("azure.client: credential.secret must be a secret (secret.env/file/ref), not a plain value")
      end
      if type(cfg.tenant) ~= "string" then usage("azure.client: 'tenant' is required for client_secret") end
    end
  end
end

-- client(cfg): cfg is the inventory's azure section, plus optional
-- timeout (per request, s), retry_deadline (s), max_attempts, poll_interval
-- (s, when ARM gives no Retry-After), max_connections (requests in flight
-- at once, each on its own keep-alive connection; default 2),
-- imds_endpoint, az_command, audience.
function M.client(cfg)
  check_config(cfg)
  local c = setmetatable({
    subscription = cfg.subscription, tenant = cfg.tenant, location = cfg.location,
    resource_group = cfg.resource_group,
    endpoint = (cfg.endpoint or ARM_AUDIENCE):gsub("/$", ""),
    authority = (cfg.authority or "https://login.microsoftonline.com"):gsub("/$", ""),
    imds_endpoint = (cfg.imds_endpoint or "http://169.254.169.254"):gsub("/$", ""),
    audience = cfg.audience or ARM_AUDIENCE,
    az_command = cfg.az_command or "az",
    timeout = cfg.timeout or 60,
    retry_deadline = cfg.retry_deadline or 120,
    max_attempts = cfg.max_attempts or 8,
    poll_interval = cfg.poll_interval or 5,       -- recorded HSM deletes were polled every ~5 s
    credential = choose_credential(cfg),
    -- HTTP/1.1 carries one request per connection at a time; a few warm
    -- connections beat a TLS handshake per parallel request.
    slots = dhsm.semaphore(cfg.max_connections or 2),
  }, Client)
  if c.credential.tenant and not c.tenant then c.tenant = c.credential.tenant end
  transports[c] = cfg.transport or raw_session { ca_file = cfg.ca_file, user_agent = "dhsm/" .. dhsm.version }
  return c
end

function Client:stats()
  local t = transports[self]
  return t.stats and t:stats() or {}
end

function Client:close()
  local t = transports[self]
  if t.close then t:close() end
end
Client.__close = Client.close

function Client:group_path(group)
  group = group or self.resource_group
  if type(group) ~= "string" then usage("azure: no resource group given and none in the configuration") end
  return ("/subscriptions/%s/resourceGroups/%s"):format(self.subscription, group)
end

-- The api-version of the provider a path is under (ARM ids are
-- case-insensitive: "/providers/microsoft.network/" is the Network one).
local function api_for(path)
  path = path:lower()
  if path:find("/providers/microsoft.hardwaresecuritymodules/", 1, true) then return M.API.hsm end
  if path:find("/providers/microsoft.network/", 1, true) then return M.API.network end
  if path:find("/providers/microsoft.features/", 1, true) then return M.API.features end
  return M.API.resources
end

-- The full URL of path (an ARM path, or a URL ARM gave back), with its
-- api-version and query.
function Client:url(path, opts)
  if type(path) ~= "string" or not (path:match("^/") or path:match("^https?://")) then
    usage("azure: expected an ARM path starting with / (e.g. /subscriptions/...), got %s", tostring(path))
  end
  if path:match("^https?://") and path:sub(1, #self.endpoint + 1) ~= self.endpoint .. "/" then
    usage("azure: %s is not on %s: requests (and the bearer token) go to ARM only", path:gsub("[?#].*$", ""), self.endpoint)
  end
  local url = path:match("^https?://") and path or (self.endpoint .. path)
  local query = {}
  if not url:find("[?&]api%-version=") then
    query[#query + 1] = "api-version=" .. M.escape(opts.api_version or api_for(path))
  end
  for _, k in ipairs(util.sorted_keys(opts.query or {})) do
    query[#query + 1] = M.escape(k) .. "=" .. M.escape(opts.query[k])
  end
  if #query == 0 then return url end
  return url .. (url:find("?", 1, true) and "&" or "?") .. table.concat(query, "&")
end

-- Seconds to wait before attempt n+1 (util.backoff): Retry-After when
-- given, else exponential from 0.5 s up to 30 s, jittered.
local function backoff(attempt, retry_after)
  return util.backoff(attempt, { base = 0.5, cap = 30, retry_after = retry_after })
end

local function is_token_problem(code)
  return code == "ExpiredAuthenticationToken" or code == "InvalidAuthenticationToken"
    or code == "AuthenticationFailed"
end

-- Seconds to wait before retrying, or nil: 429 and 5xx (a POST only on
-- 429, refused before processing), transport failures (a POST only when
-- it cannot have been sent).
local function retry_delay(reply, err, idempotent, attempts)
  if reply then
    if RETRY_STATUS[reply.status] and (idempotent or reply.status == 429) then
      return backoff(attempts, reply.retry_after)
    end
    return nil
  end
  if dhsm.error.is(err, "net") and err.retryable and (idempotent or NOT_SENT[err.code]) then
    return backoff(attempts)
  end
end

-- One request through the connection slots, interpreted: the reply (nil
-- when the transport failed), its error or the transport's, and the
-- seconds to wait before a retry (nil: no retry).  (A local, not a
-- method: no caller sends through the transport around the gate.)
function exchange(self, req, idempotent, attempts)
  local t = transports[self]
  local ok, r = pcall(self.slots.run, self.slots, t.request, t, req)
  if not ok then return nil, r, retry_delay(nil, r, idempotent, attempts) end
  local reply = M.interpret(req.method, req.url, r)
  return reply, reply.error, retry_delay(reply, reply.error, idempotent, attempts)
end

-- Why a request is sent again, in words and as the audit log's outcome.
local function retry_cause(reply, err, service)
  if reply and reply.status == 429 then return ("throttled by %s"):format(service), "throttled" end
  if reply then return ("%s answered HTTP %s"):format(service, tostring(reply.status)), "server_error" end
  return ("no answer from %s (%s)"):format(service, tostring(err and err.code)), "transport"
end

-- A retry is seen, not absorbed in silence: a progress line (the run's,
-- through the task context; on a terminal otherwise) and an audit record.
local function announce(where, reply, err, retry_in, next_attempt)
  local words, outcome = retry_cause(reply, err, where.service)
  local line = ("%s, retrying in %s (attempt %d)"):format(words, util.duration(retry_in), next_attempt)
  dhsm.audit.write { action = "azure.retry", target = display(where.url), outcome = outcome,
    method = where.method, status = reply and reply.status or nil, attempt = next_attempt, wait_s = retry_in,
    request_id = reply and header(reply, "x-ms-request-id") or nil }
  local show = dhsm.context().progress
  if show then show(line)
  elseif sys.isatty(2) then io.stderr:write(line, "\n") end
end

-- Repeat attempt(n) -> reply, err, retry_in while it asks for a retry, at
-- most max_attempts times and not past retry_deadline seconds from now;
-- each retry announced (where = {service=, method=, url=}).  Returns the
-- last reply, err, the number of attempts and whether the last one still
-- asked for a retry (the policy's limits ended it).
function retrying(self, retry_deadline, where, attempt)
  local deadline = dhsm.now() + retry_deadline
  local attempts = 0
  while true do
    attempts = attempts + 1
    local reply, err, retry_in = attempt(attempts)
    if retry_in == nil or attempts >= self.max_attempts or dhsm.now() + retry_in > deadline then
      return reply, err, attempts, retry_in ~= nil
    end
    if retry_in > 0 then announce(where, reply, err, retry_in, attempts + 1) end
    dhsm.sleep(retry_in)
  end
end

-- What a mutation would send, for the plan: method, path and body, with
-- secrets as <secret> (and values under secret-looking names redacted,
-- as in the audit log).
local function planned(method, url, body)
  local what = ("%s %s"):format(method, display(url))
  if body == nil then return what end
  if type(body) == "string" then           -- shown only as JSON, so it passes the redaction
    local ok, decoded = pcall(cjson.decode, body)
    if not ok then return ("%s (a body of %d bytes, not JSON)"):format(what, #body) end
    body = decoded
  end
  return what .. " " .. sys.json_encode(body)
end

-- request(method, path, {body=, api_version=, query=, headers=, timeout=,
--   retry_deadline=, idempotent=}) -> {status=, headers=, body=(decoded), raw=, path=, method=}
local SECONDS = { type = "number", min = 0, expect = "seconds (a number >= 0)" }
local REQUEST_OPTIONS = { body = { type = { "table", "string" } }, api_version = { type = "string" },
  query = { type = "table" }, headers = { type = "table" }, timeout = SECONDS, retry_deadline = SECONDS,
  idempotent = { type = "boolean" }, correlation_id = { type = "string" },
  -- what the rules read (dhsm.azure.rules): an HSM's DELETE needs one of them
  zeroized = { type = "table" }, allow_unzeroized = { type = "boolean" }, delete_failed = { type = "boolean" },
  evidence_max_age = { type = "number" } }
local WAIT_OPTIONS = { timeout = SECONDS, interval = SECONDS, on_progress = { type = "function" },
  deleting = { type = "boolean" } }

local METHODS = { GET = true, HEAD = true, PUT = true, PATCH = true, POST = true, DELETE = true }

-- A mutation's path must be the path ARM acts on, the one the rules judge:
-- a '.' or '..' segment (curl resolves it) or a %-escape (ARM decodes it)
-- would make another resource of it, so neither is sent.
local function check_plain(method, where)
  local bad = where:find("%", 1, true) and "a %-escape"
  for segment in where:gmatch("[^/]+") do
    if segment == "." or segment == ".." then bad = ("a '%s' segment"):format(segment) end
  end
  if bad then
    usage("azure %s %s: the path holds %s, which ARM would read as another path than the one the rules judge; "
      .. "give the resource's plain path", method, where, bad)
  end
end

-- The body as sent: JSON text, or nil.
local function encoded(body)
  if body == nil then return nil end
  return type(body) == "string" and body or cjson.encode(body)
end

-- After a DELETE whose fate is unknown (the connection failed once it
-- may have been sent, or ARM answered 5xx): the reply to settle it with
-- when ARM already took it - the resource gone (204) or Deleting (202,
-- waited for by its state) - or nil when it is still there as it was: only then is it sent again.
-- A read that fails leaves the fate unknown: the first failure is raised.
local function settled_delete(self, url, first_err)
  local ok, r = pcall(self.get, self, url)
  if not ok then
    if dhsm.error.is(r, "azure") and r.status == 404 then
      return { status = 204, headers = {}, raw = "", settled = "gone" }
    end
    error(first_err, 0)
  end
  local props = type(r.body) == "table" and r.body.properties
  if type(props) == "table" and props.provisioningState == "Deleting" then
    return { status = 202, headers = {}, body = r.body, raw = r.raw, settled = "Deleting" }
  end
end

-- Whether a request about to be sent again may already have been taken:
-- its connection failed once it was sent, or ARM answered 5xx (it may have
-- accepted the request and failed after).  A 429 or a 401 is refused
-- before anything is done.
local function may_be_taken(reply, err)
  if reply then return (reply.status or 0) >= 500 end
  return dhsm.error.is(err, "net") and not NOT_SENT[err.code]
end

-- One request as sent and interpreted, retried as the client's policy says.
local function send(self, method, url, opts, correlation_id, body)
  local idempotent = opts.idempotent
  if idempotent == nil then idempotent = method ~= "POST" end
  local renewed, unknown = false, nil
  local r, err, attempts, more = retrying(self, opts.retry_deadline or self.retry_deadline,
    { service = "ARM", method = method, url = url }, function(n)
    if unknown then                            -- the last DELETE may have been taken: read before sending again
      local done = settled_delete(self, url, unknown)
      if done then return done end
    end
    local headers = {
      Authorization = { "Bearer ", self:token() },
      Accept = "application/json",
      ["x-ms-correlation-request-id"] = correlation_id,
      ["Content-Type"] = body and "application/json" or nil,
    }
    for k, v in pairs(opts.headers or {}) do headers[k] = v end
    local reply, e, retry_in = exchange(self, { method = method, url = url, headers = headers, body = body,
      timeout = opts.timeout or self.timeout }, idempotent, n)
    if reply and reply.status == 401 and not renewed and is_token_problem(reply.code) then
      self:forget_token()                      -- expired or revoked: one fresh token, at once
      renewed, retry_in = true, 0
    end
    unknown = method == "DELETE" and retry_in and may_be_taken(reply, e) and e or nil
    return reply, e, retry_in
  end)
  if err then error(spent(err, attempts, more), 0) end
  return { status = r.status, headers = r.headers, body = r.body, raw = r.raw, attempts = attempts,
    request_id = header(r, "x-ms-request-id"), settled = r.settled }
end

-- request(method, path, opts): a read is sent; a mutation passes the gate
-- (dhsm.act): the rules for what it changes (dhsm.azure.rules), check mode
-- (described: method, path and JSON body, secrets as <secret>), the
-- confirmation of a DELETE, the intent record, the request, its outcome.
function Client:request(method, path, opts)
  if type(method) ~= "string" or not METHODS[method:upper()] then
    usage("azure request: method must be GET, HEAD, PUT, PATCH, POST or DELETE, got %s", tostring(method))
  end
  method = method:upper()
  opts = schema.options("azure " .. method, opts, REQUEST_OPTIONS) or {}
  local url = self:url(path, opts)
  local function reply(r)
    r.method, r.path, r.url = method, path, url
    return r
  end
  if method == "GET" or method == "HEAD" then
    return reply(send(self, method, url, opts, opts.correlation_id or M.uuid(), encoded(opts.body)))
  end
  -- a body JSON cannot carry (a secret in it) is still described in check mode; sent, it fails
  local fits, body = pcall(encoded, opts.body)
  if not fits and not act.checking() then
    usage("azure %s %s: the body cannot be sent as JSON: %s", method, display(url), tostring(body))
  end
  local where = display(url)
  check_plain(method, where)
  local correlation_id = opts.correlation_id or M.uuid()
  return act.change({ kind = "azure", action = method, target = where:match("([^/]+)$") or where, where = where,
    what = planned(method, url, opts.body), destructive = method == "DELETE",
    fields = { correlation_id = correlation_id, body_sha256 = fits and body and sys.sha256(body) or nil },
    -- made afresh by each request; the body is compared whole in `what`
    -- (a run's own id in it by its role: dhsm.act.identity)
    generated = { "correlation_id", "body_sha256" },
    rule = function() rules.check(self, method, where, opts, fits and body or nil) end,
    planned = function() return { status = 0, check = true, method = method, path = path, url = url, body = opts.body, headers = {} } end,
    outcome = function(r) return tostring(r.status), { attempts = r.attempts, request_id = r.request_id,
      settled = r.settled } end,
  }, function() return reply(send(self, method, url, opts, correlation_id, body)) end)
end

function Client:get(path, opts) return self:request("GET", path, opts) end
function Client:put(path, opts) return self:request("PUT", path, opts) end
function Client:patch(path, opts) return self:request("PATCH", path, opts) end
function Client:post(path, opts) return self:request("POST", path, opts) end
function Client:delete(path, opts) return self:request("DELETE", path, opts) end

-- The reply for path, or nil when ARM answers 404.
local function find_reply(self, path, opts)
  local ok, r = pcall(self.get, self, path, opts)
  if ok then return r end
  if dhsm.error.is(r, "azure") and r.status == 404 then return nil end
  error(r, 0)
end

-- The resource at path, or nil when ARM answers 404.
function Client:find(path, opts)
  local r = find_reply(self, path, opts)
  return r and r.body
end

local function malformed(r, what)
  error(bad_response(r.method or "GET", r.url or r.path or "?", r, what), 0)
end

-- A URL ARM gave back to poll or to page through (nil stays nil).  The
-- bearer token goes with it, so it must be a path or a URL on the ARM
-- endpoint itself; anything else is a BadResponse of reply r.
function Client:own_url(u, r, what)
  if u == nil then return nil end
  if type(u) == "string" and #u <= 8192 and not u:find("[%c%s]") then
    if u:match("^/[^/]") then return u end
    if u:sub(1, #self.endpoint + 1) == self.endpoint .. "/" then return u end
  end
  malformed(r, ("%s %s is not a URL on %s"):format(what, type(u) == "string" and ("%q"):format(u:sub(1, 200)) or type(u), self.endpoint))
end

-- One page of a list reply: its items (each an object) and its nextLink.
function M.list_page(r)
  local body = r.body or {}
  local value = body.value
  if value ~= nil and type(value) ~= "table" then malformed(r, "'value' is not a list") end
  for i, v in ipairs(value or {}) do
    if type(v) ~= "table" then malformed(r, ("item %d of 'value' is not an object"):format(i)) end
  end
  return value or {}, body.nextLink
end

-- Every item of a list, following nextLink.
function Client:list(path, opts)
  local items, next_url = {}, path
  local seen = 0
  while next_url do
    local r = self:get(next_url, opts)
    local page, link = M.list_page(r)
    table.move(page, 1, #page, #items + 1, items)
    next_url = self:own_url(link, r, "nextLink")
    seen = seen + 1
    if seen > 1000 then dhsm.error { kind = "azure", code = "EndlessPaging", message = "more than 1000 pages at " .. path } end
  end
  return items
end

---------------------------------------------------------------------------
-- long-running operations

local TERMINAL = { Succeeded = true, Failed = true, Canceled = true }

-- "Resource creation failed. GatewayNotReady: ..." -> "GatewayNotReady"
-- (the letters before the first ':', found without a backtracking pattern)
local function code_from_status_message(msg)
  local colon = type(msg) == "string" and msg:find(":", 1, true)
  local code = colon and util.suffix(msg:sub(1, colon - 1), "%a")
  return code ~= "" and code or nil
end

local function progress(opts, state, t0)
  if opts.on_progress then
    local elapsed = dhsm.now() - t0
    opts.on_progress { state = state, elapsed = elapsed,
      text = ("%s, %s elapsed"):format(state, util.duration(elapsed)) }
  end
end

-- Poll fn() -> done, state, retry_after until done or the timeout.
-- first_wait: the Retry-After of the 201/202 that started the operation,
-- waited before the first poll as the Azure SDKs do (ARM asks for it; an
-- early poll only costs a request against the throttling budget).
function Client:poll(what, opts, fn, first_wait)
  schema.options("azure poll", opts, WAIT_OPTIONS)
  local t0 = dhsm.now()
  local timeout = opts.timeout or 1800
  local interval = opts.interval or self.poll_interval
  if first_wait and first_wait > 0 then dhsm.sleep(math.min(first_wait, timeout)) end
  while true do
    local done, state, wait_s = fn()
    if done then return state end
    progress(opts, state or "waiting", t0)
    local ra = wait_s and wait_s > 0 and wait_s or nil   -- "Retry-After: 0" is no reason to spin
    local wait = ra or interval
    if dhsm.now() - t0 + wait > timeout then
      dhsm.error { kind = "timeout", code = "OperationTimedOut", retryable = true,
        message = ("%s: still %s after %s"):format(what, tostring(state),
          util.duration(dhsm.now() - t0)) }
    end
    dhsm.sleep(wait)
    if not ra then interval = math.min(interval * 1.5, math.max(opts.interval or self.poll_interval, 60)) end
  end
end

local function failed_operation(what, body)
  local e = type(body.error) == "table" and body.error or {}
  dhsm.error { kind = "azure", code = text(e.code) or "OperationFailed",
    message = ("%s: %s"):format(what, text(e.message) or ("operation " .. tostring(body.status))),
    details = { error = e } }
end

-- An Azure-AsyncOperation poll reply: done, status (raises when the
-- operation failed, or when the reply says nothing readable).
function M.operation_state(r, what)
  local body = r.body or {}
  local status = body.status
  if status == nil then status = "InProgress" end
  if type(status) ~= "string" or #status > 100 then malformed(r, "the operation's 'status' is not a short string") end
  if status == "Failed" or status == "Canceled" then failed_operation(what, body) end
  return TERMINAL[status] == true, status
end

-- A resource being waited for: done, provisioningState (raises when
-- provisioning failed, or when the state is unreadable).
function M.resource_state(r, what, deleting)
  local props = (r.body or {}).properties
  if props ~= nil and type(props) ~= "table" then malformed(r, "'properties' is not an object") end
  local state = (props or {}).provisioningState or "Succeeded"
  if type(state) ~= "string" or #state > 100 then malformed(r, "'provisioningState' is not a short string") end
  if state == "Failed" or state == "Canceled" then
    dhsm.error { kind = "azure", code = code_from_status_message(props.statusMessage) or "ProvisioningFailed",
      message = ("%s: provisioning %s: %s"):format(what, state, tostring(props.statusMessage)),
      details = { resource = r.body } }
  end
  return (not deleting) and state == "Succeeded", state
end

-- gone(path, wait_opts) -> true when the resource at path no longer
-- exists.  One that ARM is Deleting (a DELETE an earlier attempt sent) is
-- waited for, not deleted again: the done= check of a deleting step.
function Client:gone(path, opts)
  local r = M.conform(path, self:find(path), { "object", properties = { "object", provisioningState = "string" } })
  if r and (r.properties or {}).provisioningState == "Deleting" then
    self:wait(path, setmetatable({ deleting = true }, { __index = opts }))
    r = nil
  end
  return r == nil, { deleted = path:match("([^/]+)$") }
end

-- wait(response | path, {timeout=, interval=, on_progress=fn{state, elapsed, text}, deleting=})
-- Follows Azure-AsyncOperation, else Location, else the resource's
-- provisioningState.  Returns the final resource (nil after a delete).
-- In check mode a resource that does not exist was only described by an
-- earlier call (a PUT not sent): nil, nothing to wait for.
function Client:wait(what, opts)
  opts = schema.options("azure wait", opts, WAIT_OPTIONS) or {}
  local resp = type(what) == "table" and what or { path = what, headers = {}, method = "GET" }
  if resp.check then return nil end                       -- check mode: nothing was sent
  local path = resp.path
  local deleting = opts.deleting or resp.method == "DELETE"
  local async = self:own_url(header(resp, "azure-asyncoperation"), resp, "Azure-AsyncOperation")
  local location = self:own_url(header(resp, "location"), resp, "Location")
  if resp.status == 202 and not async and not location and not resp.settled then
    malformed(resp, "202 Accepted without Azure-AsyncOperation or Location to follow")
  end
  local first_wait = retry_after(resp)
  if async then
    self:poll(display(path), opts, function()
      local r = self:get(async)
      local done, status = M.operation_state(r, display(path))
      return done, status, retry_after(r)
    end, first_wait)
    if deleting or resp.method == "POST" then return nil end
    return self:get(path).body
  elseif location and resp.status == 202 then
    self:poll(display(path), opts, function()
      local ok, r = pcall(self.get, self, location)
      if not ok then
        if dhsm.error.is(r, "azure") and r.status == 404 then return true, "gone" end
        error(r, 0)
      end
      return r.status ~= 202, r.status == 202 and (deleting and "Deleting" or "Accepted") or "done",
        retry_after(r)
    end, first_wait)
    if deleting or resp.method == "POST" then return nil end
    return self:get(path).body
  end
  local final
  self:poll(display(path), opts, function()
    local r = find_reply(self, path)
    local body = r and r.body
    if body == nil then
      if deleting or act.checking() then return true, "gone" end
      dhsm.error { kind = "azure", code = "ResourceNotFound", message = display(path) .. ": disappeared while waiting" }
    end
    final = body
    return M.resource_state(r, display(path), deleting)
  end, first_wait)
  return (not deleting) and final or nil
end

-- A transport's reply: its HTTP status at least (beside the kinds of dhsm.azure.rules).
local KINDS = setmetatable({ reply = {
  test = function(v) return type(v) == "table" and math.type(v.status) == "integer" end,
  expected = "a transport reply {status=, headers=, body=}" } }, { __index = rules.ARGUMENT_KINDS })

schema.check_arguments("azure", M, {
  bad_response = "method:any url:any r:table",
  reply_error = "method:any url:any r:reply json:table?",
  id_part = "id:any key:string",
  conform = "from:any value:any shape:shape path:string?",
  conform_list = "from:any items:table shape:shape",
  list_page = "r:table",
  operation_state = "r:table",
  resource_state = "r:table",
}, KINDS)

return M
