-- tools/man.lua: docs/cli.md as a man page (roff, man macros).
--
--   lua5.4 tools/man.lua docs/cli.md VERSION > docs/dhsm.1      (make man)
--   require: local man = dofile("tools/man.lua"); man.render(markdown, version)
--
-- Plain Lua 5.4 and no library, so the page is made without building dhsm
-- and without pandoc.  It knows the subset of Markdown docs/cli.md uses:
--   # NAME - SUMMARY          the title: .TH and the NAME section
--   ## SECTION                .SH (what comes before the first one is a note
--                             for readers of the repository, not the page)
--   ### TEXT                  .SS
--   - TERM — TEXT             a definition: .TP, TERM in bold
--   ```  ...  ```             a literal block: .nf/.fi, indented
--   `code`, *emphasis*        \fB...\fR, \fI...\fR
-- anything else is a paragraph.  Lines are joined; roff sees no line that
-- starts with '.' or '\''.
local M = {}

-- Characters roff would take as its own, escaped.
local function escape(s)
  return (s:gsub("\\", "\\e"):gsub("%-", "\\-"))
end

-- Inline Markdown: `code` bold, *text* italic, the rest escaped.
local function inline(s)
  local out, i = {}, 1
  while i <= #s do
    local a, b, code = s:find("^`([^`]*)`", i)
    local c, d, em = s:find("^%*([^%*]+)%*", i)
    if a then
      out[#out + 1] = "\\fB" .. escape(code) .. "\\fR"
      i = b + 1
    elseif c then
      out[#out + 1] = "\\fI" .. escape(em) .. "\\fR"
      i = d + 1
    else
      local j = s:find("[`%*]", i + 1) or (#s + 1)
      out[#out + 1] = escape(s:sub(i, j - 1))
      i = j
    end
  end
  return table.concat(out)
end

-- A line of running text for roff: one that starts with a control
-- character is protected with \&.
local function text_line(s)
  s = inline(s)
  if s:match("^[%.']") then s = "\\&" .. s end
  return s
end

-- render(markdown, version) -> the man page
function M.render(md, version)
  local lines = {}
  for l in (md .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
  local name, summary = lines[1]:match("^# (%S+) %- (.+)$")
  assert(name, "the first line must be '# NAME - SUMMARY'")
  local out = {
    ('.TH %s 1 "" "%s %s" "User Commands"'):format(name:upper(), name, version or ""),
    ".SH NAME", escape(name) .. " \\- " .. escape(summary),
  }
  local i, started = 2, false
  local para, gap = {}, false      -- gap: a blank line since the last block
  local function flush()
    if #para > 0 then
      if gap then out[#out + 1] = ".PP" end
      out[#out + 1] = text_line(table.concat(para, " "))
      para = {}
    end
    gap = false
  end
  while i <= #lines do
    local l = lines[i]
    local h2, h3 = l:match("^## (.+)$"), l:match("^### (.+)$")
    if h2 then
      flush()
      started = true
      out[#out + 1] = ".SH " .. escape(h2:upper())
    elseif not started then
      -- the note for readers of the repository
    elseif h3 then
      flush()
      out[#out + 1] = ".SS " .. inline(h3)
    elseif l:match("^```") then
      flush()
      out[#out + 1] = ".PP"
      out[#out + 1] = ".RS 4"
      out[#out + 1] = ".nf"
      i = i + 1
      while i <= #lines and not lines[i]:match("^```") do
        local code = escape(lines[i])
        if code:match("^[%.']") then code = "\\&" .. code end
        out[#out + 1] = code
        i = i + 1
      end
      out[#out + 1] = ".fi"
      out[#out + 1] = ".RE"
    elseif l:match("^%- ") then
      flush()
      local item = l:sub(3)
      while lines[i + 1] and lines[i + 1]:match("^  %S") do   -- continuation lines
        i = i + 1
        item = item .. " " .. lines[i]:match("^%s*(.-)$")
      end
      local term, def = item:match("^(.-) — (.*)$")
      out[#out + 1] = ".TP"
      if term then
        out[#out + 1] = text_line(term)
        out[#out + 1] = text_line(def)
      else
        out[#out + 1] = text_line(item)
      end
    elseif l:match("^%s*$") then
      flush()
      gap = not out[#out]:match("^%.S[HS] ")   -- a paragraph after a heading needs no .PP
    else
      para[#para + 1] = l:match("^%s*(.-)%s*$")
    end
    i = i + 1
  end
  flush()
  return table.concat(out, "\n") .. "\n"
end

-- The version the sources say (include/dhsm/dhsm.h), from the repository root.
function M.version(root)
  local f = io.open((root or ".") .. "/include/dhsm/dhsm.h")
  local v = f and f:read("a"):match('#define DHSM_VERSION "([^"]+)"')
  if f then f:close() end
  return v
end

-- As a script (lua5.4 tools/man.lua FILE [VERSION]); dofile() passes no arguments.
local input, version = ...
if input then
  local f = assert(io.open(input))
  local md = f:read("a")
  f:close()
  local root = input:match("^(.*)docs/[^/]*$")
  io.write(M.render(md, version or M.version(root ~= "" and root or ".")))
end

return M
