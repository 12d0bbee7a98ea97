-- dhsm.schema: records, string lengths, the rules between fields
-- (requires=, exclusive=), the walk over a checked value, and the
-- mistakes in a spec itself that spec_problems finds before a value
-- meets them.
local t = require "dhsm.test"
local schema = require "dhsm.schema"
local hsm = require "dhsm.azure.hsm"
local inventory = require "dhsm.inventory"

-- check(value, spec) -> checked value, problems
local function check(value, spec, coerce)
  local problems = {}
  local v = schema.check(value, spec, "x", problems, coerce)
  return v, problems
end

local HOST = { type = "record", fields = {
  { "name", { required = true, pattern = "^%l+$", expect = "lower-case letters" } },
  { "zone", { pattern = "^%w+$", expect = "letters and digits" } },
  { "port", { type = "integer", min = 1, max = 65535 } },
} }

---------------------------------------------------------------------------
-- records

t.test("a record is described by its fields, the optional ones nested", function()
  t.eq(schema.expected(HOST), "name[:zone[:port]]")
  t.eq(schema.expected { type = "list", items = HOST }, "list of name[:zone[:port]]")
  t.eq(schema.expected { type = "record", separator = "/", fields = { { "a", { required = true } },
    { "b", { required = true } }, { "c", {} } } }, "a/b[/c]")
end)

t.test("a record string is split on its separator: empty parts are nil, too many parts a problem", function()
  t.eq({ check("web:z1:443", HOST) }, { { name = "web", zone = "z1", port = 443 }, {} })
  t.eq({ check("web", HOST) }, { { name = "web" }, {} })
  t.eq({ check("web::80", HOST) }, { { name = "web", port = 80 }, {} })
  t.eq(select(2, check("web:z1:443:x", HOST)), { 'x: expected name[:zone[:port]], got "web:z1:443:x"' })
  t.eq(select(2, check(":z1:0", HOST)), { "x.name: missing, expected lower-case letters",
    'x.port: expected integer 1-65535, got "0"' })
  local plain = { type = "record", separator = ".", fields = { { "a", { required = true } }, { "b", {} } } }
  t.eq({ check("p.q", plain) }, { { a = "p", b = "q" }, {} }, "the separator is plain text, not a pattern")
end)

t.test("a record may be given as an object of its fields (JSON), each checked by its own spec", function()
  t.eq({ check({ name = "web", port = 8080 }, HOST) }, { { name = "web", port = 8080 }, {} })
  t.eq(select(2, check({ name = "Web", zoen = "z" }, HOST)), { "x.zoen: unknown field (did you mean 'zone'?)",
    'x.name: expected lower-case letters, got "Web"' })
  t.eq(select(2, check({ "web" }, HOST)), { "x: expected name[:zone[:port]], got a list" })
  t.eq(select(2, check(42, HOST)), { "x: expected name[:zone[:port]], got 42" })
end)

---------------------------------------------------------------------------
-- secrets

t.test("a value given for a secret is never shown, whatever its type, alone or inside a list or record", function()
  local SECRET = { type = "secret" }
  local words = "a secret reference (env:NAME, file:PATH or prompt)"
  t.eq(select(2, check(84713265, SECRET)), { "x: expected " .. words .. ", got a number (not shown)" })
  t.eq(select(2, check(true, SECRET)), { "x: expected " .. words .. ", got a boolean (not shown)" })
  t.eq(select(2, check({ 84713265 }, { type = "list", items = SECRET })),
    { "x[1]: expected " .. words .. ", got a number (not shown)" })
  local login = { type = "record", fields = { { "user", { required = true } }, { "pw", SECRET } } }
  t.eq(select(2, check("so:hunter2:x", login)), { "x: expected user[:pw], got a string (not shown)" })
  t.eq(select(2, check(7, { type = "list", items = login })), { "x: expected list of user[:pw], got a number (not shown)" })
  t.eq(select(2, check(7, { type = "integer", min = 8 })), { "x: expected integer 8-, got 7" }, "other values are shown")
  local err = t.raises(function() schema.options("thing.login", { pin = 1234 }, { pin = { type = "text" } }) end, "usage")
  t.eq(err.message, "thing.login: pin: expected a string or a secret, got a number (not shown)")
end)

---------------------------------------------------------------------------
-- lists and numbers

t.test("a required list must hold an item, and no item may be empty", function()
  local HSMS = { type = "list", required = true, items = { type = "string" } }
  for _, given in ipairs { "", " ", "[]" } do
    t.eq({ check(given, HSMS, true) }, { nil, { "x: expected list of string, got an empty list" } }, given)
  end
  t.eq(select(2, check({}, HSMS)), { "x: expected list of string, got an empty list" }, "from -e @file.json")
  t.eq(select(2, check(",", HSMS, true)), { 'x[1]: expected string, got ""', 'x[2]: expected string, got ""' })
  t.eq(select(2, check(" , ", HSMS, true)), { 'x[1]: expected string, got ""', 'x[2]: expected string, got ""' })
  t.eq(select(2, check("a,,b", HSMS, true)), { 'x[2]: expected string, got ""' }, "not quietly dropped")
  t.eq(select(2, check('["a", ""]', HSMS, true)), { 'x[2]: expected string, got ""' })
  t.eq({ check(" a , b ", HSMS, true) }, { { "a", "b" }, {} })
  t.eq({ check("", { type = "list" }, true) }, { {}, {} }, "an optional list may be empty")
  t.eq(select(2, check("web:,", { type = "list", items = HOST }, true)), { 'x[2]: expected name[:zone[:port]], got ""' })
end)

t.test("unique=: an item, or a record's field, given twice is refused, naming each one given twice", function()
  local NAMES = { type = "list", unique = true }
  t.eq(select(2, check("hsm1,hsm1", NAMES, true)), { 'x: "hsm1" given more than once (each may be given once)' })
  t.eq(select(2, check("a,b,a,b,a,c", NAMES, true)), { 'x: "a" and "b" given more than once (each may be given once)' })
  t.eq({ check("a,b", NAMES, true) }, { { "a", "b" }, {} })
  local HOSTS = { type = "list", items = HOST, unique = "name" }
  t.eq(select(2, check("web:z1,web:z2,db", HOSTS, true)), { 'x: name "web" given more than once (each may be given once)' })
  t.eq(select(2, check({ { name = "web" }, "web" }, HOSTS)), { 'x: name "web" given more than once (each may be given once)' })
  t.eq(select(2, check("web,Web,web", HOSTS, true)), { 'x[2].name: expected lower-case letters, got "Web"',
    'x: name "web" given more than once (each may be given once)' }, "an item with a problem of its own is left out")
  t.eq(select(2, check({ 1, 1 }, { type = "list", items = { type = "integer" }, unique = true })),
    { "x: 1 given more than once (each may be given once)" })
end)

t.test("a number must be finite: 1e999 and NaN are refused, from the command line or JSON", function()
  for _, spec in ipairs { { type = "number" }, { type = "number", min = 0 }, { type = "integer" } } do
    t.eq(select(2, check("1e999", spec, true)), { ("x: expected %s, got \"1e999\""):format(schema.expected(spec)) })
    t.eq(#select(2, check("-1e999", spec, true)), 1)
    t.eq(#select(2, check(0 / 0, spec)), 1, "NaN")
    t.eq(#select(2, check(math.huge, spec)), 1, "inf from JSON")
  end
  t.eq({ check("1e300", { type = "number" }, true) }, { 1e300, {} })
end)

---------------------------------------------------------------------------
-- string lengths and the dedicated HSM name

t.test("min_length and max_length bound a string, in characters", function()
  local spec = { type = "string", min_length = 3, max_length = 5 }
  t.eq(schema.expected(spec), "string of 3-5 characters")
  t.eq(select(2, check("abc", spec)), {})
  t.eq(select(2, check("ééééé", spec)), {}, "characters, not bytes")
  t.eq(select(2, check("ab", spec)), { 'x: expected string of 3-5 characters, got "ab"' })
  t.eq(select(2, check("abcdef", spec)), { 'x: expected string of 3-5 characters, got "abcdef"' })
  t.eq(schema.expected { pattern = "^%w+$", min_length = 2 }, "string in the form the spec requires, at least 2 characters")
end)

t.test("hsm.NAME is the one dedicated HSM name rule; check_name checks through it", function()
  t.eq(schema.spec_problems(hsm.NAME, "hsm.NAME"), {})
  t.eq(hsm.check_name("hsm-a1"), "hsm-a1")
  t.eq(select(2, check(("a"):rep(24), hsm.NAME)), {})
  for _, bad in ipairs { "ab", ("a"):rep(25), "hsm_a", "hsm a" } do
    t.eq(t.raises(function() hsm.check_name(bad) end, "usage").message,
      ("dedicated HSM name: expected 3-24 letters, digits or '-', got %q"):format(bad))
  end
  t.eq(t.raises(function() hsm.check_name(nil) end, "usage").message,
    "dedicated HSM name: missing, expected 3-24 letters, digits or '-'")
end)

---------------------------------------------------------------------------
-- rules between fields

local FIELDS = {
  fix = { type = "boolean", default = false, requires = { "domain", "pin" } },
  domain = { type = "string" },
  pin = { type = "string" },
  mode = { type = "enum", values = { "plain", "template" }, default = "plain", requires = { template = { "template" } } },
  template = { type = "string" },
  every = { type = "boolean", default = true, exclusive = { "only" } },
  only = { type = "list", exclusive = { "every" } },
}

local function relations(values, given)
  local problems = {}
  schema.relations(FIELDS, values, given or {}, problems, { how = function(names)
    return "(give " .. table.concat(names, ", ") .. ")"
  end })
  return problems
end

t.test("requires=: when a field is set (not nil, not false), the ones it names must be set too", function()
  t.eq(relations { fix = true, domain = "d" }, { "fix: true needs pin (give pin)" })
  t.eq(relations { fix = true }, { "fix: true needs domain and pin (give domain, pin)" })
  t.eq(relations { fix = false }, {}, "false is not set")
  t.eq(relations { fix = true, domain = "d", pin = "p" }, {})
  t.eq(relations({ fix = true, domain = "d" }, { pin = true }), {}, "given with a problem of its own: not said again")
end)

t.test("requires= keyed by an enum's value applies to that value only", function()
  t.eq(relations { mode = "template" }, { "mode: template needs template (give template)" })
  t.eq(relations { mode = "plain" }, {})
  t.eq(relations { mode = "template", template = "t.json" }, {})
end)

t.test("exclusive=: both given is a problem, said once; a default does not count as given", function()
  t.eq(relations({ every = true, only = { "a" } }, { every = true, only = true }),
    { "every: cannot go with only (give only one of them)" })
  t.eq(relations({ every = true, only = { "a" } }, { only = true }), {})
end)

t.test("exclusive=: only a value given and set counts: an explicit false or nil goes with the other", function()
  t.eq(relations({ every = false, only = { "a" } }, { every = true, only = true }), {}, "every=false says 'not every'")
  t.eq(relations({ only = { "a" } }, { every = true, only = true }), {}, "given with a problem of its own: nil")
  local spec = { type = "object", fields = { a = { type = "boolean", exclusive = { "b" } }, b = { type = "string" } } }
  t.eq(select(2, check({ a = false, b = "x" }, spec)), {})
  t.eq(select(2, check({ a = true, b = "x" }, spec)), { "x.a: cannot go with b (give only one of them)" })
end)

t.test("the rules hold between an object's fields too, by their paths", function()
  local spec = { type = "object", fields = { a = { type = "boolean", requires = { "b" } }, b = { type = "string" },
    c = { type = "string", exclusive = { "b" } } } }
  t.eq(select(2, check({ a = true }, spec)), { "x.a: true needs b" })
  t.eq(select(2, check({ b = "1", c = "2" }, spec)), { "x.c: cannot go with b (give only one of them)" })
end)

---------------------------------------------------------------------------
-- walk

t.test("walk visits a checked value and every item and field in it, with its spec and path", function()
  local spec = { type = "list", items = HOST }
  local v = check("web:z1,db", spec, true)
  local seen = {}
  schema.walk(v, spec, "hosts", function(x, s, path) seen[#seen + 1] = path .. "=" .. tostring(s.type) end)
  t.eq(seen, { "hosts=list", "hosts[1]=record", "hosts[1].name=nil", "hosts[1].zone=nil",
    "hosts[2]=record", "hosts[2].name=nil" })
end)

---------------------------------------------------------------------------
-- spec_problems

local function problems_of(spec, siblings)
  return schema.spec_problems(spec, "params.p", { siblings = siblings, name = "p", kind = "parameter" })
end

t.test("a misspelt or misplaced key is refused, with the closest key", function()
  t.eq(problems_of { type = "string", requried = true }, { [[params.p: unknown key "requried" (did you mean 'required'?)]] })
  t.eq(problems_of { type = "integer", pattern = "^%d+$" }, { [[params.p: "pattern" applies to string, not integer]] })
  t.eq(problems_of { type = "strnig" }, { [[params.p: unknown type "strnig" (did you mean 'string'?)]] })
end)

t.test("a pattern Lua refuses is refused in the spec; one it refuses only further in is a problem, not a traceback", function()
  t.eq(problems_of { pattern = "[a-" }, { [[params.p: pattern "[a-": malformed pattern (missing ']')]] })
  t.eq(problems_of { pattern = "%" }, { [[params.p: pattern "%": malformed pattern (ends with '%')]] })
  t.eq(problems_of { pattern = "(" }, { [[params.p: pattern "(": unfinished capture]] })
  t.eq(select(2, check("ab", { pattern = "a%" })), { [[x: the spec's pattern "a%" is malformed (malformed pattern (ends with '%'))]] })
end)

t.test("a default its own spec refuses is refused", function()
  t.eq(problems_of { type = "integer", min = 1, max = 4, default = 9 }, { "params.p.default: expected integer 1-4, got 9" })
  t.eq(problems_of { type = "enum", values = { "a" }, default = "b" }, { 'params.p.default: expected one of "a", got "b"' })
  t.eq(problems_of { type = "record", fields = { { "n", { required = true } } }, default = "a:b" },
    { 'params.p.default: expected n, got "a:b"' })
  t.eq(problems_of { type = "integer", default = "3" }, {}, "a default is read as if from the command line")
end)

t.test("requires= and exclusive= must name other parameters; keyed requires= is for an enum's values", function()
  local siblings = { p = {}, cloning_domain = {}, pso_password = {} }
  t.eq(problems_of({ type = "boolean", requires = { "clonig_domain", "pso_password" } }, siblings),
    { [[params.p.requires: "clonig_domain" is not another parameter (did you mean 'cloning_domain'?)]] })
  t.eq(problems_of({ type = "boolean", exclusive = { "p" } }, siblings),
    { [[params.p.exclusive: "p" is not another parameter]] })
  t.eq(problems_of({ type = "enum", values = { "a" }, requires = { b = { "pso_password" } } }, siblings),
    { [[params.p.requires: "b" is not one of its values (requires= keyed by value is for an enum)]] })
  t.eq(problems_of({ type = "boolean", requires = "pso_password" }, siblings),
    { [[params.p.requires: expected a list of names, got "pso_password"]] })
  t.eq(schema.spec_problems({ type = "list", items = { requires = { "a" } } }, "p"),
    { "p.items.requires: only parameters and the fields of an object or record name each other" })
end)

t.test("a record's fields are {name, spec} pairs, the required ones first", function()
  t.eq(problems_of { type = "record", fields = { { "a", {} }, { "b", { required = true } } } },
    { "params.p.fields[2]: required b after optional a: the parts could not be told apart" })
  t.eq(problems_of { type = "record", fields = { { "a", {} }, { "a", {} } } }, { [[params.p.fields[2]: "a" is already a field]] })
  t.eq(problems_of { type = "record", fields = { a = {} } }, { "params.p: a record needs 'fields', a list of {name, spec}" })
  t.eq(problems_of { type = "record", fields = { { "a", { type = "integer", pattern = "x" } } } },
    { [[params.p.a: "pattern" applies to string, not integer]] })
  t.eq(problems_of { type = "record", separator = "", fields = { { "a", {} } } },
    { "params.p.separator: expected a non-empty string" })
end)

t.test("the specs in use are sound: the inventory's and every item and field of them", function()
  t.eq(schema.spec_problems(inventory.schema, "inventory"), {})
  t.eq(schema.spec_problems({ type = "object", fields = { a = { type = "list", items = { type = "strin" } } } }, "o"),
    { [[o.a.items: unknown type "strin" (did you mean 'string'?)]] })
end)

t.test("unique= is for a list, true for plain items, else a field of its record or object items", function()
  t.eq(problems_of { type = "list", items = HOST, unique = "name" }, {})
  t.eq(problems_of { type = "list", unique = true }, {})
  t.eq(problems_of { type = "string", unique = true }, { [[params.p: "unique" applies to list, not string]] })
  t.eq(problems_of { type = "list", items = HOST, unique = true },
    { "params.p.unique: true compares plain items; for record items name the field to compare" })
  t.eq(problems_of { type = "list", items = HOST, unique = "nmae" }, { [[params.p.unique: "nmae" is not a field of its items]] })
  t.eq(problems_of { type = "list", unique = "name" }, { [[params.p.unique: "name" is not a field of its items]] })
  t.eq(problems_of { type = "list", unique = 1 }, { "params.p.unique: expected true or the name of a field of its items, got 1" })
end)
