/*
** sys.c - "dhsm.sys": the few OS services the Lua half of the runtime
** needs and Lua lacks (directories, terminals, line editing, the embedded
** files, versions).  Internal; runbooks use the public modules.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <poll.h>
#include <pwd.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <curl/curl.h>
#include <editline/readline.h>
#include <libssh2.h>
#include <openssl/crypto.h>
#include <lauxlib.h>

#include "dhsm/dhsm.h"
#include "json.h"
#include "runtime.h"

static int fail_errno(lua_State *L, const char *what) {
  int e = errno;
  luaL_pushfail(L);
  lua_pushfstring(L, "%s: %s", what, strerror(e));
  lua_pushinteger(L, e);
  return 3;
}

/* isatty(fd) */
static int sys_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

/* readdir(path) -> sorted array of names (without . and ..) | fail, msg */
static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int sys_readdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR *d = opendir(path);
  if (d == NULL) return fail_errno(L, path);
  size_t n = 0, cap = 64;
  char **names = malloc(cap * sizeof *names);
  struct dirent *e;
  while (names && (e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (n == cap) {
      char **nn = realloc(names, (cap *= 2) * sizeof *names);
      if (nn == NULL) break;
      names = nn;
    }
    names[n++] = strdup(e->d_name);
  }
  closedir(d);
  if (names == NULL) return luaL_error(L, "not enough memory");
  qsort(names, n, sizeof *names, cmp_names);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, names[i] ? names[i] : "");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
    free(names[i]);
  }
  free(names);
  return 1;
}

/* stat(path) -> {type=, mode=, size=, mtime=, uid=, gid=} | fail, msg
** (uid, gid: who may change the file - a policy file must be root's) */
static int sys_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  if (stat(path, &st) < 0) return fail_errno(L, path);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, (lua_Integer)st.st_uid);
  lua_setfield(L, -2, "uid");
  lua_pushinteger(L, (lua_Integer)st.st_gid);
  lua_setfield(L, -2, "gid");
  lua_pushstring(L, S_ISDIR(st.st_mode) ? "dir" : S_ISREG(st.st_mode) ? "file" : "other");
  lua_setfield(L, -2, "type");
  lua_pushinteger(L, st.st_mode & 07777);
  lua_setfield(L, -2, "mode");
  lua_pushinteger(L, (lua_Integer)st.st_size);
  lua_setfield(L, -2, "size");
  lua_pushnumber(L, (lua_Number)st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9);
  lua_setfield(L, -2, "mtime");
  return 1;
}

int dhsm_mkdir_p(const char *dir, int mode) {
  char path[4096];
  if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  for (char *s = path + 1; *s; s++) {
    if (*s != '/') continue;
    *s = '\0';
    if (mkdir(path, (mode_t)mode) < 0 && errno != EEXIST) return -1;
    *s = '/';
  }
  if (mkdir(path, (mode_t)mode) == 0) return chmod(path, (mode_t)mode);  /* the mode asked, not the umask's */
  return errno == EEXIST ? 0 : -1;
}

/* mkdir(path [, mode]): like mkdir -p; true | fail, msg.  The last folder,
** when made here, gets exactly mode (setgid included): a folder shared by a
** group must not lose its group bits to the caller's umask. */
static int sys_mkdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (dhsm_mkdir_p(path, (int)luaL_optinteger(L, 2, 0700)) < 0) return fail_errno(L, path);
  lua_pushboolean(L, 1);
  return 1;
}

/* The rename of a file into `path` made durable: its folder's entry is
** fsync'd too (a run journal says "begun" before a destructive act). */
static void sync_parent(const char *path) {
  const char *slash = strrchr(path, '/');
  char dir[4096];
  if (slash == NULL) snprintf(dir, sizeof dir, ".");
  else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path) + (slash == path), path);
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;                     /* the data itself is synced already */
  fsync(fd);
  close(fd);
}

/* write_file(path, data [, mode]): atomically and durably (temp file,
** fsync, rename, fsync of the folder) */
static int sys_write_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  mode_t mode = (mode_t)luaL_optinteger(L, 3, 0600);
  const char *tmp = lua_pushfstring(L, "%s.tmp.%d", path, (int)getpid());
  FILE *f = fopen(tmp, "wx");
  if (f == NULL) return fail_errno(L, tmp);
  int ok = fchmod(fileno(f), mode) == 0 && fwrite(data, 1, len, f) == len &&
           fflush(f) == 0 && fsync(fileno(f)) == 0;
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, path) < 0) {
    int r = fail_errno(L, path);
    unlink(tmp);
    return r;
  }
  sync_parent(path);
  lua_pushboolean(L, 1);
  return 1;
}

/* mkdtemp([prefix]) -> a new private folder under $TMPDIR (or /tmp) */
static int sys_mkdtemp(lua_State *L) {
  const char *tmp = getenv("TMPDIR");
  const char *t = lua_pushfstring(L, "%s/%sXXXXXX", tmp && *tmp ? tmp : "/tmp",
                                  luaL_optstring(L, 1, "dhsm-"));
  char *buf = strdup(t);
  if (buf == NULL || mkdtemp(buf) == NULL) {
    free(buf);
    return fail_errno(L, t);
  }
  lua_pushstring(L, buf);
  free(buf);
  return 1;
}

static int sys_getpid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}

/* whoami() -> {user=, uid=, host=}: who is running dhsm, from the OS (not
** $USER, which anyone sets) - a plan's author.  user is the uid's number
** when the password database has no name for it. */
static int sys_whoami(lua_State *L) {
  uid_t uid = geteuid();
  struct passwd *pw = getpwuid(uid);
  char host[256] = "";
  if (gethostname(host, sizeof host - 1) < 0) return fail_errno(L, "gethostname");
  lua_createtable(L, 0, 3);
  if (pw != NULL && pw->pw_name != NULL) lua_pushstring(L, pw->pw_name);
  else lua_pushfstring(L, "%d", (int)uid);
  lua_setfield(L, -2, "user");
  lua_pushinteger(L, (lua_Integer)uid);
  lua_setfield(L, -2, "uid");
  lua_pushstring(L, host);
  lua_setfield(L, -2, "host");
  return 1;
}

/* realpath(path) -> the absolute path with no symlink, "." or "..", or
** nil, error (a playbook run by path is journaled under this name) */
static int sys_realpath(lua_State *L) {
  char *abs = realpath(luaL_checkstring(L, 1), NULL);
  if (!abs) {
    luaL_pushfail(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushstring(L, abs);
  free(abs);
  return 1;
}

/* executable() -> absolute path of this program */
static int sys_executable(lua_State *L) {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n < 0) return fail_errno(L, "/proc/self/exe");
  lua_pushlstring(L, buf, (size_t)n);
  return 1;
}

/* time() -> wall clock seconds with a fraction */
static int sys_time(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + ts.tv_nsec / 1e9);
  return 1;
}

/* rfc3339([t]) -> "2026-11-28T09:33:59.123Z" */
static int sys_rfc3339(lua_State *L) {
  struct timespec ts;
  if (lua_isnoneornil(L, 1)) {
    clock_gettime(CLOCK_REALTIME, &ts);
  } else {
    lua_Number t = luaL_checknumber(L, 1);
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (lua_Number)ts.tv_sec) * 1e9);
  }
  char out[32];
  dhsm_rfc3339(out, &ts);
  lua_pushstring(L, out);
  return 1;
}

/* random_hex(nbytes) */
static int sys_random_hex(lua_State *L) {
  unsigned char raw[32];
  lua_Integer want = luaL_optinteger(L, 1, 4);
  size_t n = want > 0 && want <= (lua_Integer)sizeof raw ? (size_t)want : 0;
  if (n == 0) return luaL_argerror(L, 1, "expected 1..32 bytes");
  if (getrandom(raw, n, 0) != (ssize_t)n) return fail_errno(L, "getrandom");
  char hex[2 * sizeof raw + 1];
  for (size_t i = 0; i < n; i++) snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  lua_pushlstring(L, hex, 2 * n);
  return 1;
}

/* sys.sha256(data) -> hex: what an audit record keeps of a request body
** (the body itself may be large; the digest still tells two apart). */
static int sys_sha256(lua_State *L) {
  size_t len;
  const char *data = luaL_checklstring(L, 1, &len);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (!EVP_Digest(data, len, md, &n, EVP_sha256(), NULL)) return luaL_error(L, "sys.sha256: OpenSSL failed");
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  for (unsigned int i = 0; i < n; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
  lua_pushlstring(L, hex, 2 * (size_t)n);
  return 1;
}

/* ---- line editing (libedit) --------------------------------------------- */

static lua_State *completing_L;            /* the thread inside readline() */
static int completer_ref = LUA_NOREF;

/* Candidates from the Lua completer: fn(line_before_cursor, word) -> list,
** or false when the Tab is text (inside a string).  A Tab with no word
** before it is text too (an indented paste), not a request. */
static char **complete(const char *text, int start, int end) {
  rl_attempted_completion_over = 1;          /* never fall back to file names */
  lua_State *L = completing_L;
  if (start == end && (end == 0 || rl_line_buffer[end - 1] == ' ' || rl_line_buffer[end - 1] == '\t')) {
    rl_insert_text("\t");
    return NULL;
  }
  if (L == NULL || completer_ref == LUA_NOREF) return NULL;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, completer_ref);
  lua_pushlstring(L, rl_line_buffer, (size_t)end);
  lua_pushstring(L, text);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK || !lua_istable(L, -1)) {
    if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1))
      rl_insert_text("\t");                  /* false: the Tab is text here */
    lua_settop(L, top);
    return NULL;
  }
  size_t n = lua_rawlen(L, -1);
  if (n == 0) {
    lua_settop(L, top);
    return NULL;
  }
  char **m = calloc(n + 2, sizeof *m);
  /* m[0]: what replaces the word, the candidates' common prefix */
  for (size_t i = 1; m && i <= n; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i);
    m[i] = strdup(luaL_optstring(L, -1, ""));
    lua_pop(L, 1);
  }
  if (m) {
    size_t common = strlen(m[1]);
    for (size_t i = 2; i <= n; i++) {
      size_t k = 0;
      while (k < common && m[i][k] == m[1][k]) k++;
      common = k;
    }
    m[0] = strndup(m[1], common);
  }
  lua_settop(L, top);
  if (n == 1) rl_completion_append_character = '\0';
  return m;
}

/* set_completer(fn): fn(line_before_cursor, word) -> candidates */
static int sys_set_completer(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, completer_ref);
  lua_settop(L, 1);
  completer_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  rl_attempted_completion_function = complete;
  rl_completer_word_break_characters = (char *)" \t\n\"'`@$><=;|&{(,+-*/%^~#[]";
  return 0;
}

/* ---- reading a line between other tasks --------------------------------- */

/* Inside a task the terminal is read through the scheduler: libedit's
** callback interface is fed one keystroke at a time when poll() says stdin
** is readable, so dhsm.spawn'ed tasks (a watcher, a progress bar) run
** between keystrokes instead of stopping while the prompt waits. */
enum { FIRST, WAITED };

static struct {
  int installed;    /* the handler is installed: libedit owns the terminal */
  int done;         /* the handler ran */
  char *line;       /* what it got (NULL: end of input) */
} typed;

static void on_line(char *line) {
  typed.done = 1;
  typed.line = line;
  rl_callback_handler_remove();            /* the terminal back to normal before the line runs */
  typed.installed = 0;
}

static int read_typed_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  if (ctx == WAITED && dhsm_wait_result(L) != 0) {
    completing_L = L;
    rl_callback_read_char();
    completing_L = NULL;
  }
  if (!typed.done) return dhsm_wait(L, STDIN_FILENO, POLLIN, -1, WAITED, read_typed_k);
  char *line = typed.line;
  typed.done = 0;
  typed.line = NULL;
  if (line == NULL) return 0;
  lua_pushstring(L, line);
  free(line);
  return 1;
}

/* readline_cancel(): a read given up (the reading task was cancelled by
** Ctrl-C): the half-typed line goes, the terminal is given back. */
static int sys_readline_cancel(lua_State *L) {
  (void)L;
  if (typed.installed) {
    rl_replace_line("", 0);
    rl_callback_handler_remove();
    typed.installed = 0;
  }
  free(typed.line);
  typed.line = NULL;
  typed.done = 0;
  return 0;
}

/* Reverse and forward incremental search (^R, ^S) are off: libedit's
** "bck:" search matched another line than the one shown and ran it on
** Enter, which an HSM console must not do.  The key says so instead. */
static int search_is_off(int count, int key) {
  (void)count; (void)key;
  fputs("\n(history search with Ctrl-R/Ctrl-S is off in dhsm: it could run another line than the one "
        "shown; Up/Down walk the history, each line is shown before Enter runs it)\n", stdout);
  fflush(stdout);
  rl_forced_update_display();
  return 0;
}

static void line_editing_setup(void) {
  static int done;
  if (done) return;
  done = 1;
  rl_initialize();
  rl_add_defun("dhsm-search-off", search_is_off, 'R' & 0x1f);
  rl_add_defun("dhsm-search-off", search_is_off, 'S' & 0x1f);
}

/* readline(prompt) -> line | nil at end of input [, "interrupted"].
** Line editing on a terminal, plain reads otherwise (no prompt, no escape
** codes).  In a task the terminal is read through the scheduler (above);
** outside one, libedit blocks, and Ctrl-C at the prompt gives an empty
** line, not the end. */
static int sys_readline(lua_State *L) {
  const char *prompt = luaL_optstring(L, 1, "");
  if (isatty(STDIN_FILENO)) {
    line_editing_setup();
    if (dhsm_can_yield(L)) {
      sys_readline_cancel(L);              /* nothing left over from an interrupted read */
      rl_callback_handler_install(prompt, on_line);
      typed.installed = 1;
      return read_typed_k(L, LUA_OK, FIRST);
    }
    completing_L = L;
    char *line = readline(prompt);
    completing_L = NULL;
    if (line == NULL && dhsm_interrupted()) {
      dhsm_interrupt_clear();
      lua_pushliteral(L, "");
      lua_pushliteral(L, "interrupted");
      return 2;
    }
    if (line == NULL) return 0;
    lua_pushstring(L, line);
    free(line);
    return 1;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  int c, any = 0;
  while ((c = getchar()) != EOF && c != '\n') {
    luaL_addchar(&b, (char)c);
    any = 1;
  }
  if (c == EOF && !any) return 0;
  luaL_pushresult(&b);
  return 1;
}

static int sys_add_history(lua_State *L) {
  add_history(luaL_checkstring(L, 1));
  return 0;
}

/* history_load(path): earlier entries, kept to the last 1000 */
static int sys_history_load(lua_State *L) {
  stifle_history(1000);
  read_history(luaL_checkstring(L, 1));
  return 0;
}

/* history_save(path): written 0600, multi-line entries kept whole */
static int sys_history_save(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd >= 0) {
    fchmod(fd, 0600);
    close(fd);
  }
  if (write_history(path) != 0) return fail_errno(L, path);
  lua_pushboolean(L, 1);
  return 1;
}

/* embedded(kind) -> array of {name=, path=} for kind 'm', 'p' or 'd' */
static int sys_embedded(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1);
  lua_newtable(L);
  int n = 0;
  for (size_t i = 0; i < dhsm_embedded_count; i++) {
    const dhsm_embedded *e = &dhsm_embedded_files[i];
    if (e->kind != kind[0]) continue;
    lua_createtable(L, 0, 2);
    lua_pushstring(L, e->name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, e->path);
    lua_setfield(L, -2, "path");
    lua_rawseti(L, -2, ++n);
  }
  return 1;
}

/* embedded_read(kind, name) -> data, path | nil */
static int sys_embedded_read(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1);
  const dhsm_embedded *e = dhsm_embedded_find(kind[0], luaL_checkstring(L, 2));
  if (e == NULL) return 0;
  lua_pushlstring(L, (const char *)e->data, e->len);
  lua_pushstring(L, e->path);
  return 2;
}

/* json_encode(v [, {redact = false}]) -> JSON text, with secrets as
** "<secret>" and, unless redact is false, strings and numbers under
** secret-looking names as "<redacted>" (the audit log's writer).  The run
** journal passes redact = false: it must give back what it was given. */
static int sys_json_encode(lua_State *L) {
  luaL_checkany(L, 1);
  int redact = 1;
  if (lua_type(L, 2) == LUA_TTABLE) {
    lua_getfield(L, 2, "redact");
    redact = lua_isnil(L, -1) || lua_toboolean(L, -1);
    lua_pop(L, 1);
  } else if (!lua_isnoneornil(L, 2)) {
    return luaL_typeerror(L, 2, "table of options");
  }
  lua_settop(L, 1);
  dhsm_buf b = {0};
  (redact ? dhsm_json_value : dhsm_json_faithful)(&b, L, 1);
  if (b.oom) {
    dhsm_buf_free(&b);
    return luaL_error(L, "not enough memory");
  }
  lua_pushlstring(L, b.p ? b.p : "null", b.p ? b.len : 4);
  dhsm_buf_free(&b);
  return 1;
}

/* stdout_to_stderr() -> fd: from now on whatever writes to stdout (Lua,
** C, child processes) writes to stderr; the returned fd is the real
** stdout, for the one document --json promises. */
static int sys_stdout_to_stderr(lua_State *L) {
  fflush(stdout);
  int saved = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
  if (saved < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) return fail_errno(L, "stdout");
  lua_pushinteger(L, saved);
  return 1;
}

/* restore_stdout(fd): undo stdout_to_stderr */
static int sys_restore_stdout(lua_State *L) {
  int saved = (int)luaL_checkinteger(L, 1);
  fflush(stdout);
  if (dup2(saved, STDOUT_FILENO) < 0) return fail_errno(L, "stdout");
  close(saved);
  lua_pushboolean(L, 1);
  return 1;
}

/* versions() -> {dhsm=, lua=, curl=, libssh2=, openssl=} */
static int sys_versions(lua_State *L) {
  lua_createtable(L, 0, 5);
  lua_pushliteral(L, DHSM_VERSION);
  lua_setfield(L, -2, "dhsm");
  lua_pushliteral(L, LUA_RELEASE);
  lua_setfield(L, -2, "lua");
  lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
  lua_setfield(L, -2, "curl");
  lua_pushstring(L, libssh2_version(0));
  lua_setfield(L, -2, "libssh2");
  lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION));
  lua_setfield(L, -2, "openssl");
  return 1;
}

int luaopen_dhsm_sys(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"isatty", sys_isatty}, {"readdir", sys_readdir}, {"stat", sys_stat},
    {"mkdir", sys_mkdir}, {"mkdtemp", sys_mkdtemp}, {"write_file", sys_write_file}, {"getpid", sys_getpid},
    {"whoami", sys_whoami},
    {"executable", sys_executable}, {"realpath", sys_realpath}, {"time", sys_time}, {"rfc3339", sys_rfc3339},
    {"random_hex", sys_random_hex}, {"sha256", sys_sha256}, {"readline", sys_readline},
    {"add_history", sys_add_history}, {"history_load", sys_history_load},
    {"readline_cancel", sys_readline_cancel},
    {"history_save", sys_history_save}, {"set_completer", sys_set_completer}, {"embedded", sys_embedded},
    {"embedded_read", sys_embedded_read}, {"versions", sys_versions},
    {"json_encode", sys_json_encode}, {"stdout_to_stderr", sys_stdout_to_stderr},
    {"restore_stdout", sys_restore_stdout},
    {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  dhsm_sys_open_lock(L);
  return 1;
}
