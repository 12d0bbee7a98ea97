/*
** known_hosts.c - the OpenSSH files dhsm.luna.ssh reads itself: known_hosts
** (markers, and the host key algorithms to ask for) and, with the same
** bounded base64 decoder, the type of a private key file.
**
** libssh2 (1.10) reads "@revoked" and "@cert-authority" lines as if the
** marker were a host name, or stops reading at them; either way a key
** OpenSSH refuses ("REVOKED HOST KEY DETECTED") was accepted.  So the
** file is read here: plain lines go to libssh2 one by one, marker lines
** are matched as OpenSSH does (sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT"):
** host patterns with * ? and !negation, "[host]:port" for other ports,
** hashed names (|1|salt|HMAC-SHA1), the key compared as a decoded blob.
*/
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "known_hosts.h"

#define MAX_LINE 16384

int kh_unbase64(const char *text, size_t n, unsigned char *out, size_t cap) {
  if (n == 0 || n % 4 != 0 || n / 4 * 3 > cap) return -1;
  int len = EVP_DecodeBlock(out, (const unsigned char *)text, (int)n);
  if (len < 0) return -1;
  for (size_t i = n; i > 0 && text[i - 1] == '='; i--) len--;
  return len;
}

void kh_host_name(char *out, size_t cap, const char *host, int port) {
  if (port == 22) snprintf(out, cap, "%s", host);
  else snprintf(out, cap, "[%s]:%d", host, port);
}

/* Glob match of OpenSSH host patterns: * and ?, case-insensitive. */
static int glob(const char *pat, size_t plen, const char *s) {
  if (plen == 0) return *s == '\0';
  if (*pat == '*') {
    for (;; s++) {
      if (glob(pat + 1, plen - 1, s)) return 1;
      if (*s == '\0') return 0;
    }
  }
  if (*s == '\0') return 0;
  if (*pat != '?' && tolower((unsigned char)*pat) != tolower((unsigned char)*s)) return 0;
  return glob(pat + 1, plen - 1, s + 1);
}

/* |1|base64(salt)|base64(HMAC-SHA1(salt, name)) */
static int hashed_match(const char *entry, size_t n, const char *name) {
  const char *salt = entry + 3, *bar = memchr(salt, '|', n - 3);
  if (bar == NULL) return 0;
  unsigned char key[64], want[64], got[EVP_MAX_MD_SIZE];
  int klen = kh_unbase64(salt, (size_t)(bar - salt), key, sizeof key);
  int wlen = kh_unbase64(bar + 1, (size_t)(entry + n - bar - 1), want, sizeof want);
  unsigned int glen = 0;
  if (klen <= 0 || wlen <= 0) return 0;
  if (!HMAC(EVP_sha1(), key, klen, (const unsigned char *)name, strlen(name), got, &glen)) return 0;
  return (int)glen == wlen && memcmp(got, want, glen) == 0;
}

enum { EXACT_NAMES, PATTERNS };

/* Does the host field (comma-separated names) name `name`?  A hashed
** field is matched either way.  PATTERNS, as OpenSSH reads a marker line:
** * and ?, and a matching negated pattern (!pat) excludes the name
** whatever else matches.  EXACT_NAMES, as libssh2 reads a plain line when
** it checks the key: no patterns, no negation. */
static int hosts_match(const char *field, size_t n, const char *name, int how) {
  if (n > 3 && memcmp(field, "|1|", 3) == 0) return hashed_match(field, n, name);
  int matched = 0;
  const char *p = field, *end = field + n;
  while (p < end) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    const char *stop = comma ? comma : end;
    int negated = how == PATTERNS && *p == '!';
    const char *pat = p + negated;
    size_t plen = (size_t)(stop - pat);
    int hit = how == PATTERNS ? pat < stop && glob(pat, plen, name)
                              : plen == strlen(name) && memcmp(pat, name, plen) == 0;
    if (hit) {
      if (negated) return 0;
      matched = 1;
    }
    p = stop + 1;
  }
  return matched;
}

/* The next blank-separated field of *p, or 0 when there is none. */
static size_t field(const char **p, const char **start) {
  while (**p == ' ' || **p == '\t') (*p)++;
  *start = *p;
  while (**p && **p != ' ' && **p != '\t') (*p)++;
  return (size_t)(*p - *start);
}

/* The next line of f in line[MAX_LINE], its end left out: its length, or
** -1 at the end of the file.  A line longer than any real entry is read
** to its end and marked too long, never kept: memory stays bounded
** whatever the file holds, and no allocation can fail half-way through it
** (a reader that stopped there would miss the @revoked lines after it). */
static long next_line(FILE *f, char line[MAX_LINE], int *too_long) {
  size_t n = 0;
  int c;
  *too_long = 0;
  while ((c = getc(f)) != EOF && c != '\n') {
    if (n < MAX_LINE - 1) line[n++] = (char)c;
    else *too_long = 1;
  }
  if (c == EOF && n == 0 && !*too_long) return -1;
  line[n] = '\0';
  return (long)n;
}

/* Call each(entry, lineno, ctx) for every entry of the known_hosts file at
** path: leading blanks and the line end taken off; blank lines, comments
** and lines longer than any real entry skipped.  A NUL byte cuts short
** only its own line, never hides the next one.  0, or -1 with errno. */
static int each_entry(const char *path, void (*each)(const char *, int, void *), void *ctx) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  char line[MAX_LINE];
  int too_long, lineno = 0;
  while (next_line(f, line, &too_long) >= 0) {
    lineno++;
    if (too_long) continue;
    size_t n = strlen(line);                        /* up to a NUL inside, if any */
    while (n > 0 && line[n - 1] == '\r') line[--n] = '\0';
    const char *p = line;
    while (*p == ' ' || *p == '\t') p++;
    if (*p != '\0' && *p != '#') each(p, lineno, ctx);
  }
  int failed = ferror(f);
  fclose(f);
  if (failed) {
    errno = EIO;
    return -1;
  }
  return 0;
}

/* What kh_load looks for, and where it puts what it finds. */
typedef struct load_ctx {
  LIBSSH2_KNOWNHOSTS *kh;
  char name[300];              /* host:port as known_hosts names it */
  const unsigned char *key;
  size_t keylen;
  kh_markers *m;
} load_ctx;

static void marker_line(const char *line, int lineno, load_ctx *c) {
  const char *p = line, *marker, *hosts, *type, *b64;
  size_t ml = field(&p, &marker), hl = field(&p, &hosts), tl = field(&p, &type), bl = field(&p, &b64);
  (void)tl;
  if (hl == 0 || bl == 0 || !hosts_match(hosts, hl, c->name, PATTERNS)) return;
  if (ml == 8 && strncasecmp(marker, "@revoked", 8) == 0) {
    unsigned char blob[8192];
    int n = kh_unbase64(b64, bl, blob, sizeof blob);
    if (n > 0 && (size_t)n == c->keylen && memcmp(blob, c->key, c->keylen) == 0 && !c->m->revoked_line)
      c->m->revoked_line = lineno;
  } else if (ml == 15 && strncasecmp(marker, "@cert-authority", 15) == 0) {
    c->m->ca_lines++;
  }
}

static void load_entry(const char *entry, int lineno, void *ctx) {
  load_ctx *c = ctx;
  if (*entry == '@') marker_line(entry, lineno, c);
  else libssh2_knownhost_readline(c->kh, entry, strlen(entry), LIBSSH2_KNOWNHOST_FILE_OPENSSH);
}

int kh_load(LIBSSH2_KNOWNHOSTS *kh, const char *path, const char *host, int port,
            const unsigned char *key, size_t keylen, kh_markers *m) {
  load_ctx c = { .kh = kh, .key = key, .keylen = keylen, .m = m };
  kh_host_name(c.name, sizeof c.name, host, port);
  memset(m, 0, sizeof *m);
  return each_entry(path, load_entry, &c);
}

/* ---- replacing a host's key ---------------------------------------------------
** An appliance Microsoft reset has a new host key: the line that held the
** old one is replaced, the rest of the file kept byte for byte (comments,
** markers, other hosts' lines), through a temporary file renamed over it. */

/* Does the entry (leading blanks gone) hold host `name`'s key of `type`,
** as libssh2 reads a plain line?  1; 2 when its host field names other
** hosts too (not split here: the operator edits that line); 0 otherwise. */
static int holds_key_of(const char *entry, const char *name, const char *type) {
  const char *p = entry, *hosts, *t, *b64;
  size_t hl = field(&p, &hosts), tl = field(&p, &t), bl = field(&p, &b64);
  if (*entry == '@' || bl == 0 || !hosts_match(hosts, hl, name, EXACT_NAMES)) return 0;
  if (tl != strlen(type) || memcmp(t, type, tl) != 0) return 0;
  return memchr(hosts, ',', hl) != NULL ? 2 : 1;
}

/* Write what f holds to out, but the lines holding name's key of type. */
static int copy_but(FILE *f, FILE *out, const char *name, const char *type, int *conflict) {
  char line[MAX_LINE];
  int too_long, lineno = 0;
  long n;
  while ((n = next_line(f, line, &too_long)) >= 0) {
    lineno++;
    const char *p = line;
    while (*p == ' ' || *p == '\t') p++;
    int held = too_long || *p == '#' || strlen(line) != (size_t)n ? 0 : holds_key_of(p, name, type);
    if (held == 2) {
      *conflict = lineno;
      return -2;
    }
    if (held == 1) continue;
    if (too_long) {               /* a line longer than any entry is not copied half: give up */
      errno = EFBIG;
      return -1;
    }
    if (fwrite(line, 1, (size_t)n, out) != (size_t)n || fputc('\n', out) == EOF) return -1;
  }
  return ferror(f) ? -1 : 0;
}

int kh_replace(const char *path, const char *host, int port, const char *type,
               const char *newline, size_t n, int *conflict) {
  char name[300], tmp[4096];
  kh_host_name(name, sizeof name, host, port);
  *conflict = 0;
  struct stat st;
  if (stat(path, &st) != 0) return -1;
  if (snprintf(tmp, sizeof tmp, "%s.dhsm-XXXXXX", path) >= (int)sizeof tmp) {
    errno = ENAMETOOLONG;
    return -1;
  }
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  int fd = mkstemp(tmp);
  FILE *out = fd < 0 ? NULL : fdopen(fd, "w");
  if (out == NULL) {
    if (fd >= 0) close(fd);
    fclose(f);
    return -1;
  }
  int rc = copy_but(f, out, name, type, conflict);
  fclose(f);
  if (rc == 0 && (fwrite(newline, 1, n, out) != n || fchmod(fd, st.st_mode & 07777) != 0
                  || fflush(out) != 0 || fsync(fd) != 0)) rc = -1;
  if (fclose(out) != 0 && rc == 0) rc = -1;
  if (rc == 0 && rename(tmp, path) != 0) rc = -1;
  if (rc != 0) {
    int e = errno;
    unlink(tmp);
    errno = e;
  }
  return rc;
}

/* ---- the host key algorithms to ask for ------------------------------------
** OpenSSH asks first for the types of the keys known_hosts holds for the
** host: a Luna 7 appliance offers RSA and ed25519, and the key on file is
** the one to check.  Only the lines libssh2 then checks the key against
** count: plain lines (markers are not keys), exact or hashed names. */

/* The types a known key may have, in libssh2's default order (the order
** of those the file holds none of), and the algorithms that ask for each:
** an RSA key is checked with any of three signature algorithms. */
static const struct { const char *type, *algorithms; } KEY_TYPES[] = {
  {"ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"}, {"ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"},
  {"ecdsa-sha2-nistp521", "ecdsa-sha2-nistp521"}, {"ssh-ed25519", "ssh-ed25519"},
  {"ssh-rsa", "rsa-sha2-512,rsa-sha2-256,ssh-rsa"},
};
enum { N_KEY_TYPES = sizeof KEY_TYPES / sizeof KEY_TYPES[0] };

typedef struct order_ctx {
  char name[300];              /* host:port as known_hosts names it */
  int order[N_KEY_TYPES];      /* indices into KEY_TYPES, first known first */
  int known, seen[N_KEY_TYPES];
} order_ctx;

static void order_entry(const char *entry, int lineno, void *ctx) {
  order_ctx *c = ctx;
  const char *p = entry, *hosts, *type, *b64;
  size_t hl = field(&p, &hosts), tl = field(&p, &type), bl = field(&p, &b64);
  (void)lineno;
  if (*entry == '@' || bl == 0 || !hosts_match(hosts, hl, c->name, EXACT_NAMES)) return;
  for (int i = 0; i < N_KEY_TYPES; i++) {
    if (strlen(KEY_TYPES[i].type) != tl || memcmp(KEY_TYPES[i].type, type, tl) != 0) continue;
    if (!c->seen[i]) c->order[c->known++] = i;
    c->seen[i] = 1;
    return;
  }
}

void kh_host_key_algorithms(const char *path, const char *host, int port, char *out, size_t cap) {
  order_ctx c = { .known = 0 };
  kh_host_name(c.name, sizeof c.name, host, port);
  out[0] = '\0';
  if (each_entry(path, order_entry, &c) < 0 || c.known == 0) return;
  for (int i = 0; i < N_KEY_TYPES; i++)
    if (!c.seen[i]) c.order[c.known++] = i;
  size_t used = 0;
  for (int i = 0; i < c.known; i++) {
    const char *algs = KEY_TYPES[c.order[i]].algorithms;
    int n = snprintf(out + used, cap - used, "%s%s", used ? "," : "", algs);
    if (n < 0 || (size_t)n >= cap - used) {      /* cannot happen with cap >= 128: then no preference */
      out[0] = '\0';
      return;
    }
    used += (size_t)n;
  }
}

/* ---- is a private key file RSA? ---------------------------------------------
** For the message when a server refuses a key: libssh2 1.10 signs with an
** RSA key only as ssh-rsa (SHA-1), which OpenSSH 8.8 and later refuse. */

/* The SSH wire format (RFC 4251 section 5), read within bounds. */
typedef struct wire {
  const unsigned char *p, *end;
} wire;

static int wire_u32(wire *w, uint32_t *v) {
  if (w->end - w->p < 4) return 0;
  *v = (uint32_t)w->p[0] << 24 | (uint32_t)w->p[1] << 16 | (uint32_t)w->p[2] << 8 | w->p[3];
  w->p += 4;
  return 1;
}

static int wire_string(wire *w, wire *s) {
  uint32_t n;
  if (!wire_u32(w, &n) || n > (size_t)(w->end - w->p)) return 0;
  s->p = w->p;
  s->end = w->p + n;
  w->p += n;
  return 1;
}

/* The key type of the head of an "openssh-key-v1" blob (PROTOCOL.key in
** OpenSSH): magic, cipher, kdf, kdf options, number of keys, then the
** first public key, stored in clear even when the key is encrypted, its
** type first.  The public key itself may run past the head. */
static int openssh_key_type_is(const unsigned char *head, size_t n, const char *type) {
  static const char magic[] = "openssh-key-v1";          /* with its NUL */
  wire w = { head, head + n }, skipped, name;
  uint32_t keys, public_key_len;
  if (n < sizeof magic || memcmp(head, magic, sizeof magic) != 0) return 0;
  w.p += sizeof magic;
  for (int i = 0; i < 3; i++)
    if (!wire_string(&w, &skipped)) return 0;
  if (!wire_u32(&w, &keys) || keys < 1 || !wire_u32(&w, &public_key_len) || !wire_string(&w, &name)) return 0;
  return (size_t)(name.end - name.p) == strlen(type) && public_key_len >= 4 + strlen(type)
         && memcmp(name.p, type, strlen(type)) == 0;
}

/* Base64 of an OpenSSH key's head: enough for its public key's type
** whatever the cipher and kdf (bcrypt's options are 24 bytes). */
#define KEY_HEAD_B64 512

int kh_private_key_is_rsa(const char *text, size_t n) {
  static const char pem_rsa[] = "BEGIN RSA PRIVATE KEY", openssh[] = "BEGIN OPENSSH PRIVATE KEY";
  if (memmem(text, n, pem_rsa, sizeof pem_rsa - 1)) return 1;
  const char *p = memmem(text, n, openssh, sizeof openssh - 1), *end = text + n;
  if (p == NULL) return 0;
  for (p += sizeof openssh - 1; p < end && *p == '-'; p++) {}
  char b64[KEY_HEAD_B64];
  size_t len = 0;
  for (; p < end && len < sizeof b64; p++) {          /* the body, its line ends left out */
    if (isalnum((unsigned char)*p) || *p == '+' || *p == '/' || *p == '=') b64[len++] = *p;
    else if (!isspace((unsigned char)*p)) break;
  }
  unsigned char head[KEY_HEAD_B64 / 4 * 3];
  int hlen = kh_unbase64(b64, len - len % 4, head, sizeof head);
  int rsa = hlen > 0 && openssh_key_type_is(head, (size_t)hlen, "ssh-rsa");
  explicit_bzero(head, sizeof head);                 /* the head of a key: wiped all the same */
  explicit_bzero(b64, sizeof b64);
  return rsa;
}
