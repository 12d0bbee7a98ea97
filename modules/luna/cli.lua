-- dhsm.luna.cli: command lines as LunaSH and LunaCM read them, for the
-- safety rules that must recognise a command however it is spelled.
--
--   cli.words("hsm 'login' -p x")            --> { "hsm", "login", "-p", "x" }
--   cli.readings(words, tree)                --> { {family=, sub=, at=}, ... }
--   cli.most(readings, verb_of, rank)        --> the most dangerous verb, its name
--   cli.option(words, from, "slot", "sl")    --> the value of -slot (or -sl, -slo)
--
-- Both shells split a line into words (quotes group, backslashes escape),
-- take command words and options case-insensitively and abbreviated to any
-- unambiguous prefix (an exact name wins), and take options after the
-- command words.  For a guard, a line means every command it could mean:
-- readings() lists them all - each abbreviation's every completion, and,
-- when an option comes first, both its value and the word after it as the
-- command word - so the caller can act on the most dangerous one.
local M = {}

-- Quotes and backslashes dropped: the same words, or a quoted one split
-- in two; never a word hidden.
function M.words(line)
  local out = {}
  for w in line:gsub("[\"'\\]", ""):gmatch("%S+") do out[#out + 1] = w end
  return out
end

function M.is_option(word)
  return word:sub(1, 1) == "-"
end

-- The names `word` may stand for in `choices` (a table keyed by lower-case
-- name): itself when exact, else every name it abbreviates.
function M.meanings(word, choices)
  word = word:lower()
  if choices[word] then return { word } end
  local found = {}
  for name in pairs(choices) do
    if name:sub(1, #word) == word then found[#found + 1] = name end
  end
  table.sort(found)
  return found
end

-- The positions of the words the shell could read as the next command
-- word, from `from` on: a word right after an option may be its value or
-- the command word, so both are kept, up to the first that can only be the
-- command word.
local function next_words(words, from)
  local out = {}
  for i = from, #words do
    if not M.is_option(words[i]) then
      out[#out + 1] = i
      if i == from or not M.is_option(words[i - 1]) then break end
    end
  end
  return out
end

-- readings(words, tree) -> every {family=, sub=, at=} the words could mean;
-- tree = { family = { sub = verb, ... }, ... }.  family is nil for an
-- unknown command, sub nil when none is known; at is the sub's position.
function M.readings(words, tree)
  local out = {}
  for _, f in ipairs(next_words(words, 1)) do
    local families = M.meanings(words[f], tree)
    if #families == 0 then out[#out + 1] = {} end
    for _, family in ipairs(families) do
      local subs = next_words(words, f + 1)
      if #subs == 0 then out[#out + 1] = { family = family } end
      for _, s in ipairs(subs) do
        local names = M.meanings(words[s], tree[family])
        if #names == 0 then out[#out + 1] = { family = family } end
        for _, sub in ipairs(names) do out[#out + 1] = { family = family, sub = sub, at = s } end
      end
    end
  end
  return out
end

-- most(readings, verb_of, rank [, prefer]) -> the verb and name of the most
-- dangerous reading: verb_of(reading) -> verb, name; rank(verb) -> number;
-- prefer(name) breaks a tie.  nil when there is no reading.
function M.most(readings, verb_of, rank, prefer)
  local verb, what
  for _, r in ipairs(readings) do
    local v, w = verb_of(r)
    if verb == nil or rank(v) > rank(verb)
      or (rank(v) == rank(verb) and prefer and prefer(w) and not prefer(what)) then
      verb, what = v, w
    end
  end
  return verb, what
end

-- option(words, name) -> the value of option -name (abbreviated or not,
-- from `short` on) after position `from`, or nil
function M.option(words, from, name, short)
  for i = from, #words - 1 do
    local w = words[i]:lower():match("^%-(.+)$")
    if w and #w >= #short and name:sub(1, #w) == w then return words[i + 1] end
  end
end

return require("dhsm.util").sealed(M)
