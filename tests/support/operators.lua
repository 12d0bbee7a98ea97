-- Operators of one jump host for the plan tests: real OpenSSH keys
-- (alice, bob and dave listed in an allowed_signers file, carol not) and a
-- host policy naming them, given to dhsm as DHSM_POLICY (honoured only
-- where /etc/dhsm/policy.json does not exist: dhsm.plan).
--
--   local k = require("support.operators").new { playbooks = { "decommission" } }
--   k.alice, k.bob_fp, k.policy, k.env ("DHSM_POLICY=...")
local t = require "dhsm.test"
local cjson = require "cjson"
local util = require "dhsm.util"

local M = {}

local q = util.shell_quote

-- new{approvals=, playbooks=, destructive_changes=} -> the operators' keys and the policy
function M.new(opts)
  opts = opts or {}
  local dir = t.tmpdir()
  local k = { dir = dir, policy = dir .. "/policy.json", signers = dir .. "/allowed_signers" }
  local lines = {}
  for _, who in ipairs { "alice", "bob", "carol", "dave" } do
    k[who] = dir .. "/" .. who
    t.sh(("ssh-keygen -q -t ed25519 -N '' -C %s -f %s"):format(who, q(k[who])))
    k[who .. "_fp"] = t.sh("ssh-keygen -l -f " .. q(k[who] .. ".pub")).stdout:match("(SHA256:%S+)")
    if who ~= "carol" then
      lines[#lines + 1] = who .. "@example.com " .. util.read_file(k[who] .. ".pub"):match("^(%S+ %S+)")
    end
  end
  t.write(k.signers, table.concat(lines, "\n") .. "\n")
  local destructive = opts.destructive_changes
  if destructive == nil then destructive = true end
  t.write(k.policy, cjson.encode { approvals = opts.approvals or 1, allowed_signers = k.signers,
    playbooks = opts.playbooks or { "decommission" }, destructive_changes = destructive })
  k.env = "DHSM_POLICY=" .. q(k.policy)
  return k
end

return M
