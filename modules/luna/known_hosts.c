/*
** known_hosts.c - OpenSSH known_hosts markers for dhsm.luna.ssh.
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
#include <stdio.h>
#include <string.h>
#include <strings.h>

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

/* Does the host field (comma-separated patterns) name `name`? A matching
** negated pattern (!pat) excludes it whatever else matches. */
static int hosts_match(const char *field, size_t n, const char *name) {
  if (n > 3 && memcmp(field, "|1|", 3) == 0) return hashed_match(field, n, name);
  int matched = 0;
  const char *p = field, *end = field + n;
  while (p < end) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    const char *stop = comma ? comma : end;
    int negated = *p == '!';
    const char *pat = p + negated;
    if (pat < stop && glob(pat, (size_t)(stop - pat), name)) {
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

static void marker_line(const char *line, int lineno, const char *name, const unsigned char *key,
                        size_t keylen, kh_markers *m) {
  const char *p = line, *marker, *hosts, *type, *b64;
  size_t ml = field(&p, &marker), hl = field(&p, &hosts), tl = field(&p, &type), bl = field(&p, &b64);
  (void)tl;
  if (hl == 0 || bl == 0 || !hosts_match(hosts, hl, name)) return;
  if (ml == 8 && strncasecmp(marker, "@revoked", 8) == 0) {
    unsigned char blob[8192];
    int n = kh_unbase64(b64, bl, blob, sizeof blob);
    if (n > 0 && (size_t)n == keylen && memcmp(blob, key, keylen) == 0 && !m->revoked_line) m->revoked_line = lineno;
  } else if (ml == 15 && strncasecmp(marker, "@cert-authority", 15) == 0) {
    m->ca_lines++;
  }
}

int kh_load(LIBSSH2_KNOWNHOSTS *kh, const char *path, const char *host, int port,
            const unsigned char *key, size_t keylen, kh_markers *m) {
  char name[300], line[MAX_LINE];
  kh_host_name(name, sizeof name, host, port);
  memset(m, 0, sizeof *m);
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  int lineno = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    size_t n = strlen(line);
    if (n > 0 && line[n - 1] != '\n' && !feof(f)) {       /* longer than any real entry: skip it */
      int c;
      while ((c = fgetc(f)) != EOF && c != '\n') {}
      continue;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    const char *p = line;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '\0' || *p == '#') continue;
    if (*p == '@') marker_line(p, lineno, name, key, keylen, m);
    else libssh2_knownhost_readline(kh, p, strlen(p), LIBSSH2_KNOWNHOST_FILE_OPENSSH);
  }
  int failed = ferror(f);
  fclose(f);
  if (failed) {
    errno = EIO;
    return -1;
  }
  return 0;
}
