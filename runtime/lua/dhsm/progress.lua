-- dhsm.progress: how a run shows its steps.
--
-- On a terminal: a live line per running step (spinner, elapsed time, last
-- progress message), then "✓ title (3.2 s)" or "✗ title: error".  Piped:
-- plain lines, one per event, no escape codes.  NO_COLOR turns colours off.
-- Everything goes to stderr: stdout is for results (and --json).
local dhsm = require "dhsm"
local sys = require "dhsm.sys"
local util = require "dhsm.util"

local M = {}

local SPIN = { "⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏" }
local MARK = { ok = "✓", failed = "✗", refused = "✗", interrupted = "✗", planned = "○", replayed = "↷" }
local COLOR = { ok = "32", failed = "31", refused = "31", interrupted = "31", planned = "33", replayed = "36" }

local Reporter = {}
Reporter.__index = Reporter

-- new{stream=, tty=, color=}: defaults from the environment
function M.new(opts)
  opts = opts or {}
  local r = setmetatable({
    out = opts.stream or io.stderr,
    tty = opts.tty,
    color = opts.color,
    running = {},             -- records of running steps, in start order
    frame = 0,
  }, Reporter)
  if r.tty == nil then r.tty = sys.isatty(2) end
  if r.color == nil then r.color = r.tty and (os.getenv("NO_COLOR") or "") == "" end
  return r
end

function Reporter:paint(code, s)
  return self.color and ("\27[" .. code .. "m" .. s .. "\27[0m") or s
end

local function indent(rec)
  return string.rep("  ", rec.depth or 0)
end

-- ---- the live line (terminal only) ----

function Reporter:clear_live()
  if self.tty and self.live_shown then
    self.out:write("\r\27[K")
    self.live_shown = false
  end
end

function Reporter:draw_live()
  local rec = self.running[#self.running]
  if not (self.tty and rec) then return end
  self.frame = self.frame % #SPIN + 1
  local line = ("%s%s %s (%s)"):format(indent(rec), self:paint("36", SPIN[self.frame]), rec.title,
    util.duration(dhsm.now() - rec.t0))
  if rec.message then line = line .. "  " .. self:paint("2", rec.message) end
  if #self.running > 1 then line = line .. self:paint("2", ("  +%d running"):format(#self.running - 1)) end
  self.out:write("\r\27[K", line)
  self.out:flush()
  self.live_shown = true
end

function Reporter:start_ticker()
  if not self.tty or self.ticker then return end
  self.ticker = dhsm.spawn(function()
    while true do
      self:draw_live()
      dhsm.sleep(0.1)
    end
  end)
end

function Reporter:stop_ticker()
  if self.ticker then
    self.ticker:cancel()
    self.ticker = nil
  end
end

-- Print a whole line, keeping the live line below it.
function Reporter:line(s)
  self:clear_live()
  self.out:write(s, "\n")
  self.out:flush()
  self:draw_live()
end

-- ---- events ----

function Reporter:step_start(rec)
  rec.t0 = rec.t0 or dhsm.now()
  self.running[#self.running + 1] = rec
  if self.tty then
    self:start_ticker()
    self:draw_live()
  else
    self:line(indent(rec) .. "→ " .. rec.title)
  end
end

function Reporter:progress(rec, message)
  rec.message = message
  if self.tty then self:draw_live() else self:line(("%s  %s: %s"):format(indent(rec), rec.title, message)) end
end

function Reporter:would(rec, what)
  self:line(("%s  would %s"):format(indent(rec or {}), what))
end

function Reporter:refused(rec, what)
  self:line(("%s  refused %s (check mode)"):format(indent(rec or {}), what))
end

function Reporter:note(rec, message)
  self:line(indent(rec or {}) .. "  " .. message)
end

function Reporter:step_end(rec)
  for i, r in ipairs(self.running) do
    if r == rec then table.remove(self.running, i) break end
  end
  if #self.running == 0 then self:stop_ticker() end
  local mark = self:paint(COLOR[rec.status] or "0", MARK[rec.status] or "-")
  local text
  if rec.status == "failed" or rec.status == "refused" or rec.status == "interrupted" then
    text = ("%s %s: %s"):format(mark, rec.title, rec.error and rec.error.text or rec.status)
  elseif rec.status == "planned" then
    text = ("%s %s (planned)"):format(mark, rec.title)
  elseif rec.status == "replayed" then
    text = ("%s %s (done in an earlier attempt of this run)"):format(mark, rec.title)
  else
    text = ("%s %s (%s)"):format(mark, rec.title, util.duration(rec.duration_s or 0))
  end
  self:line(indent(rec) .. text)
end

function Reporter:close()
  self:stop_ticker()
  self:clear_live()
end

return M
