/*
** json.c - JSON writing for audit records (see json.h), and a secret
** taken out of a JSON document (include/dhsm/json.h).
**
** JSON knows secrets, secrets know nothing of JSON: this file calls
** secret.c (dhsm_is_secret to write "<secret>", dhsm_secret_push to make
** the field it took out a secret) and secret.c calls nothing here.  That
** way round because a secret is the lower thing, a value type any module
** uses; a format that must handle secrets belongs above it, as the audit
** log and the HTTP and process readers do.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>

#include "dhsm/secret.h"
#include "json.h"

#define MAX_DEPTH 16

/* Length of the valid UTF-8 sequence at s (max n bytes), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len;
  unsigned min;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) { len = 2; min = 0x80; c &= 0x1F; }
  else if ((c & 0xF0) == 0xE0) { len = 3; min = 0x800; c &= 0x0F; }
  else if ((c & 0xF8) == 0xF0) { len = 4; min = 0x10000; c &= 0x07; }
  else return 0;
  if (len > n) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    c = (c << 6) | (s[i] & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  return len;
}

void dhsm_json_string(dhsm_buf *b, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  char esc[8];
  dhsm_buf_add(b, "\"", 1);
  size_t i = 0;
  while (i < n) {
    unsigned char c = u[i];
    if (c == '"' || c == '\\') {
      esc[0] = '\\'; esc[1] = (char)c;
      dhsm_buf_add(b, esc, 2);
      i++;
    } else if (c < 0x20 || c == 0x7F) {
      const char *named = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
      if (named) dhsm_buf_add(b, named, 2);
      else dhsm_buf_add(b, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", c));
      i++;
    } else {
      size_t k = utf8_seq(u + i, n - i);
      if (k == 0) {        /* not UTF-8: keep the byte visible, keep JSON valid */
        dhsm_buf_add(b, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", c));
        i++;
      } else {
        dhsm_buf_add(b, s + i, k);
        i += k;
      }
    }
  }
  dhsm_buf_add(b, "\"", 1);
}

void dhsm_json_number(dhsm_buf *b, lua_State *L, int idx) {
  char num[64];
  if (lua_isinteger(L, idx)) {
    snprintf(num, sizeof num, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
  } else {
    double d = (double)lua_tonumber(L, idx);
    if (!isfinite(d)) {
      dhsm_buf_adds(b, "null");
      return;
    }
    snprintf(num, sizeof num, "%.15g", d);
  }
  dhsm_buf_adds(b, num);
}

int dhsm_json_sensitive_key(const char *key) {
  static const char *const words[] = {
    "password", "passwd", "passphrase", "secret", "token", "credential",
    "private_key", "privatekey", "authorization", NULL
  };
  size_t n = strlen(key);                 /* the whole key, however long */
  for (int i = 0; words[i]; i++)
    if (strcasestr(key, words[i])) return 1;
  return n >= 3 && strcasecmp(key + n - 3, "pin") == 0;   /* pin, so_pin, user_pin */
}

int dhsm_json_hides(lua_State *L, const char *key, int idx) {
  int t = lua_type(L, idx);
  return (t == LUA_TSTRING || t == LUA_TNUMBER) && dhsm_json_sensitive_key(key);
}

/* A table is written as an array when its keys are exactly 1..n, n > 0. */
static int array_length(lua_State *L, int idx) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0;
  if (n == 0) return 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > n) {
      lua_pop(L, 1);
      return 0;
    }
    count++;
  }
  return count == n ? (int)n : 0;
}

static void json_value(dhsm_buf *b, lua_State *L, int idx, int depth, int redact);

/* An object's member names, sorted: the same table is always the same
** text (an audit record, a request body a plan compares, a digest). */
typedef struct member { const char *name; size_t len; int key; } member;

static int by_name(const void *pa, const void *pb) {
  const member *a = pa, *b = pb;
  int c = memcmp(a->name, b->name, a->len < b->len ? a->len : b->len);
  return c != 0 ? c : (a->len > b->len) - (a->len < b->len);
}

/* The object at idx, its string and number keys in byte order of their
** text.  The keys are kept in a table on the stack while written (their
** names stay alive; a number key is looked up as itself). */
static void write_object(dhsm_buf *b, lua_State *L, int idx, int depth, int redact) {
  lua_Integer n = 0;
  lua_newtable(L);                              /* i -> the key itself */
  int keys = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    int kt = lua_type(L, -1);
    if (kt == LUA_TSTRING || kt == LUA_TNUMBER) {
      lua_pushvalue(L, -1);
      lua_rawseti(L, keys, ++n);
    }
  }
  member *m = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof *m, 0);
  lua_newtable(L);                              /* i -> the key's text (kept alive) */
  int names = lua_gettop(L);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, keys, i);
    m[i - 1].name = lua_tolstring(L, -1, &m[i - 1].len);   /* a number key becomes a string: its copy */
    m[i - 1].key = (int)i;
    lua_rawseti(L, names, i);
  }
  qsort(m, (size_t)n, sizeof *m, by_name);
  dhsm_buf_add(b, "{", 1);
  for (lua_Integer i = 0; i < n; i++) {
    if (i > 0) dhsm_buf_add(b, ",", 1);
    dhsm_json_string(b, m[i].name, m[i].len);
    dhsm_buf_add(b, ":", 1);
    lua_rawgeti(L, keys, m[i].key);
    lua_rawget(L, idx);
    if (redact && dhsm_json_hides(L, m[i].name, -1))
      dhsm_buf_adds(b, "\"<redacted>\"");
    else
      json_value(b, L, lua_gettop(L), depth + 1, redact);
    lua_pop(L, 1);
  }
  dhsm_buf_add(b, "}", 1);
  lua_pop(L, 3);                                /* keys, the members, names */
}

static void json_table(dhsm_buf *b, lua_State *L, int idx, int depth, int redact) {
  if (depth >= MAX_DEPTH || !lua_checkstack(L, 8)) {
    dhsm_buf_adds(b, "\"<too deep>\"");
    return;
  }
  int n = array_length(L, idx);
  if (n > 0) {
    dhsm_buf_add(b, "[", 1);
    for (int i = 1; i <= n; i++) {
      if (i > 1) dhsm_buf_add(b, ",", 1);
      lua_rawgeti(L, idx, i);
      json_value(b, L, lua_gettop(L), depth + 1, redact);
      lua_pop(L, 1);
    }
    dhsm_buf_add(b, "]", 1);
    return;
  }
  write_object(b, L, idx, depth, redact);
}

static void json_value(dhsm_buf *b, lua_State *L, int idx, int depth, int redact) {
  size_t len;
  const char *s;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: dhsm_buf_adds(b, "null"); break;
    case LUA_TBOOLEAN: dhsm_buf_adds(b, lua_toboolean(L, idx) ? "true" : "false"); break;
    case LUA_TNUMBER: dhsm_json_number(b, L, idx); break;
    case LUA_TSTRING:
      s = lua_tolstring(L, idx, &len);
      dhsm_json_string(b, s, len);
      break;
    case LUA_TTABLE: json_table(b, L, idx, depth, redact); break;
    case LUA_TUSERDATA:
      if (dhsm_is_secret(L, idx)) {
        dhsm_buf_adds(b, "\"<secret>\"");
        break;
      }
      /* fall through */
    default:
      dhsm_buf_add(b, "\"<", 2);
      dhsm_buf_adds(b, luaL_typename(L, idx));
      dhsm_buf_add(b, ">\"", 2);
      break;
  }
}

void dhsm_json_value(dhsm_buf *b, lua_State *L, int idx) {
  json_value(b, L, lua_absindex(L, idx), 0, 1);
}

void dhsm_json_faithful(dhsm_buf *b, lua_State *L, int idx) {
  json_value(b, L, lua_absindex(L, idx), 0, 0);
}

void dhsm_rfc3339(char out[32], const struct timespec *t) {
  struct tm tm;
  gmtime_r(&t->tv_sec, &tm);
  size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, 32 - n, ".%03ldZ", t->tv_nsec / 1000000L);
}

/* ---- reading one string field of a JSON object, in C ------------------------
** So that a token in a tool's JSON output (az account get-access-token,
** an AAD reply) becomes a dhsm.secret without ever being a Lua string. */

typedef struct {
  const char *p, *end;
} cursor;

static void skip_ws(cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int hex4(cursor *c, unsigned *out) {
  if (c->end - c->p < 4) return 0;
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char h = *c->p++;
    v <<= 4;
    if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
    else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
    else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
    else return 0;
  }
  *out = v;
  return 1;
}

static void add_utf8(dhsm_buf *b, unsigned cp) {
  char u[4];
  size_t n;
  if (cp < 0x80) { u[0] = (char)cp; n = 1; }
  else if (cp < 0x800) { u[0] = (char)(0xC0 | cp >> 6); u[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
  else if (cp < 0x10000) {
    u[0] = (char)(0xE0 | cp >> 12); u[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
  } else {
    u[0] = (char)(0xF0 | cp >> 18); u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
  }
  dhsm_buf_add(b, u, n);
}

/* A \uXXXX escape (the backslash and 'u' read), a surrogate pair joined. */
static int read_unicode(cursor *c, dhsm_buf *out) {
  unsigned cp, lo;
  if (!hex4(c, &cp)) return 0;
  if (cp >= 0xD800 && cp <= 0xDBFF) {
    if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u') return 0;
    c->p += 2;
    if (!hex4(c, &lo) || lo < 0xDC00 || lo > 0xDFFF) return 0;
    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
  } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
    return 0;
  }
  if (out) add_utf8(out, cp);
  return 1;
}

/* The string at c->p (its opening quote), decoded into out (or skipped
** when out is NULL).  0 when malformed. */
static int read_string(cursor *c, dhsm_buf *out) {
  static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
  c->p++;
  while (c->p < c->end) {
    char ch = *c->p++;
    if (ch == '"') return 1;
    if ((unsigned char)ch < 0x20) return 0;
    if (ch != '\\') {
      if (out) dhsm_buf_add(out, &ch, 1);
      continue;
    }
    if (c->p >= c->end) return 0;
    char e = *c->p++;
    const char *simple = e ? strchr(from, e) : NULL;
    if (simple) {
      if (out) dhsm_buf_add(out, &to[simple - from], 1);
    } else if (e != 'u' || !read_unicode(c, out)) {
      return 0;
    }
  }
  return 0;
}

/* Skip any value at c->p.  0 when malformed. */
static int skip_value(cursor *c, int depth) {
  if (c->p >= c->end || depth > MAX_DEPTH) return 0;
  if (*c->p == '"') return read_string(c, NULL);
  if (*c->p == '{' || *c->p == '[') {
    char close = *c->p == '{' ? '}' : ']';
    c->p++;
    for (;;) {
      skip_ws(c);
      if (c->p < c->end && *c->p == close) { c->p++; return 1; }
      if (close == '}') {
        if (c->p >= c->end || *c->p != '"' || !read_string(c, NULL)) return 0;
        skip_ws(c);
        if (c->p >= c->end || *c->p++ != ':') return 0;
        skip_ws(c);
      }
      if (!skip_value(c, depth + 1)) return 0;
      skip_ws(c);
      if (c->p < c->end && *c->p == ',') c->p++;
      else if (!(c->p < c->end && *c->p == close)) return 0;
    }
  }
  const char *start = c->p;
  while (c->p < c->end && !strchr(" \t\r\n,}]", *c->p)) c->p++;
  return c->p > start;
}

/* On the raw bytes: "field" then a colon (for text that is not JSON). */
static int names_key_raw(const char *json, size_t len, const char *field) {
  size_t flen = strlen(field);
  for (const char *p = json, *end = json + len; p + flen + 2 <= end; p++) {
    if (*p != '"' || memcmp(p + 1, field, flen) != 0 || p[flen + 1] != '"') continue;
    const char *q = p + flen + 2;
    while (q < end && strchr(" \t\r\n", *q)) q++;
    if (q < end && *q == ':') return 1;
  }
  return 0;
}

/* Every string followed by a colon is a key: decoded, so that an escaped
** spelling ("\u0061ccess_token") is the key it stands for.  Text that is
** not well-formed JSON cannot be read so: it counts when it holds the raw
** name or any \u escape.  (The strings decoded on the way may be the
** secret itself: the buffer is wiped when freed.) */
int dhsm_json_names_key(const char *json, size_t len, const char *field) {
  size_t flen = strlen(field);
  cursor c = { json, json + len };
  dhsm_buf s = {0};
  int named = 0;
  while (!named && c.p < c.end) {
    if (*c.p != '"') {
      c.p++;
      continue;
    }
    s.len = 0;
    if (!read_string(&c, &s)) {
      named = names_key_raw(json, len, field) || memmem(json, len, "\\u", 2) != NULL;
      break;
    }
    skip_ws(&c);
    named = c.p < c.end && *c.p == ':' && s.len == flen && (flen == 0 || memcmp(s.p, field, flen) == 0);
  }
  if (s.oom) named = 1;
  dhsm_buf_free(&s);
  return named;
}

int dhsm_json_take_string(const char *json, size_t len, const char *field, dhsm_buf *value, dhsm_buf *rest) {
  cursor c = { json, json + len };
  dhsm_buf key = {0};
  int found = 0;
  skip_ws(&c);
  if (c.p >= c.end || *c.p++ != '{') return 0;
  for (;;) {
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '"') break;
    const char *key_at = c.p;
    key.len = 0;
    if (!read_string(&c, &key)) break;
    skip_ws(&c);
    if (c.p >= c.end || *c.p++ != ':') break;
    skip_ws(&c);
    const char *at = c.p;
    int wanted = key.p && strlen(field) == key.len && memcmp(key.p, field, key.len) == 0;
    if (wanted && c.p < c.end && *c.p == '"') {
      if (!read_string(&c, value)) break;
      dhsm_buf_add(rest, json, (size_t)(at - json));
      dhsm_buf_adds(rest, "null");
      dhsm_buf_add(rest, c.p, (size_t)(c.end - c.p));
      found = !value->oom && !rest->oom && !dhsm_json_names_key(json, (size_t)(key_at - json), field)
              && !dhsm_json_names_key(c.p, (size_t)(c.end - c.p), field);   /* the key once only */
      break;
    }
    if (!skip_value(&c, 1)) break;
    skip_ws(&c);
    if (c.p >= c.end || *c.p++ != ',') break;
  }
  dhsm_buf_free(&key);
  if (!found) {
    dhsm_buf_free(value);
    dhsm_buf_free(rest);
  }
  return found;
}

/* What dhsm_secret_push_json_field took out, pushed by push_taken. */
typedef struct taken {
  dhsm_buf value, rest;
  const char *origin;
} taken;

static int push_taken(lua_State *L) {
  taken *t = lua_touserdata(L, 1);
  dhsm_secret_push(L, t->value.p ? t->value.p : "", t->value.len, t->origin);
  lua_pushlstring(L, t->rest.p, t->rest.len);
  return 2;
}

/* The pushes run protected: a memory error half-way (the secret's
** userdata, its copy, the rest's string) must not skip the wipe of the
** decoded value.  The buffers are wiped and freed either way, then an
** error goes on up. */
int dhsm_secret_push_json_field(lua_State *L, const char *json, size_t len,
                                const char *field, const char *origin) {
  taken t = { .origin = origin };
  if (!dhsm_json_take_string(json ? json : "", json ? len : 0, field, &t.value, &t.rest)) return 0;
  lua_pushcfunction(L, push_taken);
  lua_pushlightuserdata(L, &t);
  int status = lua_pcall(L, 1, 2, 0);
  dhsm_buf_free(&t.value);
  dhsm_buf_free(&t.rest);
  if (status != LUA_OK) lua_error(L);
  return 1;
}
