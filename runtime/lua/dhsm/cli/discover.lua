-- dhsm.cli.discover: `dhsm inventory discover` and `dhsm inventory trust`, the
-- way to an inventory (docs/inventory.md) when there is none yet.
--
--   discover: the dedicated HSMs of a resource group, read from ARM with
--   the credential chain of dhsm.azure (or an inventory's azure section),
--   each appliance's SSH host key checked and - when the operator says so
--   - recorded (dhsm.luna.host_key), then an inventory written: to stdout,
--   to a new file, or merged into an existing one (the new entries' text
--   inserted into its "hsms" array, nothing else of it touched).
--   trust: the explicit acceptance of a re-keyed appliance's new host key
--   (dhsm.luna.trust_host_key), only with the fingerprint the operator typed.
--
-- Secrets are never values here: an entry's passwords are `prompt`
-- references, a client secret `env:AZURE_CLIENT_SECRET` (or the reference
-- the inventory had).  Every write passes the gate (dhsm.act): check mode
-- describes it, the audit log records intent and outcome.
local act = require "dhsm.act"
local ask = require "dhsm.ask"
local cjson = require "cjson"
local dhsm = require "dhsm"
local inventory = require "dhsm.inventory"
local schema = require "dhsm.schema"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

local usage = dhsm.usage
local err_out = io.stderr

local function say(fmt, ...)
  err_out:write(fmt:format(...), "\n")
end

---------------------------------------------------------------------------
-- JSON text, keys in the order an operator reads them

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local named = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r" }
    return named[c] or ("\\u%04x"):format(c:byte())
  end) .. '"'
end

-- {{key, value}, ...} -> `{ "key": value, ... }` on one line (strings and
-- integers; a nested list of pairs likewise)
local function json_line(pairs_list)
  local parts = {}
  for _, kv in ipairs(pairs_list) do
    local v = kv[2]
    local text = type(v) == "table" and json_line(v) or type(v) == "string" and json_string(v) or ("%d"):format(v)
    parts[#parts + 1] = json_string(kv[1]) .. ": " .. text
  end
  return "{ " .. table.concat(parts, ", ") .. " }"
end

-- The fields of an entry, in the order of docs/inventory.md.
local ENTRY_ORDER = { "name", "host", "ssh_port", "ntls_port", "resource", "password", "so_password", "known_hosts" }

local function entry_text(e)
  local kv = {}
  for _, k in ipairs(ENTRY_ORDER) do
    if e[k] ~= nil then kv[#kv + 1] = { k, e[k] } end
  end
  return json_line(kv)
end

local AZURE_ORDER = { "subscription", "tenant", "resource_group", "location", "credential", "endpoint", "authority",
  "imds_endpoint", "ca_file" }

local function inventory_text(azure_section, entries)
  local lines = { "{", '  "azure": {' }
  local fields = {}
  for _, k in ipairs(AZURE_ORDER) do
    local v = azure_section[k]
    if v ~= nil then
      fields[#fields + 1] = ("    %s: %s"):format(json_string(k), type(v) == "table" and json_line(v) or json_string(v))
    end
  end
  lines[#lines + 1] = table.concat(fields, ",\n")
  lines[#lines + 1] = "  },"
  if #entries == 0 then
    lines[#lines + 1] = '  "hsms": []'
  else
    lines[#lines + 1] = '  "hsms": ['
    local items = {}
    for _, e in ipairs(entries) do items[#items + 1] = "    " .. entry_text(e) end
    lines[#lines + 1] = table.concat(items, ",\n")
    lines[#lines + 1] = "  ]"
  end
  lines[#lines + 1] = "}"
  return table.concat(lines, "\n") .. "\n"
end

---------------------------------------------------------------------------
-- inserting entries into an inventory's text (--merge): its own bytes kept

local function string_end(text, i)              -- the closing quote of the string opening at i
  local j = i + 1
  while true do
    local c = text:find('[\\"]', j)
    if not c then return nil end
    if text:sub(c, c) == "\\" then j = c + 2 else return c end
  end
end

local function closing(text, i)                 -- the bracket closing the one at i, strings skipped
  local depth, j = 0, i
  while true do
    local c = text:find('[%[%]{}"]', j)
    if not c then return nil end
    local ch = text:sub(c, c)
    if ch == '"' then
      j = (string_end(text, c) or #text) + 1
    else
      depth = depth + ((ch == "[" or ch == "{") and 1 or -1)
      if depth == 0 then return c end
      j = c + 1
    end
  end
end

local function malformed(path, what)
  usage("--merge %s: %s; nothing was written", path, what)
end

-- The top-level members of the JSON object `text`: key -> {value_at=,
-- value_end=}, and the index of the object's closing brace.
local function top_members(text, path)
  local open = text:find("%S")
  if not open or text:sub(open, open) ~= "{" then malformed(path, "expected a JSON object at the top") end
  local members, j = {}, open + 1
  while true do
    local c = text:find("[^%s,]", j)
    if not c then malformed(path, "the top-level object does not end") end
    if text:sub(c, c) == "}" then return members, c end
    local kend = text:sub(c, c) == '"' and string_end(text, c)
    if not kend then malformed(path, ("expected a member name at byte %d"):format(c)) end
    local key = cjson.decode(text:sub(c, kend))
    local colon = text:find("%S", kend + 1)
    local v = colon and text:sub(colon, colon) == ":" and text:find("%S", colon + 1)
    if not v then malformed(path, ("expected ':' and a value after %s"):format(json_string(key))) end
    local first, vend = text:sub(v, v), nil
    if first == "{" or first == "[" then vend = closing(text, v)
    elseif first == '"' then vend = string_end(text, v)
    else vend = (text:find("[,}%s]", v) or #text + 1) - 1 end
    if not vend then malformed(path, ("the value of %s does not end"):format(json_string(key))) end
    if members[key] then malformed(path, ("%s is given twice at the top"):format(json_string(key))) end
    members[key] = { value_at = v, value_end = vend }
    j = vend + 1
  end
end

-- The blanks before the first element of the list opening at i, when it
-- starts on a line of its own: the indentation new elements get.
local function element_indent(text, i)
  local ws = text:match("^[ \t\r\n]*", i + 1)
  return ws:find("\n") and ws:match("[ \t]*$") or nil
end

-- insert(text, path, entries) -> text with the entries' JSON text appended
-- to its top-level "hsms" list (made when absent); every other byte kept.
function M.insert(text, path, entries)
  local items = {}
  for _, e in ipairs(entries) do items[#items + 1] = entry_text(e) end
  local members, last = top_members(text, path)
  local hsms = members.hsms
  if not hsms then
    local before = text:sub(1, last - 1):find("%S%s*$")       -- the last byte of the last member
    local has_members = next(members) ~= nil
    local block = ('"hsms": [\n    %s\n  ]'):format(table.concat(items, ",\n    "))
    return text:sub(1, before) .. (has_members and ",\n  " or "\n  ") .. block .. "\n" .. text:sub(last)
  end
  local at, stop = hsms.value_at, hsms.value_end
  if text:sub(at, at) ~= "[" then malformed(path, '"hsms" is not a list') end
  local inner = text:sub(at + 1, stop - 1)
  local indent = element_indent(text, at)
  if inner:find("%S") then
    local last_byte = at + inner:find("%S%s*$")               -- the end of the last element
    local sep = indent and (",\n" .. indent) or ", "
    return text:sub(1, last_byte) .. sep .. table.concat(items, sep) .. text:sub(last_byte + 1)
  end
  return text:sub(1, at) .. "\n    " .. table.concat(items, ",\n    ") .. "\n  " .. text:sub(stop)
end

---------------------------------------------------------------------------
-- Azure: the client, the subscription, the group's HSMs

-- the inventory's own defaults: a value equal to one is not written
local AZURE_FIELDS = inventory.schema.fields.azure.fields
local DEFAULTS = { endpoint = AZURE_FIELDS.endpoint.default, authority = AZURE_FIELDS.authority.default }

-- `az account show`: the subscription and tenant az is logged in to, or nil and why not.
local function az_account(az_command)
  local ok, r = pcall(require("dhsm.proc").run, { argv = { az_command or "az", "account", "show", "--output", "json" },
    timeout = 30 })
  if not ok then return nil, nil, tostring(dhsm.error.normalize(r).message) end
  if r.status ~= 0 then
    return nil, nil, util.trim((r.stderr or ""):match("[^\n]*%S[^\n]*") or ("exit status " .. r.status))
  end
  local decoded, j = pcall(cjson.decode, r.stdout)
  if not decoded or type(j) ~= "table" or type(j.id) ~= "string" then return nil, nil, "its output has no 'id'" end
  return j.id, type(j.tenantId) == "string" and j.tenantId or nil
end

-- The client's configuration: the inventory's azure section (base), or
-- the options and the environment, the options winning.
local function azure_config(opts, base)
  local cfg = {}
  for k, v in pairs(base or {}) do cfg[k] = v end
  for _, k in ipairs { "endpoint", "authority", "imds_endpoint", "ca_file" } do
    if opts[k] then cfg[k] = opts[k] end
  end
  cfg.tenant = opts.tenant or cfg.tenant
  cfg.resource_group = opts.group or cfg.resource_group
  if not cfg.resource_group then
    usage("inventory discover: no resource group: give -g GROUP (or an inventory with azure.resource_group)")
  end
  cfg.subscription = opts.subscription or cfg.subscription or os.getenv("AZURE_SUBSCRIPTION_ID")
  if not cfg.subscription then
    local sub, tenant, why = az_account(cfg.az_command)
    if not sub then
      usage("inventory discover: no subscription: give --subscription ID, or set AZURE_SUBSCRIPTION_ID, or log in "
        .. "with 'az login' ('az account show' gave none: %s)", why)
    end
    cfg.subscription, cfg.tenant = sub, cfg.tenant or tenant
  end
  return cfg
end

-- The tenant the subscription belongs to, as ARM says.
local function tenant_of(c)
  local path = "/subscriptions/" .. c.subscription
  local azure = require "dhsm.azure"
  local sub = azure.conform(path, c:get(path, { api_version = azure.API.subscriptions }).body,
    { "object", tenantId = "string!" })
  return sub.tenantId
end

-- The inventory's credential as written down: its type, and a secret only
-- by its reference.
local function credential_of(c, base)
  if base and base.credential then
    local cred = base.credential
    local kv = { { "type", cred.type } }
    if cred.client_id then kv[#kv + 1] = { "client_id", cred.client_id } end
    if cred.secret then kv[#kv + 1] = { "secret", cred.secret:origin() } end
    return kv
  end
  if c.used_credential == "environment" then         -- the service principal of the environment
    return { { "type", "client_secret" }, { "client_id", c.credential.client_id }, { "secret", "env:AZURE_CLIENT_SECRET" } }
  end
  return { { "type", c.used_credential } }
end

local function azure_section(c, cfg, base, location)
  local out = { subscription = c.subscription, tenant = c.tenant, resource_group = cfg.resource_group,
    location = location, credential = credential_of(c, base) }
  for _, k in ipairs { "endpoint", "authority", "imds_endpoint", "ca_file" } do
    if cfg[k] and cfg[k] ~= DEFAULTS[k] then out[k] = cfg[k] end
  end
  return out
end

-- Each HSM of the group: {name=, state=, stamp=, location=, ip=}; the IP
-- of a Succeeded one read from its NIC resource (dhsm.azure.hsm.private_ip),
-- as the delete rule binds an appliance's evidence to it.
local function list_hsms(c, group)
  local hsm = require "dhsm.azure.hsm"
  local out = {}
  for _, h in ipairs(hsm.list(c, group)) do
    local p = h.properties
    local ip = p.provisioningState == "Succeeded" and hsm.private_ip(c, h) or nil
    out[#out + 1] = { name = h.name, state = p.provisioningState or "?", stamp = p.stampId,
      location = h.location, ip = ip }
  end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

local function show_hsms(found, group)
  if #found == 0 then say("no dedicated HSM in resource group %s", group) return end
  local rows = { { "NAME", "STATE", "STAMP", "LOCATION", "PRIVATE IP" } }
  for _, h in ipairs(found) do
    rows[#rows + 1] = { h.name, h.state, h.stamp or "-", h.location or "-", h.ip or "(none)" }
  end
  for _, line in ipairs(util.columns(rows)) do say("%s", line) end
end

---------------------------------------------------------------------------
-- the rehearsal's address map

local ENTRY_FIELDS = inventory.schema.fields.hsms.items.fields
local PORT = { type = "integer", min = 1, max = 65535, required = true }
local MAP_ENTRY = { type = "object", fields = { ssh_port = PORT, ntls_port = PORT,
  host = { type = "string", required = true, pattern = ENTRY_FIELDS.host.pattern, expect = ENTRY_FIELDS.host.expect } } }

-- read_address_map(path) -> {ip = {host=, ssh_port=, ntls_port=}}, every bad field named
local function read_address_map(path)
  local data, err = util.read_file(path)
  if not data then usage("--address-map: cannot read %s", err) end
  local map, why, what = util.json_object(data)
  if what == "syntax" then usage("--address-map %s: %s", path, why) end
  if not map then
    usage("--address-map %s: expected a JSON object {\"NIC IP\": {\"host\":, \"ssh_port\":, \"ntls_port\":}}", path)
  end
  local problems, out = {}, {}
  for ip, v in pairs(map) do
    out[ip] = schema.check(v, MAP_ENTRY, ("%s[%s]"):format(path, json_string(ip)), problems)
  end
  if #problems > 0 then usage("--address-map: %s", table.concat(problems, "; ")) end
  return out
end

---------------------------------------------------------------------------
-- entries and host keys

local DEFAULT_KNOWN_HOSTS = ENTRY_FIELDS.known_hosts.default
local expand_home = inventory.expand_home

-- The inventory entry for a Succeeded HSM: where it listens (its NIC
-- address, or the map's), its resource, its secrets as prompts.
local function entry_for(h, map, map_path, known_hosts)
  local e = { name = h.name, host = h.ip, resource = h.name, password = "prompt", so_password = "prompt" }
  if map then
    local m = map[h.ip]
    if not m then
      usage("--address-map %s has no entry for %s (the NIC address of %s)", map_path, h.ip, h.name)
    end
    e.host, e.ssh_port, e.ntls_port = m.host, m.ssh_port, m.ntls_port
  end
  if known_hosts ~= DEFAULT_KNOWN_HOSTS then e.known_hosts = known_hosts end
  return e
end

-- The command that runs this one again with --accept-new (argv as typed).
local function with_accept_new(argv)
  local words = { "dhsm" }
  for _, a in ipairs(argv or {}) do words[#words + 1] = util.shell_quote(a) end
  words[#words + 1] = "--accept-new"
  return table.concat(words, " ")
end

-- The operator's word for a key not on file: --accept-new (audited), a
-- typed "yes", or a refusal naming the command to type.  In check mode the
-- gate describes the record and writes nothing: no question.
local function acceptance(opts)
  return function(hk, where, path)
    if act.checking() then return true end
    if opts["accept-new"] then
      dhsm.audit.write { action = "confirm", target = where, outcome = "skipped (--accept-new)",
        detail = ("record %s %s in %s"):format(hk.type, hk.sha256, path) }
      return true
    end
    ask.confirm { target = where, answer = "yes", detail = ("record %s %s in %s"):format(hk.type, hk.sha256, path),
      question = ("%s offers the %s host key %s, not in %s. Compare it with the appliance's console; "
        .. "type yes to record it: "):format(where, hk.type, hk.sha256, path),
      no_terminal = ("the host key of %s (%s %s) is not in %s and there is no terminal to confirm it on; nothing "
        .. "was written. Compare it with the appliance's console, then type: %s"):format(where, hk.type, hk.sha256,
        path, with_accept_new(opts.argv)),
      mismatch = ("not confirmed: the host key of %s was not recorded; nothing was written"):format(where) }
    return true
  end
end

-- Each entry's appliance: its host key known, or recorded on the
-- operator's word; a changed key refused (dhsm.luna).
-- -> how many appliances did not answer: their entries are written all the
-- same (a later connection checks the key strictly), and the run says so.
local function check_host_keys(entries, opts)
  local luna = require "dhsm.luna"
  local silent = 0
  for _, e in ipairs(entries) do
    local ok, hk = pcall(luna.host_key, { name = e.name, host = e.host, ssh_port = e.ssh_port,
      known_hosts = expand_home(e.known_hosts or DEFAULT_KNOWN_HOSTS) }, { accept = acceptance(opts) })
    local err = not ok and dhsm.error.normalize(hk)
    if err and err.kind ~= "net" and err.kind ~= "timeout" then error(hk, 0) end
    if err then
      silent = silent + 1
      say("%s: SSH does not answer (%s): its host key is not checked; its entry is written, and dhsm checks the key "
        .. "at the first connection", e.name, err.message)
    elseif hk.status == "known" then
      say("%s: host key %s %s already in %s, matching; nothing written", e.name, hk.type, hk.sha256, hk.known_hosts)
    elseif act.checking() then
      say("%s: host key %s %s would be recorded in %s", e.name, hk.type, hk.sha256, hk.known_hosts)
    else
      say("%s: host key %s %s recorded in %s", e.name, hk.type, hk.sha256, hk.known_hosts)
    end
  end
  return silent
end

---------------------------------------------------------------------------
-- discover

local function lower_set(list, field)
  local s = {}
  for _, x in ipairs(list) do s[x[field]:lower()] = x end
  return s
end

-- The existing inventory of --merge: its text, decoded table and loaded form.
local function read_merge(path)
  local text, err = util.read_file(path)
  if not text then usage("--merge: cannot read %s", err) end
  local loaded = inventory.decode(text, path)       -- it must load as it is
  -- the text rewritten: without a byte order mark (no part of the JSON), which the insertion would trip on
  text = util.without_bom(text)
  return text, util.json_object(text), loaded
end

-- Whether the merged text says what the old one said, plus the entries.
local function check_merged(old_table, new_text, added, path)
  local new_table = cjson.decode(new_text)
  local old_hsms, new_hsms = old_table.hsms or {}, new_table.hsms
  local same = #new_hsms == #old_hsms + #added
  for i = 1, #old_hsms do same = same and util.same(old_hsms[i], new_hsms[i]) end
  for k, v in pairs(old_table) do
    if k ~= "hsms" then same = same and util.same(v, new_table[k]) end
  end
  if not same then malformed(path, "the merged text would not keep what the file says (a bug): left as it was") end
  inventory.decode(new_text, path .. " (merged)")
end

local function confirm_write(opts, path, what)
  if act.checking() then return end
  ask.confirm { target = path, answer = "yes", yes = opts.yes == true, detail = what,
    question = ("%s. Type yes to write it: "):format(what),
    no_terminal = ("%s: there is no terminal to confirm it on; nothing was written (pass --yes to confirm in "
      .. "advance, --check to see it only)"):format(what),
    mismatch = ("not confirmed: %s was not written"):format(path) }
end

local function merge(opts, path, text, old_table, loaded, usable, found, group)
  local held = lower_set(found, "name")
  local have_resource, have_name = {}, {}
  for _, h in ipairs(loaded.hsms) do
    have_resource[h.resource:lower()], have_name[h.name] = h, true
  end
  local added, problems = {}, 0
  for _, e in ipairs(usable) do
    if not have_resource[e.resource:lower()] then
      if have_name[e.name] then
        say("%s: not added: an entry of %s is already named %s (for resource %s)", e.name, path, e.name,
          loaded:hsm(e.name).resource)
        problems = problems + 1
      else
        added[#added + 1] = e
      end
    end
  end
  local flagged = {}
  for _, h in ipairs(loaded.hsms) do
    if not held[h.resource:lower()] then flagged[#flagged + 1] = h end
  end
  for _, e in ipairs(added) do say("+ %s", entry_text(e)) end
  for _, h in ipairs(flagged) do
    say("! %s: resource %s is not in resource group %s any more; its entry is kept (remove it by hand once "
      .. "its appliance is decommissioned)", h.name, h.resource, group)
  end
  if #added == 0 then
    say("nothing to add: %s already lists every Succeeded HSM of %s%s; nothing was written", path, group,
      #flagged > 0 and (", " .. #flagged .. " flagged") or "")
    return problems > 0 and 1 or 0
  end
  local new_text = M.insert(text, path, added)
  check_merged(old_table, new_text, added, path)
  local what = ("add %d entr%s to %s (%d flagged)"):format(#added, #added == 1 and "y" or "ies", path, #flagged)
  -- the operator's word first: a merge refused records no host key either
  confirm_write(opts, path, what)
  problems = problems + check_host_keys(added, opts)
  local st = sys.stat(path)
  act.write_file(path, new_text, { mode = st and st.mode or tonumber("600", 8), what = what })
  if act.checking() then
    say("check mode: nothing was written; %s would get %d new entr%s, %d flagged", path, #added,
      #added == 1 and "y" or "ies", #flagged)
  else
    say("%s: %d added, %d flagged", path, #added, #flagged)
  end
  return problems > 0 and 1 or 0
end

-- discover(opts) -> exit status.  opts: the command line's (group,
-- subscription, tenant, output, merge, address-map, known-hosts,
-- accept-new, yes, check, endpoint, authority, imds-endpoint, ca-file,
-- inventory, argv).
function M.discover(opts)
  if opts.output and opts.merge then usage("inventory discover: give -o FILE or --merge FILE, not both") end
  if opts.output and sys.stat(opts.output) then
    usage("inventory discover: %s exists; nothing was written (--merge %s adds to it)", opts.output, opts.output)
  end
  local text, old_table, loaded
  if opts.merge then text, old_table, loaded = read_merge(opts.merge) end
  local base_inv = opts.inventory and inventory.load(opts.inventory) or loaded
  local base = base_inv and base_inv.azure
  local cfg = azure_config({ group = opts.group, subscription = opts.subscription, tenant = opts.tenant,
    endpoint = opts.endpoint, authority = opts.authority, imds_endpoint = opts["imds-endpoint"],
    ca_file = opts["ca-file"] }, base)
  local map = opts["address-map"] and read_address_map(opts["address-map"])
  local c <close> = require("dhsm.azure").client(cfg)
  local group = cfg.resource_group
  local rg = c:find(c:group_path(group))
  if not rg then
    dhsm.error { kind = "azure", code = "ResourceGroupNotFound",
      message = ("resource group %s is not in subscription %s"):format(group, c.subscription) }
  end
  local found = list_hsms(c, group)
  show_hsms(found, group)
  c.tenant = c.tenant or tenant_of(c)
  local usable, problems = {}, 0
  for _, h in ipairs(found) do
    if h.state ~= "Succeeded" then
      say("%s: %s, not Succeeded: not written", h.name, h.state)
    elseif not h.ip then
      say("%s: no private IP (neither properties.networkProfile.networkInterfaces[].privateIpAddress nor its NIC's "
        .. "ipConfigurations): not written", h.name)
      problems = problems + 1
    else
      usable[#usable + 1] = entry_for(h, map, opts["address-map"], opts["known-hosts"] or DEFAULT_KNOWN_HOSTS)
    end
  end
  if opts.merge then
    local status = merge(opts, opts.merge, text, old_table, loaded, usable, found, group)
    return problems > 0 and 1 or status
  end
  problems = problems + check_host_keys(usable, opts)
  local out = inventory_text(azure_section(c, cfg, base, rg.location), usable)
  inventory.decode(out, "the discovered inventory")        -- what is written loads
  if opts.output then
    act.write_file(opts.output, out, { mode = tonumber("600", 8), what = "the discovered inventory" })
    say("%s%s: %d HSM%s of %s", act.checking() and "check mode: nothing was written; would write " or "",
      opts.output, #usable, #usable == 1 and "" or "s", group)
  else
    io.stdout:write(out)
  end
  if problems > 0 then
    say("goal not reached: %d HSM%s not written, or not checked (above)", problems, problems == 1 and "" or "s")
    return 1
  end
  return 0
end

---------------------------------------------------------------------------
-- trust

-- trust(opts, name) -> exit status: accept appliance name's new host key,
-- only with the fingerprint typed (--fingerprint), on the operator's word.
function M.trust(opts, name)
  if not opts.inventory then usage("inventory trust: needs the inventory (-i FILE or $DHSM_INVENTORY)") end
  if not opts.fingerprint then
    usage("inventory trust: --fingerprint SHA256:... is required (the appliance's key as its console shows it)")
  end
  local entry = inventory.load(opts.inventory):hsm(name)
  local r = require("dhsm.luna").trust_host_key(entry, opts.fingerprint, { confirm = function(k)
    if act.checking() then return end
    local what = ("replace the host key of %s in %s: known %s, offered %s %s"):format(k.where, k.known_hosts,
      k.old or "(none)", k.type, k.sha256)
    ask.confirm { target = name, answer = "yes", yes = opts.yes == true, detail = what,
      question = what .. ". Type yes to replace it: ",
      no_terminal = ("%s: there is no terminal to confirm it on; nothing was written (pass --yes to confirm in "
        .. "advance)"):format(what),
      mismatch = ("not confirmed: the host key of %s was not replaced"):format(name) }
  end })
  if r.status == "known" then
    say("%s: host key %s %s already in %s, matching; nothing written", name, r.type, r.sha256, r.known_hosts)
  elseif act.checking() then
    say("check mode: nothing was written; %s's host key in %s would become %s %s", name, r.known_hosts, r.type, r.sha256)
  else
    say("%s: host key %s in %s (%s%s %s)", name, r.status, r.known_hosts, r.old and ("was " .. r.old .. ", now ") or "",
      r.type, r.sha256)
  end
  return 0
end

return M
