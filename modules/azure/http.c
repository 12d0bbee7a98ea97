/*
** http.c - "dhsm.azure.http": HTTPS requests on the dhsm scheduler.
**
**   local s <close> = http.session{ ca_file = path, user_agent = "dhsm" }
**   local r = s:request{ method = "PUT", url = u, headers = { Authorization = {"Bearer ", tok} },
**                        body = json | form = { client_secret = secret, ... },
**                        timeout = 30, secret_field = "access_token" }
**   --> { status=, headers={lower-case name = value}, body=, json=, secret=, connects=, seconds= }
**
** Each request is one easy handle in its own multi handle, driven with
** curl_multi_socket_action.  The multi's sockets live in one epoll fd, so
** the task waits on a single fd (dhsm_wait) plus curl's timer.  A session
** holds a curl share handle: connections, DNS and TLS sessions are reused
** across requests and tasks.  Curl's callbacks only record (epoll_ctl, a
** timestamp); they never call Lua or curl.
**
** Secrets: header values and form fields may be dhsm.secret values (read
** here, never in Lua); with secret_field the named field of a JSON reply
** (a bearer token) comes back as a secret and the raw body is wiped.
*/
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <curl/curl.h>
#include <lauxlib.h>

#include "dhsm/dhsm.h"

#define SESSION_MT "dhsm.azure.session"
#define TRANSFER_MT "dhsm.azure.transfer"

typedef struct session {
  CURLSH *share;
  long requests, connections;
  int closed;
} session;
/* user value 1: ca_file, 2: user agent */

typedef struct transfer {
  CURLM *multi;
  CURL *easy;
  int epfd;
  double timer_at;            /* curl's timer, CLOCK_MONOTONIC s; < 0 none */
  double deadline;
  double started;
  int done;
  CURLcode result;
  struct curl_slist *headers;
  char *body;                 /* request body (may hold a secret) */
  size_t body_len;
  dhsm_buf reply, reply_headers;
  char errbuf[CURL_ERROR_SIZE];
} transfer;

/* ---- curl callbacks: record only ------------------------------------------ */

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
  (void)easy; (void)socketp;
  transfer *t = userp;
  if (what == CURL_POLL_REMOVE) {
    epoll_ctl(t->epfd, EPOLL_CTL_DEL, s, NULL);      /* may already be closed */
    return 0;
  }
  struct epoll_event ev = { .events = 0, .data.fd = s };
  if (what & CURL_POLL_IN) ev.events |= EPOLLIN;
  if (what & CURL_POLL_OUT) ev.events |= EPOLLOUT;
  if (epoll_ctl(t->epfd, EPOLL_CTL_MOD, s, &ev) < 0 && errno == ENOENT)
    epoll_ctl(t->epfd, EPOLL_CTL_ADD, s, &ev);
  return 0;
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp) {
  (void)multi;
  transfer *t = userp;
  t->timer_at = timeout_ms < 0 ? -1 : dhsm_now() + (double)timeout_ms / 1000.0;
  return 0;
}

static size_t on_data(char *p, size_t size, size_t n, void *userp) {
  dhsm_buf *b = userp;
  dhsm_buf_add(b, p, size * n);
  return b->oom ? 0 : size * n;
}

/* ---- transfer lifetime ---------------------------------------------------- */

static void wipe_free(char *p, size_t n) {
  if (p) explicit_bzero(p, n);
  free(p);
}

static void wipe_headers(struct curl_slist *h) {
  for (struct curl_slist *i = h; i; i = i->next) explicit_bzero(i->data, strlen(i->data));
  curl_slist_free_all(h);
}

static int transfer_gc(lua_State *L) {
  transfer *t = lua_touserdata(L, 1);
  if (t->multi && t->easy) curl_multi_remove_handle(t->multi, t->easy);
  if (t->easy) curl_easy_cleanup(t->easy);
  if (t->multi) curl_multi_cleanup(t->multi);
  if (t->epfd >= 0) close(t->epfd);
  wipe_headers(t->headers);
  wipe_free(t->body, t->body_len);
  dhsm_buf_free(&t->reply);
  dhsm_buf_free(&t->reply_headers);
  memset(t, 0, sizeof *t);
  t->epfd = -1;
  return 0;
}

/* ---- building the request ------------------------------------------------- */

/* Append the string (or number) or secret at idx to b. */
static void add_part(lua_State *L, dhsm_buf *b, int idx, const char *what) {
  size_t len;
  const char *p = dhsm_secret_test(L, idx, &len);
  if (p == NULL && lua_type(L, idx) != LUA_TSTRING && lua_type(L, idx) != LUA_TNUMBER)
    dhsm_usage_error(L, "http: %s must be a string or a secret, got %s", what, luaL_typename(L, idx));
  if (p == NULL) p = lua_tolstring(L, idx, &len);
  dhsm_buf_add(b, p, len);
}

/* A value: a string, a secret, or a list of them to concatenate. */
static void add_value(lua_State *L, dhsm_buf *b, int idx, const char *what) {
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) != LUA_TTABLE) {
    add_part(L, b, idx, what);
    return;
  }
  for (lua_Integer i = 1; lua_rawgeti(L, idx, i) != LUA_TNIL; i++) {
    add_part(L, b, -1, what);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static void set_headers(lua_State *L, transfer *t, int opts) {
  if (lua_getfield(L, opts, "headers") == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      dhsm_buf line = {0};
      if (lua_type(L, -2) != LUA_TSTRING)
        dhsm_usage_error(L, "http: header names must be strings");
      const char *name = lua_tostring(L, -2);
      if (*name == '\0' || strpbrk(name, ": \t\r\n") != NULL)
        dhsm_usage_error(L, "http: header name %s is not a token (no blank, colon or line end)", name);
      dhsm_buf_adds(&line, name);
      dhsm_buf_add(&line, ": ", 2);
      add_value(L, &line, -1, "a header value");
      /* a line end (or NUL) in a value would start another header - or
      ** another request - on the wire: refused, the value wiped first */
      if (!line.oom && (memchr(line.p, '\r', line.len) || memchr(line.p, '\n', line.len)
                        || memchr(line.p, '\0', line.len))) {
        explicit_bzero(line.p, line.len);
        dhsm_buf_free(&line);
        dhsm_usage_error(L, "http: the value of header %s holds a line end or NUL", name);
      }
      if (!line.oom) t->headers = curl_slist_append(t->headers, line.p);
      dhsm_buf_free(&line);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  t->headers = curl_slist_append(t->headers, "Expect:");   /* no 100-continue round trip */
  curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
}

static void add_escaped(dhsm_buf *b, CURL *easy, const char *p, size_t n) {
  char *e = curl_easy_escape(easy, p, (int)n);
  if (e) {
    dhsm_buf_adds(b, e);
    explicit_bzero(e, strlen(e));
    curl_free(e);
  }
}

/* form = { name = string|secret }: application/x-www-form-urlencoded */
static void build_form(lua_State *L, transfer *t, int form) {
  dhsm_buf b = {0};
  lua_pushnil(L);
  while (lua_next(L, form)) {
    dhsm_buf value = {0};
    size_t klen;
    const char *k = lua_tolstring(L, -2, &klen);
    if (lua_type(L, -2) != LUA_TSTRING) dhsm_usage_error(L, "http: form field names must be strings");
    add_value(L, &value, -1, "a form value");
    if (b.len) dhsm_buf_add(&b, "&", 1);
    add_escaped(&b, t->easy, k, klen);
    dhsm_buf_add(&b, "=", 1);
    add_escaped(&b, t->easy, value.p ? value.p : "", value.len);
    dhsm_buf_free(&value);
    lua_pop(L, 1);
  }
  t->body = b.p;
  t->body_len = b.len;
  t->headers = curl_slist_append(t->headers, "Content-Type: application/x-www-form-urlencoded");
  curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
}

static void set_body(lua_State *L, transfer *t, int opts) {
  int top = lua_gettop(L);
  if (lua_getfield(L, opts, "form") == LUA_TTABLE) {
    build_form(L, t, lua_gettop(L));
  } else if (lua_getfield(L, opts, "body"), !lua_isnil(L, -1)) {
    dhsm_buf b = {0};
    add_value(L, &b, -1, "body");
    t->body = b.p ? b.p : calloc(1, 1);
    t->body_len = b.len;
  }
  lua_settop(L, top);
  if (t->body) {
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->body);
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)t->body_len);
  }
}

static const char *opt_string(lua_State *L, int opts, const char *name, const char *def) {
  lua_getfield(L, opts, name);
  const char *v = luaL_optstring(L, -1, def);
  lua_pop(L, 1);     /* the string stays alive in the options table */
  return v;
}

static void configure(lua_State *L, transfer *t, session *s, int opts) {
  const char *method = opt_string(L, opts, "method", "GET");
  lua_getfield(L, opts, "url");
  if (lua_type(L, -1) != LUA_TSTRING) dhsm_usage_error(L, "http: 'url' must be a string");
  size_t ulen;
  const char *url = lua_tolstring(L, -1, &ulen);
  for (size_t i = 0; i < ulen; i++)
    if ((unsigned char)url[i] <= 0x20 || url[i] == 0x7f)
      dhsm_usage_error(L, "http: the url holds a blank or control character (byte %d)", (int)(unsigned char)url[i]);
  curl_easy_setopt(t->easy, CURLOPT_URL, url);
  lua_pop(L, 1);
  /* a body turns curl's GET into a POST: a read carries none */
  int has_body = lua_getfield(L, opts, "body") != LUA_TNIL;
  has_body = (lua_getfield(L, opts, "form") != LUA_TNIL) || has_body;
  lua_pop(L, 2);
  if (has_body && (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0))
    dhsm_usage_error(L, "http: a %s carries no body (curl would send it as a POST)", method);
  if (strcmp(method, "HEAD") == 0) curl_easy_setopt(t->easy, CURLOPT_NOBODY, 1L);
  else if (strcmp(method, "GET") != 0) curl_easy_setopt(t->easy, CURLOPT_CUSTOMREQUEST, method);
  lua_getiuservalue(L, 1, 1);
  if (lua_isstring(L, -1)) curl_easy_setopt(t->easy, CURLOPT_CAINFO, lua_tostring(L, -1));
  lua_getiuservalue(L, 1, 2);
  curl_easy_setopt(t->easy, CURLOPT_USERAGENT, luaL_optstring(L, -1, "dhsm/" DHSM_VERSION));
  lua_pop(L, 2);            /* the session's user values keep the strings alive */
  curl_easy_setopt(t->easy, CURLOPT_SHARE, s->share);
  curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(t->easy, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(t->easy, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, &t->reply);
  curl_easy_setopt(t->easy, CURLOPT_HEADERFUNCTION, on_data);
  curl_easy_setopt(t->easy, CURLOPT_HEADERDATA, &t->reply_headers);
  curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  set_headers(L, t, opts);
  set_body(L, t, opts);
  /* A finished transfer gives its connection back to the shared cache,
  ** which keeps at most this many (curl's default: 4 per easy handle of
  ** the multi, so 4 here). */
  curl_multi_setopt(t->multi, CURLMOPT_MAXCONNECTS, 32L);
  curl_multi_setopt(t->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(t->multi, CURLMOPT_SOCKETDATA, t);
  curl_multi_setopt(t->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(t->multi, CURLMOPT_TIMERDATA, t);
}

/* ---- the reply -------------------------------------------------------------- */

/* Headers of the last response (a 100 Continue or a redirect came before). */
static void push_headers(lua_State *L, transfer *t) {
  lua_newtable(L);
  const char *p = t->reply_headers.p, *end = p ? p + t->reply_headers.len : NULL;
  while (p && p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (eol == NULL) eol = end;
    size_t n = (size_t)(eol - p);
    if (n > 0 && p[n - 1] == '\r') n--;
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
      lua_pop(L, 1);
      lua_newtable(L);
    } else {
      const char *colon = memchr(p, ':', n);
      if (colon) {
        luaL_Buffer name;
        luaL_buffinit(L, &name);
        for (const char *c = p; c < colon; c++) luaL_addchar(&name, (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c));
        luaL_pushresult(&name);
        const char *v = colon + 1;
        while (v < p + n && (*v == ' ' || *v == '\t')) v++;
        lua_pushlstring(L, v, (size_t)(p + n - v));
        lua_settable(L, -3);
      }
    }
    p = eol + 1;
  }
}

/* With secret_field: take that field of the JSON reply out as a secret
** (result.secret; decoded in C, never a Lua string) and give the rest as
** result.json; 0 when there is no such field (an error reply), and the
** body is returned as usual - unless it names the field: then it is
** withheld (push_result). */
static int extract_secret(lua_State *L, transfer *t, const char *field, int result) {
  int top = lua_gettop(L);
  if (!dhsm_secret_push_json_field(L, t->reply.p, t->reply.len, field, "http reply")) return 0;
  lua_getglobal(L, "require");                        /* secret rest require */
  lua_pushliteral(L, "cjson");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "decode");
  lua_pushvalue(L, top + 2);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_istable(L, -1)) {
    lua_settop(L, top);
    return 0;
  }
  lua_setfield(L, result, "json");
  lua_pushvalue(L, top + 1);
  lua_setfield(L, result, "secret");
  lua_settop(L, top);
  return 1;
}

static int push_result(lua_State *L, session *s, transfer *t, const char *secret_field) {
  long status = 0, connects = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &connects);
  s->requests++;
  s->connections += connects;
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "status");
  lua_pushinteger(L, connects);
  lua_setfield(L, -2, "connects");
  lua_pushnumber(L, dhsm_now() - t->started);
  lua_setfield(L, -2, "seconds");
  push_headers(L, t);
  lua_setfield(L, -2, "headers");
  if (secret_field && extract_secret(L, t, secret_field, lua_gettop(L))) return 1;
  if (secret_field && t->reply.p && dhsm_json_names_key(t->reply.p, t->reply.len, secret_field)) {
    lua_pushfstring(L, "(reply withheld: it holds %s but could not be read as one JSON string field)", secret_field);
  } else {
    lua_pushlstring(L, t->reply.p ? t->reply.p : "", t->reply.len);
  }
  lua_setfield(L, -2, "body");
  return 1;
}

static const char *curl_code_name(CURLcode c) {
  switch (c) {
    case CURLE_COULDNT_RESOLVE_HOST: return "CouldNotResolveHost";
    case CURLE_COULDNT_CONNECT: return "ConnectionRefused";
    case CURLE_OPERATION_TIMEDOUT: return "Timeout";
    case CURLE_SSL_CONNECT_ERROR: return "TlsHandshakeFailed";
    case CURLE_PEER_FAILED_VERIFICATION: return "TlsVerificationFailed";
    case CURLE_SEND_ERROR: return "SendFailed";
    case CURLE_RECV_ERROR: return "ReceiveFailed";
    case CURLE_GOT_NOTHING: return "EmptyReply";
    case CURLE_PARTIAL_FILE: return "ReplyCutShort";
    case CURLE_SSL_CACERT_BADFILE: return "BadCaFile";
    default: return "TransferFailed";
  }
}

static int transfer_failed(lua_State *L, transfer *t) {
  CURLcode c = t->result;
  int retryable = c != CURLE_SSL_CACERT_BADFILE && c != CURLE_PEER_FAILED_VERIFICATION &&
                  c != CURLE_URL_MALFORMAT && c != CURLE_UNSUPPORTED_PROTOCOL;
  char *url = NULL;
  curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &url);
  dhsm_error_new(L, "net", curl_code_name(c), retryable, "%s: %s", url ? url : "request",
                 t->errbuf[0] ? t->errbuf : curl_easy_strerror(c));
  lua_pushinteger(L, (lua_Integer)c);
  lua_setfield(L, -2, "curl_code");
  return lua_error(L);
}

/* ---- driving ------------------------------------------------------------------ */

static void drive(transfer *t) {
  struct epoll_event ev[16];
  int running, n = epoll_wait(t->epfd, ev, 16, 0);
  for (int i = 0; i < n; i++) {
    int flags = 0;
    if (ev[i].events & (EPOLLIN | EPOLLHUP)) flags |= CURL_CSELECT_IN;
    if (ev[i].events & EPOLLOUT) flags |= CURL_CSELECT_OUT;
    if (ev[i].events & EPOLLERR) flags |= CURL_CSELECT_ERR;
    curl_multi_socket_action(t->multi, ev[i].data.fd, flags, &running);
  }
  if (t->timer_at >= 0 && t->timer_at <= dhsm_now()) {
    t->timer_at = -1;
    curl_multi_socket_action(t->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  }
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(t->multi, &left)) != NULL) {
    if (m->msg == CURLMSG_DONE && m->easy_handle == t->easy) {
      t->done = 1;
      t->result = m->data.result;
    }
  }
}

enum { STARTED, WAITED };
/* Stack while a request runs: 1 session, 2 options, 3 transfer. */

static int request_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  session *s = luaL_checkudata(L, 1, SESSION_MT);
  transfer *t = luaL_checkudata(L, 3, TRANSFER_MT);
  if (ctx == WAITED) dhsm_wait_result(L);
  drive(t);
  if (t->done) {
    if (t->result != CURLE_OK) return transfer_failed(L, t);
    lua_getfield(L, 2, "secret_field");
    const char *field = lua_tostring(L, -1);
    return push_result(L, s, t, field);
  }
  double now = dhsm_now();
  if (now >= t->deadline) {
    t->result = CURLE_OPERATION_TIMEDOUT;
    snprintf(t->errbuf, sizeof t->errbuf, "no complete reply within the request timeout");
    return transfer_failed(L, t);
  }
  double wait = t->deadline - now;
  if (t->timer_at >= 0 && t->timer_at - now < wait) wait = t->timer_at - now;
  return dhsm_wait(L, t->epfd, POLLIN, wait < 0 ? 0 : wait, WAITED, request_k);
}

static session *check_open_session(lua_State *L) {
  session *s = luaL_checkudata(L, 1, SESSION_MT);
  if (s->closed) dhsm_usage_error(L, "http: this session is closed");
  return s;
}

/* session:request{method=, url=, headers=, body=|form=, timeout=, secret_field=} */
static int session_request(lua_State *L) {
  session *s = check_open_session(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  transfer *t = lua_newuserdatauv(L, sizeof *t, 0);
  memset(t, 0, sizeof *t);
  t->epfd = -1;
  t->timer_at = -1;
  luaL_setmetatable(L, TRANSFER_MT);
  lua_getfield(L, 2, "timeout");
  double timeout = luaL_optnumber(L, -1, 60);
  lua_pop(L, 1);
  t->started = dhsm_now();
  t->deadline = t->started + timeout;
  t->epfd = epoll_create1(EPOLL_CLOEXEC);
  t->multi = curl_multi_init();
  t->easy = curl_easy_init();
  if (t->epfd < 0 || !t->multi || !t->easy) return luaL_error(L, "http: cannot set up a transfer");
  configure(L, t, s, 2);
  curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
  curl_multi_add_handle(t->multi, t->easy);        /* sets curl's timer */
  return request_k(L, LUA_OK, STARTED);
}

/* ---- sessions ----------------------------------------------------------------- */

static int session_stats(lua_State *L) {
  session *s = luaL_checkudata(L, 1, SESSION_MT);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, s->requests);
  lua_setfield(L, -2, "requests");
  lua_pushinteger(L, s->connections);
  lua_setfield(L, -2, "connections");
  return 1;
}

/* close and __gc.  curl refuses to free a share that an easy handle still
** uses (CURLSHE_IN_USE): a finished transfer keeps its handle until it is
** collected, so an explicit close may come first.  The share is then kept
** and freed by __gc, which runs after the transfers' (they are newer, and
** Lua finalizes in reverse order); dropping it would leak its connections
** and TLS sessions. */
static int session_close(lua_State *L) {
  session *s = lua_touserdata(L, 1);
  if (s == NULL) return 0;
  s->closed = 1;
  if (s->share && curl_share_cleanup(s->share) == CURLSHE_OK) s->share = NULL;
  return 0;
}

static int session_tostring(lua_State *L) {
  session *s = luaL_checkudata(L, 1, SESSION_MT);
  lua_pushfstring(L, "http session (%s, %d requests, %d connections)",
                  s->closed ? "closed" : "open", (int)s->requests, (int)s->connections);
  return 1;
}

/* http.session{ca_file=, user_agent=} */
static int http_session(lua_State *L) {
  lua_settop(L, 1);
  session *s = lua_newuserdatauv(L, sizeof *s, 2);
  memset(s, 0, sizeof *s);
  s->closed = 1;                       /* until the share exists, as liolib does */
  luaL_setmetatable(L, SESSION_MT);
  if (lua_istable(L, 1)) {
    lua_getfield(L, 1, "ca_file");
    if (!lua_isnil(L, -1) && !lua_isstring(L, -1)) dhsm_usage_error(L, "http.session: 'ca_file' must be a path");
    lua_setiuservalue(L, 2, 1);
    lua_getfield(L, 1, "user_agent");
    lua_setiuservalue(L, 2, 2);
  }
  s->share = curl_share_init();
  if (s->share == NULL) return luaL_error(L, "http: cannot create a curl share");
  curl_share_setopt(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
  curl_share_setopt(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  curl_share_setopt(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  s->closed = 0;
  return 1;
}

static int global_cleanup(lua_State *L) {
  (void)L;
  curl_global_cleanup();
  return 0;
}

int luaopen_dhsm_azure_http(lua_State *L) {
  static const luaL_Reg session_methods[] = {
    {"request", session_request}, {"stats", session_stats}, {"close", session_close}, {NULL, NULL}
  };
  static const luaL_Reg session_meta[] = {
    {"__gc", session_close}, {"__close", session_close}, {"__tostring", session_tostring}, {NULL, NULL}
  };
  static const luaL_Reg transfer_meta[] = {
    {"__gc", transfer_gc}, {"__close", transfer_gc}, {NULL, NULL}
  };
  static const luaL_Reg funcs[] = { {"session", http_session}, {NULL, NULL} };
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return luaL_error(L, "curl_global_init failed");
  dhsm_newclass(L, SESSION_MT, session_methods, session_meta);
  dhsm_newclass(L, TRANSFER_MT, NULL, transfer_meta);
  lua_pop(L, 2);
  luaL_newlib(L, funcs);
  lua_newuserdatauv(L, 0, 0);        /* global teardown when the state closes */
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, global_cleanup);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, -2, "_curl_global");
  return 1;
}
