-- dhsm.findings: what a diagnosis found, one row per check and target,
-- shown as a table, counted, and written for Prometheus.
--
--   local findings = require "dhsm.findings"
--   local f = findings.new { order = { "tcp 22", "tcp 1792", ... } }   -- how checks are listed
--   f:add("tcp 1792", "hsm1", "FAIL", "timeout after 10 s", "open TCP 1792 (guide: Failed TCP Communication)")
--   f:rows()      --> {{check=, target=, status=, finding=, remedy=}, ...} by check (in `order`, then as
--                     first added), then target: the same table whatever finished first
--   f:counts()    --> {OK = n, WARN = n, FAIL = n}
--   f:lines()     --> the table as text lines, then the summary line
--   findings.prometheus(rows, {duration_s=})  --> text exposition format
--   findings.write_prometheus(path, rows, opts)  -- atomically (temp file + rename in path's folder)
--   findings.check_output_dir(path)  -- raises a usage error naming path when it cannot be written there
--
-- Status values: OK, WARN, FAIL; in Prometheus 0, 1, 2 (alert on > 0 or == 2).
-- One series per check and target: rows that share both keep the worst.
local dhsm = require "dhsm"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

M.STATUS = { OK = 0, WARN = 1, FAIL = 2 }
M.ORDER = { "FAIL", "WARN", "OK" }

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

-- add(check, target, status, finding [, remedy]) -> the row
function Set:add(check, target, status, finding, remedy)
  if M.STATUS[status] == nil then
    usage("findings: status must be OK, WARN or FAIL, got %s", tostring(status))
  end
  local row = { check = one_line("check", check), target = one_line("target", target), status = status,
    finding = one_line("finding", finding), remedy = remedy and one_line("remedy", remedy) or nil }
  if not self.check_rank[row.check] then
    self.ranked = self.ranked + 1
    self.check_rank[row.check] = self.ranked
  end
  self.list[#self.list + 1] = row
  return row
end

function Set:rows()
  local out = {}
  for i, r in ipairs(self.list) do out[i] = r end
  table.sort(out, function(a, b)
    local ra, rb = self.check_rank[a.check], self.check_rank[b.check]
    if ra ~= rb then return ra < rb end
    if a.target ~= b.target then return a.target < b.target end
    if a.status ~= b.status then return M.STATUS[a.status] > M.STATUS[b.status] end
    return a.finding < b.finding      -- table.sort is not stable: the same order whatever finished first
  end)
  return out
end

function M.counts(rows)
  local c = { OK = 0, WARN = 0, FAIL = 0 }
  for _, r in ipairs(rows) do c[r.status] = c[r.status] + 1 end
  return c
end

function Set:counts()
  return M.counts(self.list)
end

function M.summary(counts)
  return ("%d OK, %d WARN, %d FAIL"):format(counts.OK, counts.WARN, counts.FAIL)
end

-- lines(rows) -> the table (check, target, status, finding, remedy) as text
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
    if r.remedy and r.status ~= "OK" then
      out[#out + 1] = row("", "", "", "-> " .. r.remedy)
    end
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
    worst[key] = math.max(worst[key] or 0, M.STATUS[r.status])
  end
  local out = {}
  gauge(out, "dhsm_check_status", "Outcome of a dhsm diagnose check on a target: 0 OK, 1 WARN, 2 FAIL.")
  for _, key in ipairs(keys) do out[#out + 1] = ("dhsm_check_status{%s} %d"):format(key, worst[key]) end
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
function M.write_prometheus(path, rows, opts)
  M.check_output_dir(path)
  local ok, err = sys.write_file(path, M.prometheus(rows, opts), tonumber("644", 8))
  if not ok then usage("prometheus: cannot write %s: %s", path, tostring(err)) end
end

return M
