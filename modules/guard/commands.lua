-- dhsm.guard.commands: command lines as LunaSH and lunacm read them, for the
-- safety rules that must recognise a command however it is spelled.  The
-- appliance's shell (dhsm.luna) and the client's lunacm (dhsm.proc) both
-- ask here what a line does before they send it.
--
--   commands.lunash("par cr -par p1")        --> "write", "partition create"
--   commands.LUNASH_DESTRUCTIVE["hsm zeroize"] --> true (confirmed outside playbook steps)
--   commands.LUNASH_KEY_MATERIAL["hsm zeroize"] --> true (a last-copy clearance first)
--   commands.lunacm({"role", "login", "-n", "co"})  --> "login:co", "role login", "co"
--   commands.lunacm_words(argv)              --> the words after -c, or nil (commands on stdin)
--   commands.is_lunacm(argv)                 --> whether argv runs lunacm
--   commands.words("hsm 'login' -p x")       --> { "hsm", "login", "-p", "x" }
--   commands.readings(words, tree)           --> { {family=, sub=, at=}, ... }
--   commands.most(readings, verb_of, rank)   --> the most dangerous verb, its name
--   commands.option(words, from, "slot", "sl") --> the value of -slot (or -sl, -slo); refused when given twice
--   commands.lunash_shown("par del -par p1")   --> "partition delete -par p1" (secrets as ****)
--   commands.lunash_shown("hsm init -p x", true) --> "hsm init -p ****" (as typed)
--
-- Both shells split a line into words (quotes group, backslashes escape),
-- take command words and options case-insensitively and abbreviated to any
-- unambiguous prefix (an exact name wins), and take options after the
-- command words.  For a guard, a line means every command it could mean:
-- readings() lists them all - each abbreviation's every completion, and,
-- when an option comes first, both its value and the word after it as the
-- command word - so the caller can act on the most dangerous one.
local schema = require "dhsm.schema"

local M = {}

-- Every public function checks its arguments first (dhsm.schema.argument):
-- a usage error naming the function, not a Lua error from inside.
local function arg(fn, name, value, spec)
  return schema.argument("guard.commands." .. fn, name, value, spec)
end
local WORDS = { type = "table", required = true, expect = "a list of words (commands.words(line))" }

-- Quotes and backslashes dropped: the same words, or a quoted one split
-- in two; never a word hidden.
function M.words(line)
  arg("words", "line", line, "string")
  local out = {}
  for w in line:gsub("[\"'\\]", ""):gmatch("%S+") do out[#out + 1] = w end
  return out
end

function M.is_option(word)
  arg("is_option", "word", word, "string")
  return word:sub(1, 1) == "-"
end

-- The names `word` may stand for in `choices` (a table keyed by lower-case
-- name): itself when exact, else every name it abbreviates.
function M.meanings(word, choices)
  arg("meanings", "word", word, "string")
  arg("meanings", "choices", choices, "table")
  word = word:lower()
  if choices[word] then return { word } end
  local found = {}
  for name in pairs(choices) do
    if name:sub(1, #word) == word then found[#found + 1] = name end
  end
  table.sort(found)
  return found
end

-- The positions of the words the shell could read as the next command
-- word, from `from` on: a word right after an option may be its value or
-- the command word, so both are kept, up to the first that can only be the
-- command word.
local function next_words(words, from)
  local out = {}
  for i = from, #words do
    if not M.is_option(words[i]) then
      out[#out + 1] = i
      if i == from or not M.is_option(words[i - 1]) then break end
    end
  end
  return out
end

-- readings(words, tree) -> every {family=, sub=, at=, family_at=} the words
-- could mean; tree = { family = { sub = verb, ... }, ... }.  family is nil
-- for an unknown command, sub nil when none is known; at is the sub's
-- position, family_at the family's.
function M.readings(words, tree)
  arg("readings", "words", words, WORDS)
  arg("readings", "tree", tree, "table")
  local out = {}
  for _, f in ipairs(next_words(words, 1)) do
    local families = M.meanings(words[f], tree)
    if #families == 0 then out[#out + 1] = {} end
    for _, family in ipairs(families) do
      local subs = next_words(words, f + 1)
      if #subs == 0 then out[#out + 1] = { family = family, family_at = f } end
      for _, s in ipairs(subs) do
        local names = M.meanings(words[s], tree[family])
        if #names == 0 then out[#out + 1] = { family = family, family_at = f } end
        for _, sub in ipairs(names) do out[#out + 1] = { family = family, sub = sub, at = s, family_at = f } end
      end
    end
  end
  return out
end

-- most(readings, verb_of, rank [, prefer]) -> the verb and name of the most
-- dangerous reading: verb_of(reading) -> verb, name; rank(verb) -> number;
-- prefer(name) breaks a tie.  nil when there is no reading.
function M.most(readings, verb_of, rank, prefer)
  arg("most", "readings", readings, "table")
  arg("most", "verb_of", verb_of, "function")
  arg("most", "rank", rank, "function")
  arg("most", "prefer", prefer, { type = "function" })
  local verb, what
  for _, r in ipairs(readings) do
    local v, w = verb_of(r)
    if verb == nil or rank(v) > rank(verb)
      or (rank(v) == rank(verb) and prefer and prefer(w) and not prefer(what)) then
      verb, what = v, w
    end
  end
  return verb, what
end

-- option(words, name) -> the value of option -name (abbreviated or not,
-- from `short` on) after position `from`, or nil
-- An option given twice with two values is refused, not read: lunacm and
-- LunaSH take the last, a reader taking the first would count a login
-- against one partition while another is tried.  alias: one more exact
-- spelling (lunacm's -s for -slot).
function M.option(words, from, name, short, alias)
  arg("option", "words", words, WORDS)
  arg("option", "from", from, { type = "integer", required = true, min = 1, expect = "a position in words (an integer from 1)" })
  arg("option", "name", name, "string")
  arg("option", "short", short, "string")
  arg("option", "alias", alias, { type = "string" })
  local value
  for i = from, #words - 1 do
    local w = words[i]:lower():match("^%-(.+)$")
    if w and ((#w >= #short and name:sub(1, #w) == w) or w == alias) then
      if value ~= nil and words[i + 1] ~= value then
        require("dhsm.act").refusal { code = "AmbiguousOption",
          message = ("refusing '%s': -%s is given twice (%s and %s); which one the tool takes is not for the "
            .. "failed-login guard to guess"):format(table.concat(words, " "), name, value, words[i + 1]) }
      end
      value = words[i + 1]
    end
  end
  return value
end

---------------------------------------------------------------------------
-- LunaSH, the appliance's shell

-- verb per "family subcommand": read | write | login:<role> | reboot | network.
-- login:unsupported: a command that submits a role's password which the
-- guard cannot count over LunaSH (partition roles go through dhsm.pkcs11).
-- `hsm restart` restarts the HSM card (luna-field.md 6.7): every session
-- and login on it ends, as in a reboot, whose rules it takes.
local LUNASH = {
  hsm = { show = "read", showpolicies = "read", login = "login:so", logout = "write", init = "write",
    zeroize = "write", factoryreset = "write", changepolicy = "write", changepw = "login:unsupported",
    restart = "reboot" },
  audit = { show = "read", login = "login:audit", logout = "write", init = "write", changepw = "login:unsupported" },
  partition = { list = "read", show = "read", create = "write", delete = "write",
    showcontents = "login:unsupported", changepw = "login:unsupported" },
  role = { login = "login:unsupported", show = "read", logout = "write" },
  client = { list = "read", show = "read", register = "write", delete = "write", assignpartition = "write",
    revokepartition = "write", hostip = "write" },
  ntls = { show = "read", bind = "write", ipcheck = "write" },
  network = { show = "read", interface = "network", hostname = "network", route = "network", dns = "network" },
  syslog = { tail = "read", show = "read" },
  package = { list = "read", update = "write" },
  service = { status = "read", start = "write", stop = "write", restart = "write" },
  status = { date = "read", interface = "read", sensors = "read" },
  sysconf = { regencert = "write", reboot = "reboot", poweroff = "reboot", appliance = "reboot" },
}

local LUNASH_RANK = { read = 1, write = 2, network = 3, reboot = 4, login = 5 }

local function lunash_rank(verb)
  return LUNASH_RANK[verb:match("^[^:]+")]
end

-- verb of one reading: family and subcommand as LunaSH would resolve them
local function lunash_verb(family, sub, after)
  local verb = LUNASH[family][sub]
  if family == "ntls" and sub == "ipcheck" and after and after:lower() == "show" then verb = "read" end
  if family == "sysconf" and sub == "appliance" and after and after:lower():match("^sh") then verb = "read" end
  return verb
end

-- What cannot be undone: the gate asks for it (dhsm.act), unless a
-- confirmed playbook step on the same appliance covers it.
-- `sysconf regenCert` replaces the NTLS certificate every client trusts:
-- each client must then re-exchange certificates (guide, NTLS).
-- A power-off too: only Microsoft can power the appliance on again.
M.LUNASH_DESTRUCTIVE = { ["hsm zeroize"] = true, ["hsm init"] = true, ["hsm factoryreset"] = true,
  ["hsm changepolicy"] = true, ["partition delete"] = true, ["client delete"] = true,
  ["sysconf regencert"] = true, ["sysconf poweroff"] = true, ["sysconf appliance"] = true,
  ["audit init"] = true }
-- The destructive ones that destroy key material: on an appliance whose
-- partitions hold objects each needs a last-copy clearance (dhsm.luna).
-- `hsm changePolicy` is among them: a destructive policy's change erases
-- the partitions (4.5's question says so), and which policies are
-- destructive is the appliance's word, not dhsm's.
M.LUNASH_KEY_MATERIAL = { ["hsm zeroize"] = true, ["hsm init"] = true, ["hsm factoryreset"] = true,
  ["partition delete"] = true, ["hsm changepolicy"] = true }

-- lunash(line) -> verb, "family sub": of every way LunaSH could read the
-- line, the most dangerous: a line that could be a login is a login.
-- Unknown commands are writes, and so is a read with an -export... option
-- (`hsm showPolicies -exportTemplate FILE` writes a file on the appliance).
function M.lunash(line)
  arg("lunash", "line", line, "string")
  local words = M.words(line)
  local verb, what = M.most(M.readings(words, LUNASH), function(r)
    if r.sub then return lunash_verb(r.family, r.sub, words[r.at + 1]), r.family .. " " .. r.sub end
    return "write", r.family or line
  end, lunash_rank, function(w) return M.LUNASH_DESTRUCTIVE[w] end)
  if verb == nil then return "write", line end
  if verb == "read" then
    for _, w in ipairs(words) do
      if w:lower():match("^%-exp") then return "write", what end
    end
  end
  return verb, what
end

-- The options whose value is a secret, per command (LunaSH 7 and 6: a
-- password, a cloning domain, a package's authorization code); a line is
-- written down with their values as ****.
local LUNASH_SECRETS = { ["hsm login"] = { "password" }, ["hsm init"] = { "password", "domain" },
  ["hsm changepw"] = { "oldpw", "newpw", "password" }, ["audit login"] = { "password" },
  ["audit init"] = { "password", "domain" }, ["audit changepw"] = { "oldpw", "newpw", "password" },
  ["partition changepw"] = { "oldpw", "newpw", "password" }, ["partition showcontents"] = { "password" },
  ["role login"] = { "password" }, ["package update"] = { "authcode" } }
-- Whatever the command (one dhsm does not know, an older release's
-- option): an option of three letters or more that can only start one of
-- these names.  Shorter ones are masked where the command has the option:
-- elsewhere -p and -d abbreviate -partition and -days as often.
local ANY_SECRET = { "password", "domain", "oldpw", "newpw", "authcode" }

-- LunaSH's own spelling of the names dhsm keys in lower case.
local LUNASH_NAMES = { showpolicies = "showPolicies", changepolicy = "changePolicy", factoryreset = "factoryReset",
  changepw = "changePw", showcontents = "showContents", assignpartition = "assignPartition",
  revokepartition = "revokePartition", regencert = "regenCert" }

-- The line as LunaSH's shell splits it, each word as typed: quotes group
-- (and stay), a backslash keeps the next character in the word.
local function typed_words(line)
  local out, word, quote, i = {}, nil, nil, 1
  while i <= #line do
    local c = line:sub(i, i)
    if c == "\\" then
      word = (word or "") .. line:sub(i, i + 1)
      i = i + 1
    elseif quote then
      word = word .. c
      if c == quote then quote = nil end
    elseif c:match("%s") then
      if word then out[#out + 1], word = word, nil end
    else
      if c == '"' or c == "'" then quote = c end
      word = (word or "") .. c
    end
    i = i + 1
  end
  if word then out[#out + 1] = word end
  return out
end

local function abbreviates(word, names, shortest)
  for _, name in ipairs(names) do
    if #word >= shortest and name:sub(1, #word) == word then return true end
  end
  return false
end

-- lunash_shown(line [, as_typed]) -> the line to show and write down: the
-- value of every option that could be a secret in any reading as ****, the
-- other words as typed, and (unless as_typed) the command words by LunaSH's
-- names for the most dangerous reading ("par del" is "partition delete").
function M.lunash_shown(line, as_typed)
  arg("lunash_shown", "line", line, "string")
  local words = typed_words(line)
  local plain = {}
  for i, w in ipairs(words) do plain[i] = w:gsub("[\"'\\]", "") end
  local readings = M.readings(plain, LUNASH)
  local sets = { { ANY_SECRET, 3 } }
  for _, r in ipairs(readings) do
    local own = r.sub and LUNASH_SECRETS[r.family .. " " .. r.sub]
    if own then sets[#sets + 1] = { own, 1 } end
  end
  local shown = {}
  for i, w in ipairs(words) do
    local opt = i > 1 and plain[i - 1]:lower():match("^%-(.+)$")
    local secret = false
    for _, set in ipairs(opt and sets or {}) do secret = secret or abbreviates(opt, set[1], set[2]) end
    shown[i] = secret and "****" or w
  end
  local _, best = M.most(readings, function(r)
    return r.sub and lunash_verb(r.family, r.sub, plain[r.at + 1]) or "write", r
  end, lunash_rank, function(r) return r and r.sub and M.LUNASH_DESTRUCTIVE[r.family .. " " .. r.sub] end)
  if not as_typed and best and best.sub and shown[best.family_at] ~= "****" and shown[best.at] ~= "****" then
    shown[best.family_at], shown[best.at] = best.family, LUNASH_NAMES[best.sub] or best.sub
  end
  return table.concat(shown, " ")
end

---------------------------------------------------------------------------
-- lunacm, the client's tool

-- verb per "family subcommand": read | write | login:name (the role of
-- -name) | login:co | login:members (the CO of every member of -group) |
-- login:unsupported
local LUNACM = {
  role = { login = "login:name", changepw = "login:name", logout = "write", show = "read", resetpw = "write",
    init = "write" },
  hagroup = { creategroup = "login:co", addmember = "login:co", synchronize = "login:members",
    listgroups = "read", removemember = "write", deletegroup = "write", recover = "write", retry = "write",
    interval = "write", haonly = "write", addstandby = "write", recoverymode = "write" },
  slot = { list = "read", set = "write" },
  partition = { init = "write", changepolicy = "write", show = "read", showpolicies = "read" },
}
local LUNACM_ROLES = { so = "pso", po = "pso", co = "co", cu = "co" }
local LUNACM_RANK = { read = 1, write = 2, login = 3 }

-- What cannot be undone, confirmed like LunaSH's list (dhsm.act): a
-- partition's contents, a role's password, a group or a member gone.  The
-- other writes (hagroup recover, retry, addMember ...) pass the gate too,
-- described in check mode and recorded, without a question.
M.LUNACM_DESTRUCTIVE = { ["partition init"] = true, ["partition changepolicy"] = true, ["role init"] = true,
  ["role resetpw"] = true, ["hagroup deletegroup"] = true, ["hagroup removemember"] = true }

-- What a lunacm command changes, for the operator to name: its -group,
-- else its -label, else its partition (-serialNumber, -slot), else "lunacm".
function M.lunacm_target(words)
  arg("lunacm_target", "words", words, WORDS)
  return M.option(words, 1, "group", "g") or M.option(words, 1, "label", "l")
    or M.option(words, 1, "serialnumber", "se") or M.option(words, 1, "slot", "sl") or "lunacm"
end

-- Commands whose secret on stdin is a new password, not a login.
M.LUNACM_NEW_PASSWORD = { ["role resetpw"] = true, ["role init"] = true, ["partition init"] = true }

function M.is_lunacm(argv)
  return type(argv) == "table" and type(argv[1]) == "string" and argv[1]:match("[^/]*$"):lower():find("^lunacm") ~= nil
end

-- The words after -c, or nil when lunacm would read commands on stdin.
function M.lunacm_words(argv)
  arg("lunacm_words", "argv", argv, { type = "table", required = true, expect = "an argv list (a table of strings)" })
  for i = 2, #argv do
    if tostring(argv[i]):lower() == "-c" then
      local words = {}
      for j = i + 1, #argv do
        for _, w in ipairs(M.words(tostring(argv[j]))) do words[#words + 1] = w end
      end
      return words
    end
  end
end

-- lunacm(words) -> verb, "family sub", role (pso | co | members) for a login
function M.lunacm(words)
  arg("lunacm", "words", words, WORDS)
  local verb, what = M.most(M.readings(words, LUNACM), function(r)
    if not r.sub then return "write", r.family or table.concat(words, " ") end
    local v = LUNACM[r.family][r.sub]
    if v == "login:name" then
      local name = M.option(words, r.at + 1, "name", "n")
      v = "login:" .. (name and LUNACM_ROLES[name:lower()] or "unsupported")
    end
    return v, r.family .. " " .. r.sub
  end, function(v) return LUNACM_RANK[v:match("^[^:]+")] end)
  verb = verb or "write"
  return verb, what or table.concat(words, " "), verb:match("^login:(.+)$")
end

return require("dhsm.util").sealed(M)
