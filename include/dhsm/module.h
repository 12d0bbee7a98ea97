/*
** module.h - how a native module plugs into the host.
**
** A module is `int luaopen_dhsm_<name>(lua_State *L)` listed in
** runtime/modules.c; the host preloads it as "dhsm.<name>" (or under the name
** given there).  A module with an owner is private: require() cannot find
** it, and only the owner's embedded Lua gets it (the raw layer under a
** safety rule, e.g. the SSH channel under dhsm.luna's login guard).  Objects are full userdata whose metatable is registered
** under "dhsm.<name>.<type>", with __gc == __close releasing the resource
** once and a __tostring that never shows a secret (model: Lua's liolib.c).
*/
#ifndef DHSM_MODULE_H
#define DHSM_MODULE_H

#include <lua.h>
#include <lauxlib.h>

typedef struct dhsm_module {
  const char *name;        /* as given to require() */
  lua_CFunction open;
  const char *owner;       /* NULL: public.  Else private to the embedded Lua
                              module of that name (see runtime/state.c) */
} dhsm_module;

/* Create (or fetch) metatable `tname` holding `methods` in its __index
** and `metamethods` as fields.  Leaves the metatable on the stack. [-0,+1,m] */
void dhsm_newclass(lua_State *L, const char *tname,
                   const luaL_Reg *methods, const luaL_Reg *metamethods);

/* host=, port=, timeout= read from the options table at opts: a usage
** error names the field and what was expected (`what` prefixes it, e.g.
** "luna").  port and timeout fall back to the defaults given. */
typedef struct dhsm_endpoint {
  char host[256];
  int port;
  double timeout;
} dhsm_endpoint;
void dhsm_check_endpoint(lua_State *L, int opts, const char *what, int default_port,
                         double default_timeout, dhsm_endpoint *out);

/* A native module changes nothing outside the process by itself: its
** mutating functions are raw, and the module's Lua half sends each call
** through dhsm.act's gate (check mode, rules, confirmation, intent and
** outcome records).  See modules/pkcs11/pkcs11.lua. */

#endif
