/*
** net.c - "dhsm.net.core": the network path between a client and an appliance.
**
**   core.tcp{host=, port=, timeout=}  --> {open=true, ms=} | {open=false, reason=, ms=}
**   core.tls{host=, port=, timeout=, ca_file=, client_cert=, client_key=, server_name=}
**       --> {ok=, protocol=, cipher=, verify={ok=, error=}, chain={...}, alert=, alert_code=, reason=, banner=, ms=}
**       alert: the peer's fatal alert by its RFC 8446 name, '_' as a space ("certificate required")
**   core.certs(pem_text) --> {{subject=, issuer=, serial=, not_before=, not_after=,
**                              days_left=, sha256=, sha1=, pem=}, ...}
**
** A probe's answer is not an error: a refused port or a failed handshake
** comes back as data.  Only bad input raises.  Connects and handshakes are
** non-blocking on the scheduler (EINPROGRESS -> POLLOUT, WANT_READ/WRITE).
** By default certificate verification does not abort the handshake: it is
** recorded and reported apart from what the peer said (its alert), because
** "the server is not trusted here" and "the server does not trust us" need
** different fixes.  strict=true aborts as a real client would.
*/
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "dhsm/dhsm.h"

#define PROBE_MT "dhsm.net.probe"

typedef struct probe {
  struct addrinfo *addrs, *next;
  int fd;
  int stage;
  double started, deadline;
  int last_errno;
  SSL_CTX *ctx;
  SSL *ssl;
  char alert[96];             /* the peer's fatal alert, if any, by name */
  int alert_code;             /* ... and its number */
  char host[256];
  int port;
} probe;
/* Stack of a running probe: 1 options, 2 probe */

enum { FIRST, WAITED };
enum { S_CONNECT, S_CONNECTING, S_HANDSHAKE, S_READ };

/* ---- lifetime ---------------------------------------------------------- */

static void probe_close_socket(probe *p) {
  if (p->fd >= 0) close(p->fd);
  p->fd = -1;
}

static int probe_gc(lua_State *L) {
  probe *p = lua_touserdata(L, 1);
  if (p->ssl) SSL_free(p->ssl);
  if (p->ctx) SSL_CTX_free(p->ctx);
  p->ssl = NULL;
  p->ctx = NULL;
  probe_close_socket(p);
  if (p->addrs) freeaddrinfo(p->addrs);
  p->addrs = p->next = NULL;
  return 0;
}

static double elapsed_ms(probe *p) {
  return (dhsm_now() - p->started) * 1000;
}

/* ---- options ------------------------------------------------------------ */

static probe *new_probe(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  dhsm_endpoint ep;
  dhsm_check_endpoint(L, 1, "net", 0, 5, &ep);
  probe *p = lua_newuserdatauv(L, sizeof *p, 0);
  memset(p, 0, sizeof *p);
  p->fd = -1;
  luaL_setmetatable(L, PROBE_MT);
  snprintf(p->host, sizeof p->host, "%s", ep.host);
  p->port = ep.port;
  double timeout = ep.timeout;
  p->started = dhsm_now();
  p->deadline = p->started + timeout;
  return p;
}

/* ---- TCP ------------------------------------------------------------------ */

static const char *reason_of(int err) {
  switch (err) {
    case ECONNREFUSED: return "refused";
    case ETIMEDOUT: return "timeout";
    case ENETUNREACH: case EHOSTUNREACH: case ENETDOWN: case EHOSTDOWN: return "unreachable";
    default: return "error";
  }
}

/* Resolve; on failure push the {open=false, reason="dns"} answer and return 0. */
static int resolve(lua_State *L, probe *p) {
  char service[8];
  snprintf(service, sizeof service, "%d", p->port);
  struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC };
  int rc = getaddrinfo(p->host, service, &hints, &p->addrs);
  if (rc == 0) {
    p->next = p->addrs;
    return 1;
  }
  lua_createtable(L, 0, 4);
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "open");
  lua_pushliteral(L, "dns");
  lua_setfield(L, -2, "reason");
  lua_pushstring(L, gai_strerror(rc));
  lua_setfield(L, -2, "message");
  lua_pushnumber(L, elapsed_ms(p));
  lua_setfield(L, -2, "ms");
  return 0;
}

/* Advance the connect; returns 1 connected, 0 waiting (dhsm_wait pending
** through *k_result), -1 failed (p->last_errno set). */
static int connect_step(probe *p) {
  for (;;) {
    if (p->stage == S_CONNECT) {
      struct addrinfo *a = p->next;
      if (a == NULL) return -1;
      p->next = a->ai_next;
      p->fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
      if (p->fd < 0) { p->last_errno = errno; continue; }
      if (connect(p->fd, a->ai_addr, a->ai_addrlen) == 0) return 1;
      if (errno == EINPROGRESS) { p->stage = S_CONNECTING; return 0; }
      p->last_errno = errno;
      probe_close_socket(p);
    } else {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0) return 1;
      p->last_errno = err;
      probe_close_socket(p);
      p->stage = S_CONNECT;
    }
  }
}

/* Our end's port: the peer the server's log names this connection by. */
static void push_local_port(lua_State *L, probe *p) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (p->fd < 0 || getsockname(p->fd, (struct sockaddr *)&ss, &len) != 0) return;
  if (ss.ss_family == AF_INET) lua_pushinteger(L, ntohs(((struct sockaddr_in *)&ss)->sin_port));
  else if (ss.ss_family == AF_INET6) lua_pushinteger(L, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
  else return;
  lua_setfield(L, -2, "local_port");
}

/* The answer; an open port's answer names our end (local_port), so a
** caller can tell its own probe in the server's log. */
static void push_tcp_answer(lua_State *L, probe *p, int open, const char *reason) {
  lua_createtable(L, 0, 5);
  if (open) push_local_port(L, p);
  probe_close_socket(p);             /* a probe leaves no connection behind */
  lua_pushboolean(L, open);
  lua_setfield(L, -2, "open");
  if (!open) {
    lua_pushstring(L, reason);
    lua_setfield(L, -2, "reason");
    if (p->last_errno) {
      lua_pushstring(L, strerror(p->last_errno));
      lua_setfield(L, -2, "message");
    }
  }
  lua_pushnumber(L, elapsed_ms(p));
  lua_setfield(L, -2, "ms");
}

static int tcp_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  probe *p = luaL_checkudata(L, 2, PROBE_MT);
  if (ctx == WAITED && dhsm_wait_result(L) == 0) {
    push_tcp_answer(L, p, 0, "timeout");
    return 1;
  }
  int r = connect_step(p);
  if (r == 0) return dhsm_wait(L, p->fd, POLLOUT, p->deadline - dhsm_now(), WAITED, tcp_k);
  push_tcp_answer(L, p, r > 0, reason_of(p->last_errno));
  return 1;
}

/* tcp{host=, port=, timeout=5} */
static int net_tcp(lua_State *L) {
  probe *p = new_probe(L);
  if (!resolve(L, p)) return 1;
  p->stage = S_CONNECT;
  return tcp_k(L, LUA_OK, FIRST);
}

/* ---- certificates ---------------------------------------------------------- */

static void push_bio(lua_State *L, BIO *b) {
  char *data;
  long n = BIO_get_mem_data(b, &data);
  lua_pushlstring(L, data, n > 0 ? (size_t)n : 0);
}

static void push_name(lua_State *L, const X509_NAME *name) {
  BIO *b = BIO_new(BIO_s_mem());
  X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253);
  push_bio(L, b);
  BIO_free(b);
}

static void push_time(lua_State *L, const ASN1_TIME *t) {
  struct tm tm;
  char out[32];
  if (ASN1_TIME_to_tm(t, &tm) == 1 && strftime(out, sizeof out, "%Y-%m-%dT%H:%M:%SZ", &tm) > 0)
    lua_pushstring(L, out);
  else
    lua_pushnil(L);
}

static void push_digest(lua_State *L, const X509 *x, const EVP_MD *md) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  char hex[EVP_MAX_MD_SIZE * 3 + 1];
  X509_digest(x, md, d, &n);
  for (unsigned int i = 0; i < n; i++) snprintf(hex + 3 * i, 4, i + 1 < n ? "%02X:" : "%02X", d[i]);
  lua_pushlstring(L, hex, n ? 3 * n - 1 : 0);
}

/* One certificate as a table. */
static void push_cert(lua_State *L, X509 *x) {
  lua_createtable(L, 0, 10);
  push_name(L, X509_get_subject_name(x));
  lua_setfield(L, -2, "subject");
  push_name(L, X509_get_issuer_name(x));
  lua_setfield(L, -2, "issuer");
  BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
  char *serial = bn ? BN_bn2hex(bn) : NULL;
  lua_pushstring(L, serial ? serial : "");
  lua_setfield(L, -2, "serial");
  OPENSSL_free(serial);
  BN_free(bn);
  push_time(L, X509_get0_notBefore(x));
  lua_setfield(L, -2, "not_before");
  push_time(L, X509_get0_notAfter(x));
  lua_setfield(L, -2, "not_after");
  int days = 0, secs = 0;
  if (ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x))) {
    lua_pushinteger(L, days - (secs < 0 ? 1 : 0));
    lua_setfield(L, -2, "days_left");
  }
  push_digest(L, x, EVP_sha256());
  lua_setfield(L, -2, "sha256");
  push_digest(L, x, EVP_sha1());
  lua_setfield(L, -2, "sha1");
  lua_pushboolean(L, X509_check_issued(x, x) == X509_V_OK);
  lua_setfield(L, -2, "self_signed");
  BIO *b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, x);
  push_bio(L, b);
  BIO_free(b);
  lua_setfield(L, -2, "pem");
}

/* certs(pem_text) -> list of every certificate in the text */
static int net_certs(lua_State *L) {
  size_t len;
  const char *pem = luaL_checklstring(L, 1, &len);
  BIO *b = BIO_new_mem_buf(pem, (int)len);
  lua_newtable(L);
  int n = 0;
  X509 *x;
  while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
    push_cert(L, x);
    lua_rawseti(L, -2, ++n);
    X509_free(x);
  }
  ERR_clear_error();
  BIO_free(b);
  return 1;
}

/* ---- TLS ------------------------------------------------------------------- */

/* Accept any chain during the handshake; the verdict is read afterwards. */
static int keep_going(int ok, X509_STORE_CTX *ctx) {
  (void)ok; (void)ctx;
  return 1;
}

/* An alert's name from its number: RFC 8446 section 6 (and the TLS 1.2
** numbers it reserves), '_' read as a space, the way OpenSSL's error
** strings and the appliance's NTLS log spell them ("unknown ca").  Our own
** table because OpenSSL 3.0's SSL_alert_desc_string_long() predates the
** TLS 1.3 alerts and says "unknown" for certificate_required (116). */
static const char *alert_name(int code) {
  static const struct { int code; const char *name; } alerts[] = {
    {0, "close notify"}, {10, "unexpected message"}, {20, "bad record mac"},
    {21, "decryption failed"}, {22, "record overflow"}, {30, "decompression failure"},
    {40, "handshake failure"}, {41, "no certificate"}, {42, "bad certificate"},
    {43, "unsupported certificate"}, {44, "certificate revoked"}, {45, "certificate expired"},
    {46, "certificate unknown"}, {47, "illegal parameter"}, {48, "unknown ca"},
    {49, "access denied"}, {50, "decode error"}, {51, "decrypt error"},
    {60, "export restriction"}, {70, "protocol version"}, {71, "insufficient security"},
    {80, "internal error"}, {86, "inappropriate fallback"}, {90, "user canceled"},
    {100, "no renegotiation"}, {109, "missing extension"}, {110, "unsupported extension"},
    {111, "certificate unobtainable"}, {112, "unrecognized name"},
    {113, "bad certificate status response"}, {114, "bad certificate hash value"},
    {115, "unknown psk identity"}, {116, "certificate required"},
    {120, "no application protocol"},
  };
  for (size_t i = 0; i < sizeof alerts / sizeof alerts[0]; i++)
    if (alerts[i].code == code) return alerts[i].name;
  return NULL;
}

/* The peer's fatal alert: what it objected to.  (SSL_CB_READ_ALERT and
** SSL_CB_WRITE_ALERT share the alert bit: compare the whole mask.) */
static void on_info(const SSL *ssl, int where, int ret) {
  if ((where & SSL_CB_READ_ALERT) == SSL_CB_READ_ALERT && (ret >> 8) == SSL3_AL_FATAL) {
    probe *p = SSL_get_app_data(ssl);
    if (!p) return;
    int code = ret & 0xff;
    const char *name = alert_name(code);
    p->alert_code = code;
    if (name) snprintf(p->alert, sizeof p->alert, "%s", name);
    else snprintf(p->alert, sizeof p->alert, "unregistered alert %d", code);
  }
}

/* The passphrase of an encrypted client key, handed to OpenSSL straight
** from the secret's own bytes: never a Lua string, never copied. */
typedef struct passphrase {
  const char *bytes;  /* NULL: none given, so an encrypted key fails rather than prompt */
  size_t len;
} passphrase;

static int give_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)rwflag;
  const passphrase *pw = u;
  if (pw == NULL || pw->bytes == NULL || pw->len > (size_t)size) return 0;
  memcpy(buf, pw->bytes, pw->len);
  return (int)pw->len;
}

/* client_cert and client_key (PEM; the key PKCS#8 encrypted or not) into
** the context; client_key_passphrase, when given, must be a dhsm.secret. */
static void use_client_identity(lua_State *L, probe *p) {
  lua_getfield(L, 1, "client_cert");
  lua_getfield(L, 1, "client_key");
  lua_getfield(L, 1, "client_key_passphrase");
  const char *cert = lua_tostring(L, -3), *key = lua_tostring(L, -2);
  passphrase pw = { NULL, 0 };
  if (!lua_isnil(L, -1)) {
    if (!dhsm_is_secret(L, -1))
      dhsm_usage_error(L, "net.tls: client_key_passphrase must be a dhsm.secret (secret.env/file/prompt), got %s",
                       luaL_typename(L, -1));
    pw.bytes = dhsm_secret_check(L, -1, &pw.len);
  }
  if (cert && SSL_CTX_use_certificate_chain_file(p->ctx, cert) != 1)
    dhsm_usage_error(L, "net.tls: cannot read client_cert %s (a PEM certificate)", cert);
  SSL_CTX_set_default_passwd_cb(p->ctx, give_passphrase);
  SSL_CTX_set_default_passwd_cb_userdata(p->ctx, &pw);
  int ok = cert == NULL || SSL_CTX_use_PrivateKey_file(p->ctx, key ? key : cert, SSL_FILETYPE_PEM) == 1;
  SSL_CTX_set_default_passwd_cb_userdata(p->ctx, NULL);   /* pw lives on this stack frame only */
  if (!ok)
    dhsm_usage_error(L, "net.tls: cannot use client_key %s with client_cert %s%s", key ? key : cert, cert,
                     pw.bytes ? " (wrong passphrase, or not its key)" : " (encrypted? give client_key_passphrase)");
  lua_pop(L, 3);
}

static void setup_tls(lua_State *L, probe *p) {
  p->ctx = SSL_CTX_new(TLS_client_method());
  if (p->ctx == NULL) luaL_error(L, "SSL_CTX_new failed");
  /* strict: fail the handshake on a bad chain, as a real client does (the
  ** server then logs our "unknown ca" alert); else report it and go on. */
  lua_getfield(L, 1, "strict");
  SSL_CTX_set_verify(p->ctx, SSL_VERIFY_PEER, lua_toboolean(L, -1) ? NULL : keep_going);
  SSL_CTX_set_info_callback(p->ctx, on_info);
  lua_getfield(L, 1, "ca_file");
  const char *ca = lua_tostring(L, -1);
  if (ca ? SSL_CTX_load_verify_locations(p->ctx, ca, NULL) != 1 : SSL_CTX_set_default_verify_paths(p->ctx) != 1)
    dhsm_usage_error(L, "net.tls: cannot read ca_file %s", ca ? ca : "(system default)");
  use_client_identity(L, p);
  lua_getfield(L, 1, "server_name");
  const char *sni = luaL_optstring(L, -1, p->host);
  p->ssl = SSL_new(p->ctx);
  SSL_set_app_data(p->ssl, p);
  SSL_set_fd(p->ssl, p->fd);
  SSL_set_tlsext_host_name(p->ssl, sni);
  SSL_set1_host(p->ssl, sni);              /* a name mismatch shows as a verify error */
  lua_settop(L, 2);
  ERR_clear_error();
}

static void push_chain(lua_State *L, probe *p) {
  STACK_OF(X509) *chain = SSL_get_peer_cert_chain(p->ssl);
  lua_newtable(L);
  for (int i = 0; chain && i < sk_X509_num(chain); i++) {
    push_cert(L, sk_X509_value(chain, i));
    lua_rawseti(L, -2, i + 1);
  }
}

/* The answer table; the connection is then shut (best effort, no waiting). */
static void push_tls_answer(lua_State *L, probe *p, int ok, const char *reason) {
  lua_createtable(L, 0, 11);
  lua_pushboolean(L, ok);
  lua_setfield(L, -2, "ok");
  lua_pushnumber(L, elapsed_ms(p));
  lua_setfield(L, -2, "ms");
  push_local_port(L, p);
  if (reason) {
    lua_pushstring(L, reason);
    lua_setfield(L, -2, "reason");
  }
  if (p->alert[0]) {
    lua_pushstring(L, p->alert);
    lua_setfield(L, -2, "alert");
    lua_pushinteger(L, p->alert_code);
    lua_setfield(L, -2, "alert_code");
  }
  if (p->ssl == NULL) return;
  unsigned long e = ERR_peek_last_error();
  if (e && !ok) {
    lua_pushstring(L, ERR_reason_error_string(e));
    lua_setfield(L, -2, "error");
  }
  ERR_clear_error();
  if (SSL_get0_peer_certificate(p->ssl) == NULL) return;
  lua_pushstring(L, SSL_get_version(p->ssl));
  lua_setfield(L, -2, "protocol");
  lua_pushstring(L, SSL_get_cipher_name(p->ssl));
  lua_setfield(L, -2, "cipher");
  long v = SSL_get_verify_result(p->ssl);
  lua_createtable(L, 0, 2);
  lua_pushboolean(L, v == X509_V_OK);
  lua_setfield(L, -2, "ok");
  if (v != X509_V_OK) {
    lua_pushstring(L, X509_verify_cert_error_string(v));
    lua_setfield(L, -2, "error");
  }
  lua_setfield(L, -2, "verify");
  push_chain(L, p);
  lua_setfield(L, -2, "chain");
}

static int tls_done(lua_State *L, probe *p, int ok, const char *reason) {
  push_tls_answer(L, p, ok, reason);
  if (p->ssl && ok) SSL_shutdown(p->ssl);
  ERR_clear_error();
  probe_close_socket(p);
  return 1;
}

static int tls_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  probe *p = luaL_checkudata(L, 2, PROBE_MT);
  int timed_out = ctx == WAITED && dhsm_wait_result(L) == 0;
  if (p->stage <= S_CONNECTING) {
    if (timed_out) return tls_done(L, p, 0, "timeout");
    int r = connect_step(p);
    if (r == 0) return dhsm_wait(L, p->fd, POLLOUT, p->deadline - dhsm_now(), WAITED, tls_k);
    if (r < 0) return tls_done(L, p, 0, reason_of(p->last_errno));
    p->stage = S_HANDSHAKE;
    setup_tls(L, p);
  }
  if (p->stage == S_HANDSHAKE) {
    if (timed_out) return tls_done(L, p, 0, "timeout");
    int rc = SSL_connect(p->ssl);
    if (rc != 1) {
      int e = SSL_get_error(p->ssl, rc);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return dhsm_wait(L, p->fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT,
                         p->deadline - dhsm_now(), WAITED, tls_k);
      return tls_done(L, p, 0, p->alert[0] ? "alert" : "handshake");
    }
    p->stage = S_READ;
    /* TLS 1.3 tells a rejected client certificate after the client's side
    ** of the handshake is done: listen briefly for the verdict (or the
    ** server's first words, which NTLS sends). */
    double grace = p->deadline - dhsm_now();
    p->deadline = dhsm_now() + (grace < 0.5 ? grace : 0.5);
  }
  char buf[512];
  int n = timed_out ? 0 : SSL_read(p->ssl, buf, sizeof buf - 1);
  if (!timed_out && n <= 0) {
    int e = SSL_get_error(p->ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
      return dhsm_wait(L, p->fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT,
                       p->deadline - dhsm_now(), WAITED, tls_k);
    if (p->alert[0]) return tls_done(L, p, 0, "alert");
  }
  tls_done(L, p, 1, NULL);
  if (n > 0) {
    buf[n] = '\0';
    lua_pushstring(L, buf);
    lua_setfield(L, -2, "banner");
  }
  return 1;
}

/* tls{host=, port=, timeout=5, ca_file=, client_cert=, client_key=, server_name=} */
static int net_tls(lua_State *L) {
  probe *p = new_probe(L);
  if (!resolve(L, p)) {
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "ok");
    return 1;
  }
  p->stage = S_CONNECT;
  return tls_k(L, LUA_OK, FIRST);
}

int luaopen_dhsm_net_core(lua_State *L) {
  static const luaL_Reg meta[] = { {"__gc", probe_gc}, {"__close", probe_gc}, {NULL, NULL} };
  static const luaL_Reg funcs[] = {
    {"tcp", net_tcp}, {"tls", net_tls}, {"certs", net_certs}, {NULL, NULL}
  };
  dhsm_newclass(L, PROBE_MT, NULL, meta);
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  return 1;
}
