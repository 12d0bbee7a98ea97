/*
** json.h - a small JSON writer for the audit log and journals, and the
** one JSON reader in C: taking a secret field out of a document (its
** module-facing half is include/dhsm/json.h).
**
** Reading JSON is cjson's job; writing goes through here because audit
** records need what cjson cannot do: secrets written as "<secret>",
** values under secret-looking names redacted (audit log only), invalid UTF-8 escaped
** instead of refused, and no Lua error half-way through a record.
*/
#ifndef DHSM_RUNTIME_JSON_H
#define DHSM_RUNTIME_JSON_H

#include <stddef.h>
#include <time.h>
#include <lua.h>

#include "dhsm/buf.h"
#include "dhsm/json.h"    /* what modules may use: a secret field, a key named */

/* Append s as a JSON string literal (quotes included). */
void dhsm_json_string(dhsm_buf *b, const char *s, size_t n);

/* Append a number: integers exactly, floats with 15 digits, non-finite as null. */
void dhsm_json_number(dhsm_buf *b, lua_State *L, int idx);

/* Append the Lua value at idx, for the audit log: secrets as "<secret>",
** and, as a second line of defence for free-form fields, a string or
** number under a secret-looking name as "<redacted>".  Never raises. */
void dhsm_json_value(dhsm_buf *b, lua_State *L, int idx);

/* The same, faithful to plain values (the run journal, which must give
** back what it was given; secrets never reach it, and still show only as
** "<secret>").  Never raises. */
void dhsm_json_faithful(dhsm_buf *b, lua_State *L, int idx);

/* 1 when a field of this name looks like it holds a secret (the whole
** name is searched, case-insensitively). */
int dhsm_json_sensitive_key(const char *key);

/* 1 when the audit log writes the value at idx, under key, as "<redacted>":
** a string or a number under a sensitive name. */
int dhsm_json_hides(lua_State *L, const char *key, int idx);

/* Take the string field `field` of the JSON object json[0..len) out:
** its decoded value into `value`, and the document with that value
** replaced by null into `rest` (both wiped by dhsm_buf_free).  Returns 1
** when the field is there, once, and a string; 0 otherwise (malformed
** JSON, or the key again elsewhere, nested or repeated: the rest would
** hold a secret), with both buffers left empty.  The value never becomes a
** Lua string: push it with dhsm_secret_push.  Reading JSON is otherwise
** cjson's job; this exists only for secrets. */
int dhsm_json_take_string(const char *json, size_t len, const char *field, dhsm_buf *value, dhsm_buf *rest);

/* Format t as RFC 3339 UTC with milliseconds: 2026-11-28T09:33:59.123Z */
void dhsm_rfc3339(char out[32], const struct timespec *t);

#endif
