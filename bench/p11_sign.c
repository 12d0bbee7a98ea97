/*
** p11_sign.c - the plain C loop bench/pkcs11_bench.lua measures the Lua
** binding against: the same library, token, key and input, one
** C_SignInit + C_Sign per signature, nothing else in the loop.
**
**   p11_sign_c LIBRARY TOKEN_LABEL KEY_LABEL ECDSA|SHA256_RSA_PKCS N PIN_FILE
**   --> "N signatures in S s"      (S: CPU time of this process, as os.clock())
**
** The data signed is 32 bytes (a SHA-256 digest's worth), as in the Lua loop.
*/
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR fl;

static void check(CK_RV rv, const char *what) {
  if (rv != CKR_OK) {
    fprintf(stderr, "p11_sign_c: %s failed: 0x%08lx\n", what, (unsigned long)rv);
    exit(1);
  }
}

/* CPU seconds: other work on a shared machine does not count. */
static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The slot of the token labelled `label` (PKCS#11 pads labels with blanks). */
static CK_SLOT_ID find_slot(const char *label) {
  CK_SLOT_ID slots[64];
  CK_ULONG n = 64;
  check(fl->C_GetSlotList(CK_TRUE, slots, &n), "C_GetSlotList");
  for (CK_ULONG i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    if (fl->C_GetTokenInfo(slots[i], &ti) != CKR_OK) continue;
    size_t len = strlen(label);
    if (len <= sizeof ti.label && memcmp(ti.label, label, len) == 0 &&
        (len == sizeof ti.label || ti.label[len] == ' '))
      return slots[i];
  }
  fprintf(stderr, "p11_sign_c: no token labelled %s\n", label);
  exit(1);
}

static CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE s, const char *label) {
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE tmpl[] = {
    {CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)label, strlen(label)},
  };
  CK_OBJECT_HANDLE h;
  CK_ULONG got = 0;
  check(fl->C_FindObjectsInit(s, tmpl, 2), "C_FindObjectsInit");
  check(fl->C_FindObjects(s, &h, 1, &got), "C_FindObjects");
  check(fl->C_FindObjectsFinal(s), "C_FindObjectsFinal");
  if (got == 0) {
    fprintf(stderr, "p11_sign_c: no private key labelled %s\n", label);
    exit(1);
  }
  return h;
}

static void read_pin(const char *path, char *pin, size_t size) {
  FILE *f = fopen(path, "r");
  if (f == NULL || fgets(pin, (int)size, f) == NULL) {
    fprintf(stderr, "p11_sign_c: cannot read %s\n", path);
    exit(1);
  }
  fclose(f);
  pin[strcspn(pin, "\r\n")] = '\0';
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: p11_sign_c LIBRARY TOKEN_LABEL KEY_LABEL ECDSA|SHA256_RSA_PKCS N PIN_FILE\n");
    return 2;
  }
  void *dl = dlopen(argv[1], RTLD_NOW);
  if (dl == NULL) {
    fprintf(stderr, "p11_sign_c: %s\n", dlerror());
    return 1;
  }
  CK_C_GetFunctionList get;
  void *sym = dlsym(dl, "C_GetFunctionList");
  memcpy(&get, &sym, sizeof get);
  check(get(&fl), "C_GetFunctionList");
  CK_C_INITIALIZE_ARGS args;
  memset(&args, 0, sizeof args);
  args.flags = CKF_OS_LOCKING_OK;
  check(fl->C_Initialize(&args), "C_Initialize");

  CK_SESSION_HANDLE s;
  check(fl->C_OpenSession(find_slot(argv[2]), CKF_SERIAL_SESSION, NULL, NULL, &s), "C_OpenSession");
  char pin[256];
  read_pin(argv[6], pin, sizeof pin);
  check(fl->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin)), "C_Login");
  memset(pin, 0, sizeof pin);
  CK_OBJECT_HANDLE key = find_key(s, argv[3]);
  CK_MECHANISM mech = {strcmp(argv[4], "ECDSA") == 0 ? CKM_ECDSA : CKM_SHA256_RSA_PKCS, NULL, 0};
  long n = atol(argv[5]);

  unsigned char data[32], sig[512];
  memset(data, 'x', sizeof data);
  double t0 = now();
  for (long i = 0; i < n; i++) {
    CK_ULONG len = sizeof sig;
    check(fl->C_SignInit(s, &mech, key), "C_SignInit");
    check(fl->C_Sign(s, data, sizeof data, sig, &len), "C_Sign");
  }
  double secs = now() - t0;
  printf("%ld signatures in %.6f s\n", n, secs);

  fl->C_Logout(s);
  fl->C_CloseSession(s);
  fl->C_Finalize(NULL);
  dlclose(dl);
  return 0;
}
