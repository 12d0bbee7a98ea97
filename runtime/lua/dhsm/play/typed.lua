-- dhsm.play.typed: the commands dhsm prints for the operator to type,
-- each written once, so that every remedy and next step naming one prints
-- the same words, and a test can type what is printed.  Each runs as
-- printed: every parameter it requires is there, a secret one by a
-- reference the operator fills (prompt: asked on the terminal; env:NAME or
-- file:PATH do as well), never a value.
--
--   local typed = require "dhsm.play.typed"
--   typed.initialize("hsm3", { inventory = "/etc/dhsm/inv.json", first_login = true })
--   typed.first_login("hsm3", "/etc/dhsm/inv.json")
--   typed.discover("hsm-rg", "/etc/dhsm/inv.json")
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

local q = util.shell_quote

-- "-i PATH " for an inventory path (absolute, so the command works from
-- anywhere), or "" when none is known ($DHSM_INVENTORY then gives it).
local function inventory_option(path)
  if not path then return "" end
  return ("-i %s "):format(q(sys.realpath(path) or path))
end

-- discover(group, inventory) -> `dhsm inventory discover -g GROUP --merge
-- INVENTORY`: the command that adds the group's new HSMs to the inventory
-- file (absolute, as inventory_option makes it).
function M.discover(group, inventory)
  return ("dhsm inventory discover -g %s --merge %s"):format(q(group), q(sys.realpath(inventory) or inventory))
end

-- The secrets initialize requires (its parameters' specs say so), as
-- references asked at the terminal.
local INITIALIZE_SECRETS = { "so_password", "cloning_domain", "pso_password", "co_password" }

-- The partition a printed initialize creates: a name the operator may
-- change, as in the guide's examples.
M.PARTITION = "par1"

-- initialize(name, opts) -> `dhsm [-i INV] run initialize ...` taking the
-- factory-fresh appliance `name` to an initialised HSM with one partition:
-- opts.inventory (path), opts.first_login (the appliance still demands its
-- first password change: -e new_password=prompt too).  HA membership is
-- the operator's choice (-e ha_group= or -e new_ha_group=), left out.
-- credentials_stored=true is the operator's word that the credentials are
-- kept: the caller says the guide's warning before the command.
function M.initialize(name, opts)
  opts = opts or {}
  local words = { ("dhsm %srun initialize -e hsm=%s -e partition=%s"):format(inventory_option(opts.inventory), q(name),
    M.PARTITION) }
  if opts.first_login then words[#words + 1] = "-e new_password=prompt" end
  for _, k in ipairs(INITIALIZE_SECRETS) do words[#words + 1] = ("-e %s=prompt"):format(k) end
  words[#words + 1] = "-e credentials_stored=true"
  return table.concat(words, " ")
end

-- first_login(name [, inventory]) -> the exec command that changes the
-- administrator password an appliance demands before its first prompt
-- (dhsm.luna.first_login), the new one asked at the terminal: for an
-- appliance that is not to be initialised (initialize does it itself).
function M.first_login(name, inventory)
  local code = ('require("dhsm.luna").first_login(inv:hsm(%q), {new_password = secret.prompt("new password: ")})')
    :format(name)
  return ("dhsm %sexec -e %s"):format(inventory_option(inventory), q(code))
end

return M
