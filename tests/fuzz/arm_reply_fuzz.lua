-- Fuzz the ARM client's reply handling with HTTP stubbed: azure.interpret
-- (status, headers, body -> reply or structured error) and what reads a
-- reply further (list pages, operation status, provisioning state, the URLs
-- ARM gives back).  Inputs are "STATUS\nname: value\n...\n\nbody": mutated
-- real replies (corpus/arm, from reference/arm-recorded.md), plus random
-- JSON documents.
local fuzz = dofile(arg[0]:match("^(.-)[^/]*$") .. "harness.lua")
local azure = require "dhsm.azure"
local cjson = require "cjson"
local util = require "dhsm.util"

local client = azure.client { subscription = "s", endpoint = "https://management.azure.com" }
local URL = "https://management.azure.com/subscriptions/s/resourceGroups/g?api-version=2021-04-01"

-- "STATUS\nheaders\n\nbody" -> transport reply
local function reply_of(input)
  local head, body = input:match("^(.-)\n\n(.*)$")
  head = head or input
  local status = tonumber(head:match("^%s*([^\n]*)"))
  local headers = {}
  for name, value in head:gmatch("\n([^:\n]+):%s*([^\n]*)") do headers[name:lower()] = value end
  return { status = math.type(status) == "integer" and status or status, headers = headers, body = body or "" }
end

-- A random JSON value, of the shapes ARM replies have and others.
local KEYS = { "error", "code", "message", "value", "nextLink", "status", "properties", "provisioningState",
  "statusMessage", "name", "id", "target", "details", "innererror", "expires_in" }
local function random_json(depth)
  local r = math.random(8)
  if depth > 4 or r == 1 then return math.random() < 0.5 and math.random(-5, 600) or tostring(math.random(0, 1e6)) end
  if r == 2 then return ({ true, false, cjson.null, "Succeeded", "Failed", "InProgress", "", 1e308 })[math.random(8)] end
  if r <= 4 then
    local a = {}
    for i = 1, math.random(0, 3) do a[i] = random_json(depth + 1) end
    return a
  end
  local o = {}
  for _ = 1, math.random(0, 4) do o[KEYS[math.random(#KEYS)]] = random_json(depth + 1) end
  return o
end

local STATUSES = { 200, 201, 202, 204, 400, 401, 404, 409, 429, 500, 503 }
local function generated()
  local ok, body = pcall(cjson.encode, random_json(0))
  local h = math.random() < 0.5 and "retry-after: " .. math.random(-2, 99) .. "\n" or ""
  if math.random() < 0.3 then h = h .. "location: /subscriptions/s/operationResults/1\n" end
  if math.random() < 0.2 then h = h .. "azure-asyncoperation: https://elsewhere.example/op\n" end
  return ("%d\n%s\n%s"):format(STATUSES[math.random(#STATUSES)], h, ok and body or "{}")
end

local function reads(reply, r)
  local resp = { status = reply.status, headers = reply.headers, body = reply.body, raw = reply.raw,
    method = "GET", url = URL, path = "/subscriptions/s/resourceGroups/g" }
  fuzz.each({
    { "list_page", function() azure.list_page(resp) end },
    { "operation_state", function() azure.operation_state(resp, "op") end },
    { "resource_state", function() azure.resource_state(resp, "res", false) end },
    { "own_url location", function() client:own_url(reply.headers.location, resp, "Location") end },
    { "own_url async", function() client:own_url(reply.headers["azure-asyncoperation"], resp, "Azure-AsyncOperation") end },
  })
  local delay = util.backoff(1, { base = 0.5, cap = 30, retry_after = reply.retry_after })
  fuzz.property(type(delay) == "number" and delay >= 0, "backoff %s for Retry-After %q", tostring(delay),
    tostring(r.headers["retry-after"]))
end

local seeds = fuzz.corpus("arm")

fuzz.main {
  name = "arm_reply",
  seeds = seeds,
  dictionary = { "true", "null", "[]", "{}", '"error": "x"', '"error": {"code": 1}', '"status": 7', '"value": 5',
    '"nextLink": "https://attacker.example/"', "retry-after: -1\n", "retry-after: 99999999999999999999\n",
    "location: \n", "azure-asyncoperation: //x\n", '"properties": "x"', '"provisioningState": {}' },
  target = function(input)
    if math.random() < 0.2 then input = generated() end
    local r = reply_of(input)
    for _, method in ipairs { "GET", "PUT", "POST" } do
      local reply = azure.interpret(method, URL, r)
      fuzz.property(reply.error == nil or dhsm.error.is(reply.error, "azure"), "interpret gave a non-azure error")
      if reply.error then
        fuzz.property(type(reply.error.message) == "string" and reply.error.details.status == r.status,
          "error without message or status")
      else
        reads(reply, r)
      end
    end
  end,
}
