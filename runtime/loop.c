/*
** loop.c - the scheduler: Lua coroutines driven by one poll() loop.
**
** The Nmap NSE model with <close> instead of destructors.  A task yields
** only through dhsm_wait (or a cancel/interrupt); the loop keeps it in the
** timer heap and/or the fd array, polls, and resumes it with the revents.
** C callbacks never call Lua; only this file resumes tasks, and never
** from inside another task's resume.
*/
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>

#include "dhsm/dhsm.h"
#include "loop_int.h"
#include "runtime.h"

static volatile sig_atomic_t sigint_count;
static loop *volatile sig_loop;

double dhsm_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

loop *loop_of(lua_State *L) {
  return *(loop **)lua_getextraspace(L);
}

int task_finished(const task *t) {
  return t->state >= T_DONE;
}

int dhsm_can_yield(lua_State *L) {
  return loop_of(L)->running != NULL && lua_isyieldable(L);
}

/* ---- growable arrays ------------------------------------------------ */

static void *grow(void *p, int *cap, size_t elem) {
  int ncap = *cap ? *cap * 2 : 64;
  void *np = realloc(p, (size_t)ncap * elem);
  if (np == NULL) abort();    /* the scheduler cannot limp on without memory */
  *cap = ncap;
  return np;
}

/* ---- timer heap (min on deadline) ----------------------------------- */

static void heap_set(loop *lp, int i, task *t) {
  lp->heap[i] = t;
  t->heap_at = i;
}

static void heap_up(loop *lp, int i) {
  task *t = lp->heap[i];
  while (i > 0) {
    int parent = (i - 1) / 2;
    if (lp->heap[parent]->deadline <= t->deadline) break;
    heap_set(lp, i, lp->heap[parent]);
    i = parent;
  }
  heap_set(lp, i, t);
}

static void heap_down(loop *lp, int i) {
  task *t = lp->heap[i];
  for (;;) {
    int c = 2 * i + 1;
    if (c >= lp->heap_n) break;
    if (c + 1 < lp->heap_n && lp->heap[c + 1]->deadline < lp->heap[c]->deadline)
      c++;
    if (t->deadline <= lp->heap[c]->deadline) break;
    heap_set(lp, i, lp->heap[c]);
    i = c;
  }
  heap_set(lp, i, t);
}

static void heap_push(loop *lp, task *t) {
  if (lp->heap_n == lp->heap_cap)
    lp->heap = grow(lp->heap, &lp->heap_cap, sizeof *lp->heap);
  heap_set(lp, lp->heap_n++, t);
  heap_up(lp, t->heap_at);
}

static void heap_remove(loop *lp, task *t) {
  int i = t->heap_at;
  if (i < 0) return;
  t->heap_at = -1;
  task *last = lp->heap[--lp->heap_n];
  if (last == t) return;
  heap_set(lp, i, last);
  heap_up(lp, i);
  heap_down(lp, last->heap_at);
}

/* ---- fd waiters ------------------------------------------------------ */

static void fdw_add(loop *lp, task *t) {
  if (lp->fdw_n == lp->fdw_cap)
    lp->fdw = grow(lp->fdw, &lp->fdw_cap, sizeof *lp->fdw);
  t->fd_at = lp->fdw_n;
  lp->fdw[lp->fdw_n++] = t;
}

static void fdw_remove(loop *lp, task *t) {
  int i = t->fd_at;
  if (i < 0) return;
  t->fd_at = -1;
  task *last = lp->fdw[--lp->fdw_n];
  if (last != t) {
    lp->fdw[i] = last;
    last->fd_at = i;
  }
}

/* ---- ready queue (doubly linked so a cancel can take a task out) ---- */

static void ready_push(loop *lp, task *t) {
  t->state = T_READY;
  if (t->in_ready) return;
  t->in_ready = 1;
  t->ready_gen = lp->ready_gen;
  t->ready_next = NULL;
  t->ready_prev = lp->ready_tail;
  if (lp->ready_tail) lp->ready_tail->ready_next = t;
  else lp->ready_head = t;
  lp->ready_tail = t;
}

static void ready_remove(loop *lp, task *t) {
  if (!t->in_ready) return;
  t->in_ready = 0;
  if (t->ready_prev) t->ready_prev->ready_next = t->ready_next;
  else lp->ready_head = t->ready_next;
  if (t->ready_next) t->ready_next->ready_prev = t->ready_prev;
  else lp->ready_tail = t->ready_prev;
  t->ready_prev = t->ready_next = NULL;
}

/* ---- joins ------------------------------------------------------------ */

void task_join_link(task *joiner, task *target) {
  joiner->join_target = target;
  joiner->join_prev = NULL;
  joiner->join_next = target->joiners;
  if (target->joiners) target->joiners->join_prev = joiner;
  target->joiners = joiner;
}

void task_join_unlink(task *joiner) {
  task *target = joiner->join_target;
  if (target == NULL) return;
  if (joiner->join_prev) joiner->join_prev->join_next = joiner->join_next;
  else target->joiners = joiner->join_next;
  if (joiner->join_next) joiner->join_next->join_prev = joiner->join_prev;
  joiner->join_target = joiner->join_prev = joiner->join_next = NULL;
}

/* ---- task life cycle -------------------------------------------------- */

static void anchors_push(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, TASK_ANCHORS);
}

void task_push_handle(lua_State *L, task *t) {
  anchors_push(L);
  lua_rawgetp(L, -1, t);
  lua_remove(L, -2);
}

static void all_link(loop *lp, task *t) {
  t->all_prev = NULL;
  t->all_next = lp->all;
  if (lp->all) lp->all->all_prev = t;
  lp->all = t;
}

static void all_unlink(loop *lp, task *t) {
  if (t->all_prev) t->all_prev->all_next = t->all_next;
  else if (lp->all == t) lp->all = t->all_next;
  if (t->all_next) t->all_next->all_prev = t->all_prev;
  t->all_prev = t->all_next = NULL;
}

void dhsm_push_context(lua_State *L) {
  loop *lp = loop_of(L);
  task *t = lp->running ? lp->running : lp->closing;
  if (t) {
    task_push_handle(L, t);
    lua_getiuservalue(L, -1, 3);
    lua_remove(L, -2);
  } else {
    lua_getfield(L, LUA_REGISTRYINDEX, DHSM_CONTEXT_KEY);
  }
}

task *task_spawn(lua_State *L, int nargs) {
  loop *lp = loop_of(L);
  luaL_checktype(L, -(nargs + 1), LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);                  /* fn args... co */
  lua_insert(L, -(nargs + 2));                       /* co fn args... */
  lua_xmove(L, co, nargs + 1);                       /* co */
  task *t = lua_newuserdatauv(L, sizeof *t, 3);      /* co h */
  memset(t, 0, sizeof *t);
  t->lp = lp;
  t->co = co;
  t->id = ++lp->next_id;
  t->nargs = nargs;
  t->fd = -1;
  t->deadline = -1;
  t->heap_at = t->fd_at = -1;
  luaL_setmetatable(L, TASK_MT);
  lua_rotate(L, -2, 1);                              /* h co */
  lua_setiuservalue(L, -2, 1);                       /* h */
  /* context: a fresh table that reads through to the parent's; the link
  ** is protected (__metatable), so no task can cut itself off from what
  ** its parent set (dhsm.act's check mode is found along it) */
  lua_newtable(L);
  lua_createtable(L, 0, 2);
  dhsm_push_context(L);
  lua_setfield(L, -2, "__index");
  lua_pushliteral(L, "dhsm.context");
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);
  lua_setiuservalue(L, -2, 3);
  anchors_push(L);
  lua_pushvalue(L, -2);
  lua_rawsetp(L, -2, t);
  lua_pop(L, 1);                                     /* h */
  all_link(lp, t);
  ready_push(lp, t);
  return t;
}

/* Detach t from every structure of the loop and release its anchor.
** The handle (with its results in user value 2) must be on L's top. */
static void task_retire(lua_State *L, task *t, task_state final) {
  loop *lp = t->lp;
  ready_remove(lp, t);
  heap_remove(lp, t);
  fdw_remove(lp, t);
  task_join_unlink(t);
  all_unlink(lp, t);
  t->state = final;
  if (lp->interrupt_target == t) lp->interrupt_target = NULL;
  while (t->joiners) {
    task *j = t->joiners;
    task_join_unlink(j);
    task_wake(j, 1);
  }
  lua_pushnil(L);                    /* the thread can go now */
  lua_setiuservalue(L, -2, 1);
  t->co = NULL;
  anchors_push(L);
  lua_pushnil(L);
  lua_rawsetp(L, -2, t);
  lua_pop(L, 1);
}

/* Finished normally: keep the n results on co as {n=, ...}. */
static void task_done(loop *lp, task *t, int nres) {
  lua_State *L = lp->L;
  task_push_handle(L, t);
  lua_createtable(L, nres, 1);
  lua_xmove(t->co, L, nres);
  for (int i = nres; i >= 1; i--) lua_rawseti(L, -(i + 1), i);
  lua_pushinteger(L, nres);
  lua_setfield(L, -2, "n");
  lua_setiuservalue(L, -2, 2);
  task_retire(L, t, T_DONE);
  lua_pop(L, 1);
}

int task_unpack_results(lua_State *L) {
  lua_getfield(L, -1, "n");
  int n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n, "too many results");
  for (int i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  return n;
}

/* Store {err=, traceback=} as the task's outcome and retire it. */
static void task_store_failure(lua_State *L, task *t, task_state final) {
  /* stack: ... err traceback */
  lua_createtable(L, 0, 3);
  lua_rotate(L, -3, 1);                       /* res err tb */
  lua_setfield(L, -3, "traceback");
  lua_setfield(L, -2, "err");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "failed");
  task_push_handle(L, t);
  lua_rotate(L, -2, 1);                       /* h res */
  lua_setiuservalue(L, -2, 2);
  task_retire(L, t, final);
  lua_pop(L, 1);
}

/* Close the pending <close> variables of a dead or suspended thread.
** Nothing may yield meanwhile: the handlers run with no task "running",
** so dhsm_wait blocks instead.  They still see their own task's context
** (lp->closing): a run's last audit record, written by a handler of its
** cancelled task, names that run.  For a thread that died of an error,
** 5.4.4 reports that error again: only a cancelled thread's status is news. */
static void close_thread(loop *lp, task *t, int report) {
  task *saved = lp->running, *saved_closing = lp->closing;
  lua_State *saved_thread = lp->running_thread;
  /* An interrupt that met code unable to yield re-arms its hook on this
  ** thread every 1000 instructions (interrupt_hook): off now, or it would
  ** cut the handlers' cleanup short - a run's last journal record, its
  ** resume hint.  A second Ctrl-C still leaves at once (on_sigint). */
  lua_sethook(t->co, NULL, 0, 0);
  lp->running = NULL;
  lp->closing = t;
  lp->running_thread = t->co;
  int st = lua_resetthread(t->co);
  lp->running = saved;
  lp->closing = saved_closing;
  lp->running_thread = saved_thread;
  if (st != LUA_OK && report) {
    const char *msg = luaL_tolstring(t->co, -1, NULL);
    lua_warning(lp->L, "error closing task ", 1);
    lua_warning(lp->L, msg, 0);
  }
  lua_settop(t->co, 0);
}

static void task_failed(loop *lp, task *t) {
  lua_State *L = lp->L;
  lua_xmove(t->co, L, 1);                              /* err */
  luaL_traceback(L, t->co, NULL, 0);                   /* err tb */
  t->state = T_FAILED;                                 /* no cancel from handlers */
  close_thread(lp, t, 0);
  task_store_failure(L, t, T_FAILED);
}

void task_kill(task *t, const char *kind, const char *message) {
  loop *lp = t->lp;
  lua_State *L = lp->L;
  if (task_finished(t)) return;
  ready_remove(lp, t);
  heap_remove(lp, t);
  fdw_remove(lp, t);
  task_join_unlink(t);
  t->state = T_CANCELLED;                              /* re-entrant cancel: no-op */
  close_thread(lp, t, 1);
  dhsm_error_new(L, kind, NULL, 0, "%s", message);
  lua_pushnil(L);
  task_store_failure(L, t, T_CANCELLED);
}

void task_wake(task *t, lua_Integer value) {
  loop *lp = t->lp;
  if (t->state != T_WAITING) return;
  heap_remove(lp, t);
  fdw_remove(lp, t);
  t->resume_value = value;
  ready_push(lp, t);
}

static void task_wait(loop *lp, task *t) {
  t->state = T_WAITING;
  t->fd = lp->pending.fd;
  t->events = lp->pending.events;
  t->deadline = lp->pending.deadline;
  if (t->deadline >= 0) heap_push(lp, t);
  if (t->fd >= 0) fdw_add(lp, t);
}

/* Resume t once and file it according to how it stopped. */
static void task_step(loop *lp, task *t) {
  lua_State *co = t->co;
  int nargs = t->nargs, nres = 0;
  ready_remove(lp, t);
  if (t->started) {
    nargs = 0;
    if (t->resume_with_value) {
      lua_pushinteger(co, t->resume_value);
      nargs = 1;
    }
  }
  t->started = 1;
  t->state = T_RUNNING;
  lp->running = t;
  lp->running_thread = co;
  lp->reason = Y_NONE;
  int st = lua_resume(co, lp->L, nargs, &nres);
  lp->running = NULL;
  lp->running_thread = NULL;
  yield_reason why = lp->reason;
  lp->reason = Y_NONE;
  if (st == LUA_YIELD) {
    lua_pop(co, nres);
    t->resume_with_value = (why == Y_WAIT);
    if (why == Y_WAIT) task_wait(lp, t);
    else if (why == Y_CANCEL) task_kill(t, "cancelled", "task cancelled");
    else ready_push(lp, t);      /* Ctrl-C (handled next) or coroutine.yield() */
  } else if (st == LUA_OK) {
    task_done(lp, t, nres);
  } else {
    task_failed(lp, t);
  }
}

/* ---- Ctrl-C ------------------------------------------------------------- */

int loop_raise_stop(lua_State *L, yield_reason why) {
  if (why == Y_INTERRUPT)
    return dhsm_raise(L, "interrupted", NULL, 0, "interrupted");
  return dhsm_raise(L, "cancelled", NULL, 0, "task cancelled");
}

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  loop *lp = loop_of(L);
  lua_sethook(L, NULL, 0, 0);
  if (!sigint_count) return;               /* already dealt with */
  if (lp->running && lua_isyieldable(L)) {
    lp->reason = Y_INTERRUPT;
    lua_yield(L, 0);
    return;
  }
  /* Cannot yield here: raise, and keep raising so a pcall cannot swallow
  ** the interrupt for long (as Redis re-arms its script-kill hook). */
  lua_sethook(L, interrupt_hook, LUA_MASKCOUNT, 1000);
  loop_raise_stop(L, Y_INTERRUPT);
}

static void on_sigint(int sig) {
  if (sigint_count++ > 0) {                /* second Ctrl-C: leave now */
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  loop *lp = sig_loop;
  if (lp && lp->running_thread)            /* lua_sethook is signal-safe */
    lua_sethook(lp->running_thread, interrupt_hook, LUA_MASKCOUNT, 1);
}

void dhsm_signals_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;              /* no SA_RESTART: poll must see EINTR */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);               /* a closed peer is an error, not death */
}

int dhsm_interrupted(void) {
  return sigint_count > 0;
}

void dhsm_interrupt_clear(void) {
  sigint_count = 0;
}

/* Cancel what Ctrl-C is meant to stop: the interrupt target (a REPL
** line), else every task. */
static void handle_interrupt(loop *lp) {
  if (!sigint_count) return;
  if (lp->interrupt_target) {
    task_kill(lp->interrupt_target, "interrupted", "interrupted");
  } else {
    while (lp->all) task_kill(lp->all, "interrupted", "interrupted");
  }
  sigint_count = 0;
}

/* ---- polling ------------------------------------------------------------ */

static int to_timespec(double s, struct timespec *ts) {
  if (s < 0) s = 0;
  ts->tv_sec = (time_t)s;
  ts->tv_nsec = (long)((s - (double)ts->tv_sec) * 1e9);
  if (ts->tv_nsec >= 1000000000L) ts->tv_nsec = 999999999L;
  return 0;
}

static void poll_once(loop *lp) {
  int n = lp->fdw_n;
  while (lp->pfd_cap < n + 1) {
    int cap = lp->pfd_cap;
    lp->pfd = grow(lp->pfd, &cap, sizeof *lp->pfd);
    lp->pfd_task = grow(lp->pfd_task, &lp->pfd_cap, sizeof *lp->pfd_task);
  }
  for (int i = 0; i < n; i++) {
    task *t = lp->fdw[i];
    lp->pfd[i].fd = t->fd;
    lp->pfd[i].events = t->events;
    lp->pfd[i].revents = 0;
    lp->pfd_task[i] = t;
  }
  struct timespec ts, *tsp = NULL;
  if (lp->ready_head) {
    tsp = &ts;
    to_timespec(0, tsp);
  } else if (lp->heap_n > 0) {
    tsp = &ts;
    to_timespec(lp->heap[0]->deadline - dhsm_now(), tsp);
  }
  int rc = ppoll(lp->pfd, (nfds_t)n, tsp, NULL);
  if (rc < 0) return;                      /* EINTR: the caller checks Ctrl-C */
  for (int i = 0; i < n && rc > 0; i++) {
    if (lp->pfd[i].revents) {
      task_wake(lp->pfd_task[i], lp->pfd[i].revents);
      rc--;
    }
  }
  double now = dhsm_now();
  while (lp->heap_n > 0 && lp->heap[0]->deadline <= now)
    task_wake(lp->heap[0], 0);
}

static void run_ready(loop *lp) {
  /* Only the tasks ready now: one that keeps yielding cannot starve I/O. */
  unsigned long gen = lp->ready_gen++;
  while (lp->ready_head && lp->ready_head->ready_gen <= gen) {
    task_step(lp, lp->ready_head);
    handle_interrupt(lp);
  }
}

/* Run until `until` finishes.  Returns 0, or -1 on deadlock (nothing
** ready, no fd and no timer can ever wake a task). */
static int run_until(loop *lp, task *until) {
  while (!task_finished(until)) {
    run_ready(lp);
    if (task_finished(until)) break;
    handle_interrupt(lp);
    if (!lp->ready_head && lp->fdw_n == 0 && lp->heap_n == 0) return -1;
    poll_once(lp);
    handle_interrupt(lp);
  }
  return 0;
}

/* ---- blocking waits (no task to yield) --------------------------------- */

static int block_wait(lua_State *L, int fd, int events, double deadline) {
  for (;;) {
    struct pollfd p = { .fd = fd, .events = (short)events, .revents = 0 };
    struct timespec ts, *tsp = NULL;
    if (deadline >= 0) {
      tsp = &ts;
      to_timespec(deadline - dhsm_now(), tsp);
    }
    int rc = ppoll(&p, fd >= 0 ? 1 : 0, tsp, NULL);
    if (rc > 0) return p.revents;
    if (rc == 0) return 0;
    if (errno == EINTR && sigint_count > 0) {
      if (loop_of(L)->depth == 0) sigint_count = 0;  /* else the loop will */
      return loop_raise_stop(L, Y_INTERRUPT);
    }
    if (errno != EINTR)
      return dhsm_raise(L, "net", strerror(errno), 0, "poll failed: %s", strerror(errno));
  }
}

int loop_block_pending(lua_State *L, loop *lp) {
  int rev = block_wait(L, lp->pending.fd, lp->pending.events, lp->pending.deadline);
  lp->reason = Y_NONE;
  return rev;
}

int dhsm_wait(lua_State *L, int fd, int events, double timeout,
              lua_KContext ctx, lua_KFunction k) {
  loop *lp = loop_of(L);
  double deadline = timeout < 0 ? -1 : dhsm_now() + timeout;
  int yield = dhsm_can_yield(L);
  if (fd < 0 && deadline < 0 && !yield)
    return dhsm_usage_error(L, "cannot wait for ever outside a task");
  if (yield) {
    lp->pending.fd = fd;
    lp->pending.events = (short)events;
    lp->pending.deadline = deadline;
    lp->reason = Y_WAIT;
    return lua_yieldk(L, 0, ctx, k);
  }
  lua_pushinteger(L, block_wait(L, fd, events, deadline));
  return k(L, LUA_OK, ctx);
}

int dhsm_wait_result(lua_State *L) {
  int rev = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return rev;
}

/* ---- running a root task ------------------------------------------------ */

static int loop_gc(lua_State *L) {
  loop *lp = luaL_checkudata(L, 1, "dhsm.loop");
  free(lp->heap);
  free(lp->fdw);
  free(lp->pfd);
  free(lp->pfd_task);
  lp->heap = lp->fdw = lp->pfd_task = NULL;
  lp->pfd = NULL;
  if (sig_loop == lp) sig_loop = NULL;
  return 0;
}

void dhsm_loop_init(lua_State *L) {
  loop *lp = lua_newuserdatauv(L, sizeof *lp, 0);
  memset(lp, 0, sizeof *lp);
  lp->L = L;
  luaL_newmetatable(L, "dhsm.loop");
  lua_pushcfunction(L, loop_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, "dhsm.loop.state");
  *(loop **)lua_getextraspace(L) = lp;     /* new threads copy this */
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, TASK_ANCHORS);
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, DHSM_CONTEXT_KEY);
  sig_loop = lp;
}

static int cancel_leftovers(loop *lp) {
  int n = 0;
  while (lp->all) {
    task_kill(lp->all, "cancelled", "still running when its run ended");
    n++;
  }
  return n;
}

int dhsm_loop_pcall(lua_State *L, int nargs, int flags) {
  loop *lp = loop_of(L);
  if (lp->depth > 0)
    return luaL_error(L, "dhsm: the scheduler is already running");
  lp->depth++;
  task *root = task_spawn(L, nargs);                   /* h */
  task *saved_root = lp->root;
  lp->root = root;
  if (run_until(lp, root) < 0)
    task_kill(root, "deadlock",
              "deadlock: every task waits for another and nothing can wake them");
  if (flags & DHSM_LOOP_CANCEL_REST) {
    int n = cancel_leftovers(lp);
    if (n > 0) {
      lua_pushfstring(L, "%d spawned task%s still running at the end "
                      "%s cancelled", n, n == 1 ? "" : "s", n == 1 ? "was" : "were");
      lua_warning(L, lua_tostring(L, -1), 0);
      lua_pop(L, 1);
    }
  }
  lp->root = saved_root;
  lp->depth--;
  lua_getiuservalue(L, -1, 2);                         /* h res */
  lua_remove(L, -2);
  if (lua_getfield(L, -1, "failed") == LUA_TNIL) {     /* res nil */
    lua_pop(L, 1);
    int n = task_unpack_results(L);
    lua_remove(L, -(n + 1));
    return LUA_OK;
  }
  lua_pop(L, 1);
  lua_getfield(L, -1, "traceback");
  lua_setfield(L, LUA_REGISTRYINDEX, "dhsm.last_traceback");
  lua_getfield(L, -1, "err");
  lua_remove(L, -2);
  return LUA_ERRRUN;
}
