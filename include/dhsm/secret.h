/*
** secret.h - the dhsm.secret type.
**
** A secret is a userdata holding bytes that Lua code can pass around but
** never read: tostring() gives "<secret>", no Lua API returns the bytes, and
** they are wiped on __gc/__close.  Only native modules read them, to hand
** them to libssh2, a PKCS#11 C_Login or an HTTP form, and must never copy
** them into an error message, a log or a Lua string.
*/
#ifndef DHSM_SECRET_H
#define DHSM_SECRET_H

#include <stddef.h>
#include <lua.h>

#define DHSM_SECRET_MT "dhsm.secret"

/* The bytes of the secret at idx, resolving a lazy reference (env:, file:,
** prompt) on first use.  Raises a usage error naming the argument when the
** value is not a secret or was wiped.  The pointer stays valid while the
** secret is reachable and not closed. */
const char *dhsm_secret_check(lua_State *L, int idx, size_t *len);

/* NULL when the value at idx is not a secret; else as dhsm_secret_check. */
const char *dhsm_secret_test(lua_State *L, int idx, size_t *len);

/* 1 when the value at idx is a secret (without resolving it). */
int dhsm_is_secret(lua_State *L, int idx);

/* Push a new secret holding a copy of bytes (e.g. a generated password).
** `origin` is a non-secret description such as "generated". [-0,+1,m] */
void dhsm_secret_push(lua_State *L, const char *bytes, size_t len,
                      const char *origin);

/* A secret inside a JSON document: see dhsm/json.h. */

#endif
