/*
** main.c - the dhsm program: build the state, run the CLI (Lua,
** runtime/lua/dhsm/cli/cli.lua) as the root task, turn the outcome into an
** exit status: 0 ok, 1 failed, 2 usage or bad input, 3 refused by a
** safety rule, 130 interrupted.
*/
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "dhsm/dhsm.h"
#include "runtime.h"

static const char boot[] = "return require('dhsm.cli').main(...)";

/* Only a real bug gets here: cli.main reports what it expects itself. */
static int report_failure(lua_State *L) {
  int status = dhsm_exit_status(L, -1);
  if (status == DHSM_EXIT_INTERRUPTED) {
    fputs("dhsm: interrupted\n", stderr);
    return status;
  }
  fprintf(stderr, "dhsm: %s\n", luaL_tolstring(L, -1, NULL));
  lua_pop(L, 1);
  if (status == DHSM_EXIT_FAILED && lua_getfield(L, LUA_REGISTRYINDEX, "dhsm.last_traceback") == LUA_TSTRING)
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
  return status;
}

int main(int argc, char **argv) {
  dhsm_signals_install();
  lua_State *L = dhsm_newstate(NULL, 0);
  if (L == NULL) return 1;
  if (luaL_loadbufferx(L, boot, sizeof boot - 1, "=boot", "t") != LUA_OK) {
    fprintf(stderr, "dhsm: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return 1;
  }
  lua_createtable(L, argc, 0);
  for (int i = 1; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  int status;
  if (dhsm_loop_pcall(L, 1, DHSM_LOOP_CANCEL_REST) == LUA_OK)
    status = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : 0;
  else
    status = report_failure(L);
  fflush(stdout);
  lua_close(L);
  return status;
}
