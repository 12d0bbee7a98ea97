-- Fuzz every LunaSH output parser (dhsm.luna.parse) and the question
-- recognisers (dhsm.luna.prompts: match, match_quiet, asked) with mutated field
-- output (corpus/luna: the blocks of reference/luna-field.md and luna.md;
-- and tests/fixtures/luna, the field blocks the parsers are tested on).
local fuzz = dofile(arg[0]:match("^(.-)[^/]*$") .. "harness.lua")
local parse = require "dhsm.luna.parse"

local PARSERS = {}
for _, name in ipairs { "fields", "result", "hsm_show", "partition_list", "partition_show", "client_list",
  "client_show", "ntls_show", "package_list", "network_show", "ntls_log", "lunacm_slots", "lunacm_result", "lunacm_groups",
  "lunacm_sync_conflicts", "lunacm_role_show", "audit_show", "vtl_verify", "status_date", "table" } do
  PARSERS[#PARSERS + 1] = { "luna.parse." .. name, parse[name] }
end
for _, name in ipairs { "match", "match_quiet", "asked" } do
  PARSERS[#PARSERS + 1] = { "luna.prompts." .. name, require("dhsm.luna.prompts")[name] }
end

fuzz.main {
  name = "luna_parse",
  seeds = fuzz.corpus("luna", "../../fixtures/luna", "../../fixtures/sim"),
  dictionary = { "Command Result : 0 (Success)", "Command Result : 65535 (", "Error: ", "failed. (300000 : RC_X)",
    "HSM Admin login attempts left : ", "ZEROIZED", "Partition: 1234, Name: p", "registered client 1: ",
    "Partitions: ", '"par1"', "NTLS bound to network device: eth0   IP Address: \"", "IP Address (eth0): ",
    "\n0.0.0.0  10.0.0.1  0.0.0.0  UG  eth0", "KB0019789", ": ", "  ", "Serial #", "Hostname", " -> ", "Command Result : No Error", "' successful.",
    "\t", "=======  =======", "RPM LIST (SYSTEM)", "Slot Id ->", "        ", "Error:  'x' failed. (C0000401)",
    "Type 'proceed' to ", ", or 'quit' to quit now.", "\n          > ", "otherwise type 'quit'", "Password:",
    "Current Slot Id: ", "HA Group Label: ", "Group Members: ", "There are no HA groups configured.", "Partition SN: ",
    "Crypto Officer Login Attempts Left: ", "Audit Role Login Attempts Left: ", "Partitions created on HSM:",
    "The following Luna SA Slots/Partitions were found:", "No clients are registered.", " before HSM zeroization!",
    "quit now ->", "RPM LIST (SOFTWARE)", "-------------------", "Audit Role Locked Out: ",
    "Warning: Synchronize may fail.  The members in slot 0 and slot 1 have conflicting settings for private key cloning.",
    "Partition SO Zeroized: ", "================================  ===========", "? [y/N] ", " (yes/no): ",
    "Enter value ->", "?" },
  target = function(input) fuzz.each(PARSERS, input) end,
}
