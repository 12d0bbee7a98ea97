/*
** ssh.c - "dhsm.luna.ssh": SSH sessions with libssh2 on the dhsm scheduler.
** Private to dhsm.luna (runtime/modules.c): a runbook never holds a raw
** channel, so every line reaches LunaSH through dhsm.luna's login guard.
**
**   local s <close> = ssh.connect{ host = "10.0.2.4", port = 22, timeout = 30, known_hosts = path }
**                                    (the host key types known_hosts holds for it are asked for first)
**   ssh.is_rsa_key(path)             --> whether that private key file is RSA
**   s:hostkey()                      --> {type=, key= (base64), sha256= "SHA256:..."}
**   s:known_hosts(path)              --> "match" | "mismatch" | "notfound", known sha256
**                                        | "revoked", line (known_hosts.c reads the markers)
**   s:add_known_host(path)
**   s:replace_known_host(path)         (this host's key instead of the one of its type on file)
**   s:auth_password(user, secret) / s:auth_key(user, key_path [, passphrase])
**   local ch <close> = s:shell{ term = "vt100" }
**   ch:write_line(string | secret)  -- one line: control characters refused
**   ch:read([timeout]) --> data | "" (nothing yet) | nil (EOF)
**   ch:close()
**   s:scp_get(remote) --> data;  s:scp_put(remote, data [, mode])
**
** The session's socket is non-blocking.  Every libssh2 call is tried
** first; on LIBSSH2_ERROR_EAGAIN the operation waits (dhsm_wait) in the
** directions libssh2_session_block_directions() names, and its
** continuation calls it again.  The state of a multi-stage operation lives
** in the userdata, never in C locals (the NSE model, with real userdata
** channels that keep their session alive through a user value).
*/
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libssh2.h>
#include <lauxlib.h>
#include <openssl/evp.h>

#include "dhsm/dhsm.h"
#include "known_hosts.h"

#define SESSION_MT "dhsm.luna.session"
#define CHANNEL_MT "dhsm.luna.channel"

typedef struct sess {
  LIBSSH2_SESSION *ssh;
  int fd;
  int stage;                  /* of the running multi-stage operation */
  int busy;                   /* an operation is running */
  int ready;                  /* handshake done */
  int closed;
  double timeout;             /* seconds per operation */
  double deadline;            /* of the running operation */
  struct addrinfo *addrs, *next_addr;
  char host[256];
  int port;
  char hostkey_pref[256];     /* host key algorithms to offer first ("" = libssh2's order) */
} sess;

typedef struct chan {
  LIBSSH2_CHANNEL *ch;
  int stage;
  int closed;
} chan;
/* channel user value 1: its session */

enum { FIRST = 0, WAITED = 1 };

/* ---- errors ------------------------------------------------------------- */

static const char *last_error(sess *s) {
  char *msg = NULL;
  if (s->ssh) libssh2_session_last_error(s->ssh, &msg, NULL, 0);
  return msg && *msg ? msg : "unknown error";
}

static int raise_ssh(lua_State *L, sess *s, const char *kind, const char *code,
                     int retryable, const char *what) {
  s->busy = 0;
  return dhsm_raise(L, kind, code, retryable, "%s:%d: %s: %s", s->host, s->port, what, last_error(s));
}

/* A libssh2 error code after EAGAIN was ruled out. */
static int raise_rc(lua_State *L, sess *s, int rc, const char *what) {
  switch (rc) {
    case LIBSSH2_ERROR_SOCKET_DISCONNECT:
    case LIBSSH2_ERROR_SOCKET_RECV:
    case LIBSSH2_ERROR_SOCKET_SEND:
    case LIBSSH2_ERROR_CHANNEL_CLOSED:
      s->ready = 0;
      return raise_ssh(L, s, "net", "ConnectionLost", 0, what);
    case LIBSSH2_ERROR_AUTHENTICATION_FAILED:
    case LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED:
      return raise_ssh(L, s, "luna", "AuthenticationFailed", 0, what);
    default:
      return raise_ssh(L, s, "luna", "SshError", 0, what);
  }
}

static int op_timeout(lua_State *L, sess *s, const char *what) {
  s->busy = 0;
  char secs[32];
  snprintf(secs, sizeof secs, "%g", s->timeout);
  return dhsm_raise(L, "net", "Timeout", 1, "%s:%d: %s: no answer within %s s",
                    s->host, s->port, what, secs);
}

/* ---- waiting -------------------------------------------------------------- */

/* Wait in the directions libssh2 is blocked on, until the operation's deadline. */
static int wait_ssh(lua_State *L, sess *s, lua_KFunction k) {
  double left = s->deadline - dhsm_now();
  if (left <= 0) left = 0;
  int dir = libssh2_session_block_directions(s->ssh), ev = 0;
  if (dir & LIBSSH2_SESSION_BLOCK_INBOUND) ev |= POLLIN;
  if (dir & LIBSSH2_SESSION_BLOCK_OUTBOUND) ev |= POLLOUT;
  return dhsm_wait(L, s->fd, ev ? ev : POLLIN, left, WAITED, k);
}

/* In a continuation: 1 when the wait ran out. */
static int timed_out(lua_State *L, lua_KContext ctx) {
  return ctx == WAITED && dhsm_wait_result(L) == 0;
}

static sess *check_sess(lua_State *L, int idx) {
  sess *s = luaL_checkudata(L, idx, SESSION_MT);
  if (s->closed) dhsm_usage_error(L, "this SSH session is closed");
  return s;
}

/* Start an operation: one at a time per session. */
static sess *begin_op(lua_State *L, int idx) {
  sess *s = check_sess(L, idx);
  if (!s->ready) dhsm_raise(L, "net", "ConnectionLost", 0, "%s:%d: the SSH session is not connected", s->host, s->port);
  if (s->busy)
    dhsm_usage_error(L, "%s:%d: the SSH session is busy with another operation "
                     "(one task at a time; an interrupted operation leaves it unusable: reconnect)",
                     s->host, s->port);
  s->busy = 1;
  s->stage = 0;
  s->deadline = dhsm_now() + s->timeout;
  return s;
}

static int end_op(sess *s, int nresults) {
  s->busy = 0;
  return nresults;
}

/* ---- connect -------------------------------------------------------------- */

enum { C_TCP, C_TCP_WAIT, C_HANDSHAKE };

static void close_socket(sess *s) {
  if (s->fd >= 0) close(s->fd);
  s->fd = -1;
}

static int tcp_failed(lua_State *L, sess *s, int err) {
  s->busy = 0;
  close_socket(s);
  const char *code = err == ECONNREFUSED ? "ConnectionRefused" : err == ETIMEDOUT ? "Timeout" : "ConnectFailed";
  return dhsm_raise(L, "net", code, 1, "%s:%d: cannot connect: %s", s->host, s->port, strerror(err));
}

/* Offer the host key algorithms of s->hostkey_pref that this libssh2 has,
** in that order.  Filtered here: libssh2 1.10's method_pref strips an
** unknown name with an overlapping memcpy. */
static void set_hostkey_pref(sess *s) {
  const char **algs = NULL;
  int n = libssh2_session_supported_algs(s->ssh, LIBSSH2_METHOD_HOSTKEY, &algs);
  if (n <= 0) return;
  char out[sizeof s->hostkey_pref];
  size_t used = 0;
  for (const char *p = s->hostkey_pref; *p; p += *p == ',') {
    size_t len = strcspn(p, ",");
    for (int i = 0; i < n; i++) {
      if (strlen(algs[i]) != len || strncmp(algs[i], p, len) != 0) continue;
      if (used) out[used++] = ',';
      memcpy(out + used, p, len);      /* fits: out is as large as the list it filters */
      used += len;
      break;
    }
    p += len;
  }
  out[used] = '\0';
  libssh2_free(s->ssh, (void *)algs);
  if (used) (void)libssh2_session_method_pref(s->ssh, LIBSSH2_METHOD_HOSTKEY, out);
}

static int connect_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  sess *s = luaL_checkudata(L, 2, SESSION_MT);
  if (timed_out(L, ctx)) {
    close_socket(s);
    return op_timeout(L, s, s->stage == C_HANDSHAKE ? "SSH handshake" : "TCP connect");
  }
  for (;;) {
    if (s->stage == C_TCP) {
      struct addrinfo *a = s->next_addr;
      if (a == NULL) return tcp_failed(L, s, ECONNREFUSED);
      s->next_addr = a->ai_next;
      s->fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
      if (s->fd < 0) return tcp_failed(L, s, errno);
      int one = 1;         /* a command is a small write awaiting its answer: no Nagle delay */
      setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      if (connect(s->fd, a->ai_addr, a->ai_addrlen) == 0) {
        s->stage = C_HANDSHAKE;
      } else if (errno == EINPROGRESS) {
        s->stage = C_TCP_WAIT;
        return dhsm_wait(L, s->fd, POLLOUT, s->deadline - dhsm_now(), WAITED, connect_k);
      } else if (s->next_addr) {
        close_socket(s);
      } else {
        return tcp_failed(L, s, errno);
      }
    } else if (s->stage == C_TCP_WAIT) {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0) {
        s->stage = C_HANDSHAKE;
      } else if (s->next_addr) {
        close_socket(s);
        s->stage = C_TCP;
      } else {
        return tcp_failed(L, s, err);
      }
    } else {
      if (s->ssh == NULL) {
        s->ssh = libssh2_session_init();
        if (s->ssh == NULL) return luaL_error(L, "libssh2_session_init failed");
        libssh2_session_set_blocking(s->ssh, 0);
        /* Ask for the key type known_hosts holds, as OpenSSH does: an appliance
        ** offering RSA and ed25519 is then checked against the key on file.
        ** A list libssh2 cannot use leaves its default order. */
        if (s->hostkey_pref[0]) set_hostkey_pref(s);
      }
      int rc = libssh2_session_handshake(s->ssh, s->fd);
      if (rc == LIBSSH2_ERROR_EAGAIN) return wait_ssh(L, s, connect_k);
      if (rc != 0) return raise_rc(L, s, rc, "SSH handshake");
      freeaddrinfo(s->addrs);
      s->addrs = s->next_addr = NULL;
      s->ready = 1;
      lua_settop(L, 2);
      return end_op(s, 1);
    }
  }
}

/* The host key algorithms to ask for, from the known_hosts= option (a path). */
static void read_hostkey_pref(lua_State *L, sess *s) {
  int t = lua_getfield(L, 1, "known_hosts");
  if (t != LUA_TNIL && t != LUA_TSTRING)
    dhsm_usage_error(L, "luna: known_hosts must be a file path, got %s", luaL_typename(L, -1));
  if (t == LUA_TSTRING)
    kh_host_key_algorithms(lua_tostring(L, -1), s->host, s->port, s->hostkey_pref, sizeof s->hostkey_pref);
  lua_pop(L, 1);
}

/* connect{host=, port=22, timeout=30, known_hosts=path} -> session */
static int ssh_connect(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  dhsm_endpoint ep;
  dhsm_check_endpoint(L, 1, "luna", 22, 30, &ep);
  sess *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  s->fd = -1;
  luaL_setmetatable(L, SESSION_MT);
  snprintf(s->host, sizeof s->host, "%s", ep.host);
  s->port = ep.port;
  s->timeout = ep.timeout;
  read_hostkey_pref(L, s);
  char service[8];
  snprintf(service, sizeof service, "%d", ep.port);
  struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC };
  int rc = getaddrinfo(ep.host, service, &hints, &s->addrs);
  if (rc != 0)
    return dhsm_raise(L, "net", "CouldNotResolveHost", 1, "%s: %s", ep.host, gai_strerror(rc));
  s->next_addr = s->addrs;
  s->busy = 1;
  s->stage = C_TCP;
  s->deadline = dhsm_now() + ep.timeout;
  return connect_k(L, LUA_OK, FIRST);
}

/* ---- host keys ------------------------------------------------------------ */

static const char *key_type_name(int type) {
  switch (type) {
    case LIBSSH2_HOSTKEY_TYPE_RSA: return "ssh-rsa";
    case LIBSSH2_HOSTKEY_TYPE_DSS: return "ssh-dss";
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: return "ecdsa-sha2-nistp256";
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: return "ecdsa-sha2-nistp384";
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return "ecdsa-sha2-nistp521";
    case LIBSSH2_HOSTKEY_TYPE_ED25519: return "ssh-ed25519";
    default: return "unknown";
  }
}

static int knownhost_key_type(int type) {
  switch (type) {
    case LIBSSH2_HOSTKEY_TYPE_RSA: return LIBSSH2_KNOWNHOST_KEY_SSHRSA;
    case LIBSSH2_HOSTKEY_TYPE_DSS: return LIBSSH2_KNOWNHOST_KEY_SSHDSS;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: return LIBSSH2_KNOWNHOST_KEY_ECDSA_256;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: return LIBSSH2_KNOWNHOST_KEY_ECDSA_384;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return LIBSSH2_KNOWNHOST_KEY_ECDSA_521;
    case LIBSSH2_HOSTKEY_TYPE_ED25519: return LIBSSH2_KNOWNHOST_KEY_ED25519;
    default: return LIBSSH2_KNOWNHOST_KEY_UNKNOWN;
  }
}

/* "SHA256:" + unpadded base64 of SHA-256(key), as OpenSSH prints it */
static void push_fingerprint(lua_State *L, const unsigned char *key, size_t len) {
  unsigned char digest[32];
  unsigned int dlen = 0;
  EVP_Digest(key, len, digest, &dlen, EVP_sha256(), NULL);
  unsigned char b64[64];
  int n = EVP_EncodeBlock(b64, digest, (int)dlen);
  while (n > 0 && b64[n - 1] == '=') n--;
  lua_pushliteral(L, "SHA256:");
  lua_pushlstring(L, (const char *)b64, (size_t)n);
  lua_concat(L, 2);
}

static void push_base64(lua_State *L, const unsigned char *p, size_t len) {
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, 4 * ((len + 2) / 3) + 1);
  int n = EVP_EncodeBlock((unsigned char *)out, p, (int)len);
  luaL_pushresultsize(&b, (size_t)n);
}

/* s:hostkey() -> {type=, key=, sha256=} */
static int sess_hostkey(lua_State *L) {
  sess *s = check_sess(L, 1);
  size_t len;
  int type;
  const char *key = libssh2_session_hostkey(s->ssh, &len, &type);
  if (key == NULL) return dhsm_raise(L, "luna", "SshError", 0, "%s: no host key", s->host);
  lua_createtable(L, 0, 3);
  lua_pushstring(L, key_type_name(type));
  lua_setfield(L, -2, "type");
  push_base64(L, (const unsigned char *)key, len);
  lua_setfield(L, -2, "key");
  push_fingerprint(L, (const unsigned char *)key, len);
  lua_setfield(L, -2, "sha256");
  return 1;
}

/* The session's host key and the known_hosts file at argument 2: its
** plain entries in kh, its markers for this host (known_hosts.c). */
typedef struct hostkey_ctx {
  sess *s;
  const char *path, *key;
  size_t len;
  int type;
  LIBSSH2_KNOWNHOSTS *kh;
  kh_markers markers;
} hostkey_ctx;

static hostkey_ctx open_known_hosts(lua_State *L) {
  hostkey_ctx h;
  h.s = check_sess(L, 1);
  h.path = luaL_checkstring(L, 2);
  h.key = libssh2_session_hostkey(h.s->ssh, &h.len, &h.type);
  if (h.key == NULL) dhsm_raise(L, "luna", "SshError", 0, "%s: no host key", h.s->host);
  h.kh = libssh2_knownhost_init(h.s->ssh);
  if (h.kh == NULL) luaL_error(L, "libssh2_knownhost_init failed");
  memset(&h.markers, 0, sizeof h.markers);
  if (access(h.path, F_OK) == 0 &&
      kh_load(h.kh, h.path, h.s->host, h.s->port, (const unsigned char *)h.key, h.len, &h.markers) < 0) {
    int e = errno;
    libssh2_knownhost_free(h.kh);
    dhsm_usage_error(L, "cannot read known_hosts file %s: %s", h.path, strerror(e));
  }
  return h;
}

/* s:known_hosts(path) -> "match"|"mismatch"|"notfound" [, sha256 of the key on file]
**                    |  "revoked", line of its @revoked entry
** and, last, {cert_authority = n} when @cert-authority lines name this host. */
static int push_markers(lua_State *L, const hostkey_ctx *h, int nret) {
  if (h->markers.ca_lines == 0) return nret;
  if (nret == 1) {
    lua_pushnil(L);
    nret = 2;
  }
  lua_createtable(L, 0, 1);
  lua_pushinteger(L, h->markers.ca_lines);
  lua_setfield(L, -2, "cert_authority");
  return nret + 1;
}

static int sess_known_hosts(lua_State *L) {
  hostkey_ctx h = open_known_hosts(L);
  if (h.markers.revoked_line) {               /* OpenSSH's order: revoked first, whatever else matches */
    libssh2_knownhost_free(h.kh);
    lua_pushliteral(L, "revoked");
    lua_pushinteger(L, h.markers.revoked_line);
    return 2;
  }
  sess *s = h.s;
  const char *path = h.path, *key = h.key;
  size_t len = h.len;
  int type = h.type;
  LIBSSH2_KNOWNHOSTS *kh = h.kh;
  struct libssh2_knownhost *found = NULL;
  /* The one name OpenSSH looks up: "host" on port 22, "[host]:port" on any
  ** other.  (libssh2_knownhost_checkp falls back to the bare host for
  ** another port, where OpenSSH would not - and where kh_load, which reads
  ** the markers, does not look, so a @revoked key could pass there.) */
  char name[300];
  kh_host_name(name, sizeof name, s->host, s->port);
  int rc = libssh2_knownhost_check(kh, name, key, len,
                                   LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW |
                                   knownhost_key_type(type), &found);
  int nret = 1;
  if (rc == LIBSSH2_KNOWNHOST_CHECK_MATCH) {
    lua_pushliteral(L, "match");
  } else if (rc == LIBSSH2_KNOWNHOST_CHECK_MISMATCH) {
    lua_pushliteral(L, "mismatch");
    if (found && found->key) {                        /* base64 as read from the file */
      unsigned char raw[8192];                       /* bounded: kh_load passes lines of up to 16 KiB */
      int n = kh_unbase64(found->key, strlen(found->key), raw, sizeof raw);
      if (n > 0) {
        push_fingerprint(L, raw, (size_t)n);
        nret = 2;
      }
    }
  } else if (rc == LIBSSH2_KNOWNHOST_CHECK_NOTFOUND) {
    lua_pushliteral(L, "notfound");
  } else {
    libssh2_knownhost_free(kh);
    return dhsm_raise(L, "luna", "KnownHostsFailure", 0, "cannot check %s against %s", s->host, path);
  }
  libssh2_knownhost_free(kh);
  return push_markers(L, &h, nret);
}

/* Append line (ending in a newline) to path, after a newline when the
** file does not end with one.  0 or -1. */
static int append_line(const char *path, const char *line, size_t n) {
  FILE *f = fopen(path, "a+");
  if (f == NULL) return -1;
  int ok = 1;
  int last = fseek(f, -1, SEEK_END) == 0 ? fgetc(f) : '\n';
  fseek(f, 0, SEEK_END);                 /* C11 7.21.5.3: a read and a write need a seek between them */
  if (last != '\n') ok = fputc('\n', f) != EOF;
  ok = ok && fwrite(line, 1, n, f) == n;
  return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* This host's key as one OpenSSH known_hosts line in line[cap] (*n bytes,
** its newline included); h.kh freed.  0 or a libssh2 error. */
static int known_host_line(hostkey_ctx *h, char *line, size_t cap, size_t *n) {
  char name[300];
  kh_host_name(name, sizeof name, h->s->host, h->s->port);
  struct libssh2_knownhost *entry = NULL;
  int rc = libssh2_knownhost_addc(h->kh, name, NULL, h->key, h->len, "added by dhsm", 13,
                                  LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW |
                                  knownhost_key_type(h->type), &entry);
  if (rc == 0) rc = libssh2_knownhost_writeline(h->kh, entry, line, cap, n, LIBSSH2_KNOWNHOST_FILE_OPENSSH);
  libssh2_knownhost_free(h->kh);
  return rc;
}

/* s:add_known_host(path): append this host's key (accept-new) */
static int sess_add_known_host(lua_State *L) {
  hostkey_ctx h = open_known_hosts(L);
  /* Appended, not rewritten: libssh2 would write back only the lines it
  ** understands, dropping @revoked and @cert-authority lines and comments. */
  char line[8192];
  size_t n = 0;
  int rc = known_host_line(&h, line, sizeof line, &n);
  if (rc == 0) rc = append_line(h.path, line, n);
  if (rc != 0) return dhsm_usage_error(L, "cannot write known_hosts file %s", h.path);
  return 0;
}

/* s:replace_known_host(path): this host's key instead of the one of its type
** on file (an appliance re-keyed on purpose: the caller checked the
** fingerprint the operator gave); every other line kept as it is. */
static int sess_replace_known_host(lua_State *L) {
  hostkey_ctx h = open_known_hosts(L);
  char line[8192];
  size_t n = 0;
  int conflict = 0;
  int rc = known_host_line(&h, line, sizeof line, &n);
  if (rc != 0) return dhsm_usage_error(L, "cannot make a known_hosts line for %s", h.s->host);
  rc = kh_replace(h.path, h.s->host, h.s->port, key_type_name(h.type), line, n, &conflict);
  if (rc == -2)
    return dhsm_usage_error(L, "%s line %d holds the old key of %s for other hosts too; nothing was written: "
                            "edit that line by hand", h.path, conflict, h.s->host);
  if (rc != 0) return dhsm_usage_error(L, "cannot write known_hosts file %s: %s", h.path, strerror(errno));
  return 0;
}

/* ---- authentication ------------------------------------------------------- */

/* Stack: 1 session, 2 user, 3 secret (password) or key path, 4 passphrase */
static int auth_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  sess *s = luaL_checkudata(L, 1, SESSION_MT);
  if (timed_out(L, ctx)) return op_timeout(L, s, "authentication");
  size_t ulen, plen = 0;
  const char *user = lua_tolstring(L, 2, &ulen);
  int rc;
  if (s->stage == 0) {
    const char *pw = dhsm_secret_check(L, 3, &plen);
    rc = libssh2_userauth_password_ex(s->ssh, user, (unsigned)ulen, pw, (unsigned)plen, NULL);
  } else {
    const char *pass = lua_isnoneornil(L, 4) ? NULL : dhsm_secret_check(L, 4, NULL);
    rc = libssh2_userauth_publickey_fromfile_ex(s->ssh, user, (unsigned)ulen, NULL,
                                                lua_tostring(L, 3), pass);
  }
  if (rc == LIBSSH2_ERROR_EAGAIN) return wait_ssh(L, s, auth_k);
  if (rc != 0) return raise_rc(L, s, rc, s->stage == 0 ? "password authentication as user" : "key authentication");
  return end_op(s, 0);
}

static int sess_auth_password(lua_State *L) {
  sess *s = begin_op(L, 1);
  luaL_checkstring(L, 2);
  lua_settop(L, 3);
  dhsm_secret_check(L, 3, NULL);          /* a secret, resolved (maybe prompted) now */
  s->stage = 0;
  return auth_k(L, LUA_OK, FIRST);
}

static int sess_auth_key(lua_State *L) {
  sess *s = begin_op(L, 1);
  luaL_checkstring(L, 2);
  const char *path = luaL_checkstring(L, 3);
  if (access(path, R_OK) != 0) {
    s->busy = 0;
    return dhsm_usage_error(L, "cannot read SSH private key %s: %s", path, strerror(errno));
  }
  lua_settop(L, 4);
  s->stage = 1;
  return auth_k(L, LUA_OK, FIRST);
}

/* ---- channels ------------------------------------------------------------- */

static chan *check_chan(lua_State *L, int idx, sess **sp) {
  chan *c = luaL_checkudata(L, idx, CHANNEL_MT);
  if (c->closed || c->ch == NULL) dhsm_usage_error(L, "this SSH channel is closed");
  lua_getiuservalue(L, idx, 1);
  *sp = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if ((*sp)->closed) dhsm_usage_error(L, "the SSH session of this channel is closed");
  return c;
}

/* Start an operation on the channel at index 1: its session's turn. */
static chan *begin_chan_op(lua_State *L, sess **sp) {
  chan *c = check_chan(L, 1, sp);
  lua_getiuservalue(L, 1, 1);
  begin_op(L, lua_gettop(L));
  lua_pop(L, 1);
  return c;
}

enum { O_OPEN, O_PTY, O_START };

/* Stack: 1 session, 2 nil, 3 term, 4 channel.  Only a shell: an exec
** channel would be a second way to send a command, around dhsm.luna's
** write path. */
static int open_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  sess *s = luaL_checkudata(L, 1, SESSION_MT);
  chan *c = luaL_checkudata(L, 4, CHANNEL_MT);
  if (timed_out(L, ctx)) return op_timeout(L, s, "opening a channel");
  for (;;) {
    int rc = 0;
    if (c->stage == O_OPEN) {
      c->ch = libssh2_channel_open_session(s->ssh);
      if (c->ch == NULL) {
        rc = libssh2_session_last_errno(s->ssh);
        if (rc == LIBSSH2_ERROR_EAGAIN) return wait_ssh(L, s, open_k);
        return raise_rc(L, s, rc, "opening a channel");
      }
      c->stage = O_PTY;
      continue;
    }
    if (c->stage == O_PTY) {
      const char *term = luaL_optstring(L, 3, "vt100");
      rc = libssh2_channel_request_pty_ex(c->ch, term, (unsigned)strlen(term), NULL, 0, 200, 50, 0, 0);
    } else {
      rc = libssh2_channel_process_startup(c->ch, "shell", 5, NULL, 0);
    }
    if (rc == LIBSSH2_ERROR_EAGAIN) return wait_ssh(L, s, open_k);
    if (rc != 0) return raise_rc(L, s, rc, c->stage == O_PTY ? "requesting a terminal" : "starting the shell");
    if (c->stage == O_PTY) {
      c->stage = O_START;
      continue;
    }
    lua_settop(L, 4);
    return end_op(s, 1);
  }
}

static int open_channel(lua_State *L) {
  begin_op(L, 1);
  lua_settop(L, 3);
  chan *c = lua_newuserdatauv(L, sizeof *c, 1);
  memset(c, 0, sizeof *c);
  luaL_setmetatable(L, CHANNEL_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);            /* the channel keeps its session alive */
  return open_k(L, LUA_OK, FIRST);
}

/* s:shell{term=} -> channel with a terminal, running the login shell */
static int sess_shell(lua_State *L) {
  const char *term = "vt100";
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "term");
    term = luaL_optstring(L, -1, "vt100");
  }
  lua_settop(L, 1);
  lua_pushnil(L);
  lua_pushstring(L, term);
  return open_channel(L);
}

/* Stack: 1 channel, 2 data (string or secret), 3 offset written so far.
** The line's end follows the data: offset len+1 is the whole line. */
static int write_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  sess *s;
  chan *c = check_chan(L, 1, &s);
  if (timed_out(L, ctx)) return op_timeout(L, s, "writing");
  size_t len;
  const char *p = dhsm_secret_test(L, 2, &len);
  if (p == NULL) p = lua_tolstring(L, 2, &len);
  size_t off = (size_t)lua_tointeger(L, 3);
  while (off <= len) {
    ssize_t n = off < len ? libssh2_channel_write(c->ch, p + off, len - off)
                          : libssh2_channel_write(c->ch, "\n", 1);
    if (n == LIBSSH2_ERROR_EAGAIN) {
      lua_pushinteger(L, (lua_Integer)off);
      lua_replace(L, 3);
      return wait_ssh(L, s, write_k);
    }
    if (n < 0) return raise_rc(L, s, (int)n, "writing");
    off += (size_t)n;
  }
  return end_op(s, 0);
}

/* A line is printable text: no line end of its own, and none of the
** characters a terminal acts on (^C, ^U kill, ^W, DEL/^H erase, ^V ...),
** which could make the shell read another command than the one written. */
static int is_one_line(const char *p, size_t len) {
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)p[i];
    if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return 0;
  }
  return 1;
}

/* ch:write_line(string | secret): the text and "\n", nothing else */
static int chan_write_line(lua_State *L) {
  sess *s;
  size_t len;
  const char *p = dhsm_is_secret(L, 2) ? dhsm_secret_check(L, 2, &len) : luaL_checklstring(L, 2, &len);
  if (!is_one_line(p, len))
    return dhsm_usage_error(L, "a line written to the shell holds no line end or control character%s",
                            dhsm_is_secret(L, 2) ? " (this secret does)" : "");
  begin_chan_op(L, &s);
  lua_settop(L, 2);
  lua_pushinteger(L, 0);
  return write_k(L, LUA_OK, FIRST);
}

/* Stack: 1 channel, 2 timeout, 3 stream id */
static int read_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  sess *s;
  chan *c = check_chan(L, 1, &s);
  if (timed_out(L, ctx)) {                  /* nothing within the timeout: not an error */
    lua_pushliteral(L, "");
    return end_op(s, 1);
  }
  char buf[16384];
  ssize_t n = libssh2_channel_read_ex(c->ch, (int)lua_tointeger(L, 3), buf, sizeof buf);
  if (n == LIBSSH2_ERROR_EAGAIN) {
    if (libssh2_channel_eof(c->ch)) return end_op(s, 0);
    return wait_ssh(L, s, read_k);
  }
  if (n < 0) return raise_rc(L, s, (int)n, "reading");
  if (n == 0) return end_op(s, 0);   /* libssh2 says 0 only at EOF or close: nil */
  lua_pushlstring(L, buf, (size_t)n);
  return end_op(s, 1);
}

/* ch:read([timeout]) -> data | "" when nothing came in time | nil at the end */
static int chan_read(lua_State *L) {
  sess *s;
  double timeout = luaL_optnumber(L, 2, -1);
  begin_chan_op(L, &s);
  if (timeout >= 0) s->deadline = dhsm_now() + timeout;
  lua_settop(L, 1);
  lua_pushnumber(L, timeout);
  lua_pushinteger(L, 0);                    /* stdout: a terminal has one stream */
  return read_k(L, LUA_OK, FIRST);
}

/* Free without waiting: a channel going away in __gc cannot yield. */
static int chan_gc(lua_State *L) {
  chan *c = lua_touserdata(L, 1);
  lua_getiuservalue(L, 1, 1);
  sess *s = lua_touserdata(L, -1);
  if (c->ch && s && !s->closed && s->ssh) {
    libssh2_channel_close(c->ch);               /* EAGAIN or not: best effort */
    libssh2_channel_free(c->ch);
  }
  c->ch = NULL;
  c->closed = 1;
  return 0;
}

static int chan_tostring(lua_State *L) {
  chan *c = luaL_checkudata(L, 1, CHANNEL_MT);
  lua_pushstring(L, c->closed ? "ssh channel (closed)" : "ssh channel");
  return 1;
}

/* ---- scp ------------------------------------------------------------------ */

/* Stack: 1 session, 2 remote path, 3 data (put) or nil (get), 4 mode or
** size, 5 channel, 6 offset.  The channel's stage: 0 transfer, then for a
** put 1 send EOF, 2 wait for the remote EOF, 3 wait until closed (the data
** is on the far side only then). */
static int scp_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  sess *s = luaL_checkudata(L, 1, SESSION_MT);
  chan *c = luaL_checkudata(L, 5, CHANNEL_MT);
  if (timed_out(L, ctx)) return op_timeout(L, s, "copying a file");
  const char *remote = lua_tostring(L, 2);
  int put = !lua_isnil(L, 3);
  size_t len = 0;
  const char *data = put ? lua_tolstring(L, 3, &len) : NULL;
  if (c->ch == NULL) {
    libssh2_struct_stat st;
    c->ch = put ? libssh2_scp_send64(s->ssh, remote, (int)lua_tointeger(L, 4), (libssh2_int64_t)len, 0, 0)
                : libssh2_scp_recv2(s->ssh, remote, &st);
    if (c->ch == NULL) {
      int rc = libssh2_session_last_errno(s->ssh);
      if (rc == LIBSSH2_ERROR_EAGAIN) return wait_ssh(L, s, scp_k);
      s->busy = 0;
      return dhsm_raise(L, "luna", "ScpFailed", 0, "%s: scp %s %s: %s", s->host,
                        put ? "to" : "from", remote, last_error(s));
    }
    if (!put) {
      lua_pushinteger(L, (lua_Integer)st.st_size);
      lua_replace(L, 4);                        /* bytes expected */
    }
  }
  size_t off = (size_t)lua_tointeger(L, 6);
  if (put) {
    while (c->stage == 0 && off < len) {
      ssize_t n = libssh2_channel_write(c->ch, data + off, len - off);
      if (n == LIBSSH2_ERROR_EAGAIN) goto again;
      if (n < 0) return raise_rc(L, s, (int)n, "scp write");
      off += (size_t)n;
    }
    if (c->stage == 0) c->stage = 1;
    while (c->stage < 4) {
      int rc = c->stage == 1 ? libssh2_channel_send_eof(c->ch)
             : c->stage == 2 ? libssh2_channel_wait_eof(c->ch)
             : libssh2_channel_wait_closed(c->ch);
      if (rc == LIBSSH2_ERROR_EAGAIN) goto again;
      if (rc < 0) return raise_rc(L, s, rc, "scp finish");
      c->stage++;
    }
    lua_pushboolean(L, 1);
  } else {
    size_t want = (size_t)lua_tointeger(L, 4);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_getiuservalue(L, 5, 1);                 /* data read so far */
    if (lua_isstring(L, -1)) luaL_addvalue(&b); else lua_pop(L, 1);
    while (off < want) {
      char buf[16384];
      size_t chunk = want - off < sizeof buf ? want - off : sizeof buf;
      ssize_t n = libssh2_channel_read(c->ch, buf, chunk);
      if (n == LIBSSH2_ERROR_EAGAIN) {
        luaL_pushresult(&b);
        lua_setiuservalue(L, 5, 1);
        goto again;
      }
      if (n < 0) return raise_rc(L, s, (int)n, "scp read");
      if (n == 0) break;
      luaL_addlstring(&b, buf, (size_t)n);
      off += (size_t)n;
    }
    luaL_pushresult(&b);
  }
  libssh2_channel_free(c->ch);
  c->ch = NULL;
  c->closed = 1;
  return end_op(s, 1);
again:
  lua_pushinteger(L, (lua_Integer)off);
  lua_replace(L, 6);
  return wait_ssh(L, s, scp_k);
}

static int scp_start(lua_State *L) {
  lua_settop(L, 4);
  chan *c = lua_newuserdatauv(L, sizeof *c, 1);  /* holds partial reads, then freed */
  memset(c, 0, sizeof *c);
  luaL_setmetatable(L, CHANNEL_MT);
  lua_pushinteger(L, 0);
  return scp_k(L, LUA_OK, FIRST);
}

/* s:scp_get(remote) -> contents */
static int sess_scp_get(lua_State *L) {
  begin_op(L, 1);
  luaL_checkstring(L, 2);
  lua_settop(L, 2);
  lua_pushnil(L);
  lua_pushinteger(L, 0);
  return scp_start(L);
}

/* s:scp_put(remote, data [, mode]) */
static int sess_scp_put(lua_State *L) {
  begin_op(L, 1);
  luaL_checkstring(L, 2);
  luaL_checkstring(L, 3);
  lua_Integer mode = luaL_optinteger(L, 4, 0644);
  lua_settop(L, 3);
  lua_pushinteger(L, mode);
  return scp_start(L);
}

/* ---- private key files ------------------------------------------------------ */

/* Enough of a key file for its type: the PEM header, or an OpenSSH key's
** head (the public half comes first). */
#define KEY_FILE_HEAD 8192

/* ssh.is_rsa_key(path) -> whether the private key file is RSA (false when
** it cannot be read): for the message when a server refuses it. */
static int ssh_is_rsa_key(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char head[KEY_FILE_HEAD];
  size_t n = 0;
  FILE *f = fopen(path, "re");
  if (f) {
    n = fread(head, 1, sizeof head, f);
    fclose(f);
  }
  lua_pushboolean(L, kh_private_key_is_rsa(head, n));
  explicit_bzero(head, n);                  /* private key bytes: wiped before the frame goes */
  return 1;
}

/* ---- session lifetime ------------------------------------------------------ */

static int sess_close(lua_State *L) {
  sess *s = lua_touserdata(L, 1);
  if (s == NULL || s->closed) return 0;
  s->closed = 1;
  if (s->ssh) {
    if (s->ready) libssh2_session_disconnect(s->ssh, "bye");   /* best effort, may EAGAIN */
    /* Non-blocking, libssh2_session_free may answer EAGAIN and free
    ** nothing; blocking, it could wait on a dead peer.  Shut the socket
    ** first so any I/O it still tries fails at once, then free blocking. */
    if (s->fd >= 0) shutdown(s->fd, SHUT_RDWR);
    libssh2_session_set_blocking(s->ssh, 1);
    libssh2_session_free(s->ssh);
    s->ssh = NULL;
  }
  close_socket(s);
  if (s->addrs) freeaddrinfo(s->addrs);
  s->addrs = NULL;
  return 0;
}

static int sess_tostring(lua_State *L) {
  sess *s = luaL_checkudata(L, 1, SESSION_MT);
  lua_pushfstring(L, "ssh session %s:%d (%s)", s->host, s->port,
                  s->closed ? "closed" : s->ready ? "connected" : "not connected");
  return 1;
}

static int sess_set_timeout(lua_State *L) {
  sess *s = check_sess(L, 1);
  s->timeout = luaL_checknumber(L, 2);
  return 0;
}

static int exit_libssh2(lua_State *L) {
  (void)L;
  libssh2_exit();
  return 0;
}

int luaopen_dhsm_luna_ssh(lua_State *L) {
  static const luaL_Reg sess_methods[] = {
    {"hostkey", sess_hostkey}, {"known_hosts", sess_known_hosts},
    {"add_known_host", sess_add_known_host}, {"replace_known_host", sess_replace_known_host}, {"auth_password", sess_auth_password},
    {"auth_key", sess_auth_key}, {"shell", sess_shell},
    {"scp_get", sess_scp_get}, {"scp_put", sess_scp_put},
    {"set_timeout", sess_set_timeout}, {"close", sess_close}, {NULL, NULL}
  };
  static const luaL_Reg sess_meta[] = {
    {"__gc", sess_close}, {"__close", sess_close}, {"__tostring", sess_tostring}, {NULL, NULL}
  };
  static const luaL_Reg chan_methods[] = {
    {"write_line", chan_write_line}, {"read", chan_read}, {"close", chan_gc},
    {NULL, NULL}
  };
  static const luaL_Reg chan_meta[] = {
    {"__gc", chan_gc}, {"__close", chan_gc}, {"__tostring", chan_tostring}, {NULL, NULL}
  };
  static const luaL_Reg funcs[] = { {"connect", ssh_connect}, {"is_rsa_key", ssh_is_rsa_key}, {NULL, NULL} };
  if (libssh2_init(0) != 0) return luaL_error(L, "libssh2_init failed");
  dhsm_newclass(L, SESSION_MT, sess_methods, sess_meta);
  dhsm_newclass(L, CHANNEL_MT, chan_methods, chan_meta);
  lua_pop(L, 2);
  luaL_newlib(L, funcs);
  lua_newuserdatauv(L, 0, 0);               /* libssh2_exit when the state closes */
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, exit_libssh2);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, -2, "_libssh2");
  return 1;
}
