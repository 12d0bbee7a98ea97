-- dhsm.findings: what a diagnosis found, one row per check and target,
-- shown as a table, counted, and written for Prometheus.
--
--   local findings = require "dhsm.findings"
--   local f = findings.new { order = { "tcp 22", "tcp 1792", ... } }   -- how checks are listed
--   f:add("tcp 1792", "hsm1", "FAIL", "timeout after 10 s", "open TCP 1792", "Failed TCP Communication")
--   f:extend(rows)  -- rows made elsewhere (dhsm.azure.checks), each checked by findings.row
--   f:rows()      --> {{check=, target=, status=, finding=, remedy=, guide=, fix=}, ...} by check (in
--                     `order`, then as first added), then target: the same table whatever finished first
--   f:counts()    --> {OK = n, WARN = n, FAIL = n, SKIP = n}
--   f:lines()     --> the table as text lines, then the summary line
--   findings.row{check=, target=, status=, finding=, remedy=, guide=, fix=}  --> the row, checked
--   findings.advice(row)  --> "remedy (guide: SECTION)", or the fix this run makes, or nil
--   findings.by_guide{["SECTION"] = {key = "remedy"}}  --> {key = {remedy=, guide=}}: advice tables
--   findings.error_text(err); findings.attempt(fn, ...)   -- an error as a finding; pcall letting Ctrl-C through
--   findings.prometheus(rows, {duration_s=})  --> text exposition format
--   findings.write_prometheus(path, rows, opts)  -- atomically (temp file + rename in path's folder)
--   findings.check_output_dir(path)  -- raises a usage error naming path when it cannot be written there
--
-- A row: `check` and `target` say what was looked at; `status` OK, WARN,
-- FAIL or SKIP; `finding` what was found, one line; `remedy` what to do
-- about it and `guide` the troubleshooting guide's section it comes from
-- (shown after it as "(guide: SECTION)", so no remedy spells it out);
-- `fix` what the run itself does about it ("created by this run"), for a
-- problem a playbook fixes on its own - a row, not a failure.
--
-- SKIP is a check that could not run because another failed or something
-- it needs is missing; its finding names the cause.  It is never counted
-- as a failure: not in the exit status, not FAIL in the summary.
-- In Prometheus: 0 OK, 1 WARN, 2 FAIL and -1 SKIP, so that an alert on
-- `> 0` (or `== 2`) does not fire on a skip.  One series per check and
-- target: rows that share both keep the worst (FAIL, WARN, SKIP, OK).
local dhsm = require "dhsm"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

-- The gauge value of each status (see the top of the file).
M.STATUS = { OK = 0, WARN = 1, FAIL = 2, SKIP = -1 }
-- Worst first: how rows of one check and target are ordered, which one a
-- Prometheus series keeps, and the order of the counts' gauges.
M.ORDER = { "FAIL", "WARN", "SKIP", "OK" }
local RANK = {}
for i, s in ipairs(M.ORDER) do RANK[s] = #M.ORDER - i end

local usage = dhsm.usage

local Set = {}
Set.__index = Set

function M.new(opts)
  local rank = {}
  for i, check in ipairs(opts and opts.order or {}) do rank[check] = i end
  return setmetatable({ list = {}, check_rank = rank, ranked = #(opts and opts.order or {}) }, Set)
end

local function one_line(what, v)
  if type(v) ~= "string" or v == "" then usage("findings: %s must be a non-empty string, got %s", what, tostring(v)) end
  return (v:gsub("%s*\n%s*", " "))
end

local function optional_line(what, v)
  return v ~= nil and one_line(what, v) or nil
end

-- row{check=, target=, status=, finding=, remedy=, guide=, fix=} -> the row,
-- every text on one line; a missing or malformed field is a usage error
-- naming it.
function M.row(t)
  if type(t) ~= "table" then usage("findings: a row must be a table, got %s", type(t)) end
  if M.STATUS[t.status] == nil then
    usage("findings: status must be OK, WARN, FAIL or SKIP, got %s", tostring(t.status))
  end
  return { check = one_line("check", t.check), target = one_line("target", t.target), status = t.status,
    finding = one_line("finding", t.finding), remedy = optional_line("remedy", t.remedy),
    guide = optional_line("guide", t.guide), fix = optional_line("fix", t.fix) }
end

function Set:insert(row)
  if not self.check_rank[row.check] then
    self.ranked = self.ranked + 1
    self.check_rank[row.check] = self.ranked
  end
  self.list[#self.list + 1] = row
  return row
end

-- add(check, target, status, finding [, remedy [, guide]]) -> the row
function Set:add(check, target, status, finding, remedy, guide)
  return self:insert(M.row { check = check, target = target, status = status, finding = finding, remedy = remedy,
    guide = guide })
end

-- extend(rows): rows made elsewhere (dhsm.azure.checks), each checked again.
function Set:extend(rows)
  for _, r in ipairs(rows) do self:insert(M.row(r)) end
end

function Set:rows()
  local out = {}
  for i, r in ipairs(self.list) do out[i] = r end
  table.sort(out, function(a, b)
    local ra, rb = self.check_rank[a.check], self.check_rank[b.check]
    if ra ~= rb then return ra < rb end
    if a.target ~= b.target then return a.target < b.target end
    if a.status ~= b.status then return RANK[a.status] > RANK[b.status] end
    return a.finding < b.finding      -- table.sort is not stable: the same order whatever finished first
  end)
  return out
end

function M.counts(rows)
  local c = { OK = 0, WARN = 0, FAIL = 0, SKIP = 0 }
  for _, r in ipairs(rows) do c[r.status] = c[r.status] + 1 end
  return c
end

function Set:counts()
  return M.counts(self.list)
end

-- "3 OK, 1 WARN, 0 FAIL", and ", 2 SKIP" when something was not checked.
function M.summary(counts)
  local skipped = (counts.SKIP or 0) > 0 and (", %d SKIP"):format(counts.SKIP) or ""
  return ("%d OK, %d WARN, %d FAIL%s"):format(counts.OK, counts.WARN, counts.FAIL, skipped)
end

-- by_guide{["SECTION"] = {key = "remedy", ...}, [""] = {...}} -> {key =
-- {remedy=, guide=}}: remedies written under the guide's section they come
-- from ("" for none), so no section is spelt out twice.
function M.by_guide(sections)
  local out = {}
  for guide, remedies in pairs(sections) do
    for key, remedy in pairs(remedies) do
      if out[key] then usage("findings.by_guide: %s is under two sections", key) end
      out[key] = { remedy = remedy, guide = guide ~= "" and guide or nil }
    end
  end
  return out
end

-- advice(row) -> what the table shows under a row: the fix the run makes
-- itself, else the remedy followed by the guide's section; nil for neither.
function M.advice(r)
  if r.fix then return r.fix end
  if r.remedy and r.guide then return ("%s (guide: %s)"):format(r.remedy, r.guide) end
  return r.remedy or (r.guide and ("guide: " .. r.guide)) or nil
end

-- error_text(err) -> an error as a finding: one line, its code first, at
-- most 240 characters (an ARM body can be a page long).
function M.error_text(err)
  local e = dhsm.error.normalize(err)
  local text = tostring(e.message or e):gsub("%s+", " ")
  if #text > 240 then text = text:sub(1, 237) .. "..." end
  return (e.code and not text:find(e.code, 1, true)) and (e.code .. ": " .. text) or text
end

-- attempt(fn, ...) -> true, results | false, err (a dhsm.error): a check
-- that fails is a finding, but Ctrl-C and a cancelled task go on up - a
-- diagnosis being stopped must stop, not note a failure.
function M.attempt(fn, ...)
  local r = table.pack(dhsm.try(fn, ...))
  if not r[1] and (r[2].kind == "interrupted" or r[2].kind == "cancelled") then error(r[2], 0) end
  return table.unpack(r, 1, r.n)
end

-- lines(rows) -> the table (check, target, status, finding, advice) as text
function M.lines(rows)
  local head = { "CHECK", "TARGET", "STATUS", "FINDING" }
  local w = { #head[1], #head[2], #head[3] }
  for _, r in ipairs(rows) do
    w[1], w[2] = math.max(w[1], utf8.len(r.check)), math.max(w[2], utf8.len(r.target))
  end
  local function row(a, b, c, d)
    return ("%s  %s  %s  %s"):format(util.pad(a, w[1]), util.pad(b, w[2]), util.pad(c, w[3] + 1), d)
  end
  local out = { row(head[1], head[2], head[3], head[4]) }
  for _, r in ipairs(rows) do
    out[#out + 1] = row(r.check, r.target, r.status, r.finding)
    local advice = r.status ~= "OK" and M.advice(r)
    if advice then out[#out + 1] = row("", "", "", "-> " .. advice) end
  end
  out[#out + 1] = ""
  out[#out + 1] = M.summary(M.counts(rows))
  return out
end

function Set:lines()
  return M.lines(self:rows())
end

---------------------------------------------------------------------------
-- Prometheus text exposition format (node_exporter's textfile collector)

-- A label value: backslash, double quote and line feed escaped.
function M.label_value(s)
  return (tostring(s):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

local function gauge(out, name, help)
  out[#out + 1] = ("# HELP %s %s"):format(name, help)
  out[#out + 1] = ("# TYPE %s gauge"):format(name)
end

-- prometheus(rows, {duration_s=, time=}) -> text
function M.prometheus(rows, opts)
  opts = opts or {}
  local worst, keys = {}, {}
  for _, r in ipairs(rows) do
    local key = ('check="%s",target="%s"'):format(M.label_value(r.check), M.label_value(r.target))
    if worst[key] == nil then keys[#keys + 1] = key end
    if worst[key] == nil or RANK[r.status] > RANK[worst[key]] then worst[key] = r.status end
  end
  local out = {}
  gauge(out, "dhsm_check_status", "Outcome of a dhsm diagnose check on a target: 0 OK, 1 WARN, 2 FAIL, "
    .. "-1 SKIP (not checked: another check failed).")
  for _, key in ipairs(keys) do out[#out + 1] = ("dhsm_check_status{%s} %d"):format(key, M.STATUS[worst[key]]) end
  local counts = M.counts(rows)
  gauge(out, "dhsm_diagnose_checks", "Checks of the last dhsm diagnose run, by status.")
  for _, s in ipairs(M.ORDER) do out[#out + 1] = ('dhsm_diagnose_checks{status="%s"} %d'):format(s, counts[s]) end
  gauge(out, "dhsm_diagnose_last_run_timestamp_seconds", "When the last dhsm diagnose run finished (Unix time).")
  out[#out + 1] = ("dhsm_diagnose_last_run_timestamp_seconds %d"):format(opts.time or os.time())
  if opts.duration_s then
    gauge(out, "dhsm_diagnose_duration_seconds", "How long the last dhsm diagnose run took.")
    out[#out + 1] = ("dhsm_diagnose_duration_seconds %.3f"):format(opts.duration_s)
  end
  return table.concat(out, "\n") .. "\n"
end

-- check_output_dir(path): the folder that will receive path exists and is
-- a folder; checked before a run, so a typo fails at once, not at the end.
function M.check_output_dir(path)
  if type(path) ~= "string" or path == "" or path:sub(-1) == "/" then
    usage("prometheus: expected a file path, got %q", tostring(path))
  end
  local dir = path:match("^(.*)/[^/]*$") or "."
  if dir == "" then dir = "/" end
  local st, err = sys.stat(dir)
  if not st or st.type ~= "dir" then
    usage("prometheus: cannot write %s: %s", path, st and (dir .. " is not a directory") or tostring(err))
  end
  local existing = sys.stat(path)
  if existing and existing.type == "dir" then usage("prometheus: %s is a directory, expected a file path", path) end
end

-- write_prometheus(path, rows, opts): the whole file at once (a temp file in
-- the same folder, renamed over path), so the collector never reads half.
-- A file written for others to read: through the gate (dhsm.act).
function M.write_prometheus(path, rows, opts)
  M.check_output_dir(path)
  return require("dhsm.act").write_file(path, M.prometheus(rows, opts), { what = "the findings, Prometheus text format" })
end

return M
