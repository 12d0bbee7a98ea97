-- dhsm.azure.rules: what ARM must not be asked to do, judged by what a
-- request changes - never by which function sent it.  Client:request hands
-- every mutation to the gate (dhsm.act) with rules.check as its rule, so
-- groups.delete, hsm.delete, c:delete, c:request("delete", ...), a REPL
-- line and a runbook meet the same refusal.
--
--   DELETE of a resource group   refused while the group holds a dedicated
--                                HSM (GroupHoldsHsm, naming them): the guide's
--                                "DO NOT DELETE the Resource Group"
--   DELETE of a dedicated HSM    only with its appliance's zeroization evidence
--                                (zeroized=) that reports the resource's NIC
--                                private IP as its own address, or as a Failed deployment's
--                                leftover (delete_failed=true, read here), or
--                                allow_unzeroized=true (audited)
--   PUT of a template deployment in Complete mode: refused while the group
--                                holds a dedicated HSM (Complete mode deletes
--                                what the template does not name)
-- In check mode a rule reads the real state; an HSM whose DELETE this plan
-- already described counts as gone for its group's rules.
local act = require "dhsm.act"
local dhsm = require "dhsm"
local evidence = require "dhsm.evidence"

local M = {}

local function refuse(code, fmt, ...)
  dhsm.error { kind = "safety", code = code, message = fmt:format(...) }
end

-- The path's /key/name pairs, keys lower-cased: {{key=, name=}, ...}.
local function pairs_of(path)
  local out, key = {}, nil
  for segment in path:gsub("^https?://[^/]+", ""):gsub("[?#].*$", ""):gmatch("[^/]+") do
    if key == nil then key = segment:lower()
    else out[#out + 1] = { key = key, name = segment }; key = nil end
  end
  return out, key ~= nil
end

-- Whether a deployment's body may be in Complete mode, read fail-closed:
-- a body that does not decode, a "mode" spelled twice in any case, or a
-- string body naming Complete anywhere as a mode counts as Complete.
local function complete_mode(body)
  if type(body) == "string" then
    if body:lower():find('"mode"%s*:%s*"complete"') then return true end
    local ok, decoded = pcall(require("cjson").decode, body)
    if not ok or type(decoded) ~= "table" then return true end
    body = decoded
  end
  if type(body) ~= "table" then return false end
  local modes = 0
  for k, props in pairs(body) do
    if type(k) == "string" and k:lower() == "properties" and type(props) == "table" then
      for pk, v in pairs(props) do
        if type(pk) == "string" and pk:lower() == "mode" then
          modes = modes + 1
          if type(v) ~= "string" or v:lower() ~= "incremental" then return true end
        end
      end
    end
  end
  return modes > 1
end

-- What a path names: "group", G | "hsm", G, NAME | "deployment", G, NAME |
-- nil; and, last, the subscription the path is in (which the rules read:
-- the client's own may be another).
function M.resource_of(path)
  local p, odd = pairs_of(path)
  if odd or #p < 2 or p[1].key ~= "subscriptions" or p[2].key ~= "resourcegroups" then return nil end
  local sub, group = p[1].name, p[2].name
  if #p == 2 then return "group", group, nil, sub end
  if #p == 4 and p[3].key == "providers" and p[4].key == "dedicatedhsms"
      and p[3].name:lower() == "microsoft.hardwaresecuritymodules" then
    return "hsm", group, p[4].name, sub
  end
  if #p == 4 and p[3].key == "providers" and p[4].key == "deployments" and p[3].name:lower() == "microsoft.resources" then
    return "deployment", group, p[4].name, sub
  end
  return nil
end

-- The dedicated HSMs group G of subscription S holds, less those this plan
-- deletes first.
local function hsms_held(c, sub, group)
  local names = {}
  local provider = require("dhsm.azure.hsm").PROVIDER   -- loaded once both exist: it reads through dhsm.azure
  local ok, list = pcall(c.list, c, ("/subscriptions/%s/resourceGroups/%s%s"):format(sub, group, provider))
  if not ok then
    if dhsm.error.is(list, "azure") and list.status == 404 then return names end   -- no such group: holds nothing
    error(list, 0)
  end
  for _, h in ipairs(list) do
    local going = act.planned(function(ch)
      if ch.kind ~= "azure" or ch.action ~= "DELETE" then return false end
      local what, g, name = M.resource_of(ch.where or "")
      return what == "hsm" and g:lower() == group:lower() and name:lower() == tostring(h.name):lower()
    end)
    if not going then names[#names + 1] = h.name end
  end
  return names
end

-- group_empty(c, group [, doing [, subscription]]): raises GroupHoldsHsm
-- while the group (of the client's subscription unless one is named) holds one.
function M.group_empty(c, group, doing, sub)
  local names = hsms_held(c, sub or c.subscription, group)
  if #names > 0 then                     -- a refused change: a plan counts it (dhsm.act)
    act.refusal { code = "GroupHoldsHsm",
      message = ("not %s resource group %s: it still holds dedicated HSM %s; %s would orphan them and billing "
        .. "would go on (zeroize, delete the HSMs, then the group)"):format(doing or "deleting", group,
        table.concat(names, ", "), doing and "that" or "deleting it"), details = { hsms = names } }
  end
end

-- The private IP of the HSM resource at path, from its NIC (Azure's own
-- view of which appliance it is); nil when Azure does not say.  A failed
-- read raises as itself (a lost connection, Ctrl-C), never taken for "no NIC".
-- The HSM resource at path, of the shape dhsm.azure.hsm reads (a reply of
-- another is a BadResponse, never a Lua error inside a rule), or nil.
local function hsm_at(c, path)
  return require("dhsm.azure").conform(path, c:find(path), require("dhsm.azure.hsm").SHAPE)
end

local function nic_ip(c, path)
  local h = hsm_at(c, path)
  if not h then return nil end
  local ip = require("dhsm.azure.hsm").private_ip(c, h)     -- loaded once both exist: it reads through dhsm.azure
  return ip
end

-- An HSM resource's DELETE (of the resource at path): on its appliance's
-- word (bound to it through the NIC), or as a Failed leftover.
local function hsm_deletable(c, path, name, opts)
  if opts.allow_unzeroized then
    dhsm.audit.write { action = "safety.override", target = name, outcome = "allow_unzeroized" }
  elseif opts.delete_failed then
    local h = hsm_at(c, path)
    local state = h and h.properties.provisioningState
    if h and state ~= "Failed" then
      refuse("NotFailed", "not deleting HSM %s as a failed deployment's leftover: it is %s, not Failed", name,
        tostring(state))
    end
    dhsm.audit.write { action = "safety.evidence", target = name, outcome = "never handed over", source = "arm",
      state = state or "gone" }
  elseif opts.zeroized == nil then
    refuse("NotZeroized", "not deleting HSM %s: its appliance has not been shown to be zeroized (zeroize it "
      .. "first and pass its evidence, zeroized = session:zeroized_evidence(entry); the resource cannot be "
      .. "deleted before)", name)
  else
    local ev = evidence.check(opts.zeroized, name, { max_age = opts.evidence_max_age, nic_ip = nic_ip(c, path) })
    dhsm.audit.write { action = "safety.evidence", target = name, outcome = "zeroized",
      appliance = ev.appliance, serial = ev.serial, addresses = ev.addresses, checked_at = ev.checked_at }
  end
end

-- check(c, method, path, opts [, sent]): the rule for one ARM mutation;
-- sent: the body's JSON as it goes on the wire (judged, not the table,
-- whose pairs a metatable could make say something else).
function M.check(c, method, path, opts, sent)
  local what, group, name, sub = M.resource_of(path)
  if method == "DELETE" and what == "group" then
    M.group_empty(c, group, nil, sub)
  elseif method == "DELETE" and what == "hsm" then
    hsm_deletable(c, path, name, opts)
  elseif method == "PUT" and what == "deployment" and complete_mode(sent or opts.body) then
    M.group_empty(c, group, ("deploying %s in Complete mode to"):format(name), sub)
  end
end

-- What the public functions of the azure modules take, beside Lua's types
-- (dhsm.schema.check_arguments).  Here, in the module every other one
-- requires, so that each can name them.
M.ARGUMENT_KINDS = {
  client = { test = function(v) return type(v) == "table" and type(v.group_path) == "function" end,
    expected = "an Azure client (azure.client or inventory:azure())" },
  shape = { test = function(v) return type(v) == "string" or type(v) == "table" and type(v[1]) == "string" end,
    expected = "a reply shape (\"object!\" or {\"object\", field = shape})" },
}

require("dhsm.schema").check_arguments("rules", M, {
  resource_of = "path:string",
  group_empty = "c:client group:string doing:string? sub:string?",
  check = "c:client method:string path:string opts:table? sent:string?",
}, M.ARGUMENT_KINDS)

return M
