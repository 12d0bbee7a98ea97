/* loop_test - dhsm_wait from C: a task blocked on a pipe wakes when data
** arrives, waits time out, and the same function blocks outside a task. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <lauxlib.h>

#include "dhsm/dhsm.h"
#include "runtime.h"

static lua_State *L;

enum { FIRST, WAITED };

/* read_pipe(fd, timeout) -> data | nil, "timeout" */
static int read_pipe_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  int fd = (int)luaL_checkinteger(L, 1);
  if (ctx == WAITED && dhsm_wait_result(L) == 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  char buf[256];
  ssize_t n = read(fd, buf, sizeof buf);
  if (n < 0 && errno == EAGAIN)
    return dhsm_wait(L, fd, POLLIN, luaL_checknumber(L, 2), WAITED, read_pipe_k);
  if (n < 0) return luaL_error(L, "read: %s", strerror(errno));
  lua_pushlstring(L, buf, (size_t)n);
  return 1;
}

static int read_pipe(lua_State *L) {
  return read_pipe_k(L, LUA_OK, FIRST);
}

/* pipe() -> read fd (non-blocking), write fd */
static int make_pipe(lua_State *L) {
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return luaL_error(L, "pipe");
  lua_pushinteger(L, fds[0]);
  lua_pushinteger(L, fds[1]);
  return 2;
}

static int write_fd(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  lua_pushinteger(L, write((int)luaL_checkinteger(L, 1), s, len));
  return 1;
}

static int setup(void **state) {
  (void)state;
  L = dhsm_newstate(NULL, 0);
  if (L == NULL) return 1;
  lua_register(L, "read_pipe", read_pipe);
  lua_register(L, "make_pipe", make_pipe);
  lua_register(L, "write_fd", write_fd);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  lua_close(L);
  return 0;
}

/* Run Lua code as the root task and return its first result as a string. */
static const char *run_task(const char *code) {
  static char out[512];
  if (luaL_loadstring(L, code) != LUA_OK) fail_msg("%s", lua_tostring(L, -1));
  int top = lua_gettop(L) - 1;
  if (dhsm_loop_pcall(L, 0, DHSM_LOOP_CANCEL_REST) != LUA_OK)
    fail_msg("task failed: %s", luaL_tolstring(L, -1, NULL));
  snprintf(out, sizeof out, "%s", lua_isnone(L, top + 1) ? "" : luaL_tolstring(L, top + 1, NULL));
  lua_settop(L, top);
  return out;
}

static void task_wakes_when_data_arrives(void **state) {
  (void)state;
  const char *r = run_task(
    "local rd, wr = make_pipe()\n"
    "local t0 = dhsm.now()\n"
    "local reader = dhsm.spawn(read_pipe, rd, 5)\n"
    "dhsm.spawn(function() dhsm.sleep(0.1) write_fd(wr, 'hello') end)\n"
    "local data = reader:join()\n"
    "local dt = dhsm.now() - t0\n"
    "return data .. (dt >= 0.09 and dt < 1 and ' in time' or (' after ' .. dt))");
  assert_string_equal(r, "hello in time");
}

static void task_wait_times_out(void **state) {
  (void)state;
  const char *r = run_task(
    "local rd = make_pipe()\n"
    "local t0 = dhsm.now()\n"
    "local data, err = read_pipe(rd, 0.05)\n"
    "return tostring(err) .. (dhsm.now() - t0 >= 0.045 and ' ok' or ' early')");
  assert_string_equal(r, "timeout ok");
}

static void blocks_outside_a_task(void **state) {
  (void)state;
  assert_int_equal(luaL_dostring(L,
    "local rd, wr = make_pipe()\n"
    "write_fd(wr, 'ready')\n"
    "local a = read_pipe(rd, 1)\n"
    "local b, err = read_pipe(rd, 0.02)\n"
    "return a .. '/' .. err"), LUA_OK);
  assert_string_equal(lua_tostring(L, -1), "ready/timeout");
  lua_pop(L, 1);
}

static void timers_fire_in_deadline_order(void **state) {
  (void)state;
  const char *r = run_task(
    "local order = {}\n"
    "local delays = {0.05, 0.01, 0.04, 0.02, 0.03}\n"
    "local ts = {}\n"
    "for i, d in ipairs(delays) do\n"
    "  ts[i] = dhsm.spawn(function() dhsm.sleep(d) order[#order + 1] = d end)\n"
    "end\n"
    "for _, t in ipairs(ts) do t:join() end\n"
    "return table.concat(order, ' ')");
  assert_string_equal(r, "0.01 0.02 0.03 0.04 0.05");
}

static void deadlock_is_reported(void **state) {
  (void)state;
  if (luaL_loadstring(L, "require('dhsm.core').park()") != LUA_OK) fail();
  assert_int_not_equal(dhsm_loop_pcall(L, 0, 0), LUA_OK);
  assert_true(dhsm_error_is(L, -1, "deadlock"));
  lua_pop(L, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(task_wakes_when_data_arrives),
    cmocka_unit_test(task_wait_times_out),
    cmocka_unit_test(blocks_outside_a_task),
    cmocka_unit_test(timers_fire_in_deadline_order),
    cmocka_unit_test(deadlock_is_reported),
  };
  return cmocka_run_group_tests_name("loop", tests, setup, teardown);
}
