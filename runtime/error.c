/*
** error.c - dhsm error objects (see include/dhsm/error.h), the Lua
** functions behind dhsm.error, and the exit status each kind of error
** ends the program with (dhsm_exit_status: main.c and the CLI alike).
*/
#include <stdarg.h>
#include <string.h>

#include <lauxlib.h>

#include "dhsm/dhsm.h"
#include "runtime.h"

static int error_tostring(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "kind");
  lua_getfield(L, 1, "code");
  lua_getfield(L, 1, "message");
  const char *kind = luaL_optstring(L, 2, "error");
  const char *msg = lua_isnil(L, 4) ? "(no message)" : luaL_tolstring(L, 4, NULL);
  if (lua_isnil(L, 3))
    lua_pushfstring(L, "%s: %s", kind, msg);
  else
    lua_pushfstring(L, "%s/%s: %s", kind, luaL_tolstring(L, 3, NULL), msg);
  return 1;
}

static void push_error_mt(lua_State *L) {
  if (luaL_newmetatable(L, DHSM_ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "dhsm.error");
    lua_setfield(L, -2, "__name");
  }
}

void dhsm_error_new(lua_State *L, const char *kind, const char *code,
                    int retryable, const char *fmt, ...) {
  va_list ap;
  lua_createtable(L, 0, 5);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  if (code) {
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
  }
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_setfield(L, -2, "message");
  lua_pushboolean(L, retryable);
  lua_setfield(L, -2, "retryable");
  push_error_mt(L);
  lua_setmetatable(L, -2);
}

int dhsm_raise(lua_State *L, const char *kind, const char *code,
               int retryable, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  dhsm_error_new(L, kind, code, retryable, "%s", lua_tostring(L, -1));
  return lua_error(L);
}

int dhsm_error_is(lua_State *L, int idx, const char *kind) {
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) return 0;
  luaL_getmetatable(L, DHSM_ERROR_MT);
  int same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  if (!same) return 0;
  if (kind == NULL) return 1;
  lua_getfield(L, idx, "kind");
  int match = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), kind) == 0;
  lua_pop(L, 1);
  return match;
}

int dhsm_exit_status(lua_State *L, int idx) {
  static const struct { const char *kind; int status; } by_kind[] = {
    {"usage", DHSM_EXIT_USAGE}, {"safety", DHSM_EXIT_SAFETY}, {"interrupted", DHSM_EXIT_INTERRUPTED},
  };
  for (size_t i = 0; i < sizeof by_kind / sizeof by_kind[0]; i++)
    if (dhsm_error_is(L, idx, by_kind[i].kind)) return by_kind[i].status;
  return DHSM_EXIT_FAILED;
}

/* error.new{kind=, message=, code=, retryable=, details=, ...} */
static int errors_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_getfield(L, 1, "kind") != LUA_TSTRING)
    return dhsm_usage_error(L, "dhsm.error: field 'kind' must be a string (e.g. \"usage\"), got %s",
                            luaL_typename(L, -1));
  if (lua_getfield(L, 1, "message") != LUA_TSTRING)
    return dhsm_usage_error(L, "dhsm.error: field 'message' must be a string, got %s",
                            luaL_typename(L, -1));
  int t = lua_getfield(L, 1, "code");
  if (t != LUA_TNIL && t != LUA_TSTRING && t != LUA_TNUMBER)
    return dhsm_usage_error(L, "dhsm.error: field 'code' must be a string or number, got %s",
                            luaL_typename(L, -1));
  t = lua_getfield(L, 1, "retryable");
  if (t != LUA_TNIL && t != LUA_TBOOLEAN)
    return dhsm_usage_error(L, "dhsm.error: field 'retryable' must be a boolean, got %s",
                            luaL_typename(L, -1));
  lua_settop(L, 1);
  lua_createtable(L, 0, 6);                 /* a copy: the caller's table stays theirs */
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, 2);
  }
  if (lua_getfield(L, 2, "retryable") == LUA_TNIL) {
    lua_pushboolean(L, 0);
    lua_setfield(L, 2, "retryable");
  }
  lua_pop(L, 1);
  push_error_mt(L);
  lua_setmetatable(L, 2);
  return 1;
}

/* error.is(v [, kind]) */
static int errors_is(lua_State *L) {
  lua_pushboolean(L, dhsm_error_is(L, 1, luaL_optstring(L, 2, NULL)));
  return 1;
}

/* error.normalize(v) -> a dhsm error: plain Lua errors become kind "lua" */
static int errors_normalize(lua_State *L) {
  lua_settop(L, 1);
  if (dhsm_error_is(L, 1, NULL)) return 1;
  const char *msg = luaL_tolstring(L, 1, NULL);
  dhsm_error_new(L, "lua", NULL, 0, "%s", msg);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "value");
  return 1;
}

/* error.exit_status(v) -> the status dhsm exits with when v ends it
** (the CLI and the REPL ask here, so the map is main.c's too) */
static int errors_exit_status(lua_State *L) {
  lua_pushinteger(L, dhsm_exit_status(L, 1));
  return 1;
}

int luaopen_dhsm_errors(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"new", errors_new}, {"is", errors_is}, {"normalize", errors_normalize},
    {"exit_status", errors_exit_status}, {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  push_error_mt(L);
  lua_setfield(L, -2, "metatable");
  return 1;
}

static void bad_argument(lua_State *L, int idx, const char *fn, const char *name, const char *expected) {
  dhsm_raise(L, "usage", "BadArgument", 0, "%s: %s: expected %s, got %s", fn, name, expected,
             lua_isnoneornil(L, idx) ? "nothing" : luaL_typename(L, idx));
}

const char *dhsm_check_string(lua_State *L, int idx, const char *fn, const char *name, size_t *len) {
  if (!lua_isstring(L, idx)) bad_argument(L, idx, fn, name, "a string");
  return lua_tolstring(L, idx, len);
}

lua_Integer dhsm_check_integer(lua_State *L, int idx, const char *fn, const char *name) {
  if (!lua_isinteger(L, idx)) {
    int ok = 0;
    lua_Integer n = lua_tointegerx(L, idx, &ok);   /* 3.0 and "3" as luaL_checkinteger takes them */
    if (!ok) bad_argument(L, idx, fn, name, "an integer");
    return n;
  }
  return lua_tointeger(L, idx);
}
