/*
** loop_int.h - scheduler internals shared by loop.c (the engine) and
** task.c (the Lua face of tasks).  Not for modules: they use dhsm/loop.h.
*/
#ifndef DHSM_LOOP_INT_H
#define DHSM_LOOP_INT_H

#include <poll.h>
#include <lua.h>

typedef enum {
  T_READY, T_RUNNING, T_WAITING,         /* live */
  T_DONE, T_FAILED, T_CANCELLED          /* finished */
} task_state;

/* Why the running task gave control back to the loop. */
typedef enum { Y_NONE, Y_WAIT, Y_INTERRUPT, Y_CANCEL } yield_reason;

typedef struct loop loop;
typedef struct task task;

/* A task is the block of its Lua handle (full userdata "dhsm.task"):
** user value 1 = its thread, 2 = results {n=...} or failure, 3 = context. */
struct task {
  loop *lp;
  lua_State *co;
  unsigned long id;
  task_state state;
  int nargs;                  /* arguments waiting for the first resume */
  int started;
  int fd;                     /* waited fd or -1 */
  short events;
  double deadline;            /* CLOCK_MONOTONIC s, < 0 none */
  lua_Integer resume_value;   /* revents for the continuation; 0 = timeout */
  int heap_at, fd_at;         /* positions in the loop's arrays, -1 if absent */
  int resume_with_value;      /* it stopped in dhsm_wait: hand it revents */
  int joined;                 /* someone collected its outcome */
  task *all_prev, *all_next;  /* every live task */
  task *ready_prev, *ready_next;
  int in_ready;
  unsigned long ready_gen;     /* pass of run_ready it was queued in */
  task *join_target;          /* the task this one is joining */
  task *join_prev, *join_next;
  task *joiners;              /* tasks joining this one */
};

struct loop {
  lua_State *L;                       /* main thread */
  task *all;
  task *ready_head, *ready_tail;
  task **heap; int heap_n, heap_cap;  /* timers: min-heap on deadline */
  task **fdw; int fdw_n, fdw_cap;     /* tasks waiting on an fd */
  struct pollfd *pfd; task **pfd_task; int pfd_cap;
  task *running;                      /* task the loop is resuming */
  task *closing;                      /* task whose <close> handlers run (close_thread) */
  lua_State *running_thread;          /* innermost thread executing Lua */
  task *root;                         /* task given to dhsm_loop_pcall */
  task *interrupt_target;             /* cancelled on Ctrl-C (NULL: all) */
  yield_reason reason;
  struct { int fd; short events; double deadline; } pending;
  unsigned long next_id;
  unsigned long ready_gen;
  int depth;
};

#define TASK_MT "dhsm.task"
#define TASK_ANCHORS "dhsm.loop.anchors"

loop *loop_of(lua_State *L);
int task_finished(const task *t);

/* Create a task running the function below the top `nargs` values of L
** (both popped) and push its handle.  The task inherits the context of
** the running task. */
task *task_spawn(lua_State *L, int nargs);
void task_push_handle(lua_State *L, task *t);
/* Push the values of the results table {n=, ...} on top; returns n. */
int task_unpack_results(lua_State *L);
void task_wake(task *t, lua_Integer value);
void task_kill(task *t, const char *kind, const char *message);
void task_join_link(task *joiner, task *target);
void task_join_unlink(task *joiner);

/* Serve a wait recorded in lp->pending by blocking (no task can yield). */
int loop_block_pending(lua_State *L, loop *lp);

/* Raise the error used when Ctrl-C or a cancel reaches non-yieldable code. */
int loop_raise_stop(lua_State *L, yield_reason why);

/* The Lua module "dhsm.core" (task.c). */
int luaopen_dhsm_core(lua_State *L);

#endif
