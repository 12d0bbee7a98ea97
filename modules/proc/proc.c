/*
** proc.c - "dhsm.proc.core": local tools (lunacm, vtl, ...) on the scheduler.
**
**   proc.run{argv={...}, stdin=, env={K=V}, cwd=, timeout=}
**       --> {status=, signal=, stdout=, stderr=, duration=}
**   local p <close> = proc.spawn{argv=, env=, cwd=}    -- interactive tools
**   p:write(text | secret); p:read([timeout]) --> data | "" (nothing yet) | nil (EOF)
**   p:close_stdin(); p:wait([timeout]) --> {status=, signal=}; p:kill([signal])
**
** Never through a shell: argv goes to posix_spawn as it is.  Secrets may be
** given as stdin or as environment values, never in argv (they would show
** in ps and in the audit log).  Each child leads its own process group, so
** a timeout or a cancel kills it together with whatever it started.
** The pipes and a pidfd sit in one epoll fd: a task waits on that one fd.
*/
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>

#include "dhsm/dhsm.h"

#define PROC_MT "dhsm.proc.process"

extern char **environ;

typedef struct proc {
  pid_t pid;
  int in, out, err;           /* our ends of the pipes, -1 once closed */
  int pidfd;                  /* -1: poll with a short timer instead */
  int epfd;
  int exited, status;         /* waitpid status once exited */
  double started, deadline;
  char *input;                /* bytes still to write to stdin (may hold a secret) */
  size_t input_len, input_off;
  int close_after_input;
  int input_errno;            /* why stdin stopped taking input (EPIPE), 0 if it did not */
  dhsm_buf out_buf, err_buf;
} proc;
/* user value 1: argv[0], for messages */

enum { FIRST, WAITED };

/* ---- helpers ------------------------------------------------------------- */

static void fd_close(proc *p, int *fd) {
  if (*fd < 0) return;
  epoll_ctl(p->epfd, EPOLL_CTL_DEL, *fd, NULL);
  close(*fd);
  *fd = -1;
}

static void watch(proc *p, int fd, unsigned events) {
  struct epoll_event ev = { .events = events, .data.fd = fd };
  epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void wipe_input(proc *p) {
  if (p->input) explicit_bzero(p->input, p->input_len);
  free(p->input);
  p->input = NULL;
  p->input_len = p->input_off = 0;
}

static void reap(proc *p, int options) {
  if (p->exited || p->pid <= 0) return;
  int st;
  pid_t r = waitpid(p->pid, &st, options);
  if (r == p->pid) {
    p->exited = 1;
    p->status = st;
    if (p->pidfd >= 0) fd_close(p, &p->pidfd);
  }
}

static void kill_group(proc *p, int sig) {
  if (p->pid > 0 && !p->exited) kill(-p->pid, sig);
}

static int proc_gc(lua_State *L) {
  proc *p = lua_touserdata(L, 1);
  if (p->pid > 0 && !p->exited) {          /* abandoned: the group goes */
    kill_group(p, SIGKILL);
    reap(p, 0);
  }
  fd_close(p, &p->in);
  fd_close(p, &p->out);
  fd_close(p, &p->err);
  fd_close(p, &p->pidfd);
  if (p->epfd >= 0) close(p->epfd);
  p->epfd = -1;
  wipe_input(p);
  dhsm_buf_free(&p->out_buf);
  dhsm_buf_free(&p->err_buf);
  return 0;
}

/* ---- driving: move whatever can move without blocking -------------------- */

static void pump_output(proc *p, int *fd, dhsm_buf *b) {
  char chunk[16384];
  while (*fd >= 0) {
    ssize_t n = read(*fd, chunk, sizeof chunk);
    if (n > 0) {
      dhsm_buf_add(b, chunk, (size_t)n);
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      fd_close(p, fd);
    } else {
      break;
    }
  }
}

static void pump_input(proc *p) {
  while (p->in >= 0 && p->input_off < p->input_len) {
    ssize_t n = write(p->in, p->input + p->input_off, p->input_len - p->input_off);
    if (n > 0) {
      p->input_off += (size_t)n;
    } else if (errno == EAGAIN || errno == EINTR) {
      return;
    } else {                                /* EPIPE: the child does not read */
      p->input_errno = errno;
      wipe_input(p);
      fd_close(p, &p->in);
      return;
    }
  }
  if (p->input_off >= p->input_len) {
    wipe_input(p);
    if (p->close_after_input) fd_close(p, &p->in);
    else if (p->in >= 0) epoll_ctl(p->epfd, EPOLL_CTL_DEL, p->in, NULL);
  }
}

static void drive(proc *p) {
  struct epoll_event ev[8];
  epoll_wait(p->epfd, ev, 8, 0);             /* drains readiness; we try everything */
  pump_input(p);
  pump_output(p, &p->out, &p->out_buf);
  pump_output(p, &p->err, &p->err_buf);
  reap(p, WNOHANG);
}

/* Wait on the epoll fd until the deadline (or briefly when there is no
** pidfd and the child's exit is all we wait for). */
static int wait_proc(lua_State *L, proc *p, lua_KFunction k) {
  double left = p->deadline < 0 ? -1 : p->deadline - dhsm_now();
  if (left < 0 && p->deadline >= 0) left = 0;
  if (p->pidfd < 0 && !p->exited && (left < 0 || left > 0.02)) left = 0.02;
  return dhsm_wait(L, p->epfd, POLLIN, left, WAITED, k);
}

static int timed_out(proc *p) {
  return p->deadline >= 0 && dhsm_now() >= p->deadline;
}

/* ---- results ---------------------------------------------------------------- */

static void push_bytes(lua_State *L, dhsm_buf *b) {
  lua_pushlstring(L, b->p ? b->p : "", b->len);
}

static void push_exit(lua_State *L, proc *p) {
  if (WIFEXITED(p->status)) {
    lua_pushinteger(L, WEXITSTATUS(p->status));
    lua_setfield(L, -2, "status");
  } else if (WIFSIGNALED(p->status)) {
    lua_pushinteger(L, 128 + WTERMSIG(p->status));
    lua_setfield(L, -2, "status");
    lua_pushinteger(L, WTERMSIG(p->status));
    lua_setfield(L, -2, "signal");
  }
  lua_pushnumber(L, dhsm_now() - p->started);
  lua_setfield(L, -2, "duration");
}

static const char *name_of(lua_State *L, int idx) {
  lua_getiuservalue(L, idx, 1);
  const char *n = lua_tostring(L, -1);
  lua_pop(L, 1);
  return n ? n : "process";
}

/* ---- starting ----------------------------------------------------------------- */

/* The environment: environ with opts.env applied.  A value may be a secret;
** false removes a variable.  The entries we made are malloc'ed and wiped
** after the spawn (owned[i] marks them). */
typedef struct envp_t {
  char **vars;
  char *owned;                /* 1 where vars[i] is ours */
  size_t n;
} envp_t;

static void env_free(envp_t *e) {
  for (size_t i = 0; i < e->n; i++) {
    if (e->owned[i]) {
      explicit_bzero(e->vars[i], strlen(e->vars[i]));
      free(e->vars[i]);
    }
  }
  free(e->vars);
  free(e->owned);
}

static int env_overridden(lua_State *L, int env, const char *entry) {
  const char *eq = strchr(entry, '=');
  if (env == 0 || eq == NULL) return 0;
  lua_pushlstring(L, entry, (size_t)(eq - entry));
  int t = lua_rawget(L, env);
  lua_pop(L, 1);
  return t != LUA_TNIL;
}

/* Check every env entry before anything is allocated: a usage error
** half-way would leak what was built (secrets included). Returns the count. */
static size_t check_env(lua_State *L, int env) {
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, env)) {
    if (lua_type(L, -2) != LUA_TSTRING) dhsm_usage_error(L, "proc: env names must be strings");
    int ok = !lua_toboolean(L, -1) || lua_type(L, -1) == LUA_TSTRING || dhsm_is_secret(L, -1);
    if (!ok) dhsm_usage_error(L, "proc: env.%s must be a string, a secret or false", lua_tostring(L, -2));
    if (dhsm_is_secret(L, -1)) dhsm_secret_check(L, -1, NULL);    /* resolve (may prompt) now */
    lua_pop(L, 1);
    n++;
  }
  return n;
}

/* "NAME=value" for the (checked) env entry on top of the stack, or NULL */
static char *env_entry(lua_State *L) {
  if (!lua_toboolean(L, -1)) return NULL;
  size_t len;
  const char *v = dhsm_secret_test(L, -1, &len);
  if (v == NULL) v = lua_tolstring(L, -1, &len);
  const char *name = lua_tostring(L, -2);
  char *e = malloc(strlen(name) + len + 2);
  if (e == NULL) luaL_error(L, "not enough memory");
  memcpy(e, name, strlen(name));
  e[strlen(name)] = '=';
  memcpy(e + strlen(name) + 1, v, len);
  e[strlen(name) + 1 + len] = '\0';
  return e;
}

static void build_env(lua_State *L, int opts, envp_t *e) {
  size_t n = 0, extra = 0;
  while (environ[n]) n++;
  int env = lua_getfield(L, opts, "env") == LUA_TTABLE ? lua_gettop(L) : 0;
  if (env) extra = check_env(L, env);
  e->vars = calloc(n + extra + 1, sizeof *e->vars);
  e->owned = calloc(n + extra + 1, 1);
  e->n = 0;
  if (!e->vars || !e->owned) luaL_error(L, "not enough memory");
  for (size_t i = 0; i < n; i++)
    if (!env_overridden(L, env, environ[i])) e->vars[e->n++] = environ[i];
  if (env) {
    lua_pushnil(L);
    while (lua_next(L, env)) {
      char *entry = env_entry(L);
      if (entry) {
        e->owned[e->n] = 1;
        e->vars[e->n++] = entry;
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

/* argv as C strings; the strings live in a table left on the stack. */
static char **build_argv(lua_State *L, int opts) {
  if (lua_getfield(L, opts, "argv") != LUA_TTABLE)
    dhsm_usage_error(L, "proc: 'argv' must be a list of strings (the program, then its arguments)");
  int list = lua_gettop(L);
  lua_Integer n = (lua_Integer)lua_rawlen(L, list);
  if (n < 1) dhsm_usage_error(L, "proc: 'argv' is empty");
  lua_createtable(L, (int)n, 0);            /* holder: our own copies of the strings */
  char **argv = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *argv, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, list, i);
    if (dhsm_is_secret(L, -1))
      dhsm_usage_error(L, "proc: argv[%d] is a secret; pass secrets through stdin or env, never argv", (int)i);
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
      dhsm_usage_error(L, "proc: argv[%d] must be a string, got %s", (int)i, luaL_typename(L, -1));
    lua_tostring(L, -1);
    argv[i - 1] = (char *)lua_tostring(L, -1);
    lua_rawseti(L, list + 1, i);
  }
  argv[n] = NULL;
  return argv;
}

static int open_pipes(int fds[3][2]) {
  for (int i = 0; i < 3; i++) fds[i][0] = fds[i][1] = -1;
  for (int i = 0; i < 3; i++)
    if (pipe2(fds[i], O_CLOEXEC) < 0) return -1;
  return 0;
}

static void close_pipes(int fds[3][2]) {
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 2; j++)
      if (fds[i][j] >= 0) close(fds[i][j]);
}

/* posix_spawn in its own process group, SIGPIPE and SIGINT back to default
** (dhsm ignores one and catches the other; the child must not inherit that). */
static int spawn(pid_t *pid, char **argv, envp_t *env, const char *cwd, int fds[3][2]) {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  sigset_t def, none;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_adddup2(&fa, fds[0][0], 0);
  posix_spawn_file_actions_adddup2(&fa, fds[1][1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[2][1], 2);
  if (cwd) posix_spawn_file_actions_addchdir_np(&fa, cwd);
  sigemptyset(&def);
  sigaddset(&def, SIGPIPE);
  sigaddset(&def, SIGINT);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &def);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  int rc = posix_spawnp(pid, argv[0], &fa, &attr, argv, env->vars);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  return rc;
}

static void set_nonblock(int fd) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Start opts.argv; push the process userdata. */
static proc *start(lua_State *L, int opts) {
  proc *p = lua_newuserdatauv(L, sizeof *p, 1);
  memset(p, 0, sizeof *p);
  p->in = p->out = p->err = p->pidfd = p->epfd = -1;
  p->deadline = -1;
  luaL_setmetatable(L, PROC_MT);
  int pu = lua_gettop(L);
  char **argv = build_argv(L, opts);
  lua_pushstring(L, argv[0]);
  lua_setiuservalue(L, pu, 1);
  lua_getfield(L, opts, "cwd");
  const char *cwd = lua_tostring(L, -1);
  envp_t env;
  build_env(L, opts, &env);
  int fds[3][2];
  int rc = open_pipes(fds) < 0 ? errno : spawn(&p->pid, argv, &env, cwd, fds);
  env_free(&env);
  if (rc != 0) {
    close_pipes(fds);
    dhsm_raise(L, "usage", "CannotRun", 0, "cannot run %s: %s", argv[0], strerror(rc));
  }
  p->started = dhsm_now();
  p->in = fds[0][1];
  p->out = fds[1][0];
  p->err = fds[2][0];
  close(fds[0][0]);
  close(fds[1][1]);
  close(fds[2][1]);
  set_nonblock(p->in);
  set_nonblock(p->out);
  set_nonblock(p->err);
  p->epfd = epoll_create1(EPOLL_CLOEXEC);
  p->pidfd = (int)syscall(SYS_pidfd_open, p->pid, 0);
  watch(p, p->out, EPOLLIN);
  watch(p, p->err, EPOLLIN);
  if (p->pidfd >= 0) watch(p, p->pidfd, EPOLLIN);
  lua_settop(L, pu);
  return p;
}

/* Queue bytes for stdin (a string, a secret, or a list of them). */
static void queue_input(lua_State *L, proc *p, int idx, int close_after) {
  dhsm_buf b = {0};
  idx = lua_absindex(L, idx);
  int n = lua_istable(L, idx) ? (int)lua_rawlen(L, idx) : 1;
  for (int i = 1; i <= n; i++) {
    if (lua_istable(L, idx)) lua_rawgeti(L, idx, i); else lua_pushvalue(L, idx);
    size_t len;
    const char *v = dhsm_secret_test(L, -1, &len);
    if (v == NULL) {
      if (lua_type(L, -1) != LUA_TSTRING) {
        dhsm_buf_free(&b);
        dhsm_usage_error(L, "proc: stdin must be a string, a secret or a list of them");
      }
      v = lua_tolstring(L, -1, &len);
    }
    dhsm_buf_add(&b, v, len);
    lua_pop(L, 1);
  }
  wipe_input(p);
  p->input = b.p ? b.p : calloc(1, 1);
  p->input_len = b.len;
  p->input_off = 0;
  p->close_after_input = close_after;
  if (p->in >= 0) watch(p, p->in, EPOLLOUT);
}

/* ---- proc.run ------------------------------------------------------------------ */

/* opts.secret_json_field of proc.run (options at index 1), or NULL. */
static const char *secret_field(lua_State *L) {
  const char *field = lua_getfield(L, 1, "secret_json_field") == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  lua_pop(L, 1);                  /* the string stays alive in the options table */
  return field;
}

/* result.stdout; with secret_json_field, the named field of the JSON
** output becomes result.secret (in C: never a Lua string) and stdout is
** the rest of the document.  Output that is not such a document is not
** given at all (it might hold the secret in another form): stdout is
** nil and secret_missing is true. */
static void push_stdout(lua_State *L, proc *p) {
  const char *field = secret_field(L);
  if (field == NULL) {
    push_bytes(L, &p->out_buf);
    lua_setfield(L, -2, "stdout");
  } else if (dhsm_secret_push_json_field(L, p->out_buf.p, p->out_buf.len, field, "process output")) {
    lua_setfield(L, -3, "stdout");
    lua_setfield(L, -2, "secret");
  } else {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "secret_missing");
  }
  if (field) dhsm_buf_free(&p->out_buf);      /* wiped now: it held the secret */
}

/* Stack while running: 1 options, 2 process */
static int run_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  proc *p = luaL_checkudata(L, 2, PROC_MT);
  if (ctx == WAITED) dhsm_wait_result(L);
  drive(p);
  if (p->exited && p->out < 0 && p->err < 0) {
    lua_createtable(L, 0, 6);
    push_stdout(L, p);
    push_bytes(L, &p->err_buf);
    lua_setfield(L, -2, "stderr");
    push_exit(L, p);
    return 1;
  }
  if (timed_out(p)) {
    kill_group(p, SIGKILL);
    reap(p, 0);
    drive(p);
    dhsm_error_new(L, "timeout", "ProcessTimeout", 1, "%s did not finish within its timeout; "
                   "its process group was killed", name_of(L, 2));
    if (secret_field(L) == NULL) {      /* a partial document could hold the secret */
      push_bytes(L, &p->out_buf);
      lua_setfield(L, -2, "stdout");
    } else {
      dhsm_buf_free(&p->out_buf);
    }
    push_bytes(L, &p->err_buf);
    lua_setfield(L, -2, "stderr");
    return lua_error(L);
  }
  return wait_proc(L, p, run_k);
}

static int proc_run(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_getfield(L, 1, "timeout");
  double timeout = luaL_optnumber(L, -1, 60);
  lua_pop(L, 1);
  proc *p = start(L, 1);
  p->deadline = p->started + timeout;
  if (lua_getfield(L, 1, "stdin") != LUA_TNIL) queue_input(L, p, -1, 1);
  else fd_close(p, &p->in);                   /* no input: the tool sees EOF */
  lua_pop(L, 1);
  return run_k(L, LUA_OK, FIRST);
}

/* ---- proc.spawn and the process object ----------------------------------------- */

static proc *check_proc(lua_State *L) {
  return luaL_checkudata(L, 1, PROC_MT);
}

static int proc_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  start(L, 1);
  return 1;
}

/* Stack: 1 process, 2 data */
static int write_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  proc *p = check_proc(L);
  if (ctx == WAITED) dhsm_wait_result(L);
  drive(p);
  if (p->input_errno)
    return dhsm_raise(L, "net", "BrokenPipe", 0, "%s closed its input: %s", name_of(L, 1), strerror(p->input_errno));
  if (p->input == NULL) return 0;
  if (timed_out(p)) return dhsm_raise(L, "timeout", "ProcessTimeout", 1, "%s did not take its input in time", name_of(L, 1));
  return wait_proc(L, p, write_k);
}

/* p:write(text | secret | {parts}) */
static int p_write(lua_State *L) {
  proc *p = check_proc(L);
  if (p->in < 0) return dhsm_usage_error(L, "%s: its input is closed", name_of(L, 1));
  lua_settop(L, 2);
  queue_input(L, p, 2, 0);
  p->deadline = dhsm_now() + 60;
  return write_k(L, LUA_OK, FIRST);
}

static int p_close_stdin(lua_State *L) {
  proc *p = check_proc(L);
  wipe_input(p);
  fd_close(p, &p->in);
  return 0;
}

/* Stack: 1 process, 2 timeout */
static int read_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  proc *p = check_proc(L);
  if (ctx == WAITED) dhsm_wait_result(L);
  drive(p);
  if (p->out_buf.len > 0) {
    push_bytes(L, &p->out_buf);
    p->out_buf.len = 0;
    return 1;
  }
  if (p->out < 0) return 0;                   /* nil: end of output */
  if (timed_out(p)) {
    lua_pushliteral(L, "");
    return 1;
  }
  return wait_proc(L, p, read_k);
}

/* p:read([timeout]) -> data | "" when nothing came in time | nil at the end */
static int p_read(lua_State *L) {
  proc *p = check_proc(L);
  double timeout = luaL_optnumber(L, 2, -1);
  p->deadline = timeout < 0 ? -1 : dhsm_now() + timeout;
  lua_settop(L, 2);
  return read_k(L, LUA_OK, FIRST);
}

/* p:stderr() -> what it wrote to stderr so far */
static int p_stderr(lua_State *L) {
  proc *p = check_proc(L);
  drive(p);
  push_bytes(L, &p->err_buf);
  return 1;
}

static int pwait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  proc *p = check_proc(L);
  if (ctx == WAITED) dhsm_wait_result(L);
  drive(p);
  if (p->exited) {
    lua_createtable(L, 0, 3);
    push_exit(L, p);
    return 1;
  }
  if (timed_out(p))
    return dhsm_raise(L, "timeout", "ProcessTimeout", 1, "%s is still running", name_of(L, 1));
  return wait_proc(L, p, pwait_k);
}

/* p:wait([timeout]) -> {status=, signal=, duration=} */
static int p_wait(lua_State *L) {
  proc *p = check_proc(L);
  double timeout = luaL_optnumber(L, 2, -1);
  p->deadline = timeout < 0 ? -1 : dhsm_now() + timeout;
  lua_settop(L, 1);
  return pwait_k(L, LUA_OK, FIRST);
}

/* p:kill([signal]): the whole process group (default SIGTERM) */
static int p_kill(lua_State *L) {
  proc *p = check_proc(L);
  kill_group(p, (int)luaL_optinteger(L, 2, SIGTERM));
  return 0;
}

static int p_pid(lua_State *L) {
  lua_pushinteger(L, check_proc(L)->pid);
  return 1;
}

static int p_tostring(lua_State *L) {
  proc *p = check_proc(L);
  lua_pushfstring(L, "process %d %s (%s)", (int)p->pid, name_of(L, 1), p->exited ? "exited" : "running");
  return 1;
}

int luaopen_dhsm_proc_core(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"write", p_write}, {"read", p_read}, {"stderr", p_stderr}, {"close_stdin", p_close_stdin},
    {"wait", p_wait}, {"kill", p_kill}, {"pid", p_pid}, {"close", proc_gc}, {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", proc_gc}, {"__close", proc_gc}, {"__tostring", p_tostring}, {NULL, NULL}
  };
  static const luaL_Reg funcs[] = { {"run", proc_run}, {"spawn", proc_spawn}, {NULL, NULL} };
  dhsm_newclass(L, PROC_MT, methods, meta);
  luaL_newlib(L, funcs);
  lua_getfield(L, -2, "__index");          /* the Lua half adds methods here */
  lua_setfield(L, -2, "methods");
  lua_remove(L, -2);
  return 1;
}
