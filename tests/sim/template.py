"""The ARM template language subset the Dedicated HSM templates use.

Expressions: "[fn(args...)]" with string ('it''s'), integer and boolean
literals, nested calls, property access (.location) and indexing ([0]).
"[[" escapes a literal "[". Functions: parameters, variables, resourceId,
concat, format, resourceGroup, subscription, toLower, toUpper, string, int,
equals, if, not, uniqueString, reference (outputs only: resources are evaluated
when the deployment is accepted).

prepare() validates a template against its parameters and returns the
resources with their ids and dependsOn resolved to ids, in template order.
Errors raise TemplateError with ARM's InvalidTemplate wording.
"""
import hashlib
import re

import armutil

TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<sym>[(),.\[\]]))")


class TemplateError(Exception):
    pass


def _tokens(text):
    pos, out = 0, []
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = TOKEN.match(text, pos)
        if not m:
            raise TemplateError(f"The template language expression '{text}' is not valid: unexpected character "
                                f"at position {pos}.")
        kind = m.lastgroup
        value = m.group(kind)
        out.append((kind, value))
        pos = m.end()
    out.append(("end", None))
    return out


class _Parser:
    """Recursive descent over the token list; produces nested tuples."""

    def __init__(self, text):
        self.text, self.toks, self.i = text, _tokens(text), 0

    def peek(self):
        return self.toks[self.i]

    def take(self, sym=None):
        tok = self.toks[self.i]
        if sym is not None and tok != ("sym", sym):
            raise TemplateError(f"The template language expression '{self.text}' is not valid: expected '{sym}'.")
        self.i += 1
        return tok

    def parse(self):
        node = self.expr()
        if self.peek()[0] != "end":
            raise TemplateError(f"The template language expression '{self.text}' is not valid: unexpected "
                                f"'{self.peek()[1]}'.")
        return node

    def expr(self):
        kind, value = self.take()
        if kind == "str":
            node = ("lit", value[1:-1].replace("''", "'"))
        elif kind == "num":
            node = ("lit", int(value))
        elif kind == "name" and value.lower() in ("true", "false") and self.peek() != ("sym", "("):
            node = ("lit", value.lower() == "true")
        elif kind == "name":
            self.take("(")
            args = []
            if self.peek() != ("sym", ")"):
                args.append(self.expr())
                while self.peek() == ("sym", ","):
                    self.take(",")
                    args.append(self.expr())
            self.take(")")
            node = ("call", value, args)
        else:
            raise TemplateError(f"The template language expression '{self.text}' is not valid.")
        return self.accessors(node)

    def accessors(self, node):
        while self.peek() in (("sym", "."), ("sym", "[")):
            if self.take()[1] == ".":
                kind, name = self.take()
                if kind != "name":
                    raise TemplateError(f"The template language expression '{self.text}' is not valid.")
                node = ("prop", node, ("lit", name))
            else:
                node = ("prop", node, self.expr())
                self.take("]")
        return node


class Evaluator:
    def __init__(self, parameters, variables, scope, reference=None):
        self.parameters, self.raw_variables = parameters, variables or {}
        self.scope, self.reference_fn = scope, reference  # scope: sub, rg, location, tenant
        self.variables, self._resolving = {}, set()

    def value(self, obj):
        if isinstance(obj, dict):
            return {k: self.value(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.value(v) for v in obj]
        if isinstance(obj, str) and obj.startswith("[") and obj.endswith("]"):
            if obj.startswith("[["):
                return obj[1:]
            return self._eval(_Parser(obj[1:-1]).parse(), obj)
        return obj

    def _eval(self, node, source):
        if node[0] == "lit":
            return node[1]
        if node[0] == "prop":
            return self._access(self._eval(node[1], source), self._eval(node[2], source), source)
        name, args = node[1].lower(), [self._eval(a, source) for a in node[2]]
        fn = getattr(self, "fn_" + name, None)
        if fn is None:
            raise TemplateError(f"The template function '{node[1]}' is not valid. Please see "
                                "https://aka.ms/arm-functions for usage details.")
        return fn(*args)

    @staticmethod
    def _access(base, key, source):
        try:
            if isinstance(base, dict):
                for k in base:
                    if k.lower() == str(key).lower():
                        return base[k]
                raise KeyError(key)
            return base[key]
        except (KeyError, IndexError, TypeError):
            raise TemplateError(f"The template language expression '{source}' is not valid: the language "
                                f"expression property '{key}' doesn't exist.")

    # functions -------------------------------------------------------------
    def fn_parameters(self, name):
        if name not in self.parameters:
            raise TemplateError(f"The template parameter '{name}' is not found. Please see "
                                "https://aka.ms/arm-syntax-parameters for usage details.")
        return self.parameters[name]

    def fn_variables(self, name):
        if name in self.variables:
            return self.variables[name]
        if name not in self.raw_variables:
            raise TemplateError(f"The template variable '{name}' is not found. Please see "
                                "https://aka.ms/arm-syntax-variables for usage details.")
        if name in self._resolving:
            raise TemplateError(f"The template variable '{name}' references itself.")
        self._resolving.add(name)
        self.variables[name] = self.value(self.raw_variables[name])
        self._resolving.discard(name)
        return self.variables[name]

    def fn_resourceid(self, *args):
        args = [str(a) for a in args]
        type_at = next((i for i, a in enumerate(args) if "/" in a and not a.startswith("/")), None)
        if type_at is None or type_at > 2:
            raise TemplateError(f"Unable to evaluate template language function 'resourceId': the type "
                                f"argument is missing in {args}.")
        scope = args[:type_at]
        sub = scope[0] if len(scope) == 2 else self.scope["sub"]
        rg = scope[-1] if scope else self.scope["rg"]
        try:
            return armutil.resource_id(sub, rg, args[type_at], *args[type_at + 1:])
        except ValueError as e:
            raise TemplateError(f"Unable to evaluate template language function 'resourceId': {e}.")

    def fn_concat(self, *args):
        if args and all(isinstance(a, list) for a in args):
            return [x for a in args for x in a]
        return "".join(_text(a) for a in args)

    def fn_format(self, fmt, *args):
        return re.sub(r"\{(\d+)\}", lambda m: _text(args[int(m.group(1))]), fmt)

    def fn_resourcegroup(self):
        return {"id": armutil.rg_id(self.scope["sub"], self.scope["rg"]), "name": self.scope["rg"],
                "type": "Microsoft.Resources/resourceGroups", "location": self.scope["location"],
                "properties": {"provisioningState": "Succeeded"}}

    def fn_subscription(self):
        return {"id": f"/subscriptions/{self.scope['sub']}", "subscriptionId": self.scope["sub"],
                "tenantId": self.scope["tenant"], "displayName": self.scope.get("displayName", "")}

    def fn_tolower(self, s):
        return str(s).lower()

    def fn_toupper(self, s):
        return str(s).upper()

    def fn_string(self, v):
        return _text(v)

    def fn_int(self, v):
        return int(v)

    def fn_equals(self, a, b):
        return a == b

    def fn_if(self, cond, a, b):
        return a if cond else b

    def fn_not(self, v):
        return not v

    def fn_uniquestring(self, *args):
        digest = hashlib.sha256("-".join(_text(a) for a in args).encode()).hexdigest()
        return "".join("abcdefghijklmnopqrstuvwxyz234567"[int(digest[i:i + 2], 16) % 32] for i in range(0, 26, 2))

    def fn_reference(self, rid, *_):
        if self.reference_fn is None:
            raise TemplateError("The template function 'reference' is not expected at this location.")
        return self.reference_fn(rid)


def _text(v):
    if isinstance(v, bool):
        return "True" if v else "False"
    return str(v)


TYPE_CHECKS = {"string": str, "securestring": str, "int": int, "bool": bool, "object": dict,
               "secureobject": dict, "array": list}


def _parameters(template, supplied, evaluator):
    declared = template.get("parameters") or {}
    extra = [n for n in supplied if n not in declared]
    if extra:
        raise TemplateError(f"Deployment template validation failed: 'The template parameters '{', '.join(extra)}' in "
                            "the parameters file are not valid; they are not present in the original template "
                            "and can therefore not be provided at deployment time. The only supported parameters "
                            f"for this template are '{', '.join(declared)}'.'")
    values = {}
    evaluator.parameters = values  # defaults may refer to earlier parameters
    for name, spec in declared.items():
        given = supplied.get(name)
        if isinstance(given, dict) and "value" in given:
            value = given["value"]
        elif "defaultValue" in spec:
            value = evaluator.value(spec["defaultValue"])
        else:
            raise TemplateError(f"Deployment template validation failed: 'The value for the template parameter "
                                f"'{name}' at line '1' and column '1' is not provided. Please see "
                                "https://aka.ms/arm-create-parameter-file for usage details.'.")
        expected = TYPE_CHECKS.get(str(spec.get("type", "string")).lower())
        if expected and not (isinstance(value, expected) and not (expected is int and isinstance(value, bool))):
            raise TemplateError(f"Deployment template validation failed: 'Template parameter JToken type is not "
                                f"valid. Expected '{spec.get('type')}'. Actual '{type(value).__name__}'.'.")
        if "allowedValues" in spec and value not in spec["allowedValues"]:
            raise TemplateError(f"Deployment template validation failed: 'The provided value '{value}' for the "
                                f"template parameter '{name}' is not valid. The parameter value is not part of the "
                                "allowed value(s).'.")
        values[name] = value
    return values


def _resolve_dependency(entry, resources):
    wanted = entry.lower().rstrip("/")
    for r in resources:
        rid = r["id"].lower()
        short = f"{r['type']}/{r['name']}".lower()
        if wanted in (rid, short, r["name"].lower()) or (wanted.startswith("/") and rid.endswith(wanted)):
            return r["id"]
    raise TemplateError(f"Deployment template validation failed: 'The resource '{entry}' is not defined in the "
                        "template. Please see https://aka.ms/arm-syntax for usage details.'.")


def _check_cycles(resources):
    by_id = {r["id"]: r for r in resources}
    state = {}

    def visit(rid):
        if state.get(rid) == "done":
            return
        if state.get(rid) == "active":
            raise TemplateError(f"Deployment template validation failed: 'Circular dependency detected on resource: "
                                f"'{rid}'. Please see https://aka.ms/arm-syntax-resources for usage details.'.")
        state[rid] = "active"
        for dep in by_id[rid]["depends_on"]:
            visit(dep)
        state[rid] = "done"

    for r in resources:
        visit(r["id"])


def prepare(template, supplied, scope):
    """-> (parameter values, [resource]); resource = {type, name, names, id, api_version, body, depends_on}."""
    if not isinstance(template, dict) or not isinstance(template.get("resources", []), list):
        raise TemplateError("Deployment template validation failed: the template must be an object with a "
                            "'resources' array.")
    evaluator = Evaluator({}, template.get("variables"), scope)
    params = _parameters(template, supplied or {}, evaluator)
    resources = []
    for raw in template.get("resources", []):
        if "condition" in raw and not evaluator.value(raw["condition"]):
            continue
        spec = evaluator.value({k: v for k, v in raw.items() if k != "dependsOn"})
        rtype, name = spec.get("type"), spec.get("name")
        if not rtype or not name or not spec.get("apiVersion"):
            raise TemplateError("Deployment template validation failed: 'The template resource is missing a "
                                "'type', 'name' or 'apiVersion'.'")
        names = str(name).split("/")
        try:
            rid = armutil.resource_id(scope["sub"], scope["rg"], rtype, *names)
        except ValueError as e:
            raise TemplateError(f"Deployment template validation failed: 'The template resource '{name}' of type "
                                f"'{rtype}' is not valid: {e}.'")
        body = {k: spec[k] for k in ("location", "tags", "sku", "zones", "properties") if k in spec}
        resources.append({"type": rtype, "name": str(name), "names": names, "id": rid,
                          "api_version": spec["apiVersion"], "body": body,
                          "raw_depends": [evaluator.value(d) for d in raw.get("dependsOn") or []]})
    for r in resources:
        r["depends_on"] = [_resolve_dependency(d, resources) for d in r.pop("raw_depends")]
    _check_cycles(resources)
    return params, resources


def outputs(template, params, scope, reference):
    evaluator = Evaluator(params, template.get("variables"), scope, reference)
    result = {}
    for name, spec in (template.get("outputs") or {}).items():
        result[name] = {"type": spec.get("type", "String"), "value": evaluator.value(spec.get("value"))}
    return result
