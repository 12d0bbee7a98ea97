/*
** modules.c - the native modules linked into dhsm.  To add one, declare
** its opener and add a line: the host preloads every entry.
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
  {"dhsm.core", luaopen_dhsm_core},
  {"dhsm.errors", luaopen_dhsm_errors},
  {"dhsm.secret", luaopen_dhsm_secret},
  {"dhsm.audit", luaopen_dhsm_audit},
  {"dhsm.sys", luaopen_dhsm_sys},
  {"cjson", luaopen_cjson},
  {"dhsm.azure.http", luaopen_dhsm_azure_http},
  {"dhsm.luna.ssh", luaopen_dhsm_luna_ssh},
  {"dhsm.pkcs11.core", luaopen_dhsm_pkcs11_core},
  {"dhsm.proc.core", luaopen_dhsm_proc_core},
  {"dhsm.net.core", luaopen_dhsm_net_core},
  {NULL, NULL}
};
