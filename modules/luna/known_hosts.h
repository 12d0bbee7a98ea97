/*
** known_hosts.h - reading an OpenSSH known_hosts file for dhsm.luna.ssh,
** markers included (libssh2's knownhost API ignores them), and the type
** of a private key file.
*/
#ifndef DHSM_LUNA_KNOWN_HOSTS_H
#define DHSM_LUNA_KNOWN_HOSTS_H

#include <stddef.h>
#include <libssh2.h>

typedef struct kh_markers {
  int revoked_line;        /* line of a @revoked entry for this host and key, or 0 */
  int ca_lines;            /* @cert-authority entries for this host (not used: no host certificates) */
} kh_markers;

/* Read the file at path: its plain entries into kh (marker lines are left
** out, so libssh2 never takes a @revoked or @cert-authority key for a
** plain one; a malformed line is skipped, as OpenSSH does), and the
** markers that concern host:port and the key blob into m.  Returns 0, or
** -1 with errno when the file cannot be read. */
int kh_load(LIBSSH2_KNOWNHOSTS *kh, const char *path, const char *host, int port,
            const unsigned char *key, size_t keylen, kh_markers *m);

/* Decode base64 text[0..n) into out (at most cap bytes); the byte count,
** or -1 when it is not base64 or does not fit. */
int kh_unbase64(const char *text, size_t n, unsigned char *out, size_t cap);

/* The name known_hosts gives host:port: "host" on port 22, else "[host]:port". */
void kh_host_name(char *out, size_t cap, const char *host, int port);

/* The host key algorithms to ask host:port for (for libssh2_session_method_pref):
** those of the key types the file at path holds for it first (OpenSSH's
** rule; here in the order the file lists them), then the other types in
** libssh2's default order.
** Plain lines only, with the host named exactly or hashed: the lines libssh2
** checks the key against.  "" when there are none or the file cannot be
** read (libssh2's own order then).  cap >= 128 holds any answer. */
void kh_host_key_algorithms(const char *path, const char *host, int port, char *out, size_t cap);

/* Replace the plain lines of the file at path that hold host:port's key of
** `type` (named exactly or hashed: those libssh2 checks) by newline[0..n)
** (one OpenSSH line with its newline), appended at the end; every other
** line kept byte for byte, the file's mode kept, written through a
** temporary file renamed over it.  0; -1 with errno; -2 with *conflict the
** first such line that names other hosts too (nothing written). */
int kh_replace(const char *path, const char *host, int port, const char *type,
               const char *newline, size_t n, int *conflict);

/* Whether text[0..n) is an RSA private key: PEM "BEGIN RSA PRIVATE KEY",
** or an OpenSSH key whose public half (in clear, even when the key is
** encrypted) is ssh-rsa.  Only a bounded head is decoded, whatever n. */
int kh_private_key_is_rsa(const char *text, size_t n);

#endif
