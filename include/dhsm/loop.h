/*
** loop.h - waiting without blocking the other tasks.
**
** Every playbook, REPL line and dhsm.spawn() function runs as a task: a
** coroutine resumed by one poll() loop (runtime/loop.c).  A native call that
** would block makes one non-blocking attempt and, on EAGAIN/WANT_READ/
** EINPROGRESS, returns dhsm_wait(...) naming the fd, the events and itself
** (or another function) as continuation.  Keep the operation's state in the
** userdata: the continuation re-runs the step from the top, C locals are gone.
**
**   enum { FIRST, WAITED };
**   static int sock_read_k(lua_State *L, int status, lua_KContext ctx) {
**     sock *s = check_sock(L, 1);
**     (void)status;
**     if (ctx == WAITED && dhsm_wait_result(L) == 0) return timed_out(L);
**     ssize_t n = read(s->fd, ...);
**     if (n < 0 && errno == EAGAIN)
**       return dhsm_wait(L, s->fd, POLLIN, s->timeout, WAITED, sock_read_k);
**     ...
**   }
**   static int sock_read(lua_State *L) { return sock_read_k(L, LUA_OK, FIRST); }
**
** Inside a task dhsm_wait yields (lua_yieldk) and the loop resumes the task
** when the fd is ready or the timeout passes.  Outside one (plain lua_pcall,
** __gc, a table.sort comparator) it blocks in poll() and calls k directly,
** so modules work in both places.  Either way k then runs with the poll
** revents pushed on the stack (0 = timed out), which dhsm_wait_result()
** pops; `status` is LUA_YIELD after a real yield and LUA_OK after blocking,
** so tell a first call from a continuation by `ctx`, not by `status`.
** Blocking calls k directly: a long chain of waits outside any task nests
** C frames, which is why tasks are the normal place for I/O.
**
** Ctrl-C while blocking raises an "interrupted" error; inside a task the
** loop cancels the task instead (its <close> variables are closed).
*/
#ifndef DHSM_LOOP_H
#define DHSM_LOOP_H

#include <lua.h>
#include <poll.h>

/* Wait for `events` (POLLIN|POLLOUT) on fd, or only for the timeout when
** fd < 0.  timeout is in seconds; < 0 waits for ever. */
int dhsm_wait(lua_State *L, int fd, int events, double timeout,
              lua_KContext ctx, lua_KFunction k);

/* In a continuation: pop and return the revents dhsm_wait pushed
** (0 when the wait timed out). */
int dhsm_wait_result(lua_State *L);

/* Seconds on CLOCK_MONOTONIC: use it for every deadline. */
double dhsm_now(void);

/* 1 when a wait at this point would yield to the loop rather than block. */
int dhsm_can_yield(lua_State *L);

#endif
