/*
** modules.c - the native modules linked into dhsm.  To add one, declare
** its opener and add a line: the host preloads every public entry.  An
** entry with an owner is private to that embedded Lua module: the raw
** layers under a safety rule (the SSH shell under dhsm.luna's login guard,
** C_Login under dhsm.pkcs11's, process spawning under dhsm.proc's lunacm
** guard) must not be reachable around it.
*/
#include "dhsm/dhsm.h"
#include "loop_int.h"
#include "runtime.h"

extern int luaopen_cjson(lua_State *L);
extern int luaopen_dhsm_azure_http(lua_State *L);
extern int luaopen_dhsm_luna_ssh(lua_State *L);
extern int luaopen_dhsm_pkcs11_core(lua_State *L);
extern int luaopen_dhsm_proc_core(lua_State *L);
extern int luaopen_dhsm_net_core(lua_State *L);

const dhsm_module dhsm_modules[] = {
  {"dhsm.core", luaopen_dhsm_core, NULL},
  {"dhsm.errors", luaopen_dhsm_errors, NULL},
  {"dhsm.secret", luaopen_dhsm_secret, NULL},
  {"dhsm.audit", luaopen_dhsm_audit, NULL},
  {"dhsm.sys", luaopen_dhsm_sys, NULL},
  {"cjson", luaopen_cjson, NULL},
  {"dhsm.azure.http", luaopen_dhsm_azure_http, NULL},
  {"dhsm.luna.ssh", luaopen_dhsm_luna_ssh, "dhsm.luna"},
  {"dhsm.pkcs11.core", luaopen_dhsm_pkcs11_core, "dhsm.pkcs11"},
  {"dhsm.proc.core", luaopen_dhsm_proc_core, "dhsm.proc"},
  {"dhsm.net.core", luaopen_dhsm_net_core, NULL},
  {NULL, NULL, NULL}
};
