/*
** json.h - a secret in a JSON document, for modules that receive one (an
** AAD token reply, `az account get-access-token` output).
**
** Reading JSON is otherwise cjson's job, in Lua; these two exist because
** the secret must never become a Lua string.  They live in the host's
** runtime/json.c, whose writer also knows secrets.
*/
#ifndef DHSM_JSON_H
#define DHSM_JSON_H

#include <stddef.h>
#include <lua.h>

/* Push the string field `field` of the JSON object json[0..len) as a new
** secret, and push the document with that value replaced by null (a Lua
** string, safe to decode and show).  The value is decoded in C and never
** exists as a Lua string.  Returns 1 with both pushed; 0 with nothing
** pushed when the text is not a JSON object with that field as a string,
** once.  `origin` describes the secret ("http reply").  [-0,+2|0,m] */
int dhsm_secret_push_json_field(lua_State *L, const char *json, size_t len,
                                const char *field, const char *origin);

/* Whether json[0..len) names `field` as a key anywhere, nested or not: a
** string followed by a colon, compared decoded ("\u0061ccess_token" is
** access_token); text that is not well-formed JSON counts when it holds
** the raw name or any \u escape.  A document whose secret field could
** not be taken out must then be withheld whole: it may hold the secret. */
int dhsm_json_names_key(const char *json, size_t len, const char *field);

#endif
