"""LunaSH command-line parsing: a tree of commands, abbreviations, options.

As on the appliance, command words and option names are case-insensitive and may
be abbreviated to any unambiguous prefix (`par li`, `hsm sh`); an exact name wins
over longer ones (`show` vs `showPolicies`); every option also has its documented
shortcut (`-p` for `-partition`). Values keep their case and may be quoted.
"""
import shlex


class ParseError(Exception):
    """A command line LunaSH rejects before running anything; MESSAGE is its Error: text."""


class Opt:
    def __init__(self, name, short=None, flag=False, required=False):
        self.name, self.short, self.flag, self.required = name, short, flag, required


class Command:
    def __init__(self, words, fn, options=(), args=(), optional_args=0):
        self.words, self.fn, self.options = tuple(words.split()), fn, list(options)
        self.args, self.optional_args = tuple(args), optional_args

    @property
    def name(self):
        return " ".join(self.words)


FORCE = Opt("force", "f", flag=True)


SECRET_OPTION_WORDS = ("password", "pin", "secret", "domain")  # a cloning domain is a secret too


def logged_words(command, opts, args=()):
    """COMMAND -opt value ... args as estate.log shows them: options sorted, the value of
    any password-like option masked (LunaSH here, the client tools in lunaclient/toollog.py)."""
    out = [command]
    for name, value in sorted(opts.items()):
        if value is True:
            out.append(f"-{name}")
        elif any(w in name.lower() for w in SECRET_OPTION_WORDS):
            out.append(f"-{name} ****")
        else:
            out.append(f"-{name} {value}")
    out.extend(str(a) for a in args)
    return " ".join(out)


class Invocation:
    def __init__(self, command, opts, args):
        self.command, self.opts, self.args = command, opts, args

    def opt(self, name, default=None):
        return self.opts.get(name, default)

    def logged(self):
        return logged_words(self.command.name, self.opts, self.args)


def _pick(candidates, word, kind, prefix=""):
    """The one of CANDIDATES (original-case names) WORD means, or ParseError."""
    lowered = word.lower()
    exact = [c for c in candidates if c.lower() == lowered]
    if exact:
        return exact[0]
    matches = [c for c in candidates if c.lower().startswith(lowered)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ParseError(f"Unknown {kind}: {prefix}{word}")
    raise ParseError(f"Ambiguous {kind}: {prefix}{word} (could be {', '.join(prefix + m for m in sorted(matches))})")


class CommandTree:
    def __init__(self, commands):
        self.root = {}
        for cmd in commands:
            node = self.root
            for word in cmd.words[:-1]:
                node = node.setdefault(word, {})
            node[cmd.words[-1]] = cmd

    def top_level(self):
        return sorted(self.root)

    def parse(self, line):
        try:
            tokens = shlex.split(line)
        except ValueError as e:
            raise ParseError(f"Unable to parse the command line: {e}")
        command, rest = self._resolve(tokens)
        return self._options(command, rest)

    def _resolve(self, tokens):
        node, used = self.root, []
        while isinstance(node, dict):
            if len(used) == len(tokens) or tokens[len(used)].startswith("-"):
                path = " ".join(used)
                raise ParseError(f"Incomplete command: {path} (one of: {', '.join(sorted(node))})")
            name = _pick(list(node), tokens[len(used)], "command" if not used else f"{' '.join(used)} command")
            used.append(name)
            node = node[name]
        return node, tokens[len(used):]

    def _options(self, command, tokens):
        opts, args, i = {}, [], 0
        while i < len(tokens):
            token = tokens[i]
            if token.startswith("-") and len(token) > 1:
                opt = self._option(command, token)
                if opt.flag:
                    opts[opt.name] = True
                else:
                    i += 1
                    if i >= len(tokens):
                        raise ParseError(f"Option -{opt.name} requires a value")
                    opts[opt.name] = tokens[i]
            else:
                args.append(token)
            i += 1
        self._check(command, opts, args)
        return Invocation(command, opts, args)

    @staticmethod
    def _option(command, token):
        word = token[1:].lower()
        for opt in command.options:
            if opt.short and opt.short.lower() == word:
                return opt
        name = _pick([o.name for o in command.options], token[1:], "option", "-") if command.options else None
        if name is None:
            raise ParseError(f"Unknown option: {token}")
        return next(o for o in command.options if o.name == name)

    @staticmethod
    def _check(command, opts, args):
        for opt in command.options:
            if opt.required and opt.name not in opts:
                raise ParseError(f"Missing required option: -{opt.name}")
        if len(args) > len(command.args):
            raise ParseError(f"Unexpected parameter: {args[len(command.args)]}")
        if len(args) < len(command.args) - command.optional_args:
            raise ParseError(f"Missing parameter: <{command.args[len(args)]}>")
