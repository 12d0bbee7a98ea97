-- dhsm.azure under faults and malformed replies: the token endpoint is
-- retried like ARM (counted from the estate's own stats), and every reply
-- the client cannot understand is an azure BadResponse, never a Lua error.
local t = require "dhsm.test"
local azure = require "dhsm.azure"
local secret = require "dhsm.secret"

local estate = require("support.estate").start { set = { retry_after = 0 }, args = "--appliances 0" }

local function token_requests()
  local aad = estate:stats().by_service.aad
  return aad and aad.requests or 0
end

-- A client that has no token yet, and the number of token requests the
-- estate saw while fn(client) ran.
local function count_token_requests(faults, extra, fn)
  estate:clear()
  estate:fault(faults)
  local c = estate:azure(extra)
  local before = token_requests()
  local ok, err = pcall(fn, c)
  estate:clear()
  return token_requests() - before, ok, err
end

---------------------------------------------------------------------------
-- the token endpoint

t.test("the token endpoint's 429 is retried, honouring Retry-After", function()
  local t0 = dhsm.now()
  local n, ok, err = count_token_requests({ throttle = "2:oauth2", retry_after = 1 }, nil, function(c)
    t.eq(c:get(c:group_path()).status, 200)
  end)
  t.ok(ok, tostring(err))
  t.eq(n, 3)
  t.ok(dhsm.now() - t0 >= 1.9, "waited Retry-After twice: " .. (dhsm.now() - t0))
end)

t.test("the token endpoint's 5xx and connection resets are retried", function()
  local n, ok, err = count_token_requests({ fail5xx = "2:oauth2" }, nil, function(c) c:token() end)
  t.ok(ok, tostring(err))
  t.eq(n, 3)
  n, ok, err = count_token_requests({ reset = "1:oauth2" }, nil, function(c) c:token() end)
  t.ok(ok, tostring(err))
  t.eq(n, 2)
end)

t.test("token retries are bounded by max_attempts, and the last error says how many", function()
  local n, ok, err = count_token_requests({ fail5xx = "50:oauth2" }, { max_attempts = 3 }, function(c) c:token() end)
  t.eq(ok, false)
  t.eq(n, 3)
  t.ok(dhsm.error.is(err, "azure"), tostring(err))
  t.eq({ err.retryable, err.attempts }, { true, 3 })
  t.ok(err.message:find("^cannot get a token"), err.message)
end)

t.test("a wrong client secret is not retried", function()
  local n, ok, err = count_token_requests({}, nil, function(c)
    c.credential = { type = "client_secret", client_id = c.credential.client_id, secret = secret.value("wrong") }
    c:token()
  end)
  t.eq({ ok, n, err.retryable }, { false, 1, false })
end)

---------------------------------------------------------------------------
-- malformed ARM replies, through the whole client with HTTP stubbed

-- A client whose transport answers with replies, in order (the last one
-- again when they run out); .sent counts the requests.
local function stubbed(replies, extra)
  local stub = { sent = 0 }
  function stub.request()
    stub.sent = stub.sent + 1
    local r = replies[math.min(stub.sent, #replies)]
    local copy = {}
    for k, v in pairs(r) do copy[k] = v end
    copy.headers = copy.headers or { ["x-ms-request-id"] = "req-" .. stub.sent }
    return copy
  end
  extra = extra or { max_attempts = 1 }
  extra.transport = stub
  local c = estate:azure(extra)
  c.bearer, c.refresh_at = secret.value("stub-token"), math.huge
  return c, stub
end

local function bad_response(fn)
  local ok, err = pcall(fn)
  t.eq(ok, false, "a malformed reply was accepted")
  t.ok(dhsm.error.is(err, "azure"), "not an azure error: " .. tostring(err))
  t.eq(err.code, "BadResponse", tostring(err))
  return err
end

local PATH = "/subscriptions/s/resourceGroups/g"

local MALFORMED = {
  { "500 with body true", { status = 500, body = "true" } },
  { "200 with body true", { status = 200, body = "true" } },
  { "200 with a JSON array", { status = 200, body = "[1, 2]" } },
  { "200 with a JSON string", { status = 200, body = '"Succeeded"' } },
  { "200 with a JSON number", { status = 200, body = "42" } },
  { "200 with HTML", { status = 200, body = "<html>hello</html>" } },
  { "200 with JSON cut short", { status = 200, body = '{"name": "hsm1", "prop' } },
  { "200 nested 5000 deep", { status = 200, body = ("["):rep(5000) .. ("]"):rep(5000) } },
  { "400 with error 5", { status = 400, body = '{"error": 5}' } },
  { "400 with error true", { status = 400, body = '{"error": true}' } },
  { "409 with error.code a list", { status = 409, body = '{"error": {"code": [1], "message": "m"}}' } },
  { "404 with error.message an object", { status = 404, body = '{"error": {"code": "X", "message": {}}}' } },
  { "503 with body null", { status = 503, body = "null" } },
  { "status 0", { status = 0, body = "" } },
  { "status 302", { status = 302, body = "", headers = { location = "https://elsewhere.example/" } } },
  { "status 700", { status = 700, body = "{}" } },
  { "no status at all", { body = "{}" } },
  { "headers that are not a table", { status = 200, body = "[]x", headers = "x" } },
}

for _, case in ipairs(MALFORMED) do
  t.test("malformed reply: " .. case[1] .. " is a BadResponse with status and request id", function()
    local c = stubbed { case[2] }
    local err = bad_response(function() c:get(PATH) end)
    t.eq(err.details.status, case[2].status)
    t.ok(err.message:find("HTTP " .. tostring(case[2].status), 1, true), err.message)
    if type(case[2].headers) ~= "string" and not (case[2].headers or {}).location then
      t.eq(err.details.request_id, "req-1")
      t.ok(err.message:find("request id req-1", 1, true), err.message)
    end
  end)
end

t.test("an ARM error with error a string is an azure error with that code", function()
  local c = stubbed { { status = 400, body = '{"error": "invalid_request", "error_description": "no"}' } }
  local err = t.raises(function() c:get(PATH) end, "azure")
  t.eq({ err.code, err.status, err.details.request_id }, { "invalid_request", 400, "req-1" })
end)

t.test("Retry-After that is negative, a date or garbage falls back to our backoff", function()
  for _, ra in ipairs { "-1", "Wed, 21 Oct 2015 07:28:00 GMT", "soon", "1e999", "nan", "0x10", "" } do
    local c, stub = stubbed({ { status = 429, body = "{}", headers = { ["retry-after"] = ra } },
      { status = 200, body = '{"name": "g"}' } }, { max_attempts = 3 })
    t.eq(c:get(PATH).body.name, "g", "Retry-After " .. ra)
    t.eq(stub.sent, 2)
  end
end)

t.test("a Retry-After beyond the retry deadline gives up at once with the 429", function()
  local c, stub = stubbed({ { status = 429, body = '{"error": {"code": "TooMany", "message": "m"}}',
    headers = { ["retry-after"] = "99999999999999999999" } } }, { max_attempts = 5, retry_deadline = 5 })
  local err = t.raises(function() c:get(PATH) end, "azure")
  t.eq({ err.code, err.status, stub.sent }, { "TooMany", 429, 1 })
end)

t.test("a 202 with nothing to follow, or a poll URL off the ARM endpoint, is a BadResponse", function()
  local c = stubbed { { status = 202, body = "" } }
  bad_response(function() c:wait(c:delete(PATH)) end)
  c = stubbed { { status = 202, body = "", headers = { location = "https://attacker.example/steal" } } }
  local err = bad_response(function() c:wait(c:delete(PATH)) end)
  t.ok(err.message:find("not a URL on", 1, true), err.message)
  c = stubbed { { status = 201, body = "{}", headers = { ["azure-asyncoperation"] = "not a url" } } }
  bad_response(function() c:wait(c:put(PATH, { body = {} })) end)
end)

t.test("an operation status that is not an object, or whose status is not a string, is a BadResponse", function()
  local async = { ["azure-asyncoperation"] = "/subscriptions/s/operations/1" }
  local c = stubbed { { status = 201, body = "{}", headers = async }, { status = 200, body = '"Succeeded"' } }
  bad_response(function() c:wait(c:put(PATH, { body = {} })) end)
  c = stubbed { { status = 201, body = "{}", headers = async }, { status = 200, body = '{"status": 7}' } }
  bad_response(function() c:wait(c:put(PATH, { body = {} })) end)
  c = stubbed { { status = 201, body = "{}", headers = async }, { status = 200, body = '{"status": "Failed", "error": "boom"}' } }
  local err = t.raises(function() c:wait(c:put(PATH, { body = {} })) end, "azure")
  t.eq(err.code, "OperationFailed")
end)

t.test("a resource whose properties or provisioningState are of the wrong type is a BadResponse", function()
  local c = stubbed { { status = 200, body = '{"properties": "x"}' } }
  bad_response(function() c:wait(PATH) end)
  c = stubbed { { status = 200, body = '{"properties": {"provisioningState": {}}}' } }
  bad_response(function() c:wait(PATH) end)
  c = stubbed { { status = 200, body = '{"properties": {"provisioningState": "Failed", "statusMessage": 5}}' } }
  t.eq(t.raises(function() c:wait(PATH) end, "azure").code, "ProvisioningFailed")
end)

t.test("a list whose value or nextLink are of the wrong type, or whose nextLink leaves ARM, is a BadResponse", function()
  for _, body in ipairs { '{"value": 5}', '{"value": [1]}', '{"value": [], "nextLink": 7}',
    '{"value": [], "nextLink": "https://attacker.example/next"}' } do
    local c = stubbed { { status = 200, body = body } }
    bad_response(function() c:list(PATH) end)
  end
end)

t.test("a token reply without access_token is a BadResponse", function()
  local c = estate:azure { transport = { request = function()
    return { status = 200, headers = {}, body = '{"token_type": "Bearer"}' }
  end } }
  local err = bad_response(function() c:token() end)
  t.ok(err.message:find("^cannot get a token"), err.message)
end)
