/*
** error.h - dhsm error objects.
**
** Failures are raised, never returned as nil,err: in a runbook an ignored
** failure is how an HSM gets deleted before it was zeroized.  An error is a
** table {kind=, code=, message=, retryable=, details=} whose metatable is
** DHSM_ERROR_MT; tostring() gives "kind/code: message".
**
** Kinds used by modules: "azure", "luna", "pkcs11", "net", "usage",
** "safety"; by the runtime: "timeout", "cancelled", "interrupted", "audit",
** "lua" (a plain Lua error normalised by dhsm.try).
*/
#ifndef DHSM_ERROR_H
#define DHSM_ERROR_H

#include <lua.h>

#define DHSM_ERROR_MT "dhsm.error"

/* Push a new error object; `code` may be NULL.  Fields can be added with
** lua_setfield before raising it with lua_error.  [-0,+1,m] */
void dhsm_error_new(lua_State *L, const char *kind, const char *code,
                    int retryable, const char *fmt, ...);

/* Build an error object and raise it.  Never returns.  [-0,+0,v] */
int dhsm_raise(lua_State *L, const char *kind, const char *code,
               int retryable, const char *fmt, ...);

/* Shorthand for the commonest case: bad input from the caller. */
#define dhsm_usage_error(L, ...) dhsm_raise((L), "usage", NULL, 0, __VA_ARGS__)

/* A public function's string (or number, as luaL_checklstring takes) or
** integer argument at idx, else a usage error (BadArgument) naming the
** function `fn`, the argument `name` and the type given (never the value:
** it may be a secret).  [-0,+0,v] */
const char *dhsm_check_string(lua_State *L, int idx, const char *fn, const char *name, size_t *len);
lua_Integer dhsm_check_integer(lua_State *L, int idx, const char *fn, const char *name);

/* 1 when the value at idx is a dhsm error (and of `kind`, unless NULL). */
int dhsm_error_is(lua_State *L, int idx, const char *kind);

#endif
