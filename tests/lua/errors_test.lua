-- dhsm errors: construction, printing, raising and normalising.
local t = require "dhsm.test"

t.test("dhsm.error raises a structured error", function()
  local ok, err = pcall(dhsm.error, { kind = "azure", code = "QuotaExceeded",
    message = "4 HSMs per region", retryable = false, details = { region = "eastus" } })
  t.eq(ok, false)
  t.eq(err.kind, "azure")
  t.eq(err.code, "QuotaExceeded")
  t.eq(err.details.region, "eastus")
  t.eq(tostring(err), "azure/QuotaExceeded: 4 HSMs per region")
  t.ok(dhsm.error.is(err))
  t.ok(dhsm.error.is(err, "azure"))
  t.ok(not dhsm.error.is(err, "luna"))
end)

t.test("an error without a code prints kind: message", function()
  local e = dhsm.error.new { kind = "net", message = "port 1792 closed" }
  t.eq(tostring(e), "net: port 1792 closed")
  t.eq(e.retryable, false)
end)

t.test("dhsm.error.new names a malformed field", function()
  t.raises(function() dhsm.error.new { message = "x" } end, "field 'kind' must be a string")
  t.raises(function() dhsm.error.new { kind = "x" } end, "field 'message' must be a string")
  t.raises(function() dhsm.error.new { kind = "x", message = "y", retryable = "yes" } end,
    "field 'retryable' must be a boolean")
  t.raises(function() dhsm.error.new { kind = "x", message = "y", code = {} } end,
    "field 'code' must be a string or number")
end)

t.test("try returns results or a normalised error", function()
  t.eq({ dhsm.try(function(a) return a, 2 end, 1) }, { true, 1, 2 })
  local ok, err = dhsm.try(error, "plain failure", 0)
  t.eq(ok, false)
  t.eq(err.kind, "lua")
  t.eq(err.message, "plain failure")
  local ok2, err2 = dhsm.try(dhsm.error, { kind = "safety", message = "refused" })
  t.eq(ok2, false)
  t.eq(err2.kind, "safety")
end)

t.test("errors raised from C are dhsm errors of kind usage", function()
  local ok, err = dhsm.try(dhsm.secret.env, "DHSM_TEST_SURELY_UNSET_VARIABLE")
  t.eq(ok, false)
  t.eq(err.kind, "usage")
  t.eq(err.message, "environment variable DHSM_TEST_SURELY_UNSET_VARIABLE is not set (expected a secret in it)")
end)

t.test("the test library's raises() matches kind, code or pattern", function()
  local boom = function() dhsm.error { kind = "pkcs11", code = "CKR_PIN_INCORRECT", message = "wrong PIN" } end
  t.raises(boom, "pkcs11")
  t.raises(boom, "CKR_PIN_INCORRECT")
  t.raises(boom, "wrong PIN")
  local ok = pcall(t.raises, boom, "nothing like it")
  t.eq(ok, false)
  ok = pcall(t.raises, function() end)
  t.eq(ok, false)
end)

t.test("eq reports the first difference with its path", function()
  t.eq(t.diff({ a = { 1, 2 } }, { a = { 1, 2 } }, "", {}), nil)
  t.eq(t.diff({ a = { 1, 3 } }, { a = { 1, 2 } }, "", {}), ".a[2]: expected 2, got 3")
  t.eq(t.diff({ x = "b" }, { x = "a" }, "", {}), '.x: expected "a", got "b"')
  t.eq(t.diff(1, 1.0, "", {}), nil)
  t.eq(t.diff({}, { k = true }, "", {}), ".k: expected true, got nil")
end)

t.test("exit statuses come from one map: usage 2, safety 3, interrupted 130, anything else 1", function()
  local errors, cli = require "dhsm.errors", require "dhsm.cli"
  local function status(kind) return errors.exit_status(errors.new { kind = kind, message = "m" }) end
  t.eq({ status("usage"), status("safety"), status("interrupted"), status("azure"), status("timeout") },
       { 2, 3, 130, 1, 1 })
  t.eq({ errors.exit_status("plain string"), errors.exit_status(nil), errors.exit_status({ kind = "usage" }) },
       { 1, 1, 1 })                                   -- a table without the metatable is no dhsm error
  t.eq(cli.exit_code(errors.new { kind = "safety", message = "m" }), 3)
end)
