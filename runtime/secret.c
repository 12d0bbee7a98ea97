/*
** secret.c - "dhsm.secret": bytes Lua can carry but never read.
**
**   secret.env(NAME)      from the environment, now
**   secret.file(PATH)     from a file only its owner can read, now
**   secret.prompt(TEXT)   typed on the terminal without echo, now
**   secret.ref(REF[, T])  "env:NAME" | "file:PATH" | "prompt": read on first use
**   s:check()             the error its first use would raise, without reading
**   secret.value(STR)     for tests
**
** tostring() is "<secret>", concatenation is refused, the bytes are wiped
** on close/gc.  Only native modules read them (dhsm_secret_check).
**
** This file knows nothing of JSON: json.c is the one that knows both (it
** writes secrets as "<secret>" and makes a JSON field a secret with
** dhsm_secret_push), so the dependency goes json.c -> secret.c only.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <lauxlib.h>

#include "dhsm/dhsm.h"
#include "runtime.h"

#define SECRET_MAX (64 * 1024)

typedef struct secret {
  char *buf;
  size_t len;
  int resolved;               /* bytes are loaded */
  int closed;                 /* wiped for good */
} secret;
/* user value 1: origin ("env:NAME", "file:PATH", "prompt", "value", ...)
** user value 2: prompt text for a lazy "prompt" */

static void wipe(secret *s) {
  if (s->buf) {
    explicit_bzero(s->buf, s->len);
    munlock(s->buf, s->len ? s->len : 1);
    free(s->buf);
  }
  s->buf = NULL;
  s->len = 0;
}

/* Take ownership of buf (malloc'ed, len bytes). */
static void secret_adopt(secret *s, char *buf, size_t len) {
  wipe(s);
  s->buf = buf;
  s->len = len;
  s->resolved = 1;
  mlock(buf, len ? len : 1);            /* best effort: keep it out of swap */
}

static secret *new_secret(lua_State *L, const char *origin) {
  secret *s = lua_newuserdatauv(L, sizeof *s, 2);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, DHSM_SECRET_MT);
  lua_pushstring(L, origin);
  lua_setiuservalue(L, -2, 1);
  return s;
}

static char *copy_bytes(lua_State *L, const char *p, size_t len) {
  char *buf = malloc(len ? len : 1);
  if (buf == NULL) luaL_error(L, "not enough memory");
  memcpy(buf, p, len);
  return buf;
}

void dhsm_secret_push(lua_State *L, const char *bytes, size_t len,
                      const char *origin) {
  secret *s = new_secret(L, origin);
  secret_adopt(s, copy_bytes(L, bytes, len), len);
}

/* ---- sources ---------------------------------------------------------- */

/* The variable's value, or the usage error reading it would raise: the
** one rule for env:NAME, shared by load_env and check_env. */
static const char *env_value(lua_State *L, const char *name) {
  const char *v = getenv(name);
  if (v == NULL || *v == '\0')
    dhsm_usage_error(L, "environment variable %s is not set (expected a secret in it)", name);
  return v;
}

static void load_env(lua_State *L, secret *s, const char *name) {
  const char *v = env_value(L, name);
  secret_adopt(s, copy_bytes(L, v, strlen(v)), strlen(v));
}

static void check_env(lua_State *L, const char *name) {
  env_value(L, name);
}

static void strip_newline(char *buf, size_t *len) {
  if (*len > 0 && buf[*len - 1] == '\n') (*len)--;
  if (*len > 0 && buf[*len - 1] == '\r') (*len)--;
}

/* The file opened for reading, or the usage error reading it would raise:
** the one rule for file:PATH (a regular file, readable, mode 0600 or
** stricter, not too large), shared by load_file and check_file.  *st is
** filled in. */
static int open_secret_file(lua_State *L, const char *path, struct stat *st) {
  /* O_NONBLOCK: a FIFO put there is refused below instead of waiting for a
  ** writer; it changes nothing for a regular file. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0)
    dhsm_usage_error(L, "cannot read secret file %s: %s", path, strerror(errno));
  if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode)) {
    close(fd);
    dhsm_usage_error(L, "secret file %s is not a regular file", path);
  }
  if (st->st_mode & (S_IRWXG | S_IRWXO)) {
    char mode[8];
    snprintf(mode, sizeof mode, "%04o", (unsigned)(st->st_mode & 0777));
    close(fd);
    dhsm_usage_error(L, "secret file %s is open to group/others (mode %s); "
                     "run: chmod 600 %s", path, mode, path);
  }
  if (st->st_size > SECRET_MAX) {
    close(fd);
    dhsm_usage_error(L, "secret file %s is larger than %d bytes", path, SECRET_MAX);
  }
  return fd;
}

/* Opened and closed, never read: what check() needs to know. */
static void check_file(lua_State *L, const char *path) {
  struct stat st;
  close(open_secret_file(L, path, &st));
}

static void load_file(lua_State *L, secret *s, const char *path) {
  struct stat st;
  int fd = open_secret_file(L, path, &st);
  char *buf = malloc((size_t)st.st_size + 1);
  if (buf == NULL) {
    close(fd);
    luaL_error(L, "not enough memory");
  }
  size_t len = 0;
  for (;;) {
    ssize_t n = read(fd, buf + len, (size_t)st.st_size + 1 - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
    if (len > (size_t)st.st_size) break;
  }
  close(fd);
  strip_newline(buf, &len);
  secret_adopt(s, buf, len);
}

/* The usage error asking for `text` would raise now (no terminal on
** stdin), without asking: the one rule for a prompt, shared by load_prompt
** and s:check(). */
static void check_prompt(lua_State *L, const char *text) {
  if (!isatty(STDIN_FILENO))
    dhsm_usage_error(L, "cannot ask for \"%s\": standard input is not a terminal "
                     "(give the secret as env:NAME or file:PATH instead)", text);
}

/* Read a line from the terminal on stdin with echo off. */
static void load_prompt(lua_State *L, secret *s, const char *text) {
  check_prompt(L, text);
  struct termios old, quiet;
  tcgetattr(STDIN_FILENO, &old);
  quiet = old;
  quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
  fputs(text, stderr);
  fflush(stderr);
  tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
  char *buf = malloc(SECRET_MAX);
  size_t len = 0;
  int interrupted = 0;
  while (buf && len < SECRET_MAX) {
    char c;
    ssize_t n = read(STDIN_FILENO, &c, 1);
    if (n < 0 && errno == EINTR) {
      if (dhsm_interrupted()) { interrupted = 1; break; }
      continue;
    }
    if (n <= 0 || c == '\n' || c == '\r') break;
    buf[len++] = c;
  }
  tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
  fputc('\n', stderr);
  if (buf == NULL) luaL_error(L, "not enough memory");
  if (interrupted) {
    explicit_bzero(buf, len);
    free(buf);
    dhsm_raise(L, "interrupted", NULL, 0, "interrupted");
  }
  secret_adopt(s, buf, len);
}

/* Parse "env:NAME" / "file:PATH" / "prompt" into a source and argument. */
static int parse_ref(const char *ref, const char **arg) {
  if (strncmp(ref, "env:", 4) == 0 && ref[4]) { *arg = ref + 4; return 'e'; }
  if (strncmp(ref, "file:", 5) == 0 && ref[5]) { *arg = ref + 5; return 'f'; }
  if (strcmp(ref, "prompt") == 0) { *arg = NULL; return 'p'; }
  return 0;
}

/* The question of the lazy "prompt" secret at idx (user value 2), pushed
** with it: pop it after use. */
static const char *prompt_text(lua_State *L, int idx) {
  lua_getiuservalue(L, idx, 2);
  return luaL_optstring(L, -1, "Secret: ");
}

/* The lazy secret at idx from its source: read into s, or - s NULL - only
** checked, raising what reading would raise (s:check()).  One dispatch for
** both, so a check can never pass a reference the read would refuse. */
static void resolve(lua_State *L, secret *s, int idx) {
  lua_getiuservalue(L, idx, 1);
  const char *arg, *ref = lua_tostring(L, -1);
  switch (ref ? parse_ref(ref, &arg) : 0) {
    case 'e': if (s) load_env(L, s, arg); else check_env(L, arg); break;
    case 'f': if (s) load_file(L, s, arg); else check_file(L, arg); break;
    case 'p':
      if (s) load_prompt(L, s, prompt_text(L, idx)); else check_prompt(L, prompt_text(L, idx));
      lua_pop(L, 1);
      break;
    default: luaL_error(L, "secret with an unknown source");
  }
  lua_pop(L, 1);
}

/* ---- C API -------------------------------------------------------------- */

int dhsm_is_secret(lua_State *L, int idx) {
  return luaL_testudata(L, idx, DHSM_SECRET_MT) != NULL;
}

const char *dhsm_secret_test(lua_State *L, int idx, size_t *len) {
  idx = lua_absindex(L, idx);
  secret *s = luaL_testudata(L, idx, DHSM_SECRET_MT);
  if (s == NULL) return NULL;
  if (s->closed)
    dhsm_usage_error(L, "this secret was closed (its bytes are wiped)");
  if (!s->resolved) resolve(L, s, idx);
  if (len) *len = s->len;
  return s->buf ? s->buf : "";
}

const char *dhsm_secret_check(lua_State *L, int idx, size_t *len) {
  const char *p = dhsm_secret_test(L, idx, len);
  if (p == NULL)
    dhsm_usage_error(L, "expected a secret (secret.env, secret.file, secret.prompt "
                     "or an env:/file:/prompt reference), got %s", luaL_typename(L, idx));
  return p;
}

/* ---- Lua API ------------------------------------------------------------ */

/* A secret read now from source `prefix`:ARG by `load`; fn and what name
** the function and its argument when ARG is not a string. */
static int eager_secret(lua_State *L, const char *prefix, const char *fn, const char *what,
                        void (*load)(lua_State *, secret *, const char *)) {
  const char *arg = dhsm_check_string(L, 1, fn, what, NULL);
  secret *s = new_secret(L, lua_pushfstring(L, "%s:%s", prefix, arg));
  lua_remove(L, -2);
  load(L, s, arg);
  return 1;
}

static int secret_env(lua_State *L) {
  return eager_secret(L, "env", "secret.env", "name", load_env);
}

static int secret_file(lua_State *L) {
  return eager_secret(L, "file", "secret.file", "path", load_file);
}

static int secret_prompt(lua_State *L) {
  const char *text = lua_isnoneornil(L, 1) ? "Secret: " : dhsm_check_string(L, 1, "secret.prompt", "text", NULL);
  secret *s = new_secret(L, "prompt");
  load_prompt(L, s, text);
  return 1;
}

static int secret_value(lua_State *L) {
  size_t len;
  const char *p = dhsm_check_string(L, 1, "secret.value", "bytes", &len);
  dhsm_secret_push(L, p, len, "value");
  return 1;
}

/* ref(REF [, prompt_text]): validated now, read on first use */
static int secret_ref(lua_State *L) {
  lua_settop(L, 2);
  if (dhsm_is_secret(L, 1)) {
    lua_settop(L, 1);
    return 1;
  }
  const char *ref = dhsm_check_string(L, 1, "secret.ref", "ref", NULL), *arg;
  if (!parse_ref(ref, &arg))
    return dhsm_usage_error(L, "bad secret reference \"%s\": expected env:NAME, "
                            "file:PATH or prompt", ref);
  new_secret(L, ref);
  if (!lua_isnoneornil(L, 2)) {
    lua_pushstring(L, dhsm_check_string(L, 2, "secret.ref", "prompt_text", NULL));
    lua_setiuservalue(L, -2, 2);
  }
  return 1;
}

static int secret_is(lua_State *L) {
  lua_pushboolean(L, dhsm_is_secret(L, 1));
  return 1;
}

/* equal(a, b): constant-time comparison of two secrets */
static int secret_equal(lua_State *L) {
  size_t la, lb;
  const char *a = dhsm_secret_check(L, 1, &la);
  const char *b = dhsm_secret_check(L, 2, &lb);
  unsigned char diff = (unsigned char)(la != lb);
  size_t n = la < lb ? la : lb;
  for (size_t i = 0; i < n; i++) diff |= (unsigned char)(a[i] ^ b[i]);
  lua_pushboolean(L, diff == 0);
  return 1;
}

/* s:check() -> s: raises the usage error its first use would raise
** (env:NAME unset or empty; file:PATH missing, unreadable, not a regular
** file, open to group/others, too large; prompt with no terminal on
** standard input) without reading its bytes, so bad input is refused
** before anything acts.  A prompt is not asked (it stays lazy), a secret
** already read passes; a closed one is refused. */
static int secret_check(lua_State *L) {
  secret *s = luaL_checkudata(L, 1, DHSM_SECRET_MT);
  lua_settop(L, 1);
  if (s->closed)
    return dhsm_usage_error(L, "this secret was closed (its bytes are wiped)");
  if (!s->resolved) resolve(L, NULL, 1);
  return 1;
}

static int secret_origin(lua_State *L) {
  luaL_checkudata(L, 1, DHSM_SECRET_MT);
  lua_getiuservalue(L, 1, 1);
  return 1;
}

static int secret_close(lua_State *L) {
  secret *s = luaL_checkudata(L, 1, DHSM_SECRET_MT);
  wipe(s);
  s->closed = 1;
  return 0;
}

static int secret_tostring(lua_State *L) {
  lua_pushliteral(L, "<secret>");
  return 1;
}

static int secret_concat(lua_State *L) {
  return dhsm_usage_error(L, "a secret cannot be concatenated into a string");
}

int luaopen_dhsm_secret(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"origin", secret_origin}, {"check", secret_check}, {"close", secret_close},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__tostring", secret_tostring}, {"__concat", secret_concat},
    {"__close", secret_close}, {"__gc", secret_close}, {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"env", secret_env}, {"file", secret_file}, {"prompt", secret_prompt},
    {"value", secret_value}, {"ref", secret_ref}, {"is", secret_is},
    {"equal", secret_equal}, {NULL, NULL}
  };
  dhsm_newclass(L, DHSM_SECRET_MT, methods, meta);
  lua_pushliteral(L, DHSM_SECRET_MT);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  return 1;
}
