-- dhsm.luna.prompts: the questions LunaSH asks, in the words published
-- appliances print (shared/reference/luna-field.md), and which of them a
-- call may answer `proceed`.
--
--   local form, question = prompts.match(text)  -- the question text ends with, or nil
--   prompts.match_quiet(text)                   -- the same, or a question by its ending alone,
--                                               --   for text the appliance then stopped writing after
--   prompts.open_question(text)                 -- that ending alone (the forms tried already)
--   prompts.asked(transcript)                   -- {{form=, question=}, ...}: every question a
--                                               --   transcript shows (answers written ahead, unechoed)
--   prompts.patterns()                          -- Lua patterns that end a read at any question
--   prompts.looks_like_question(line)           -- a command line holding a question's words
--
-- Real appliances wrap and indent their questions differently from one
-- release to the next (7.x `partition create` is indented ten spaces and
-- wrapped after "or"; 6.x `hsm init` wraps after 'quit'), so a form is
-- matched word by word, any run of blanks and line ends between two words.
-- A line holding nothing but the ">" input mark is a question too: one no
-- form knows, reported at once with its text rather than waited on.  So is
-- a last line left open that ends like a question (`?`, `->`, a `[y/N]`
-- choice) - but only once nothing more comes (match_quiet): output cut at
-- a chunk boundary ends the same way for a moment.
local schema = require "dhsm.schema"

local M = {}

-- kind: proceed (a confirmation, answered `proceed` only when the call
-- allows it, else `quit`), last_attempt (the HSM SO's last login attempt:
-- `proceed` only for a login the guard let through with
-- allow_destructive_login, or the deliberate zeroization), password,
-- domain (a cloning domain: a secret, answered as a password is), yes_no,
-- unknown.  ref: where the reference shows the form.  The most
-- particular first: a text is the first form it ends with.
M.FORMS = {
  { kind = "last_attempt",
    words = "Type 'proceed' if you are certain you have the right HSM Admin login credentials or 'quit' to quit now.",
    ref = "luna-field.md 739: the 7.x HSM SO's last login attempt" },
  { kind = "proceed", words = "Type 'proceed' to <what>, or 'quit' to quit now.",
    ref = "luna-field.md 597, 612, 779, 863, 1089: partition create (6.x, 7.x), hsm init, hsm changePolicy, client delete" },
  { kind = "proceed", words = "Type 'proceed' to <what>, or 'quit' to quit now ->",
    ref = "luna-field.md 7.1: lunacm partition init (the answer echoed after ->)" },
  { kind = "proceed", words = "If you are sure that you wish to proceed, then type 'proceed', otherwise type 'quit'",
    ref = "luna-field.md 1122, 1348: sysconf regenCert, hsm restart" },
  { kind = "password", words = "Please enter a password for the HSM Administrator:", ref = "luna-field.md 4.3: hsm init" },
  { kind = "password", words = "Please re-enter password to confirm:", ref = "luna-field.md 4.3: hsm init" },
  { kind = "domain", words = "Please enter a cloning domain to use for initializing this HSM:",
    ref = "luna-field.md 4.3: hsm init (a secret, as a password)" },
  { kind = "domain", words = "Please re-enter cloning domain to confirm:", ref = "luna-field.md 4.3: hsm init" },
  { kind = "password", pattern = "[Pp]assword:%s*>?%s*$", ref = "luna-field.md 4.1, 4.2" },
  { kind = "yes_no", pattern = "%(y/n%)%s*>?%s*$", ref = "ours: no published LunaSH question has it; kept for safety" },
  { kind = "unknown", pattern = "\n[ \t]*>[ \t]*$", ref = "any input mark alone on its line" },
}

-- A form's words as a pattern: magic characters escaped, a blank is any
-- run of blanks and line ends, <what> is anything.
local function flexible(words)
  local p = words:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"):gsub("<what>", "\0")
  p = p:gsub("%s+", "%%s+"):gsub("%z", ".-")
  return p
end

for _, f in ipairs(M.FORMS) do
  f.pattern = f.pattern or (flexible(f.words) .. "%s*>?%s*$")
end

-- The endings of a question no form knows, on a last line nothing ends:
-- taken only when the appliance has stopped writing after them.
M.QUIET_ENDINGS = { "%?[ \t]*$", "%->[ \t]*$", "[%[%(][Yy][Ee]?[Ss]?/[Nn][Oo]?[%]%)][ \t]*:?[ \t]*$" }
local QUIET_FORM = { kind = "unknown", ref = "a last line left open, ending like a question (?, ->, [y/N]), "
  .. "the appliance writing nothing more" }

function M.patterns()
  local out = {}
  for i, f in ipairs(M.FORMS) do out[i] = f.pattern end
  return out
end

-- The last line holding a word, found line by line: one pattern for it
-- ("([^\n]*%w[^\n]*)[^%w]*$") backtracks in cubic time over a long line,
-- and a C pattern match cannot be interrupted (make fuzz hung on one).
local function last_line_with_words(body)
  local last
  for line in body:gmatch("[^\n]+") do
    if line:find("%w") then last = line end
  end
  return last
end

-- The question's own text, blanks collapsed: from where its form's words
-- start, or (a password or unknown question) its last line with words.
local function question_text(text, form)
  local body = text:gsub("\r", "")
  if form.words then
    body = body:sub(body:find(flexible(form.words:match("^%S+%s+%S+"))) or 1)
  else
    body = last_line_with_words(body) or body
  end
  body = body:gsub("%s+", " "):gsub("^ ", "")
  if form.words then body = body:gsub(" ?%->[ >]*$", "") end        -- lunacm's "->" after a form's words
  return (body:gsub(" *$", ""):gsub("^>$", ""):gsub(" >$", ""))           -- an input mark, never a "->"
end

-- match(text) -> form, question | nil: the question the text ends with.
function M.match(text)
  schema.argument("luna.prompts.match", "text", text, "string")
  for _, f in ipairs(M.FORMS) do
    if text:find(f.pattern) then return f, question_text(text, f) end
  end
end

-- match_quiet(text) -> form, question | nil: match(text), else the
-- question of a last line that nothing ends (no line end after it) and
-- that ends like one.  For text the appliance has stopped writing after:
-- the same ending in the middle of a stream may be a line cut mid-way.
function M.match_quiet(text)
  schema.argument("luna.prompts.match_quiet", "text", text, "string")
  local form, question = M.match(text)
  if form then return form, question end
  return M.open_question(text)
end

-- open_question(text) -> form, question | nil: only the second half of
-- match_quiet, for a reader that has already tried every form on the text
-- (luna's session read: the forms end its read themselves).
function M.open_question(text)
  schema.argument("luna.prompts.open_question", "text", text, "string")
  local from = #text                  -- the last line, found from the end (a long text is read often)
  while from > 0 and not text:find("^[\r\n]", from) do from = from - 1 end
  local last = text:sub(from + 1)
  if not last:find("%w") then return end
  for _, ending in ipairs(M.QUIET_ENDINGS) do
    if last:find(ending) then return QUIET_FORM, question_text(last, QUIET_FORM) end
  end
end

-- How every form ends, before its optional input mark: a line that does
-- not end so is not tried against them (asked() tries every line).
local QUESTION_END = "[%.:')]%s*>?%s*$"

-- asked(transcript) -> {{form=, question=}, ...}: the questions of a
-- whole transcript, in order - a tool's output whose answers were written
-- ahead on its stdin and not echoed (lunacm over a pipe).  A question ends
-- at a line end or at lunacm's "->" input mark; what follows one starts
-- the search for the next.  Each end is matched on the 512 bytes before it
-- at most: a long transcript of short lines stays cheap.
function M.asked(transcript)
  schema.argument("luna.prompts.asked", "transcript", transcript, "string")
  local out, from, pos, arrow = {}, 1, 1, 0
  while pos <= #transcript do
    if arrow and arrow < pos then arrow = transcript:find("->", pos, true) end    -- searched again once passed
    local nl = transcript:find("\n", pos, true)
    local cut = math.min(nl or #transcript, arrow and arrow + 1 or #transcript)
    local window = transcript:sub(math.max(from, cut - 511), cut)         -- a question fits in 512 bytes
    local form, question
    if window:find(QUESTION_END) or window:find(">%s*$") then form, question = M.match(window) end
    if form then
      out[#out + 1] = { form = form, question = question }
      from = cut + 1
    end
    pos = cut + 1
  end
  return out
end

-- Whether a command line holds the words of a question: its echo would
-- then be read as that question, and a password sent as a line of its own.
function M.looks_like_question(line)
  schema.argument("luna.prompts.looks_like_question", "line", line, "string")
  local l = line:lower():gsub("%s+", " ")
  for _, words in ipairs { "password:", "(y/n)", "type 'proceed'", "or 'quit'", "otherwise type 'quit'" } do
    if l:find(words, 1, true) then return true end
  end
  return false
end

return M
