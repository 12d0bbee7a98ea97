-- dhsm.ask: the one confirmation of a destructive action, wherever it is
-- asked (a playbook's destructive step, a destructive module call in the
-- REPL or in `dhsm exec`): the operator types the target's name.  Every
-- answer is audited ("typed", "refused (...)", "skipped (--yes)").  With
-- no terminal to ask on it refuses: a runbook piped into cron without
-- --yes must not delete an HSM because nobody could be asked.
local dhsm = require "dhsm"
local sys = require "dhsm.sys"

local M = {}

-- The terminal's streams as they were when dhsm started (this module is
-- loaded before any code of the user's runs): a runbook that replaces
-- io.stdin cannot type the answer for the operator.
local stdin, stderr = io.stdin, io.stderr

local function refuse(audit, outcome, message)
  audit.outcome = outcome
  dhsm.audit.write(audit)
  dhsm.error { kind = "safety", code = "NotConfirmed", message = message }
end

-- confirm{target=, detail=, yes=, question=, no_terminal=, mismatch=, before_prompt=, answer=}
-- returns when confirmed; raises a "safety" NotConfirmed error otherwise.
-- The operator types the target's name, or `answer` when given (a word
-- such as "yes", for a question about something that is not destroyed).
-- question/no_terminal/mismatch are the texts shown; before_prompt() runs
-- just before the question (a live progress line clears itself).
function M.confirm(t)
  local audit = { action = "confirm", target = t.target, detail = t.detail }
  if t.yes then
    audit.outcome = "skipped (--yes)"
    dhsm.audit.write(audit)
    return
  end
  if not (sys.isatty(0) and sys.isatty(2)) then refuse(audit, "refused (no terminal)", t.no_terminal) end
  if t.before_prompt then t.before_prompt() end
  stderr:write(t.question)
  stderr:flush()
  if stdin:read("l") ~= (t.answer or t.target) then refuse(audit, "refused (typed something else)", t.mismatch) end
  audit.outcome = "typed"
  dhsm.audit.write(audit)
end

-- (The gate, dhsm.act, asks its own question with confirm(): the policy,
-- --yes or not, is the front end's, set once per process.)

return M
