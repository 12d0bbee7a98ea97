/*
** audit.h - the audit log: one JSON object per line for every remote action.
**
** A record carries ts (RFC 3339 UTC), run, playbook and step (from the
** current task's context, see dhsm.context()), then target, action,
** outcome, duration_ms and any extra fields.  It is written with a single
** write() on an O_APPEND file before the call returns; a kill -9 can cut
** at most the record being written, which the next opening of the log
** ends on a line of its own (runtime/audit.c).  Secrets are written as "<secret>", and string values
** under names such as password/pin/secret/token as "<redacted>".
*/
#ifndef DHSM_AUDIT_H
#define DHSM_AUDIT_H

#include <lua.h>

/* Append one record.  `fields` is 0 or the stack index of a table of extra
** fields (nested tables allowed).  duration_ms < 0 omits the field.
** Raises an "audit" error when the log cannot be written: an action that
** cannot be recorded must not be taken. */
void dhsm_audit(lua_State *L, const char *action, const char *target,
                const char *outcome, double duration_ms, int fields);

#endif
