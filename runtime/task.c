/*
** task.c - "dhsm.core": the Lua face of the scheduler.
**
** spawn/sleep/park/wake/current/context, task handles (join, cancel,
** status) and replacements for coroutine.resume/wrap that pass the
** scheduler's own yields (waits, Ctrl-C, self-cancel) up to the loop, so a
** generator written with coroutine.wrap may sleep or do I/O inside a task.
*/
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "dhsm/dhsm.h"
#include "loop_int.h"
#include "runtime.h"

static const char *const state_names[] = {
  "ready", "running", "waiting", "done", "failed", "cancelled"
};

static task *check_task(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, TASK_MT);
}

static task *running_task_or_fail(lua_State *L, const char *what) {
  loop *lp = loop_of(L);
  if (!dhsm_can_yield(L))
    luaL_error(L, "%s needs a task (it cannot wait inside a metamethod, "
               "a sort comparator or outside the scheduler)", what);
  return lp->running;
}

/* ---- spawn, sleep, park, wake ------------------------------------------ */

static int core_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  task_spawn(L, lua_gettop(L) - 1);
  return 1;
}

static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status; (void)ctx;
  dhsm_wait_result(L);
  return 0;
}

static int core_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s >= 0, 1, "expected seconds >= 0");
  return dhsm_wait(L, -1, 0, s, 0, sleep_k);
}

static int park_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status; (void)ctx;
  lua_pushboolean(L, dhsm_wait_result(L) != 0);
  return 1;
}

/* park([timeout]) -> true when woken by wake(), false on timeout */
static int core_park(lua_State *L) {
  double timeout = luaL_optnumber(L, 1, -1);
  running_task_or_fail(L, "dhsm.core.park");
  return dhsm_wait(L, -1, 0, timeout, 0, park_k);
}

static int core_wake(lua_State *L) {
  task_wake(check_task(L, 1), 1);
  return 0;
}

static int core_current(lua_State *L) {
  loop *lp = loop_of(L);
  if (lp->running == NULL) return 0;
  task_push_handle(L, lp->running);
  return 1;
}

static int core_context(lua_State *L) {
  dhsm_push_context(L);
  return 1;
}

static int core_now(lua_State *L) {
  lua_pushnumber(L, dhsm_now());
  return 1;
}

/* set_interrupt_target(task|nil): Ctrl-C cancels only this task (a REPL
** line) instead of everything. */
static int core_set_interrupt_target(lua_State *L) {
  loop *lp = loop_of(L);
  lp->interrupt_target = lua_isnoneornil(L, 1) ? NULL : check_task(L, 1);
  if (lp->interrupt_target && task_finished(lp->interrupt_target))
    lp->interrupt_target = NULL;
  return 0;
}

static int core_interrupted(lua_State *L) {
  lua_pushboolean(L, dhsm_interrupted());
  return 1;
}

/* ---- task handles -------------------------------------------------------- */

/* Push a finished task's results, or raise its error. */
static int push_outcome(lua_State *L, task *t) {
  task_push_handle(L, t);                     /* nil once retired */
  lua_pop(L, 1);
  lua_getiuservalue(L, 1, 2);
  t->joined = 1;
  if (lua_getfield(L, -1, "failed") != LUA_TNIL) {
    lua_getfield(L, -2, "err");
    return lua_error(L);
  }
  lua_pop(L, 1);
  return task_unpack_results(L);
}

static int join_k(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  task *t = check_task(L, 1);
  loop *lp = loop_of(L);
  if (status != LUA_OK) {                     /* back from a wait */
    int rev = dhsm_wait_result(L);
    if (!task_finished(t) && rev == 0) {
      char secs[32];
      snprintf(secs, sizeof secs, "%g", (double)lua_tonumber(L, 3));
      task_join_unlink(lp->running);
      return dhsm_raise(L, "timeout", NULL, 1, "task %d did not finish within %s s",
                        (int)t->id, secs);
    }
  }
  if (task_finished(t)) return push_outcome(L, t);
  task *me = running_task_or_fail(L, "join");
  if (t == me) return luaL_error(L, "a task cannot join itself");
  double left = -1;
  if (!lua_isnil(L, 2)) {
    left = lua_tonumber(L, 2) - dhsm_now();
    if (left < 0) left = 0;
  }
  task_join_link(me, t);
  return dhsm_wait(L, -1, 0, left, 0, join_k);
}

/* task:join([timeout]) -> the task's results, or raises its error.
** Stack kept for the continuation: 1 task, 2 absolute deadline|nil,
** 3 timeout as given. */
static int task_join(lua_State *L) {
  check_task(L, 1);
  lua_settop(L, 2);
  if (!lua_isnil(L, 2)) {
    double s = luaL_checknumber(L, 2);
    luaL_argcheck(L, s >= 0, 2, "expected seconds >= 0");
    lua_pushnumber(L, dhsm_now() + s);
    lua_replace(L, 2);
    lua_pushnumber(L, s);
  } else {
    lua_pushnil(L);
  }
  return join_k(L, LUA_OK, 0);
}

static int task_cancel(lua_State *L) {
  task *t = check_task(L, 1);
  loop *lp = loop_of(L);
  if (task_finished(t)) return 0;
  if (t == lp->running) {                     /* cancelling oneself */
    if (dhsm_can_yield(L)) {
      lp->reason = Y_CANCEL;
      return lua_yield(L, 0);
    }
    return loop_raise_stop(L, Y_CANCEL);
  }
  task_kill(t, "cancelled", "task cancelled");
  return 0;
}

static int task_status(lua_State *L) {
  lua_pushstring(L, state_names[check_task(L, 1)->state]);
  return 1;
}

static int task_id(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_task(L, 1)->id);
  return 1;
}

/* task:traceback() -> where a failed task raised its error, or nil */
static int task_traceback(lua_State *L) {
  task *t = check_task(L, 1);
  if (t->state != T_FAILED) return 0;
  lua_getiuservalue(L, 1, 2);
  lua_getfield(L, -1, "traceback");
  return 1;
}

static int task_tostring(lua_State *L) {
  task *t = check_task(L, 1);
  lua_pushfstring(L, "task %d (%s)", (int)t->id, state_names[t->state]);
  return 1;
}

/* `local t <close> = dhsm.spawn(...)`: leaving the scope cancels it. */
static int task_close(lua_State *L) {
  task *t = check_task(L, 1);
  if (!task_finished(t) && t != loop_of(L)->running)
    task_kill(t, "cancelled", "task cancelled");
  return 0;
}

/* A failure nobody joined would vanish: say so when the handle goes. */
static int task_gc(lua_State *L) {
  task *t = check_task(L, 1);
  if (t->state != T_FAILED || t->joined) return 0;
  lua_getiuservalue(L, 1, 2);
  lua_getfield(L, -1, "err");
  lua_warning(L, "a task failed and nobody joined it: ", 1);
  lua_warning(L, luaL_tolstring(L, -1, NULL), 0);
  return 0;
}

/* ---- coroutine.resume / coroutine.wrap ----------------------------------- */

static int drive(lua_State *L, lua_State *co, int narg, int is_wrap);

static lua_State *driven_thread(lua_State *L, int is_wrap) {
  return lua_tothread(L, is_wrap ? lua_upvalueindex(1) : 1);
}

static int drive_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lua_State *co = driven_thread(L, (int)ctx);
  lua_xmove(L, co, 1);                        /* the revents for its wait */
  return drive(L, co, 1, (int)ctx);
}

/* Return what coroutine.resume / a wrap function returns. */
static int finish_resume(lua_State *L, lua_State *co, int st, int nres,
                         int is_wrap) {
  if (st == LUA_OK || st == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      return luaL_error(L, "too many results to resume");
    }
    lua_xmove(co, L, nres);
    if (is_wrap) return nres;
    lua_pushboolean(L, 1);
    lua_insert(L, -(nres + 1));
    return nres + 1;
  }
  if (is_wrap) {                              /* as lcorolib's auxwrap */
    int stat = lua_status(co);
    if (stat != LUA_OK && stat != LUA_YIELD) {
      lua_resetthread(co);
      lua_xmove(co, L, 1);
    } else {
      lua_xmove(co, L, 1);
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  lua_pushboolean(L, 0);
  lua_xmove(co, L, 1);
  return 2;
}

static int drive(lua_State *L, lua_State *co, int narg, int is_wrap) {
  loop *lp = loop_of(L);
  for (;;) {
    lua_State *saved = lp->running_thread;
    int nres;
    lp->running_thread = co;
    int st = lua_resume(co, L, narg, &nres);
    lp->running_thread = saved;
    if (st != LUA_YIELD || lp->reason == Y_NONE)
      return finish_resume(L, co, st, nres, is_wrap);
    lua_pop(co, nres);                        /* a scheduler yield */
    if (lp->running && lua_isyieldable(L))
      return lua_yieldk(L, 0, is_wrap, drive_k);
    if (lp->reason != Y_WAIT) {
      yield_reason why = lp->reason;
      lp->reason = Y_NONE;
      return loop_raise_stop(L, why);
    }
    lua_pushinteger(co, loop_block_pending(L, lp));
    narg = 1;
  }
}

static int co_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  int narg = lua_gettop(L) - 1;
  if (!lua_checkstack(co, narg)) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "too many arguments to resume");
    return 2;
  }
  lua_xmove(L, co, narg);
  return drive(L, co, narg, 0);
}

static int co_wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int narg = lua_gettop(L);
  if (!lua_checkstack(co, narg)) return luaL_error(L, "too many arguments to resume");
  lua_xmove(L, co, narg);
  return drive(L, co, narg, 1);
}

static int co_wrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, co_wrapped, 1);
  return 1;
}

static void install_coroutine_wrappers(lua_State *L) {
  lua_getglobal(L, "coroutine");
  if (lua_istable(L, -1)) {
    lua_pushcfunction(L, co_resume);
    lua_setfield(L, -2, "resume");
    lua_pushcfunction(L, co_wrap);
    lua_setfield(L, -2, "wrap");
  }
  lua_pop(L, 1);
}

/* ---- module ------------------------------------------------------------- */

int luaopen_dhsm_core(lua_State *L) {
  static const luaL_Reg task_methods[] = {
    {"join", task_join}, {"cancel", task_cancel}, {"status", task_status},
    {"id", task_id}, {"traceback", task_traceback}, {NULL, NULL}
  };
  static const luaL_Reg task_meta[] = {
    {"__tostring", task_tostring}, {"__close", task_close},
    {"__gc", task_gc}, {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"spawn", core_spawn}, {"sleep", core_sleep}, {"park", core_park},
    {"wake", core_wake}, {"current", core_current}, {"context", core_context},
    {"now", core_now}, {"set_interrupt_target", core_set_interrupt_target},
    {"interrupted", core_interrupted}, {NULL, NULL}
  };
  dhsm_newclass(L, TASK_MT, task_methods, task_meta);
  lua_pop(L, 1);
  install_coroutine_wrappers(L);
  luaL_newlib(L, funcs);
  return 1;
}
