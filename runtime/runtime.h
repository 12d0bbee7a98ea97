/*
** runtime.h - what the host's own files (main.c, the REPL, tests) use.
*/
#ifndef DHSM_RUNTIME_H
#define DHSM_RUNTIME_H

#include <stddef.h>
#include <lua.h>

/* registry key of the context table used outside any task */
#define DHSM_CONTEXT_KEY "dhsm.context"

/* ---- state (state.c) ---- */

/* A new lua_State with the standard libraries, the scheduler, every dhsm
** module preloaded, cjson, the embedded Lua searcher, warnings routed to
** stderr, and the global `dhsm`.  `user_dirs` (may be NULL) are searched
** before the embedded files.  NULL when out of memory. */
lua_State *dhsm_newstate(const char *const *user_dirs, int ndirs);

/* ---- scheduler (loop.c) ---- */

enum { DHSM_LOOP_CANCEL_REST = 1 };

void dhsm_loop_init(lua_State *L);

/* Run the function below the top nargs values as the root task and drive
** the loop until it finishes.  Like lua_pcall: LUA_OK with all its results
** on the stack, or an error status with the error object.  With
** DHSM_LOOP_CANCEL_REST, tasks still running afterwards are cancelled. */
int dhsm_loop_pcall(lua_State *L, int nargs, int flags);

/* Push the context table of the running task (run, playbook, step, ...),
** which reads through to its parent's; outside tasks, the global one. */
void dhsm_push_context(lua_State *L);

void dhsm_signals_install(void);
int dhsm_interrupted(void);
void dhsm_interrupt_clear(void);

/* ---- embedded Lua files (generated build/embedded.c) ---- */

typedef struct dhsm_embedded {
  char kind;              /* 'm' module, 'p' playbook, 'd' data file */
  const char *name;       /* module name, playbook name or data path */
  const char *path;       /* path in the source tree (chunk name) */
  const unsigned char *data;
  size_t len;
} dhsm_embedded;

extern const dhsm_embedded dhsm_embedded_files[];
extern const size_t dhsm_embedded_count;

const dhsm_embedded *dhsm_embedded_find(char kind, const char *name);

/* ---- errors (error.c) ---- */

/* The exit statuses of the program (docs/cli.md): a failure, bad input,
** a refusal by a safety rule, Ctrl-C. */
enum {
  DHSM_EXIT_FAILED = 1, DHSM_EXIT_USAGE = 2, DHSM_EXIT_SAFETY = 3, DHSM_EXIT_INTERRUPTED = 130
};

/* The exit status for the error at idx, by its kind: the one map from
** kinds to statuses, for main.c and (errors.exit_status) the CLI.  Any
** value that is not a usage, safety or interrupted error is a failure. */
int dhsm_exit_status(lua_State *L, int idx);

/* ---- module openers of the runtime ---- */

int luaopen_dhsm_secret(lua_State *L);
int luaopen_dhsm_audit(lua_State *L);
int luaopen_dhsm_sys(lua_State *L);
int luaopen_dhsm_errors(lua_State *L);

/* Add sys.lock (lock.c) to the dhsm.sys table on top of the stack. */
void dhsm_sys_open_lock(lua_State *L);

/* mkdir -p: dir and the folders above it, new ones with mode; 0 or -1 (errno). */
int dhsm_mkdir_p(const char *dir, int mode);

/* Set the audit log path (from --audit); NULL: DHSM_AUDIT or the default. */
void dhsm_audit_set_path(lua_State *L, const char *path);

#endif
