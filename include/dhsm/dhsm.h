/*
** dhsm.h - everything a native module needs from the dhsm host.
**
** The host owns one lua_State, a poll() scheduler running Lua coroutines
** (tasks), the secret type and the audit log.  Modules include this header
** and nothing from runtime/.
*/
#ifndef DHSM_DHSM_H
#define DHSM_DHSM_H

#include "dhsm/module.h"
#include "dhsm/error.h"
#include "dhsm/loop.h"
#include "dhsm/secret.h"
#include "dhsm/json.h"
#include "dhsm/audit.h"
#include "dhsm/buf.h"

#define DHSM_VERSION "0.1.0"

#endif
