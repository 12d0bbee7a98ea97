/*
** audit.c - the audit log (see include/dhsm/audit.h) and "dhsm.audit".
**
** Path: --audit FILE, else $DHSM_AUDIT, else $XDG_STATE_HOME/dhsm/audit.jsonl
** (~/.local/state/dhsm/audit.jsonl).  Opened on the first record, folder
** 0700 and file 0600.  Each record is one write() on an O_APPEND fd, so
** it is in the kernel before the action goes on.  A kill -9 in the middle
** of that write can still cut a record that spans a page of the file
** (Linux stops a write between pages when a fatal signal is pending): the
** next process to open the log ends such a torn line first, so no record
** is ever glued to it, and a reader sees one line that does not parse,
** never two records run together.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>

#include "dhsm/dhsm.h"
#include "json.h"
#include "runtime.h"

#define AUDIT_KEY "dhsm.audit"

typedef struct audit_log {
  int fd;
  char *path;              /* chosen path, malloc'ed; NULL: not decided yet */
} audit_log;

static audit_log *get_log(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, AUDIT_KEY);
  audit_log *a = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return a;
}

static char *default_path(void) {
  const char *env = getenv("DHSM_AUDIT");
  if (env && *env) return strdup(env);
  const char *state = getenv("XDG_STATE_HOME");
  const char *home = getenv("HOME");
  char buf[4096];
  if (state && *state)
    snprintf(buf, sizeof buf, "%s/dhsm/audit.jsonl", state);
  else
    snprintf(buf, sizeof buf, "%s/.local/state/dhsm/audit.jsonl", home ? home : ".");
  return strdup(buf);
}

/* The folder holding `path`, made with mode 0700 where missing. */
static int make_parents(const char *path) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash == NULL || slash == dir) return 0;
  *slash = '\0';
  return dhsm_mkdir_p(dir, 0700);
}

void dhsm_audit_set_path(lua_State *L, const char *path) {
  audit_log *a = get_log(L);
  if (a->fd >= 0) close(a->fd);
  a->fd = -1;
  free(a->path);
  a->path = path ? strdup(path) : NULL;
}

static const char *log_path(audit_log *a) {
  if (a->path == NULL) a->path = default_path();
  return a->path;
}

static int write_all(int fd, const char *p, size_t n);

/* A log whose last record was cut by a kill gets its line ended here. */
static void end_torn_line(int fd) {
  struct stat st;
  char last;
  if (fstat(fd, &st) == 0 && st.st_size > 0 && pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n')
    (void)write_all(fd, "\n", 1);
}

static int open_log(lua_State *L, audit_log *a) {
  if (a->fd >= 0) return 0;
  const char *path = log_path(a);
  if (make_parents(path) < 0 ||
      (a->fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600)) < 0)
    return dhsm_raise(L, "audit", NULL, 0, "cannot open the audit log %s: %s "
                      "(set --audit FILE or DHSM_AUDIT)", path, strerror(errno));
  end_torn_line(a->fd);
  return 0;
}

static void add_field(dhsm_buf *b, const char *name, const char *value) {
  if (value == NULL) return;
  dhsm_buf_add(b, ",", 1);
  dhsm_json_string(b, name, strlen(name));
  dhsm_buf_add(b, ":", 1);
  dhsm_json_string(b, value, strlen(value));
}

/* run, playbook and step come from the current task's context */
static void add_context(lua_State *L, dhsm_buf *b) {
  static const char *const keys[] = { "run", "playbook", "step", NULL };
  dhsm_push_context(L);
  for (int i = 0; keys[i]; i++) {
    if (lua_getfield(L, -1, keys[i]) == LUA_TSTRING)
      add_field(b, keys[i], lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static int reserved(const char *k) {
  static const char *const names[] = {
    "ts", "run", "playbook", "step", "target", "action", "outcome", "duration_ms", NULL
  };
  for (int i = 0; names[i]; i++)
    if (strcmp(k, names[i]) == 0) return 1;
  return 0;
}

static void add_extra(lua_State *L, dhsm_buf *b, int fields) {
  lua_pushnil(L);
  while (lua_next(L, fields)) {
    if (lua_type(L, -2) == LUA_TSTRING && !reserved(lua_tostring(L, -2))) {
      const char *k = lua_tostring(L, -2);
      dhsm_buf_add(b, ",", 1);
      dhsm_json_string(b, k, strlen(k));
      dhsm_buf_add(b, ":", 1);
      if (dhsm_json_hides(L, k, -1))
        dhsm_buf_adds(b, "\"<redacted>\"");
      else
        dhsm_json_value(b, L, -1);
    }
    lua_pop(L, 1);
  }
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

void dhsm_audit(lua_State *L, const char *action, const char *target,
                const char *outcome, double duration_ms, int fields) {
  audit_log *a = get_log(L);
  if (fields) fields = lua_absindex(L, fields);
  open_log(L, a);
  struct timespec now;
  char ts[32];
  clock_gettime(CLOCK_REALTIME, &now);
  dhsm_rfc3339(ts, &now);
  dhsm_buf b = {0};
  dhsm_buf_adds(&b, "{\"ts\":\"");
  dhsm_buf_adds(&b, ts);
  dhsm_buf_adds(&b, "\"");
  add_context(L, &b);
  add_field(&b, "target", target);
  add_field(&b, "action", action);
  add_field(&b, "outcome", outcome);
  if (duration_ms >= 0) {
    char num[48];
    snprintf(num, sizeof num, ",\"duration_ms\":%.1f", duration_ms);
    dhsm_buf_adds(&b, num);
  }
  if (fields) add_extra(L, &b, fields);
  dhsm_buf_adds(&b, "}\n");
  int failed = b.oom || write_all(a->fd, b.p, b.len) < 0;
  int err = errno;
  dhsm_buf_free(&b);
  if (failed)
    dhsm_raise(L, "audit", NULL, 0, "cannot write the audit log %s: %s",
               log_path(a), b.oom ? "out of memory" : strerror(err));
}

/* ---- Lua API ------------------------------------------------------------ */

static const char *opt_field(lua_State *L, const char *name) {
  lua_getfield(L, 1, name);
  const char *v = lua_isnil(L, -1) ? NULL : lua_tostring(L, -1);
  if (v == NULL && !lua_isnil(L, -1))
    dhsm_usage_error(L, "audit.write: field '%s' must be a string, got %s",
                     name, luaL_typename(L, -1));
  return v;                                   /* kept on the stack */
}

/* audit.write{action=, target=, outcome=, duration_ms=, ...extra} */
static int audit_write(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *action = opt_field(L, "action");
  if (action == NULL)
    return dhsm_usage_error(L, "audit.write: field 'action' is required (what was done)");
  const char *target = opt_field(L, "target");
  const char *outcome = opt_field(L, "outcome");
  lua_getfield(L, 1, "duration_ms");
  double ms = luaL_optnumber(L, -1, -1);
  dhsm_audit(L, action, target, outcome, ms, 1);
  return 0;
}

/* audit.sync(): the records written so far are on disk (fdatasync), not
** only in the kernel: the gate's intent record before an act. */
static int audit_sync(lua_State *L) {
  audit_log *a = get_log(L);
  if (a->fd >= 0 && fdatasync(a->fd) < 0 && errno != EINVAL)
    dhsm_raise(L, "audit", NULL, 0, "cannot sync the audit log %s: %s", log_path(a), strerror(errno));
  return 0;
}

static int audit_path(lua_State *L) {
  lua_pushstring(L, log_path(get_log(L)));
  return 1;
}

static int audit_set_path(lua_State *L) {
  dhsm_audit_set_path(L, luaL_optstring(L, 1, NULL));
  return 0;
}

static int audit_gc(lua_State *L) {
  audit_log *a = lua_touserdata(L, 1);
  if (a->fd >= 0) close(a->fd);
  free(a->path);
  a->fd = -1;
  a->path = NULL;
  return 0;
}

int luaopen_dhsm_audit(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"write", audit_write}, {"sync", audit_sync}, {"path", audit_path}, {"set_path", audit_set_path},
    {NULL, NULL}
  };
  if (lua_getfield(L, LUA_REGISTRYINDEX, AUDIT_KEY) == LUA_TNIL) {
    audit_log *a = lua_newuserdatauv(L, sizeof *a, 0);
    a->fd = -1;
    a->path = NULL;
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, audit_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, AUDIT_KEY);
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  return 1;
}
