-- initialize and its HA group: a cloning domain that is not the group's
-- stops the run with the guide's remedy, which typed as it reads lets a run
-- with the group's domain finish; and new_ha_group makes a group of the new
-- partition.  Read from the estate: the client's groups (Chrystoki.conf and
-- the client daemon), the partitions' cloning domains in its state, the
-- tokens over PKCS#11.
local t = require "dhsm.test"
local chrystoki = require "dhsm.chrystoki"
local proc = require "dhsm.proc"
local fresh = require "support.fresh"

local function initialize(e, extra, omit)
  return e:run("run initialize -e hsm=hsm3 " .. fresh.line(e, extra, omit), { state = e.dir .. "/state" })
end

local function tool_env(e)
  return { ChrystokiConfigurationPath = e.inventory.client.chrystoki_conf:match("^(.*)/[^/]*$") }
end

-- The members of group label in Chrystoki.conf.
local function members_of(e, label)
  for _, g in ipairs(chrystoki.load(e.inventory.client.chrystoki_conf):ha_groups()) do
    if g.label == label then return g.members end
  end
end

t.test("a wrong cloning domain: WrongCloningDomain and the guide's remedy, which typed lets the group's domain finish",
  function()
  local e = fresh.estate()
  local wrong = initialize(e, { "--yes", "-e", "cloning_domain=file:" .. e.secrets.wrong_domain }, { cloning_domain = true })
  t.eq(wrong.status, 3, wrong.stderr)
  t.ok(wrong.stderr:find("safety/WrongCloningDomain", 1, true), wrong.stderr)
  t.ok(wrong.stderr:find("HA Group Doesn't Sync", 1, true), "the guide's section is named")
  t.ok(not wrong.stderr:find("another-domain", 1, true), "the domain itself is never printed")
  t.eq(fresh.objects(e, "hsm3-par1"), {}, "nothing was cloned across domains")
  local serial = e:state().appliances.hsm3.partitions.par1.serial
  -- the remedy, as the message says it: remove the member, delete the partition
  t.ok(wrong.stderr:find("lunacm hagroup removeMember", 1, true) and wrong.stderr:find("LunaSH partition delete", 1, true),
    wrong.stderr)
  local r = proc.run { argv = { e.inventory.client.lunacm, "-c", "hagroup", "removeMember", "-group", "demoHA",
    "-serialNumber", serial }, env = tool_env(e) }
  t.ok(r.ok, r.stdout)
  local now = require("dhsm.inventory").load(e.dir .. "/inventory.json")       -- hsm3 listed since provision
  local s <close> = require("dhsm.luna").open(now:hsm("hsm3"))
  s:login_so(require("dhsm.secret").file(e.secrets.so_password))
  s:must("partition delete -partition par1 -force")
  local right = initialize(e, { "--yes" })
  t.eq(right.status, 0, right.stderr)
  t.eq(fresh.objects(e, "hsm3-par1"), { "secret_key:" .. fresh.APP_KEY }, "the group's key cloned to hsm3")
  t.eq(#members_of(e, "demoHA"), 3)
end, { timeout = 300 })

t.test("new_ha_group: the new partition is the first member of a group of its own; ha_group and new_ha_group together "
  .. "are bad input", function()
  local e = fresh.estate()
  local both = initialize(e, { "-e", "new_ha_group=soloHA" })
  t.eq(both.status, 2, both.stderr)
  t.ok(both.stderr:find("ha_group, new_ha_group: give one", 1, true), both.stderr)
  local r = initialize(e, { "--yes", "-e", "new_ha_group=soloHA" }, { ha_group = true })
  t.eq(r.status, 0, r.stderr)
  local serial = e:state().appliances.hsm3.partitions.par1.serial
  t.eq(members_of(e, "soloHA"), { serial })
  t.eq(#members_of(e, "demoHA"), 2, "demoHA untouched")
  t.eq(e:count_since(0, { create = "^lunacm: hagroup createGroup %-label soloHA .*%-> No Error$" }).create, 1)
  t.ok(r.stderr:find("alive in HA group soloHA", 1, true), r.stderr)
end, { timeout = 300 })
