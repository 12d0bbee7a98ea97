/*
** lock.c - advisory file locks that wait without stopping the other tasks.
**
**   local sys = require "dhsm.sys"
**   local lk, holder = sys.lock(path, 30)   -- wait up to 30 s (0: try once)
**   if not lk then error("held by pid " .. holder) end
**   ... one holder at a time, in this process and in every other ...
**   lk:unlock()                             -- also __close and __gc
**
** Why flock(2) on a descriptor of our own: two open()s of one file conflict
** even inside one process, so the same lock serialises two tasks of this
** process and two dhsm processes alike; and the kernel drops it when its
** process dies, SIGKILL included, so a crash never leaves a stale lock
** that an operator must find and remove at 3 a.m.
**
** Waiting tries LOCK_NB and, while another holds the lock, sleeps 20 ms
** through dhsm_wait: inside a task the scheduler runs on meanwhile.  The
** holder writes its pid into the file, so a caller that gives up can say
** who holds it.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>

#include "dhsm/dhsm.h"
#include "runtime.h"

#define LOCK_MT "dhsm.sys.lock"
#define RETRY_SECONDS 0.02

typedef struct file_lock {
  int fd;             /* -1 once released */
  double deadline;    /* of the running wait */
} file_lock;

enum { FIRST, WAITED };

static void release(file_lock *lk) {
  if (lk->fd < 0) return;
  flock(lk->fd, LOCK_UN);
  close(lk->fd);
  lk->fd = -1;
}

/* The pid the holder wrote, or 0 when unknown. */
static long holder_pid(int fd) {
  char buf[32];
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  buf[n] = '\0';
  return strtol(buf, NULL, 10);
}

static void write_pid(int fd) {
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) == 0 && pwrite(fd, buf, (size_t)n, 0) == n) return;
  /* the pid is only for messages: a failed write does not weaken the lock */
}

static int lock_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  file_lock *lk = luaL_checkudata(L, 3, LOCK_MT);
  if (ctx == WAITED) dhsm_wait_result(L);
  if (flock(lk->fd, LOCK_EX | LOCK_NB) == 0) {
    write_pid(lk->fd);
    return 1;                                   /* the lock object */
  }
  if (errno != EWOULDBLOCK && errno != EINTR) {
    int e = errno;
    release(lk);
    luaL_pushfail(L);
    lua_pushfstring(L, "%s: %s", lua_tostring(L, 1), strerror(e));
    return 2;
  }
  double left = lk->deadline - dhsm_now();
  if (left <= 0) {
    long pid = holder_pid(lk->fd);
    release(lk);
    luaL_pushfail(L);
    if (pid > 0) lua_pushinteger(L, pid); else lua_pushstring(L, "unknown");
    return 2;
  }
  return dhsm_wait(L, -1, 0, left < RETRY_SECONDS ? left : RETRY_SECONDS, WAITED, lock_k);
}

/* lock(path [, timeout [, mode]]) -> lock | fail, holder pid (or "unknown") | fail, message
** A lock file made here gets exactly mode (default 0600, whatever the
** umask): 0660 lets every member of a shared folder's group take it. */
static int sys_lock(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  double timeout = luaL_optnumber(L, 2, 0);
  luaL_argcheck(L, timeout >= 0, 2, "expected seconds >= 0");
  mode_t mode = (mode_t)luaL_optinteger(L, 3, 0600);
  luaL_argcheck(L, (mode & ~(mode_t)0777) == 0, 3, "expected permission bits (0 to 0777)");
  lua_settop(L, 2);
  file_lock *lk = lua_newuserdatauv(L, sizeof *lk, 0);
  lk->fd = -1;
  luaL_setmetatable(L, LOCK_MT);
  lk->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (lk->fd >= 0) fchmod(lk->fd, mode);
  else if (errno == EEXIST) lk->fd = open(path, O_RDWR | O_CLOEXEC);
  if (lk->fd < 0) {
    int e = errno;
    luaL_pushfail(L);
    lua_pushfstring(L, "%s: %s", path, strerror(e));
    return 2;
  }
  lk->deadline = dhsm_now() + timeout;
  return lock_k(L, LUA_OK, FIRST);
}

static int lock_unlock(lua_State *L) {
  release(luaL_checkudata(L, 1, LOCK_MT));
  return 0;
}

static int lock_held(lua_State *L) {
  lua_pushboolean(L, ((file_lock *)luaL_checkudata(L, 1, LOCK_MT))->fd >= 0);
  return 1;
}

static int lock_tostring(lua_State *L) {
  file_lock *lk = luaL_checkudata(L, 1, LOCK_MT);
  lua_pushstring(L, lk->fd >= 0 ? "lock (held)" : "lock (released)");
  return 1;
}

/* Registers the lock class and puts sys.lock into the table on top. */
void dhsm_sys_open_lock(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"unlock", lock_unlock}, {"held", lock_held}, {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__gc", lock_unlock}, {"__close", lock_unlock}, {"__tostring", lock_tostring}, {NULL, NULL}
  };
  dhsm_newclass(L, LOCK_MT, methods, metamethods);
  lua_pop(L, 1);
  lua_pushcfunction(L, sys_lock);
  lua_setfield(L, -2, "lock");
}
