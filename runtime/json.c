/*
** json.c - JSON writing for audit records (see json.h).
*/
#include <math.h>
#include <stdio.h>
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

static void json_table(dhsm_buf *b, lua_State *L, int idx, int depth, int redact) {
  if (depth >= MAX_DEPTH || !lua_checkstack(L, 4)) {
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
  int first = 1;
  dhsm_buf_add(b, "{", 1);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int kt = lua_type(L, -2);
    if (kt == LUA_TSTRING || kt == LUA_TNUMBER) {
      size_t kl;
      lua_pushvalue(L, -2);                   /* tolstring on a copy keeps lua_next sane */
      const char *k = lua_tolstring(L, -1, &kl);
      if (!first) dhsm_buf_add(b, ",", 1);
      first = 0;
      dhsm_json_string(b, k, kl);
      dhsm_buf_add(b, ":", 1);
      if (redact && lua_type(L, -3) == LUA_TSTRING && dhsm_json_hides(L, k, -2))  /* key, value, key copy */
        dhsm_buf_adds(b, "\"<redacted>\"");
      else
        json_value(b, L, lua_gettop(L) - 1, depth + 1, redact);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  dhsm_buf_add(b, "}", 1);
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
