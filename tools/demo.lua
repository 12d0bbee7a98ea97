-- The runtime on its own: tasks, parallel work with a limit, deadlines,
-- dhsm errors and the audit log.  (make demo runs this until the simulated
-- estate and the shipped playbooks are in.)
local appliances = { "hsm1", "hsm2", "hsm3", "hsm4" }

local t0 = dhsm.now()
local r = dhsm.parallel(appliances, function(name, i)
  dhsm.sleep(0.2 * i / #appliances)             -- stands in for a round trip
  dhsm.audit.write { action = "demo.probe", target = name, outcome = "ok" }
  return ("%s answered"):format(name)
end, { limit = 2 })
print(("parallel: %s in %.2f s (limit 2)"):format(table.concat(r, ", "), dhsm.now() - t0))

local ok, err = dhsm.try(dhsm.deadline, 0.1, function() dhsm.sleep(5) end)
print("deadline:", ok, tostring(err))

ok, err = dhsm.try(dhsm.parallel, appliances, function(name)
  if name == "hsm3" then
    dhsm.error { kind = "net", code = "ECONNREFUSED", message = "TCP 1792 refused" }
  end
  dhsm.sleep(1)
end)
print("first failure:", tostring(err))
