"""Chrystoki.conf, the Luna client's configuration: `Section = { Key = value; }` blocks.

Edits splice the text in place, so comments (`#` to the end of a line), layout,
order and keys nobody here knows stay byte for byte, as when LunaCM or vtl
rewrite the file. A value runs to its `;` on the same line; section names may
hold spaces (`LunaSA Client`). A malformed file raises ConfError with the line
and column of the problem.
"""
import re

from fsutil import write_public

_SECTION = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_ .-]*?)[ \t]*=[ \t]*\{")
_ENTRY = re.compile(r"([A-Za-z0-9_.]+)[ \t]*=[ \t]*([^;{}\n#]*?)[ \t]*;")
_SKIP = re.compile(r"(?:\s+|#[^\n]*)*")
DEFAULT_INDENT = "   "


class ConfError(ValueError):
    def __init__(self, message, text, offset):
        self.line = text.count("\n", 0, offset) + 1
        self.column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        super().__init__(f"line {self.line}, column {self.column}: {message}")


class Entry:
    def __init__(self, match):
        self.key, self.value = match.group(1), match.group(2)
        self.start, self.end = match.span()
        self.value_start, self.value_end = match.span(2)


class Section:
    def __init__(self, name, start, brace):
        self.name, self.start, self.brace = name, start, brace
        self.close = None  # offset of the closing brace
        self.entries = []

    def entry(self, key):
        return next((e for e in self.entries if e.key == key), None)


def parse(text):
    """-> [Section] with offsets into TEXT."""
    sections, pos = [], _SKIP.match(text, 0).end()
    while pos < len(text):
        head = _SECTION.match(text, pos)
        if not head:
            raise ConfError("expected 'Section = {'", text, pos)
        section = Section(head.group(1), pos, head.end() - 1)
        pos = _SKIP.match(text, head.end()).end()
        while pos < len(text) and text[pos] != "}":
            entry = _ENTRY.match(text, pos)
            if not entry:
                raise ConfError(f"expected 'Key = value;' or '}}' in section '{section.name}'", text, pos)
            section.entries.append(Entry(entry))
            pos = _SKIP.match(text, entry.end()).end()
        if pos >= len(text):
            raise ConfError(f"section '{section.name}' is not closed with '}}'", text, section.brace)
        section.close = pos
        sections.append(section)
        pos = _SKIP.match(text, pos + 1).end()
    return sections


class ChrystokiConf:
    def __init__(self, text=""):
        self.text = text
        self.sections = parse(text)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(f.read())

    def save(self, path):
        write_public(path, self.text)

    # reading ------------------------------------------------------------------------
    def section(self, name):
        return next((s for s in self.sections if s.name == name), None)

    def get(self, section, key, default=None):
        entry = (self.section(section) or Section(section, 0, 0)).entry(key)
        return entry.value if entry else default

    def items(self, section):
        """[(key, value)] of SECTION in file order (empty when it does not exist)."""
        return [(e.key, e.value) for e in (self.section(section) or Section(section, 0, 0)).entries]

    # editing ------------------------------------------------------------------------
    def _splice(self, start, end, replacement):
        self.text = self.text[:start] + replacement + self.text[end:]
        self.sections = parse(self.text)

    def set(self, section, key, value):
        value = str(value)
        found = self.section(section)
        if found is None:
            separator = "" if not self.text or self.text.endswith("\n\n") else "\n" if self.text.endswith("\n") \
                else "\n\n"
            self._splice(len(self.text), len(self.text),
                         f"{separator}{section} = {{\n{DEFAULT_INDENT}{key} = {value};\n}}\n")
        elif found.entry(key):
            entry = found.entry(key)
            self._splice(entry.value_start, entry.value_end, value)
        else:
            self._insert(found, f"{key} = {value};")

    def _insert(self, section, text):
        """Before the closing brace: on a line of its own when the section spans lines, else inline."""
        line_start = self.text.rfind("\n", 0, section.close) + 1
        if self.text[line_start:section.close].strip() == "" and line_start > section.brace:
            self._splice(line_start, line_start, f"{self._indent(section)}{text}\n")
        else:
            self._splice(section.close, section.close, f"{text} ")

    def _indent(self, section):
        if not section.entries:
            return DEFAULT_INDENT
        first = section.entries[0].start
        line_start = self.text.rfind("\n", 0, first) + 1
        prefix = self.text[line_start:first]
        return prefix if prefix.strip() == "" else DEFAULT_INDENT

    def delete(self, section, key):
        found = self.section(section)
        entry = found.entry(key) if found else None
        if entry is None:
            return False
        start, end = entry.start, entry.end
        line_start = self.text.rfind("\n", 0, start) + 1
        line_end = self.text.find("\n", end)
        line_end = len(self.text) if line_end < 0 else line_end + 1
        if self.text[line_start:start].strip() == "" and self.text[end:line_end].strip() == "":
            start, end = line_start, line_end  # the entry had its line to itself: the line goes too
        elif self.text[end:end + 1] == " ":
            end += 1
        self._splice(start, end, "")
        return True

    def replace_items(self, section, items):
        """SECTION's entries become ITEMS [(key, value)] (absent: the section is created)."""
        for key, _ in self.items(section):
            self.delete(section, key)
        for key, value in items:
            self.set(section, key, value)
        if not items and self.section(section) is not None and not self.section(section).entries:
            self._drop_section(section)

    def _drop_section(self, name):
        found = self.section(name)
        start, end = found.start, found.close + 1
        if self.text[end:end + 1] == "\n":
            end += 1
        if self.text[:start].endswith("\n\n"):
            start -= 1  # the blank line set() put before it
        self._splice(start, end, "")
