/*
** state.c - building the one lua_State: libraries, scheduler, preloaded
** modules, the embedded-file searcher, warnings, the global `dhsm`.
*/
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "dhsm/dhsm.h"
#include "runtime.h"

extern const dhsm_module dhsm_modules[];

/* ---- warnings: "dhsm: warning: ..." on stderr (as lua.c, but on) ---- */

static void warn_on(void *ud, const char *msg, int tocont);
static void warn_off(void *ud, const char *msg, int tocont);

/* "@on" / "@off" switch warnings, as in lua.c */
static int warn_control(lua_State *L, const char *msg, int tocont) {
  if (tocont || *(msg++) != '@') return 0;
  if (strcmp(msg, "off") == 0) lua_setwarnf(L, warn_off, L);
  else if (strcmp(msg, "on") == 0) lua_setwarnf(L, warn_on, L);
  return 1;
}

static void warn_off(void *ud, const char *msg, int tocont) {
  warn_control(ud, msg, tocont);
}

static void warn_cont(void *ud, const char *msg, int tocont) {
  lua_State *L = ud;
  fputs(msg, stderr);
  if (tocont) {
    lua_setwarnf(L, warn_cont, L);
  } else {
    fputc('\n', stderr);
    fflush(stderr);
    lua_setwarnf(L, warn_on, L);
  }
}

static void warn_on(void *ud, const char *msg, int tocont) {
  if (warn_control(ud, msg, tocont)) return;
  fputs("dhsm: warning: ", stderr);
  warn_cont(ud, msg, tocont);
}

/* ---- module helpers (module.h) ---------------------------------------- */

void dhsm_newclass(lua_State *L, const char *tname,
                   const luaL_Reg *methods, const luaL_Reg *metamethods) {
  if (luaL_newmetatable(L, tname)) {
    if (metamethods) luaL_setfuncs(L, metamethods, 0);
    if (methods) {
      lua_newtable(L);
      luaL_setfuncs(L, methods, 0);
      lua_setfield(L, -2, "__index");
    }
  }
}

void dhsm_check_endpoint(lua_State *L, int opts, const char *what, int default_port,
                         double default_timeout, dhsm_endpoint *out) {
  opts = lua_absindex(L, opts);
  lua_getfield(L, opts, "host");
  const char *host = lua_tostring(L, -1);
  if (host == NULL || *host == '\0' || lua_type(L, -1) != LUA_TSTRING)
    dhsm_usage_error(L, "%s: 'host' is required (a name or an address)", what);
  snprintf(out->host, sizeof out->host, "%s", host);
  lua_pop(L, 1);
  int t = lua_getfield(L, opts, "port");
  if (t == LUA_TNIL && default_port > 0) {
    out->port = default_port;
  } else if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > 65535) {
    dhsm_usage_error(L, "%s: 'port' must be an integer 1-65535, got %s", what, luaL_tolstring(L, -1, NULL));
  } else {
    out->port = (int)lua_tointeger(L, -1);
  }
  lua_pop(L, 1);
  lua_getfield(L, opts, "timeout");
  out->timeout = luaL_optnumber(L, -1, default_timeout);
  if (out->timeout < 0) dhsm_usage_error(L, "%s: 'timeout' must be seconds >= 0", what);
  lua_pop(L, 1);
}

/* ---- embedded Lua ------------------------------------------------------ */

const dhsm_embedded *dhsm_embedded_find(char kind, const char *name) {
  for (size_t i = 0; i < dhsm_embedded_count; i++) {
    const dhsm_embedded *e = &dhsm_embedded_files[i];
    if (e->kind == kind && strcmp(e->name, name) == 0) return e;
  }
  return NULL;
}

/* ---- private native modules --------------------------------------------- */

static const char NATIVES_KEY = 'n';        /* registry: name -> opened private module */

/* The private native module m, opened once per state. */
static void push_native(lua_State *L, const dhsm_module *m) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &NATIVES_KEY);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &NATIVES_KEY);
  }
  if (lua_getfield(L, -1, m->name) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushcfunction(L, m->open);
    lua_pushstring(L, m->name);
    lua_call(L, 1, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, m->name);
  }
  lua_remove(L, -2);
}

/* {name = module} of the private modules `owner` gets, or nothing (0). */
static int push_natives_of(lua_State *L, const char *owner) {
  int n = 0;
  for (const dhsm_module *m = dhsm_modules; m->name; m++) {
    if (m->owner == NULL || strcmp(m->owner, owner) != 0) continue;
    if (n++ == 0) lua_newtable(L);
    push_native(L, m);
    lua_setfield(L, -2, m->name);
  }
  return n > 0;
}

/* The loader of an embedded module that owns private modules: its chunk
** runs with (name, path, natives).  Upvalues: chunk, natives. */
static int run_with_natives(lua_State *L) {
  lua_settop(L, 2);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_call(L, 3, LUA_MULTRET);
  return lua_gettop(L);
}

/* Names of dhsm's own modules that moved (docs/design.md), said when a
** runbook asks for the old one. */
static const char *const moved[][2] = {
  {"dhsm.luna.guard", "dhsm.guard"},
  {"dhsm.luna.cli", "dhsm.guard.commands"},
  {"dhsm.luna.ha", "dhsm.client.ha"},
  {"dhsm.net.ntls", "dhsm.client.ntls"},
  {"dhsm.globals", "dhsm.cli.globals"},
  {"dhsm.repl", "dhsm.cli.repl"},
};

static int is_own_name(const char *name) {
  return strcmp(name, "dhsm") == 0 || strncmp(name, "dhsm.", 5) == 0;
}

/* Why a dhsm.* name that is not embedded is not found. */
static int not_embedded(lua_State *L, const char *name) {
  for (size_t i = 0; i < sizeof moved / sizeof moved[0]; i++) {
    if (strcmp(name, moved[i][0]) == 0)
      return lua_pushfstring(L, "no module '%s' in dhsm: it is now '%s'", name, moved[i][1]), 1;
  }
  lua_pushfstring(L, "no module '%s' embedded in dhsm (dhsm.* names are dhsm's own: "
                  "-I and $DHSM_PATH folders are not searched for them)", name);
  return 1;
}

static const char OWN_NATIVES_KEY = 'o';    /* registry: name -> opener of a public native */
static const char ONCE_KEY = 'l';           /* registry: name -> what a dhsm module's loader gave */

/* A dhsm module is loaded once per process: a runbook that clears
** package.loaded and requires it again gets the same module back, not a
** fresh one with fresh state (a gate with check mode off, a confirmation
** policy not yet set, an HTTP session not wrapped).  Upvalue: the value. */
static int loaded_before(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  return 1;
}

/* The loader of a dhsm module, remembering what it gave.  Upvalues: the
** real loader, the name. */
static int load_once(lua_State *L) {
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, 1);
  if (lua_isnil(L, -1)) {                     /* as require does: nil is true */
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
  }
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ONCE_KEY);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  return 1;
}

/* package.searchers entry: dhsm's own modules, the only place a dhsm.*
** name is looked up - its public natives (kept apart from package.preload,
** which a runbook can write to), then the Lua compiled into the binary. */
static int search_embedded(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ONCE_KEY);
  if (lua_getfield(L, -1, name) != LUA_TNIL) {   /* loaded before: the same module */
    lua_pushcclosure(L, loaded_before, 1);
    lua_pushstring(L, ":loaded:");
    return 2;
  }
  lua_pop(L, 2);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &OWN_NATIVES_KEY);
  if (lua_getfield(L, -1, name) == LUA_TFUNCTION) {
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, load_once, 2);
    lua_pushstring(L, ":native:");
    return 2;
  }
  lua_pop(L, 2);
  const dhsm_embedded *e = dhsm_embedded_find('m', name);
  if (e == NULL) {
    if (is_own_name(name)) return not_embedded(L, name);
    lua_pushfstring(L, "no module '%s' embedded in dhsm", name);
    return 1;
  }
  lua_pushfstring(L, "@%s", e->path);
  if (luaL_loadbufferx(L, (const char *)e->data, e->len, lua_tostring(L, -1), "t") != LUA_OK)
    return luaL_error(L, "error loading embedded module '%s':\n\t%s", name, lua_tostring(L, -1));
  if (push_natives_of(L, name)) lua_pushcclosure(L, run_with_natives, 2);
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, load_once, 2);
  lua_pushstring(L, e->path);
  return 2;
}

/* A searcher of Lua's own (package.preload, package.path, package.cpath)
** that never answers for a dhsm.* name: neither a file in a -I folder nor
** a function a runbook put in package.preload can stand in for dhsm's own
** module, least of all one a safety rule lives in.  Upvalue: the searcher. */
static int search_files(lua_State *L) {
  if (is_own_name(luaL_checkstring(L, 1))) return 0;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_call(L, 1, 2);
  return 2;
}

/* Searchers: dhsm's own modules first, then - for other names only -
** package.preload, package.path (the user's folders) and the C libraries. */
static void install_searcher(lua_State *L) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchers");
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
  for (lua_Integer i = n; i >= 1; i--) {        /* Lua's searchers: guarded, one up */
    lua_rawgeti(L, -1, i);
    lua_pushcclosure(L, search_files, 1);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushcfunction(L, search_embedded);
  lua_rawseti(L, -2, 1);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &ONCE_KEY);
  lua_pop(L, 1);
  lua_pushliteral(L, "");                       /* only what the user adds */
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
}

/* The public natives: cjson in package.preload, dhsm.* ones in a table of
** their own (search_embedded). */
static void preload_modules(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_newtable(L);
  for (const dhsm_module *m = dhsm_modules; m->name; m++) {
    if (m->owner) continue;                     /* private: see push_natives_of */
    lua_pushcfunction(L, m->open);
    lua_setfield(L, is_own_name(m->name) ? -2 : -3, m->name);
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &OWN_NATIVES_KEY);
  lua_pop(L, 1);
}

static int init_state(lua_State *L) {
  const char *const *dirs = lua_touserdata(L, 1);
  int ndirs = (int)lua_tointeger(L, 2);
  luaL_openlibs(L);
  preload_modules(L);
  install_searcher(L);
  lua_getglobal(L, "require");                  /* through the searcher: loaded once, as every dhsm module */
  lua_pushliteral(L, "dhsm.audit");
  lua_call(L, 1, 0);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "dhsm.paths");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "set");
  lua_createtable(L, ndirs, 0);
  for (int i = 0; i < ndirs; i++) {
    lua_pushstring(L, dirs[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_call(L, 1, 0);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "dhsm");
  lua_call(L, 1, 1);
  lua_setglobal(L, "dhsm");
  return 0;
}

lua_State *dhsm_newstate(const char *const *user_dirs, int ndirs) {
  lua_State *L = luaL_newstate();
  if (L == NULL) return NULL;
  lua_setwarnf(L, warn_on, L);
  dhsm_loop_init(L);                 /* before any thread exists */
  lua_pushcfunction(L, init_state);
  lua_pushlightuserdata(L, (void *)user_dirs);
  lua_pushinteger(L, ndirs);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    fprintf(stderr, "dhsm: cannot start: %s\n", luaL_tolstring(L, -1, NULL));
    lua_close(L);
    return NULL;
  }
  return L;
}
