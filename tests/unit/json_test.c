/* json_test - the audit log's JSON writer: escaping, numbers, tables,
** secrets and redaction, and the timestamp format. */
#include <math.h>
#include <stdio.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <lualib.h>

#include "dhsm/dhsm.h"
#include "json.h"
#include "runtime.h"

static lua_State *L;

static int setup(void **state) {
  (void)state;
  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_dhsm_secret);
  lua_setfield(L, -2, "dhsm.secret");
  lua_pop(L, 1);
  return L == NULL;
}

static int teardown(void **state) {
  (void)state;
  lua_close(L);
  return 0;
}

/* Encode the value Lua code `expr` evaluates to. */
static char *encode(const char *expr) {
  static char out[4096];
  char code[1024];
  snprintf(code, sizeof code, "return %s", expr);
  if (luaL_dostring(L, code) != LUA_OK) fail_msg("%s", lua_tostring(L, -1));
  dhsm_buf b = {0};
  dhsm_json_value(&b, L, -1);
  lua_pop(L, 1);
  snprintf(out, sizeof out, "%s", b.p ? b.p : "");
  dhsm_buf_free(&b);
  return out;
}

static void escapes_quotes_and_controls(void **state) {
  (void)state;
  assert_string_equal(encode("'a\"b\\\\c'"), "\"a\\\"b\\\\c\"");
  assert_string_equal(encode("'l1\\nl2\\t\\r'"), "\"l1\\nl2\\t\\r\"");
  assert_string_equal(encode("'\\1\\127'"), "\"\\u0001\\u007f\"");
}

static void keeps_utf8_escapes_invalid_bytes(void **state) {
  (void)state;
  assert_string_equal(encode("'caf\\u{E9} \\u{1F512}'"), "\"caf\xc3\xa9 \xf0\x9f\x94\x92\"");
  assert_string_equal(encode("'bad\\xff\\xc3('"), "\"bad\\u00ff\\u00c3(\"");
  /* an overlong encoding of '/' is not valid UTF-8 */
  assert_string_equal(encode("'\\xc0\\xaf'"), "\"\\u00c0\\u00af\"");
}

static void writes_numbers(void **state) {
  (void)state;
  assert_string_equal(encode("42"), "42");
  assert_string_equal(encode("-7"), "-7");
  assert_string_equal(encode("0.5"), "0.5");
  assert_string_equal(encode("1/0"), "null");
  assert_string_equal(encode("0/0"), "null");
  assert_string_equal(encode("math.maxinteger"), "9223372036854775807");
}

static void writes_arrays_and_objects(void **state) {
  (void)state;
  assert_string_equal(encode("{1, 'two', true}"), "[1,\"two\",true]");
  assert_string_equal(encode("{}"), "{}");
  assert_string_equal(encode("{a = {b = false}}"), "{\"a\":{\"b\":false}}");
  assert_string_equal(encode("{[1] = 'x', [3] = 'y'}"), "{\"1\":\"x\",\"3\":\"y\"}");
}

static void writes_secrets_and_redacts_sensitive_names(void **state) {
  (void)state;
  assert_string_equal(encode("require('dhsm.secret').value('hunter2')"), "\"<secret>\"");
  assert_string_equal(encode("{pin = '1234'}"), "{\"pin\":\"<redacted>\"}");
  assert_string_equal(encode("{so_pin = '1234'}"), "{\"so_pin\":\"<redacted>\"}");
  assert_string_equal(encode("{Client_Secret = 'x'}"), "{\"Client_Secret\":\"<redacted>\"}");
  assert_string_equal(encode("{x = {access_token = 'x'}}"), "{\"x\":{\"access_token\":\"<redacted>\"}}");
  /* names that merely look alike stay */
  assert_string_equal(encode("{spinner = 'x'}"), "{\"spinner\":\"x\"}");
  assert_string_equal(encode("{pin_attempts_left = 3}"), "{\"pin_attempts_left\":3}");
  /* a number is redacted as a string is: co_pin = 246810 */
  assert_string_equal(encode("{co_pin = 246810}"), "{\"co_pin\":\"<redacted>\"}");
  assert_string_equal(encode("{ok_password = true}"), "{\"ok_password\":true}");
  assert_true(dhsm_json_sensitive_key("password"));
  assert_false(dhsm_json_sensitive_key("target"));
  /* the whole name is searched, however long */
  assert_true(dhsm_json_sensitive_key("a_very_long_field_name_that_goes_on_and_on_past_sixty_four_chars_password"));
  assert_true(dhsm_json_sensitive_key("a_very_long_field_name_that_goes_on_and_on_past_sixty_four_chars_so_PIN"));
}

static void faithful_mode_keeps_plain_values_and_hides_secrets(void **state) {
  (void)state;
  dhsm_buf b = {0};
  if (luaL_dostring(L, "return {token_name = 'tok1', co_pin = 246810, "
                       "s = require('dhsm.secret').value('hunter2')}") != LUA_OK)
    fail_msg("%s", lua_tostring(L, -1));
  dhsm_json_faithful(&b, L, -1);
  lua_pop(L, 1);
  assert_non_null(strstr(b.p, "\"token_name\":\"tok1\""));
  assert_non_null(strstr(b.p, "\"co_pin\":246810"));
  assert_non_null(strstr(b.p, "\"s\":\"<secret>\""));
  assert_null(strstr(b.p, "hunter2"));
  dhsm_buf_free(&b);
}

static void stops_at_depth_and_cycles(void **state) {
  (void)state;
  char *s = encode("(function() local t = {} t.self = t return t end)()");
  assert_non_null(strstr(s, "<too deep>"));
  assert_string_equal(encode("print"), "\"<function>\"");
}

static void formats_rfc3339_in_utc(void **state) {
  (void)state;
  char out[32];
  struct timespec t = { .tv_sec = 1795858439, .tv_nsec = 123456789 };
  dhsm_rfc3339(out, &t);
  assert_string_equal(out, "2026-11-28T09:33:59.123Z");
  t.tv_sec = 0;
  t.tv_nsec = 0;
  dhsm_rfc3339(out, &t);
  assert_string_equal(out, "1970-01-01T00:00:00.000Z");
}

/* take(json, field) -> "value|rest" or "-" when not found */
static const char *take(const char *json, const char *field) {
  static char out[512];
  dhsm_buf v = {0}, rest = {0};
  if (!dhsm_json_take_string(json, strlen(json), field, &v, &rest)) {
    assert_null(v.p);
    assert_null(rest.p);
    return "-";
  }
  snprintf(out, sizeof out, "%.*s|%.*s", (int)v.len, v.p ? v.p : "", (int)rest.len, rest.p);
  dhsm_buf_free(&v);
  dhsm_buf_free(&rest);
  return out;
}

static void takes_one_string_field_out(void **state) {
  (void)state;
  assert_string_equal(take("{\"accessToken\": \"abc\", \"n\": 1}", "accessToken"), "abc|{\"accessToken\": null, \"n\": 1}");
  /* the key a second time, nested or repeated: the rest would hold a
  ** secret, so nothing is taken (the caller withholds the document) */
  assert_string_equal(take("{\"a\": {\"accessToken\": \"x\"}, \"accessToken\": \"y\"}", "accessToken"), "-");
  assert_string_equal(take("{\"accessToken\": \"a\", \"accessToken\" : \"b\"}", "accessToken"), "-");
  /* the name as a value is not the key */
  assert_string_equal(take("{\"t\": \"x\", \"note\": \"t\"}", "t"), "x|{\"t\": null, \"note\": \"t\"}");
  /* escapes decoded: \/ \" \\ \n \u00e9 and a surrogate pair */
  assert_string_equal(take("{\"t\":\"a\\/b\\\"c\\\\d\\ne\\u00e9\\ud83d\\ude00\"}", "t"),
                      "a/b\"c\\d\ne\xc3\xa9\xf0\x9f\x98\x80|{\"t\":null}");
  assert_string_equal(take("{\"t\": 5}", "t"), "-");                       /* not a string */
  assert_string_equal(take("{\"u\": \"x\"}", "t"), "-");                   /* absent */
  assert_string_equal(take("[\"t\", \"x\"]", "t"), "-");                   /* not an object */
  assert_string_equal(take("{\"t\": \"unterminated", "t"), "-");
  assert_string_equal(take("{\"t\": \"bad \\x escape\"}", "t"), "-");
  assert_string_equal(take("{\"t\": \"\\ud800 lone\"}", "t"), "-");
  assert_string_equal(take("{\"a\": [1, {\"b\": [}], \"t\": \"x\"}", "t"), "-"); /* malformed before it */
  assert_string_equal(take("", "t"), "-");
}

static void names_a_key_anywhere(void **state) {
  (void)state;
  const char *doc = "{\"a\": {\"access_token\" :\"x\"}, \"n\": \"access_token\"}";
  assert_true(dhsm_json_names_key(doc, strlen(doc), "access_token"));
  const char *value_only = "{\"n\": \"access_token\", \"m\": [\"access_token\"]}";
  assert_false(dhsm_json_names_key(value_only, strlen(value_only), "access_token"));
  assert_false(dhsm_json_names_key("\"access_token\"", 14, "access_token"));     /* no colon */
}

/* A key spelled with escapes is the key it decodes to: the document holding
** it is withheld, and a second copy of the field stops the take. */
static void names_an_escaped_key(void **state) {
  (void)state;
  const char *escaped = "{\"\\u0061ccess_token\": [\"S\"]}";
  assert_true(dhsm_json_names_key(escaped, strlen(escaped), "access_token"));
  assert_string_equal(take("{\"access_token\":\"A\",\"\\u0061ccess_token\":\"S\"}", "access_token"), "-");
  const char *value = "{\"n\": \"\\u0061ccess_token\"}";                    /* a value, not a key */
  assert_false(dhsm_json_names_key(value, strlen(value), "access_token"));
  const char *broken = "<html>\"\\u0061ccess_token: \n</html>";             /* not JSON, an escape: withheld */
  assert_true(dhsm_json_names_key(broken, strlen(broken), "access_token"));
  const char *page = "<html><a href=\"x\">no token\n</html>";                /* not JSON, nothing of it */
  assert_false(dhsm_json_names_key(page, strlen(page), "access_token"));
}

/* An allocator that refuses to grow anything once told to. */
static int refuse_growth;

static void *stingy_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (refuse_growth && (ptr == NULL || nsize > osize)) return NULL;
  return realloc(ptr, nsize);
}

static int push_field(lua_State *S) {
  const char *doc = "{\"access_token\": \"S3CRET\", \"n\": 1}";
  refuse_growth = 1;
  int pushed = dhsm_secret_push_json_field(S, doc, strlen(doc), "access_token", "test");
  refuse_growth = 0;
  return pushed ? 2 : 0;
}

/* Out of memory half-way through pushing the secret: a memory error, and
** the decoded value wiped and freed (make check's LeakSanitizer would
** report the buffers otherwise). */
static void a_memory_error_leaves_no_copy_of_the_secret(void **state) {
  (void)state;
  lua_State *S = lua_newstate(stingy_alloc, NULL);
  assert_non_null(S);
  luaL_requiref(S, "dhsm.secret", luaopen_dhsm_secret, 0);
  lua_pop(S, 1);
  lua_pushcfunction(S, push_field);
  assert_int_equal(lua_pcall(S, 0, 2, 0), LUA_ERRMEM);
  lua_close(S);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(escapes_quotes_and_controls),
    cmocka_unit_test(keeps_utf8_escapes_invalid_bytes),
    cmocka_unit_test(writes_numbers),
    cmocka_unit_test(writes_arrays_and_objects),
    cmocka_unit_test(writes_secrets_and_redacts_sensitive_names),
    cmocka_unit_test(faithful_mode_keeps_plain_values_and_hides_secrets),
    cmocka_unit_test(stops_at_depth_and_cycles),
    cmocka_unit_test(formats_rfc3339_in_utc),
    cmocka_unit_test(takes_one_string_field_out),
    cmocka_unit_test(names_a_key_anywhere),
    cmocka_unit_test(names_an_escaped_key),
    cmocka_unit_test(a_memory_error_leaves_no_copy_of_the_secret),
  };
  return cmocka_run_group_tests_name("json", tests, setup, teardown);
}
