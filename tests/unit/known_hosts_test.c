/* known_hosts_test - what dhsm.luna.ssh reads of OpenSSH's files in C
** (modules/luna/known_hosts.c): the host key algorithms known_hosts makes
** it ask for first, and whether a private key file is RSA. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "../../modules/luna/known_hosts.h"

#define RSA_ALGS "rsa-sha2-512,rsa-sha2-256,ssh-rsa"
#define ECDSA_ALGS "ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521"
#define KEY "AAAAC3NzaC1lZDI1NTE5AAAAIBrJz5j6Tk8xq4mA1k4zS0Cqj0YbD8h4bJm2t1FZ0Vn9"

static char dir[] = "/tmp/known_hosts_test.XXXXXX";
static char path[64];

static int setup(void **state) {
  (void)state;
  if (mkdtemp(dir) == NULL) return -1;
  snprintf(path, sizeof path, "%s/known_hosts", dir);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  unlink(path);
  return rmdir(dir);
}

/* The algorithm order for host:port with a known_hosts file holding text. */
static const char *order(const char *text, const char *host, int port) {
  static char out[256];
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  kh_host_key_algorithms(path, host, port, out, sizeof out);
  return out;
}

static void asks_first_for_the_types_known_for_the_host(void **state) {
  (void)state;
  const char *file = "# appliances\n"
                     "other.example ssh-ed25519 " KEY "\n"
                     "10.0.0.5 ecdsa-sha2-nistp384 " KEY "\n"
                     "[10.0.0.5]:2222 ssh-rsa " KEY "\n"
                     "   [10.0.0.5]:2222 ssh-ed25519 " KEY " a comment\n"
                     "[10.0.0.5]:2222 ssh-rsa " KEY "\n";
  assert_string_equal(order(file, "10.0.0.5", 2222), RSA_ALGS ",ssh-ed25519," ECDSA_ALGS);
  assert_string_equal(order(file, "10.0.0.5", 22),     /* port 22 is the bare name */
                      "ecdsa-sha2-nistp384,ecdsa-sha2-nistp256,ecdsa-sha2-nistp521,ssh-ed25519," RSA_ALGS);
  assert_string_equal(order("a.example,[10.0.0.5]:2222 ssh-ed25519 " KEY "\n", "10.0.0.5", 2222),
                      "ssh-ed25519," ECDSA_ALGS "," RSA_ALGS);
}

/* |1|base64(salt)|base64(HMAC-SHA1(salt, name)), as ssh-keygen -H writes it */
static void hashed_name(char *out, const char *name) {
  unsigned char salt[20], mac[EVP_MAX_MD_SIZE];
  unsigned int mlen = 0;
  for (size_t i = 0; i < sizeof salt; i++) salt[i] = (unsigned char)(i * 37 + 11);
  HMAC(EVP_sha1(), salt, sizeof salt, (const unsigned char *)name, strlen(name), mac, &mlen);
  strcpy(out, "|1|");
  out += 3 + EVP_EncodeBlock((unsigned char *)out + 3, salt, sizeof salt);
  *out++ = '|';
  EVP_EncodeBlock((unsigned char *)out, mac, (int)mlen);
}

static void a_hashed_name_counts(void **state) {
  (void)state;
  char hashed[128], file[512];
  hashed_name(hashed, "[10.0.0.5]:2222");
  snprintf(file, sizeof file, "%s ssh-rsa %s\n", hashed, KEY);
  assert_string_equal(order(file, "10.0.0.5", 2222), RSA_ALGS "," ECDSA_ALGS ",ssh-ed25519");
  assert_string_equal(order(file, "10.0.0.6", 2222), "");
}

/* ---- kh_replace: an appliance's new host key in place of its old one */

static void write_file(const char *text, mode_t mode) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  assert_int_equal(chmod(path, mode), 0);
}

static const char *read_back(void) {
  static char buf[4096];
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  return buf;
}

#define NEW_LINE "[10.0.0.5]:2222 ssh-rsa AAAAnew\n"

/* The host's lines of that type go (exact and hashed names), the new line
** is appended, every other byte and the file's mode stay. */
static void replace_keeps_every_other_line(void **state) {
  (void)state;
  char hashed[128], file[1024], want[1024];
  hashed_name(hashed, "[10.0.0.5]:2222");
  snprintf(file, sizeof file, "# mine\n"
           "[10.0.0.5]:2222 ssh-rsa " KEY "\n"
           "  [10.0.0.5]:2222 ssh-ed25519 " KEY " kept: another type\n"
           "%s ssh-rsa " KEY "\n"
           "@revoked [10.0.0.5]:2222 ssh-rsa " KEY "\n"
           "[10.0.0.5]:22 ssh-rsa " KEY "\n"
           "other ssh-rsa " KEY "\n", hashed);
  write_file(file, 0640);
  int conflict = -1;
  assert_int_equal(kh_replace(path, "10.0.0.5", 2222, "ssh-rsa", NEW_LINE, strlen(NEW_LINE), &conflict), 0);
  assert_int_equal(conflict, 0);
  snprintf(want, sizeof want, "# mine\n"
           "  [10.0.0.5]:2222 ssh-ed25519 " KEY " kept: another type\n"
           "@revoked [10.0.0.5]:2222 ssh-rsa " KEY "\n"
           "[10.0.0.5]:22 ssh-rsa " KEY "\n"
           "other ssh-rsa " KEY "\n" NEW_LINE);
  assert_string_equal(read_back(), want);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0640);
}

/* A line that names other hosts as well is the operator's to edit: -2,
** its number, and the file untouched. */
static void replace_refuses_a_line_of_several_hosts(void **state) {
  (void)state;
  const char *file = "# mine\n"
                     "other ssh-rsa " KEY "\n"
                     "[10.0.0.5]:2222,hsm1.example ssh-rsa " KEY "\n";
  write_file(file, 0600);
  int conflict = 0;
  assert_int_equal(kh_replace(path, "10.0.0.5", 2222, "ssh-rsa", NEW_LINE, strlen(NEW_LINE), &conflict), -2);
  assert_int_equal(conflict, 3);
  assert_string_equal(read_back(), file);
}

/* No file: -1 with errno, nothing made. */
static void replace_needs_the_file(void **state) {
  (void)state;
  unlink(path);
  int conflict = 0;
  assert_int_equal(kh_replace(path, "10.0.0.5", 2222, "ssh-rsa", NEW_LINE, strlen(NEW_LINE), &conflict), -1);
  assert_int_equal(access(path, F_OK), -1);
}

/* Only lines libssh2 checks the key against count: a marker is not a key,
** and libssh2 takes no pattern or negation on a plain line. */
static void ignores_markers_patterns_and_what_is_no_key(void **state) {
  (void)state;
  const char *file = "@revoked [10.0.0.5]:2222 ssh-rsa " KEY "\n"
                     "@cert-authority [10.0.0.5]:2222 ssh-ed25519 " KEY "\n"
                     "[10.0.0.*]:2222 ssh-rsa " KEY "\n"
                     "* ssh-rsa " KEY "\n"
                     "![10.0.0.5]:2222 ssh-rsa " KEY "\n"
                     "[10.0.0.5]:2222 ssh-dss " KEY "\n"
                     "[10.0.0.5]:2222 ssh-ed25519\n"
                     "|1|bm90|base64 ssh-rsa " KEY "\n"
                     "10.0.0.5 ssh-rsa " KEY "\n";
  assert_string_equal(order(file, "10.0.0.5", 2222), "");
  unlink(path);
  char out[256] = "unchanged";
  kh_host_key_algorithms(path, "10.0.0.5", 2222, out, sizeof out);
  assert_string_equal(out, "");                           /* no file: libssh2's own order */
}

/* A line longer than any entry (here 1 MiB: read in bounded memory, never
** held whole) is skipped, and so is only it: the entry after it counts. */
static void skips_a_line_longer_than_any_entry(void **state) {
  (void)state;
  size_t n = 1u << 20;
  char *file = malloc(n + 200);
  assert_non_null(file);
  strcpy(file, "[10.0.0.5]:2222 ssh-rsa ");
  size_t used = strlen(file);
  memset(file + used, 'A', n);
  strcpy(file + used + n, "\n[10.0.0.5]:2222 ssh-ed25519 " KEY "\n");
  assert_string_equal(order(file, "10.0.0.5", 2222), "ssh-ed25519," ECDSA_ALGS "," RSA_ALGS);
  free(file);
}

/* A NUL byte cuts its own line short and no other. */
static void a_nul_byte_hides_no_other_line(void **state) {
  (void)state;
  static const char file[] = "[10.0.0.5]:2222 ssh-rsa \0" KEY "\n[10.0.0.5]:2222 ssh-ed25519 " KEY "\n";
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fwrite(file, 1, sizeof file - 1, f);
  fclose(f);
  char out[256];
  kh_host_key_algorithms(path, "10.0.0.5", 2222, out, sizeof out);
  assert_string_equal(out, "ssh-ed25519," ECDSA_ALGS "," RSA_ALGS);
}

/* ---- private keys ---------------------------------------------------------- */

typedef struct blob {
  unsigned char b[2048];
  size_t n;
} blob;

static void put_u32(blob *w, uint32_t v) {
  unsigned char be[4] = { (unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8), (unsigned char)v };
  memcpy(w->b + w->n, be, 4);
  w->n += 4;
}

static void put_string(blob *w, const char *s) {
  put_u32(w, (uint32_t)strlen(s));
  memcpy(w->b + w->n, s, strlen(s));
  w->n += strlen(s);
}

/* The text of an OpenSSH private key file (PROTOCOL.key) whose public key
** is of `type` and pub_len bytes long, as ssh-keygen writes it: base64 in
** lines of 70, between BEGIN and END lines.  Free it. */
static char *openssh_key(const char *type, uint32_t pub_len, int encrypted) {
  blob w = { .n = 15 };
  memcpy(w.b, "openssh-key-v1", 15);
  put_string(&w, encrypted ? "aes256-ctr" : "none");
  put_string(&w, encrypted ? "bcrypt" : "none");
  if (encrypted) {                                       /* string salt (16 bytes), uint32 rounds */
    put_u32(&w, 24);
    put_string(&w, "0123456789abcdef");
    put_u32(&w, 16);
  } else {
    put_string(&w, "");
  }
  put_u32(&w, 1);
  put_u32(&w, pub_len);
  put_string(&w, type);
  while (w.n < 1500) w.b[w.n++] = 0x5a;                 /* the rest of the key */
  unsigned char b64[2100];
  int n = EVP_EncodeBlock(b64, w.b, (int)w.n);
  char *text = malloc(4096), *p = text;
  p += sprintf(p, "-----BEGIN OPENSSH PRIVATE KEY-----\n");
  for (int i = 0; i < n; i += 70) p += sprintf(p, "%.70s\n", (const char *)b64 + i);
  sprintf(p, "-----END OPENSSH PRIVATE KEY-----\n");
  return text;
}

static int is_rsa(const char *text) {
  return kh_private_key_is_rsa(text, strlen(text));
}

static void tells_rsa_keys(void **state) {
  (void)state;
  assert_true(is_rsa("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAq+TQ3a8siF017MXaU2Avh4iu\n"
                     "-----END RSA PRIVATE KEY-----\n"));
  char *key = openssh_key("ssh-rsa", 407, 0);           /* 3072 bits: the key runs past the head */
  assert_true(is_rsa(key));
  free(key);
  key = openssh_key("ssh-rsa", 535, 1);                 /* 4096 bits, encrypted: type still in clear */
  assert_true(is_rsa(key));
  free(key);
}

static void tells_other_keys_and_garbage_apart(void **state) {
  (void)state;
  char *key = openssh_key("ssh-ed25519", 51, 0);
  assert_false(is_rsa(key));
  free(key);
  key = openssh_key("ecdsa-sha2-nistp256", 104, 1);
  assert_false(is_rsa(key));
  free(key);
  key = openssh_key("ssh-rsa-cert-v01@openssh.com", 700, 0);
  assert_false(is_rsa(key));
  free(key);
  assert_false(is_rsa(""));
  assert_false(is_rsa("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"));   /* PKCS#8: type unknown */
  assert_false(is_rsa("-----BEGIN OPENSSH PRIVATE KEY-----\n!!!!\n-----END OPENSSH PRIVATE KEY-----\n"));
  assert_false(is_rsa("-----BEGIN OPENSSH PRIVATE KEY-----\nc3NoLXJzYQ==\n"));           /* "ssh-rsa", no magic */
  assert_false(is_rsa("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"));  /* cut short after the magic */
}

/* Length fields that lie, and inputs far larger than a key: bounded. */
static void stays_within_bounds(void **state) {
  (void)state;
  char *key = openssh_key("ssh-rsa", 0xffffffffu, 0);  /* the public key says 4 GiB: only its type is read */
  assert_true(is_rsa(key));
  free(key);
  key = openssh_key("ssh-rsa", 3, 0);                    /* shorter than its own type */
  assert_false(is_rsa(key));
  free(key);
  blob w = { .n = 15 };                                  /* the cipher name says 4 GiB */
  memcpy(w.b, "openssh-key-v1", 15);
  put_u32(&w, 0xffffffffu);
  put_string(&w, "ssh-rsa");
  char text[200] = "-----BEGIN OPENSSH PRIVATE KEY-----\n";
  EVP_EncodeBlock((unsigned char *)text + strlen(text), w.b, (int)w.n);
  assert_false(is_rsa(text));

  size_t big = 4u << 20;                                 /* 4 MiB */
  char *huge = malloc(big + 1);
  assert_non_null(huge);
  memset(huge, 'A', big);
  huge[big] = '\0';
  assert_false(kh_private_key_is_rsa(huge, big));
  memcpy(huge, "-----BEGIN OPENSSH PRIVATE KEY-----\n", 36);   /* base64 of zeros: no magic */
  assert_false(kh_private_key_is_rsa(huge, big));
  key = openssh_key("ssh-rsa", 407, 0);                  /* a real head, then megabytes of body */
  memcpy(huge, key, strlen(key) - strlen("-----END OPENSSH PRIVATE KEY-----\n"));
  free(key);
  assert_true(kh_private_key_is_rsa(huge, big));
  memset(huge, 'A', big);
  memcpy(huge + big - 30, "BEGIN RSA PRIVATE KEY-----\n", 27);
  assert_true(kh_private_key_is_rsa(huge, big));
  free(huge);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(asks_first_for_the_types_known_for_the_host),
    cmocka_unit_test(a_hashed_name_counts),
    cmocka_unit_test(replace_keeps_every_other_line),
    cmocka_unit_test(replace_refuses_a_line_of_several_hosts),
    cmocka_unit_test(replace_needs_the_file),
    cmocka_unit_test(ignores_markers_patterns_and_what_is_no_key),
    cmocka_unit_test(skips_a_line_longer_than_any_entry),
    cmocka_unit_test(a_nul_byte_hides_no_other_line),
    cmocka_unit_test(tells_rsa_keys),
    cmocka_unit_test(tells_other_keys_and_garbage_apart),
    cmocka_unit_test(stays_within_bounds),
  };
  return cmocka_run_group_tests_name("known_hosts", tests, setup, teardown);
}
