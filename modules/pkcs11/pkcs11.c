/*
** pkcs11.c - "dhsm.pkcs11.core": a PKCS#11 v2.40 library, dlopen()ed, for Lua.
**
**   local lib <close> = core.load(path [, env])  -- setenv(env), dlopen, C_Initialize(CKF_OS_LOCKING_OK)
**   lib:info(); lib:slot(id); lib:token(id); lib:mechanisms(id); core.slot_ids(lib [, present])
**   local s <close> = lib:open_slot(id, rw)       -- C_OpenSession; the session keeps lib alive
**   s:token(); s:info(); s:logout(); s:init_pin(pin)   -- C_InitPIN as the SO (role init -name co)
**   s:find(template) --> {handle, ...};  s:attributes(handle [, names]) --> {name = value}
**   s:generate_key(mech, template, what) --> handle
**   s:generate_key_pair(mech, public, private, what) --> private, public;  s:destroy(handle)
**   s:sign(key, mech, data [, opts]);  s:verify(key, mech, data, signature [, opts]) --> boolean
**   s:encrypt(key, mech, data [, opts]) --> data [, iv];  s:decrypt(key, mech, data [, opts])
**   s:digest(mech, data);  s:random(n)
**   core.login(s, "user"|"so", pin)   -- unguarded C_Login: dhsm.pkcs11 takes it for its guard
**   core.mechanism(name) --> canonical name | nil;  core.rv_name(n) --> "CKR_..."
**   core.ecdsa_der(raw r||s) --> DER;  core.ecdsa_raw(der, size) --> r||s
**
** The Lua half (pkcs11.lua) resolves the library path, finds tokens by
** label or serial, guards logins and builds key templates; it adds its
** methods to the classes here (core.library, core.session).
**
** Object handles are plain integers (CK_OBJECT_HANDLE), as the token gives
** them: valid while the object exists (a session object dies with its
** session).  PKCS#11 calls block; for a local token they are quick and a
** Luna's network wait is the library's own.  The mutations here (generate,
** destroy, init_pin, logout) are raw: dhsm.pkcs11 takes them out of the
** class and sends each through dhsm.act's gate (check mode, confirmation,
** intent and outcome records).  Types come from p11-kit's
** <p11-kit/pkcs11.h>, nothing else.
*/
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>

#include "dhsm/dhsm.h"

#define LIBRARY_MT "dhsm.pkcs11.library"
#define SESSION_MT "dhsm.pkcs11.session"

#define MAX_ATTRS 48          /* per template or attribute read */
#define MAX_RANDOM (1 << 20)
#define SIG_GUESS 512         /* RSA-4096; the buffer grows if a token wants more */

/* One C_Initialize per module in the process, however many library
** objects dlopen() it (dlopen hands back the same copy): the last one to go
** calls C_Finalize, so closing one never pulls the module from under
** another. */
typedef struct module {
  CK_FUNCTION_LIST_PTR fl;
  int refs;
  int ours;                   /* we initialised it, not some other user in the process */
  struct module *next;
} module;
static module *loaded;

typedef struct library {
  void *dl;
  CK_FUNCTION_LIST_PTR fl;    /* NULL until initialised and once released */
  module *mod;
  int sessions;               /* open sessions */
  int closing;                /* closed while sessions were open: the last releases it */
} library;
/* user value 1: the path */

typedef struct session {
  CK_SESSION_HANDLE h;
  CK_SLOT_ID slot;
  library *lib;               /* also user value 1, which keeps it alive */
  int closed;
  int rw;
  char token[80];             /* "label#serial": audit target and the guard's key */
} session;

/* ---- names ---------------------------------------------------------------- */

typedef struct named {
  unsigned long value;
  const char *name;
} named;

#define N(x) {x, #x}
#define LUNA(off, name) {CKR_VENDOR_DEFINED + (off), name}

static const named RV_NAMES[] = {
  N(CKR_OK), N(CKR_CANCEL), N(CKR_HOST_MEMORY), N(CKR_SLOT_ID_INVALID), N(CKR_GENERAL_ERROR),
  N(CKR_FUNCTION_FAILED), N(CKR_ARGUMENTS_BAD), N(CKR_NO_EVENT), N(CKR_NEED_TO_CREATE_THREADS),
  N(CKR_CANT_LOCK), N(CKR_ATTRIBUTE_READ_ONLY), N(CKR_ATTRIBUTE_SENSITIVE),
  N(CKR_ATTRIBUTE_TYPE_INVALID), N(CKR_ATTRIBUTE_VALUE_INVALID), N(CKR_ACTION_PROHIBITED),
  N(CKR_DATA_INVALID), N(CKR_DATA_LEN_RANGE), N(CKR_DEVICE_ERROR), N(CKR_DEVICE_MEMORY),
  N(CKR_DEVICE_REMOVED), N(CKR_ENCRYPTED_DATA_INVALID), N(CKR_ENCRYPTED_DATA_LEN_RANGE),
  N(CKR_FUNCTION_CANCELED), N(CKR_FUNCTION_NOT_PARALLEL), N(CKR_FUNCTION_NOT_SUPPORTED),
  N(CKR_KEY_HANDLE_INVALID), N(CKR_KEY_SIZE_RANGE), N(CKR_KEY_TYPE_INCONSISTENT),
  N(CKR_KEY_NOT_NEEDED), N(CKR_KEY_CHANGED), N(CKR_KEY_NEEDED), N(CKR_KEY_INDIGESTIBLE),
  N(CKR_KEY_FUNCTION_NOT_PERMITTED), N(CKR_KEY_NOT_WRAPPABLE), N(CKR_KEY_UNEXTRACTABLE),
  N(CKR_MECHANISM_INVALID), N(CKR_MECHANISM_PARAM_INVALID), N(CKR_OBJECT_HANDLE_INVALID),
  N(CKR_OPERATION_ACTIVE), N(CKR_OPERATION_NOT_INITIALIZED), N(CKR_PIN_INCORRECT),
  N(CKR_PIN_INVALID), N(CKR_PIN_LEN_RANGE), N(CKR_PIN_EXPIRED), N(CKR_PIN_LOCKED),
  N(CKR_SESSION_CLOSED), N(CKR_SESSION_COUNT), N(CKR_SESSION_HANDLE_INVALID),
  N(CKR_SESSION_PARALLEL_NOT_SUPPORTED), N(CKR_SESSION_READ_ONLY), N(CKR_SESSION_EXISTS),
  N(CKR_SESSION_READ_ONLY_EXISTS), N(CKR_SESSION_READ_WRITE_SO_EXISTS),
  N(CKR_SIGNATURE_INVALID), N(CKR_SIGNATURE_LEN_RANGE), N(CKR_TEMPLATE_INCOMPLETE),
  N(CKR_TEMPLATE_INCONSISTENT), N(CKR_TOKEN_NOT_PRESENT), N(CKR_TOKEN_NOT_RECOGNIZED),
  N(CKR_TOKEN_WRITE_PROTECTED), N(CKR_UNWRAPPING_KEY_HANDLE_INVALID),
  N(CKR_UNWRAPPING_KEY_SIZE_RANGE), N(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
  N(CKR_USER_ALREADY_LOGGED_IN), N(CKR_USER_NOT_LOGGED_IN), N(CKR_USER_PIN_NOT_INITIALIZED),
  N(CKR_USER_TYPE_INVALID), N(CKR_USER_ANOTHER_ALREADY_LOGGED_IN), N(CKR_USER_TOO_MANY_TYPES),
  N(CKR_WRAPPED_KEY_INVALID), N(CKR_WRAPPED_KEY_LEN_RANGE), N(CKR_WRAPPING_KEY_HANDLE_INVALID),
  N(CKR_WRAPPING_KEY_SIZE_RANGE), N(CKR_WRAPPING_KEY_TYPE_INCONSISTENT),
  N(CKR_RANDOM_SEED_NOT_SUPPORTED), N(CKR_RANDOM_NO_RNG), N(CKR_DOMAIN_PARAMS_INVALID),
  N(CKR_CURVE_NOT_SUPPORTED), N(CKR_BUFFER_TOO_SMALL), N(CKR_SAVED_STATE_INVALID),
  N(CKR_INFORMATION_SENSITIVE), N(CKR_STATE_UNSAVEABLE), N(CKR_CRYPTOKI_NOT_INITIALIZED),
  N(CKR_CRYPTOKI_ALREADY_INITIALIZED), N(CKR_MUTEX_BAD), N(CKR_MUTEX_NOT_LOCKED),
  N(CKR_NEW_PIN_MODE), N(CKR_NEXT_OTP), N(CKR_EXCEEDED_MAX_ITERATIONS),
  N(CKR_FIPS_SELF_TEST_FAILED), N(CKR_LIBRARY_LOAD_FAILED), N(CKR_PIN_TOO_WEAK),
  N(CKR_PUBLIC_KEY_INVALID), N(CKR_FUNCTION_REJECTED),
  /* Luna (SafeNet cryptoki_v2.h, as pycryptoki lists them) */
  LUNA(0x04, "CKR_RC_ERROR"), LUNA(0x05, "CKR_CONTAINER_HANDLE_INVALID"),
  LUNA(0x06, "CKR_TOO_MANY_CONTAINERS"), LUNA(0x07, "CKR_USER_LOCKED_OUT"),
  LUNA(0x08, "CKR_CLONING_PARAMETER_ALREADY_EXISTS"), LUNA(0x09, "CKR_CLONING_PARAMETER_MISSING"),
  LUNA(0x0a, "CKR_CERTIFICATE_DATA_MISSING"), LUNA(0x0b, "CKR_CERTIFICATE_DATA_INVALID"),
  LUNA(0x0c, "CKR_ACCEL_DEVICE_ERROR"), LUNA(0x0d, "CKR_WRAPPING_ERROR"),
  LUNA(0x0e, "CKR_UNWRAPPING_ERROR"), LUNA(0x0f, "CKR_MAC_MISSING"),
  LUNA(0x10, "CKR_DAC_POLICY_PID_MISMATCH"), LUNA(0x11, "CKR_DAC_MISSING"),
  LUNA(0x12, "CKR_BAD_DAC"), LUNA(0x13, "CKR_SSK_MISSING"), LUNA(0x14, "CKR_BAD_MAC"),
  LUNA(0x15, "CKR_DAK_MISSING"), LUNA(0x16, "CKR_BAD_DAK"),
  LUNA(0x17, "CKR_SIM_AUTHORIZATION_FAILED"), LUNA(0x18, "CKR_SIM_VERSION_UNSUPPORTED"),
  LUNA(0x19, "CKR_SIM_CORRUPT_DATA"), LUNA(0x1a, "CKR_USER_NOT_AUTHORIZED"),
  LUNA(0x1b, "CKR_MAX_OBJECT_COUNT_EXCEEDED"), LUNA(0x1c, "CKR_SO_LOGIN_FAILURE_THRESHOLD"),
  LUNA(0x1d, "CKR_SIM_AUTHFORM_INVALID"), LUNA(0x1e, "CKR_CITS_DAK_MISSING"),
  LUNA(0x1f, "CKR_UNABLE_TO_CONNECT"), LUNA(0x20, "CKR_PARTITION_DISABLED"),
  LUNA(0x21, "CKR_CALLBACK_ERROR"), LUNA(0x22, "CKR_SECURITY_PARAMETER_MISSING"),
  LUNA(0x23, "CKR_SP_TIMEOUT"), LUNA(0x24, "CKR_TIMEOUT"), LUNA(0x25, "CKR_ECC_UNKNOWN_CURVE"),
  LUNA(0x26, "CKR_MTK_ZEROIZED"), LUNA(0x27, "CKR_MTK_STATE_INVALID"),
  LUNA(0x28, "CKR_INVALID_ENTRY_TYPE"), LUNA(0x29, "CKR_MTK_SPLIT_INVALID"),
  LUNA(0x2a, "CKR_HSM_STORAGE_FULL"), LUNA(0x2b, "CKR_DEVICE_TIMEOUT"),
  LUNA(0x2c, "CKR_CONTAINER_OBJECT_STORAGE_FULL"), LUNA(0x2d, "CKR_PED_CLIENT_NOT_RUNNING"),
  LUNA(0x2e, "CKR_PED_UNPLUGGED"), LUNA(0x2f, "CKR_ECC_POINT_INVALID"),
  LUNA(0x30, "CKR_OPERATION_NOT_ALLOWED"), LUNA(0x31, "CKR_LICENSE_CAPACITY_EXCEEDED"),
  LUNA(0x32, "CKR_LOG_FILE_NOT_OPEN"), LUNA(0x33, "CKR_LOG_FILE_WRITE_ERROR"),
  LUNA(0x34, "CKR_LOG_BAD_FILE_NAME"), LUNA(0x35, "CKR_LOG_FULL"), LUNA(0x36, "CKR_LOG_NO_KCV"),
  LUNA(0x37, "CKR_LOG_BAD_RECORD_HMAC"), LUNA(0x38, "CKR_LOG_BAD_TIME"),
  LUNA(0x39, "CKR_LOG_AUDIT_NOT_INITIALIZED"), LUNA(0x3a, "CKR_LOG_RESYNC_NEEDED"),
  LUNA(0x3b, "CKR_AUDIT_LOGIN_TIMEOUT_IN_PROGRESS"),
  LUNA(0x3c, "CKR_AUDIT_LOGIN_FAILURE_THRESHOLD"), LUNA(0x136, "CKR_KEY_NOT_ACTIVE"),
  {0, NULL}
};

/* Luna's network and device waits: the same call may work a moment later.
** (A login is never retryable, whatever it returned: see fail_login.) */
static const named RV_TRANSIENT[] = {
  LUNA(0x1f, "CKR_UNABLE_TO_CONNECT"), LUNA(0x23, "CKR_SP_TIMEOUT"), LUNA(0x24, "CKR_TIMEOUT"),
  LUNA(0x2b, "CKR_DEVICE_TIMEOUT"), {0, NULL}
};

static const named CLASSES[] = {
  {CKO_DATA, "data"}, {CKO_CERTIFICATE, "certificate"}, {CKO_PUBLIC_KEY, "public_key"},
  {CKO_PRIVATE_KEY, "private_key"}, {CKO_SECRET_KEY, "secret_key"}, {CKO_HW_FEATURE, "hw_feature"},
  {CKO_DOMAIN_PARAMETERS, "domain_parameters"}, {CKO_MECHANISM, "mechanism"}, {0, NULL}
};

static const named KEY_TYPES[] = {
  {CKK_RSA, "rsa"}, {CKK_DSA, "dsa"}, {CKK_DH, "dh"}, {CKK_EC, "ec"},
  {CKK_EC_EDWARDS, "ec_edwards"}, {CKK_GENERIC_SECRET, "generic_secret"}, {CKK_DES, "des"},
  {CKK_DES2, "des2"}, {CKK_DES3, "des3"}, {CKK_AES, "aes"}, {CKK_SHA_1_HMAC, "sha_1_hmac"},
  {CKK_SHA256_HMAC, "sha256_hmac"}, {CKK_SHA384_HMAC, "sha384_hmac"},
  {CKK_SHA512_HMAC, "sha512_hmac"}, {0, NULL}
};

static const named TOKEN_FLAGS[] = {
  {CKF_RNG, "rng"}, {CKF_WRITE_PROTECTED, "write_protected"},
  {CKF_LOGIN_REQUIRED, "login_required"}, {CKF_USER_PIN_INITIALIZED, "user_pin_initialized"},
  {CKF_RESTORE_KEY_NOT_NEEDED, "restore_key_not_needed"}, {CKF_CLOCK_ON_TOKEN, "clock_on_token"},
  {CKF_PROTECTED_AUTHENTICATION_PATH, "protected_authentication_path"},
  {CKF_DUAL_CRYPTO_OPERATIONS, "dual_crypto_operations"},
  {CKF_TOKEN_INITIALIZED, "token_initialized"},
  {CKF_SECONDARY_AUTHENTICATION, "secondary_authentication"},
  {CKF_USER_PIN_COUNT_LOW, "user_pin_count_low"}, {CKF_USER_PIN_FINAL_TRY, "user_pin_final_try"},
  {CKF_USER_PIN_LOCKED, "user_pin_locked"}, {CKF_USER_PIN_TO_BE_CHANGED, "user_pin_to_be_changed"},
  {CKF_SO_PIN_COUNT_LOW, "so_pin_count_low"}, {CKF_SO_PIN_FINAL_TRY, "so_pin_final_try"},
  {CKF_SO_PIN_LOCKED, "so_pin_locked"}, {CKF_SO_PIN_TO_BE_CHANGED, "so_pin_to_be_changed"},
  {0, NULL}
};

static const named SLOT_FLAGS[] = {
  {CKF_TOKEN_PRESENT, "token_present"}, {CKF_REMOVABLE_DEVICE, "removable"},
  {CKF_HW_SLOT, "hardware_slot"}, {0, NULL}
};

static const named SESSION_STATES[] = {
  {CKS_RO_PUBLIC_SESSION, "ro_public"}, {CKS_RO_USER_FUNCTIONS, "ro_user"},
  {CKS_RW_PUBLIC_SESSION, "rw_public"}, {CKS_RW_USER_FUNCTIONS, "rw_user"},
  {CKS_RW_SO_FUNCTIONS, "rw_so"}, {0, NULL}
};

static const char *name_of(const named *t, unsigned long v) {
  for (; t->name; t++)
    if (t->value == v) return t->name;
  return NULL;
}

static const named *named_by_name(const named *t, const char *name) {
  for (; t->name; t++)
    if (strcmp(t->name, name) == 0) return t;
  return NULL;
}

/* The name of a CK_RV; unknown ones as "CKR_0x........" in buf. */
static const char *rv_name(CK_RV rv, char buf[24]) {
  const char *n = name_of(RV_NAMES, rv);
  if (n) return n;
  snprintf(buf, 24, "CKR_0x%08lx", (unsigned long)rv);
  return buf;
}

/* name = boolean for every flag of the table, into the table on top. */
static void set_flags(lua_State *L, const named *t, CK_FLAGS flags) {
  for (; t->name; t++) {
    lua_pushboolean(L, (flags & t->value) != 0);
    lua_setfield(L, -2, t->name);
  }
}

/* ---- mechanisms ----------------------------------------------------------- */

enum { P_NONE, P_PSS, P_GCM, P_IV, P_PREHASH };

typedef struct mech_def {
  const char *name;
  CK_MECHANISM_TYPE type;
  int param;
  CK_MECHANISM_TYPE hash;     /* P_PSS: the hash it implies, 0 = opts.hash; P_PREHASH: the hash */
} mech_def;

/* Canonical names first (mechanism lists show the first of a type), aliases last. */
static const mech_def MECHS[] = {
  {"RSA_PKCS_KEY_PAIR_GEN", CKM_RSA_PKCS_KEY_PAIR_GEN, P_NONE, 0},
  {"EC_KEY_PAIR_GEN", CKM_EC_KEY_PAIR_GEN, P_NONE, 0},
  {"AES_KEY_GEN", CKM_AES_KEY_GEN, P_NONE, 0},
  {"GENERIC_SECRET_KEY_GEN", CKM_GENERIC_SECRET_KEY_GEN, P_NONE, 0},
  {"RSA_PKCS", CKM_RSA_PKCS, P_NONE, 0},
  {"SHA1_RSA_PKCS", CKM_SHA1_RSA_PKCS, P_NONE, 0},
  {"SHA224_RSA_PKCS", CKM_SHA224_RSA_PKCS, P_NONE, 0},
  {"SHA256_RSA_PKCS", CKM_SHA256_RSA_PKCS, P_NONE, 0},
  {"SHA384_RSA_PKCS", CKM_SHA384_RSA_PKCS, P_NONE, 0},
  {"SHA512_RSA_PKCS", CKM_SHA512_RSA_PKCS, P_NONE, 0},
  {"RSA_PKCS_PSS", CKM_RSA_PKCS_PSS, P_PSS, 0},
  {"SHA1_RSA_PKCS_PSS", CKM_SHA1_RSA_PKCS_PSS, P_PSS, CKM_SHA_1},
  {"SHA224_RSA_PKCS_PSS", CKM_SHA224_RSA_PKCS_PSS, P_PSS, CKM_SHA224},
  {"SHA256_RSA_PKCS_PSS", CKM_SHA256_RSA_PKCS_PSS, P_PSS, CKM_SHA256},
  {"SHA384_RSA_PKCS_PSS", CKM_SHA384_RSA_PKCS_PSS, P_PSS, CKM_SHA384},
  {"SHA512_RSA_PKCS_PSS", CKM_SHA512_RSA_PKCS_PSS, P_PSS, CKM_SHA512},
  {"ECDSA", CKM_ECDSA, P_NONE, 0},
  {"ECDSA_SHA1", CKM_ECDSA_SHA1, P_PREHASH, CKM_SHA_1},
  {"ECDSA_SHA224", CKM_ECDSA_SHA224, P_PREHASH, CKM_SHA224},
  {"ECDSA_SHA256", CKM_ECDSA_SHA256, P_PREHASH, CKM_SHA256},
  {"ECDSA_SHA384", CKM_ECDSA_SHA384, P_PREHASH, CKM_SHA384},
  {"ECDSA_SHA512", CKM_ECDSA_SHA512, P_PREHASH, CKM_SHA512},
  {"SHA_1_HMAC", CKM_SHA_1_HMAC, P_NONE, 0},
  {"SHA224_HMAC", CKM_SHA224_HMAC, P_NONE, 0},
  {"SHA256_HMAC", CKM_SHA256_HMAC, P_NONE, 0},
  {"SHA384_HMAC", CKM_SHA384_HMAC, P_NONE, 0},
  {"SHA512_HMAC", CKM_SHA512_HMAC, P_NONE, 0},
  {"AES_ECB", CKM_AES_ECB, P_NONE, 0},
  {"AES_CBC", CKM_AES_CBC, P_IV, 0},
  {"AES_CBC_PAD", CKM_AES_CBC_PAD, P_IV, 0},
  {"AES_GCM", CKM_AES_GCM, P_GCM, 0},
  {"SHA_1", CKM_SHA_1, P_NONE, 0},
  {"SHA224", CKM_SHA224, P_NONE, 0},
  {"SHA256", CKM_SHA256, P_NONE, 0},
  {"SHA384", CKM_SHA384, P_NONE, 0},
  {"SHA512", CKM_SHA512, P_NONE, 0},
  {"SHA1", CKM_SHA_1, P_NONE, 0},
  {"RSA_PSS", CKM_RSA_PKCS_PSS, P_PSS, 0},
  {"HMAC_SHA256", CKM_SHA256_HMAC, P_NONE, 0},
  {"HMAC_SHA384", CKM_SHA384_HMAC, P_NONE, 0},
  {"HMAC_SHA512", CKM_SHA512_HMAC, P_NONE, 0},
  {NULL, 0, 0, 0}
};

/* The hashes: for RSA-PSS with their MGF1 and length (the default salt),
** for ECDSA_SHA* with OpenSSL's digest. */
typedef struct hash_def {
  CK_MECHANISM_TYPE hash;
  CK_RSA_PKCS_MGF_TYPE mgf;
  CK_ULONG len;
  const EVP_MD *(*md)(void);
} hash_def;

static const hash_def HASHES[] = {
  {CKM_SHA_1, CKG_MGF1_SHA1, 20, EVP_sha1}, {CKM_SHA224, CKG_MGF1_SHA224, 28, EVP_sha224},
  {CKM_SHA256, CKG_MGF1_SHA256, 32, EVP_sha256}, {CKM_SHA384, CKG_MGF1_SHA384, 48, EVP_sha384},
  {CKM_SHA512, CKG_MGF1_SHA512, 64, EVP_sha512}, {0, 0, 0, NULL}
};

static const hash_def *find_hash(CK_MECHANISM_TYPE type) {
  for (const hash_def *h = HASHES; h->hash; h++)
    if (h->hash == type) return h;
  return NULL;
}

static const char *mech_name(CK_MECHANISM_TYPE type) {
  for (const mech_def *m = MECHS; m->name; m++)
    if (m->type == type) return m->name;
  return NULL;
}

/* "sha256-rsa-pkcs", "CKM_SHA256_RSA_PKCS" and "SHA256_RSA_PKCS" are one mechanism. */
static const mech_def *find_mech(const char *name) {
  char norm[48];
  size_t n = 0;
  for (; *name && n < sizeof norm - 1; name++)
    norm[n++] = *name == '-' ? '_' : (char)(*name >= 'a' && *name <= 'z' ? *name - 32 : *name);
  if (*name) return NULL;
  norm[n] = '\0';
  const char *bare = strncmp(norm, "CKM_", 4) == 0 ? norm + 4 : norm;
  for (const mech_def *m = MECHS; m->name; m++)
    if (strcmp(m->name, bare) == 0) return m;
  return NULL;
}

static int unknown_mech(lua_State *L, const char *name) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (const mech_def *m = MECHS; m->name; m++) {
    if (m != MECHS) luaL_addstring(&b, ", ");
    luaL_addstring(&b, m->name);
  }
  luaL_pushresult(&b);
  return dhsm_usage_error(L, "pkcs11: unknown mechanism \"%s\"; known: %s", name, lua_tostring(L, -1));
}

static const mech_def *check_mech(lua_State *L, int idx) {
  const char *name = luaL_checkstring(L, idx);
  const mech_def *m = find_mech(name);
  if (m == NULL) unknown_mech(L, name);
  return m;
}

/* ---- attributes ----------------------------------------------------------- */

enum { A_BOOL, A_ULONG, A_STRING, A_BYTES, A_CLASS, A_KEY_TYPE, A_MECH };

typedef struct attr_def {
  const char *name;
  CK_ATTRIBUTE_TYPE type;
  int kind;
} attr_def;

static const attr_def ATTRS[] = {
  {"class", CKA_CLASS, A_CLASS}, {"key_type", CKA_KEY_TYPE, A_KEY_TYPE},
  {"label", CKA_LABEL, A_STRING}, {"id", CKA_ID, A_BYTES},
  {"application", CKA_APPLICATION, A_STRING}, {"value", CKA_VALUE, A_BYTES},
  {"value_len", CKA_VALUE_LEN, A_ULONG}, {"token", CKA_TOKEN, A_BOOL},
  {"private", CKA_PRIVATE, A_BOOL}, {"modifiable", CKA_MODIFIABLE, A_BOOL},
  {"copyable", CKA_COPYABLE, A_BOOL}, {"destroyable", CKA_DESTROYABLE, A_BOOL},
  {"sensitive", CKA_SENSITIVE, A_BOOL}, {"extractable", CKA_EXTRACTABLE, A_BOOL},
  {"always_sensitive", CKA_ALWAYS_SENSITIVE, A_BOOL},
  {"never_extractable", CKA_NEVER_EXTRACTABLE, A_BOOL}, {"local", CKA_LOCAL, A_BOOL},
  {"always_authenticate", CKA_ALWAYS_AUTHENTICATE, A_BOOL},
  {"encrypt", CKA_ENCRYPT, A_BOOL}, {"decrypt", CKA_DECRYPT, A_BOOL},
  {"sign", CKA_SIGN, A_BOOL}, {"verify", CKA_VERIFY, A_BOOL},
  {"sign_recover", CKA_SIGN_RECOVER, A_BOOL}, {"verify_recover", CKA_VERIFY_RECOVER, A_BOOL},
  {"wrap", CKA_WRAP, A_BOOL}, {"unwrap", CKA_UNWRAP, A_BOOL}, {"derive", CKA_DERIVE, A_BOOL},
  {"trusted", CKA_TRUSTED, A_BOOL}, {"wrap_with_trusted", CKA_WRAP_WITH_TRUSTED, A_BOOL},
  {"modulus", CKA_MODULUS, A_BYTES}, {"modulus_bits", CKA_MODULUS_BITS, A_ULONG},
  {"public_exponent", CKA_PUBLIC_EXPONENT, A_BYTES},
  {"ec_params", CKA_EC_PARAMS, A_BYTES}, {"ec_point", CKA_EC_POINT, A_BYTES},
  {"key_gen_mechanism", CKA_KEY_GEN_MECHANISM, A_MECH}, {"subject", CKA_SUBJECT, A_BYTES},
  /* a secret key's KCV: how two copies of one key are told apart without its value */
  {"check_value", CKA_CHECK_VALUE, A_BYTES},
  {NULL, 0, 0}
};

/* What s:attributes(h) reads when no names are given. */
static const char *const DEFAULT_ATTRS[] = {
  "class", "key_type", "label", "id", "token", "private", "modifiable", "sensitive",
  "extractable", "local", "encrypt", "decrypt", "sign", "verify", "wrap", "unwrap", "derive",
  "modulus_bits", "public_exponent", "ec_params", "value_len", "key_gen_mechanism", NULL
};

static const attr_def *find_attr(const char *name) {
  for (const attr_def *a = ATTRS; a->name; a++)
    if (strcmp(a->name, name) == 0) return a;
  return NULL;
}

/* A template: attributes pointing at values kept here or in Lua strings
** the caller's table holds (so they live as long as the call). */
typedef struct template {
  CK_ATTRIBUTE a[MAX_ATTRS];
  CK_ULONG ul[MAX_ATTRS];
  CK_BBOOL b[MAX_ATTRS];
  CK_ULONG n;
} template;

static int bad_field(lua_State *L, const char *ctx, const char *field, const char *want) {
  return dhsm_usage_error(L, "pkcs11: %s: field '%s' must be %s, got %s",
                          ctx, field, want, luaL_typename(L, -1));
}

/* An enumerated value (class, key type, mechanism) given by name or number. */
static CK_ULONG enum_value(lua_State *L, const char *ctx, const attr_def *d) {
  if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 0) return (CK_ULONG)lua_tointeger(L, -1);
  if (lua_type(L, -1) != LUA_TSTRING) return (CK_ULONG)bad_field(L, ctx, d->name, "a name or a number");
  const char *s = lua_tostring(L, -1);
  if (d->kind == A_MECH) {
    const mech_def *m = find_mech(s);
    if (m) return m->type;
  } else {
    const named *n = named_by_name(d->kind == A_CLASS ? CLASSES : KEY_TYPES, s);
    if (n) return n->value;
  }
  return (CK_ULONG)dhsm_usage_error(L, "pkcs11: %s: field '%s' has no value \"%s\"", ctx, d->name, s);
}

/* Add the value on top of the stack as attribute d. */
static void template_add(lua_State *L, template *t, const attr_def *d, const char *ctx) {
  CK_ATTRIBUTE *a = &t->a[t->n];
  a->type = d->type;
  switch (d->kind) {
    case A_BOOL:
      if (!lua_isboolean(L, -1)) bad_field(L, ctx, d->name, "a boolean");
      t->b[t->n] = lua_toboolean(L, -1) ? CK_TRUE : CK_FALSE;
      a->pValue = &t->b[t->n];
      a->ulValueLen = sizeof(CK_BBOOL);
      break;
    case A_ULONG:
      if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0) bad_field(L, ctx, d->name, "a non-negative integer");
      t->ul[t->n] = (CK_ULONG)lua_tointeger(L, -1);
      a->pValue = &t->ul[t->n];
      a->ulValueLen = sizeof(CK_ULONG);
      break;
    case A_STRING:
    case A_BYTES: {
      size_t len;
      if (lua_type(L, -1) != LUA_TSTRING) bad_field(L, ctx, d->name, "a string");
      a->pValue = (void *)lua_tolstring(L, -1, &len);
      a->ulValueLen = (CK_ULONG)len;
      break;
    }
    default:
      t->ul[t->n] = enum_value(L, ctx, d);
      a->pValue = &t->ul[t->n];
      a->ulValueLen = sizeof(CK_ULONG);
  }
  t->n++;
}

/* The template table at idx (nil: empty).  ctx names the call in errors. */
static void check_template(lua_State *L, int idx, template *t, const char *ctx) {
  t->n = 0;
  if (lua_isnoneornil(L, idx)) return;
  if (!lua_istable(L, idx))
    dhsm_usage_error(L, "pkcs11: %s: expected a template table, got %s", ctx, luaL_typename(L, idx));
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      dhsm_usage_error(L, "pkcs11: %s: template fields are attribute names, got a %s key", ctx, luaL_typename(L, -2));
    const attr_def *d = find_attr(lua_tostring(L, -2));
    if (d == NULL) dhsm_usage_error(L, "pkcs11: %s: unknown template field '%s'", ctx, lua_tostring(L, -2));
    if (t->n == MAX_ATTRS) dhsm_usage_error(L, "pkcs11: %s: more than %d template fields", ctx, MAX_ATTRS);
    template_add(L, t, d, ctx);
    lua_pop(L, 1);                 /* the string stays alive in the table */
  }
}

/* Push an attribute value read from the token, typed by its kind. */
static void push_attr(lua_State *L, const attr_def *d, const CK_ATTRIBUTE *a) {
  CK_ULONG v = 0;
  if (d->kind >= A_CLASS || d->kind == A_ULONG) {
    if (a->ulValueLen != sizeof v) {      /* not what the standard says: show the bytes */
      lua_pushlstring(L, a->pValue, a->ulValueLen);
      return;
    }
    memcpy(&v, a->pValue, sizeof v);
  }
  const char *name = NULL;
  switch (d->kind) {
    case A_BOOL: lua_pushboolean(L, a->ulValueLen > 0 && *(CK_BBOOL *)a->pValue); return;
    case A_STRING:
    case A_BYTES: lua_pushlstring(L, a->pValue, a->ulValueLen); return;
    case A_CLASS: name = name_of(CLASSES, v); break;
    case A_KEY_TYPE: name = name_of(KEY_TYPES, v); break;
    case A_MECH: name = mech_name(v); break;
  }
  if (name) lua_pushstring(L, name);
  else lua_pushinteger(L, (lua_Integer)v);
}

/* ---- errors --------------------------------------------------------------- */

/* Raise kind "pkcs11", code = the CKR name, details = {rv=, ["function"]=, target=}. */
static int raise_rv(lua_State *L, CK_RV rv, const char *fn, const char *target, int may_retry) {
  char buf[24], hex[24];
  const char *name = rv_name(rv, buf);
  snprintf(hex, sizeof hex, "0x%08lx", (unsigned long)rv);
  dhsm_error_new(L, "pkcs11", name, may_retry && name_of(RV_TRANSIENT, rv) != NULL,
                 "%s on %s returned %s (%s)", fn, target, name, hex);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)rv);
  lua_setfield(L, -2, "rv");
  lua_pushstring(L, fn);
  lua_setfield(L, -2, "function");
  lua_pushstring(L, target);
  lua_setfield(L, -2, "target");
  lua_setfield(L, -2, "details");
  return lua_error(L);
}

static const char *lib_path(lua_State *L, int idx) {
  lua_getiuservalue(L, idx, 1);
  const char *p = lua_tostring(L, -1);      /* the user value keeps it alive */
  lua_pop(L, 1);
  return p ? p : "?";
}

static void check_lib_rv(lua_State *L, CK_RV rv, const char *fn) {
  if (rv != CKR_OK) raise_rv(L, rv, fn, lua_pushfstring(L, "PKCS#11 library %s", lib_path(L, 1)), 1);
}

static const char *session_target(lua_State *L, session *s) {
  return lua_pushfstring(L, "token %s (slot %I)", s->token, (lua_Integer)s->slot);
}

static void check_rv(lua_State *L, session *s, CK_RV rv, const char *fn) {
  if (rv != CKR_OK) raise_rv(L, rv, fn, session_target(L, s), 1);
}

/* ---- the library ---------------------------------------------------------- */

static CK_RV module_acquire(CK_FUNCTION_LIST_PTR fl, module **out) {
  for (module *m = loaded; m; m = m->next) {
    if (m->fl == fl) {
      m->refs++;
      *out = m;
      return CKR_OK;
    }
  }
  CK_C_INITIALIZE_ARGS args;
  memset(&args, 0, sizeof args);
  args.flags = CKF_OS_LOCKING_OK;           /* its own locks: no callbacks into us */
  CK_RV rv = fl->C_Initialize(&args);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) return rv;
  module *m = calloc(1, sizeof *m);
  if (m == NULL) {
    if (rv == CKR_OK) fl->C_Finalize(NULL);
    return CKR_HOST_MEMORY;
  }
  m->fl = fl;
  m->refs = 1;
  m->ours = rv == CKR_OK;                   /* someone else's: never finalise it */
  m->next = loaded;
  loaded = m;
  *out = m;
  return CKR_OK;
}

static void module_release(module *m) {
  if (--m->refs > 0) return;
  if (m->ours) m->fl->C_Finalize(NULL);
  for (module **p = &loaded; *p; p = &(*p)->next) {
    if (*p == m) {
      *p = m->next;
      break;
    }
  }
  free(m);
}

/* Give everything back, once; safe on a half-opened library. */
static void lib_release(library *lb) {
  if (lb->mod) module_release(lb->mod);
  lb->mod = NULL;
  lb->fl = NULL;
  if (lb->dl) dlclose(lb->dl);
  lb->dl = NULL;
}

static library *check_lib(lua_State *L, int idx) {
  library *lb = luaL_checkudata(L, idx, LIBRARY_MT);
  if (lb->fl == NULL || lb->closing) dhsm_usage_error(L, "pkcs11: this PKCS#11 library is closed");
  return lb;
}

/* env = {NAME = "value"}: set before dlopen, for libraries configured by
** the environment (SOFTHSM2_CONF, ChrystokiConfigurationPath). */
static void set_env(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      dhsm_usage_error(L, "pkcs11.load: env must map variable names to strings");
    const char *name = lua_tostring(L, -2);
    if (*name == '\0' || strchr(name, '=')) dhsm_usage_error(L, "pkcs11.load: bad variable name \"%s\"", name);
    setenv(name, lua_tostring(L, -1), 1);
    lua_pop(L, 1);
  }
}

static int load_failed(lua_State *L, const char *path, const char *why, const char *dlerr) {
  dhsm_error_new(L, "pkcs11", "LoadFailed", 0, "cannot load the PKCS#11 library %s: %s%s%s",
                 path, why, dlerr ? ": " : "", dlerr ? dlerr : "");
  lua_createtable(L, 0, 2);
  lua_pushstring(L, path);
  lua_setfield(L, -2, "path");
  if (dlerr) {
    lua_pushstring(L, dlerr);
    lua_setfield(L, -2, "dlerror");
  }
  lua_setfield(L, -2, "details");
  return lua_error(L);
}

/* core.load(path [, env]) -> library */
static int p11_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  set_env(L, 2);
  lua_settop(L, 1);
  library *lb = lua_newuserdatauv(L, sizeof *lb, 1);
  memset(lb, 0, sizeof *lb);                /* created closed, opened step by step */
  luaL_setmetatable(L, LIBRARY_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lb->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lb->dl == NULL) return load_failed(L, path, "dlopen failed", dlerror());
  CK_C_GetFunctionList get;
  void *sym = dlsym(lb->dl, "C_GetFunctionList");
  memcpy(&get, &sym, sizeof get);           /* POSIX: a symbol may be a function */
  if (sym == NULL) return load_failed(L, path, "not a PKCS#11 library (no C_GetFunctionList)", NULL);
  CK_FUNCTION_LIST_PTR fl = NULL;
  CK_RV rv = get(&fl);
  if (rv != CKR_OK || fl == NULL) return raise_rv(L, rv, "C_GetFunctionList", path, 0);
  if (fl->version.major != 2)
    return load_failed(L, path, lua_pushfstring(L, "Cryptoki %d.%d, not 2.x", fl->version.major,
                                                fl->version.minor), NULL);
  rv = module_acquire(fl, &lb->mod);
  if (rv != CKR_OK) return raise_rv(L, rv, "C_Initialize", path, 0);
  lb->fl = fl;
  return 1;
}

/* lib:close(): now, or with its last session */
static int lib_close(lua_State *L) {
  library *lb = luaL_checkudata(L, 1, LIBRARY_MT);
  if (lb->sessions > 0) lb->closing = 1;
  else lib_release(lb);
  return 0;
}

static int lib_tostring(lua_State *L) {
  library *lb = luaL_checkudata(L, 1, LIBRARY_MT);
  if (lb->fl == NULL || lb->closing)
    lua_pushfstring(L, "pkcs11 library %s (closed)", lib_path(L, 1));
  else
    lua_pushfstring(L, "pkcs11 library %s (%d sessions)", lib_path(L, 1), lb->sessions);
  return 1;
}

/* Blank-padded, unterminated PKCS#11 text, trimmed. */
static void push_padded(lua_State *L, const unsigned char *p, size_t n) {
  while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\0')) n--;
  lua_pushlstring(L, (const char *)p, n);
}

static void set_padded(lua_State *L, const char *field, const unsigned char *p, size_t n) {
  push_padded(L, p, n);
  lua_setfield(L, -2, field);
}

static void set_version(lua_State *L, const char *field, CK_VERSION v) {
  lua_pushfstring(L, "%d.%d", v.major, v.minor);
  lua_setfield(L, -2, field);
}

/* An ulong of token info; "unavailable" is left out. */
static void set_ulong(lua_State *L, const char *field, CK_ULONG v) {
  if (v == CK_UNAVAILABLE_INFORMATION) return;
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, field);
}

static CK_SLOT_ID check_slot(lua_State *L, int idx) {
  lua_Integer n = luaL_checkinteger(L, idx);
  if (n < 0) dhsm_usage_error(L, "pkcs11: a slot id is a non-negative integer, got %I", n);
  return (CK_SLOT_ID)n;
}

/* lib:info() -> {cryptoki_version=, manufacturer=, description=, library_version=, path=} */
static int lib_info(lua_State *L) {
  library *lb = check_lib(L, 1);
  CK_INFO info;
  check_lib_rv(L, lb->fl->C_GetInfo(&info), "C_GetInfo");
  lua_createtable(L, 0, 5);
  set_version(L, "cryptoki_version", info.cryptokiVersion);
  set_padded(L, "manufacturer", info.manufacturerID, sizeof info.manufacturerID);
  set_padded(L, "description", info.libraryDescription, sizeof info.libraryDescription);
  set_version(L, "library_version", info.libraryVersion);
  lua_pushstring(L, lib_path(L, 1));
  lua_setfield(L, -2, "path");
  return 1;
}

static void push_slot_info(lua_State *L, library *lb, CK_SLOT_ID slot) {
  CK_SLOT_INFO si;
  check_lib_rv(L, lb->fl->C_GetSlotInfo(slot, &si), "C_GetSlotInfo");
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, (lua_Integer)slot);
  lua_setfield(L, -2, "slot");
  set_padded(L, "description", si.slotDescription, sizeof si.slotDescription);
  set_padded(L, "manufacturer", si.manufacturerID, sizeof si.manufacturerID);
  set_flags(L, SLOT_FLAGS, si.flags);
  set_version(L, "hardware_version", si.hardwareVersion);
  set_version(L, "firmware_version", si.firmwareVersion);
}

/* lib:slot(id) -> slot info */
static int lib_slot(lua_State *L) {
  library *lb = check_lib(L, 1);
  push_slot_info(L, lb, check_slot(L, 2));
  return 1;
}

/* core.slot_ids(lib [, token_present]) -> {id, ...}: C_GetSlotList alone.
** The Lua half reads each slot's information one by one, so that a slot
** that does not answer (an HA member gone, a token removed) is reported
** apart instead of failing the whole listing. */
static int p11_slot_ids(lua_State *L) {
  library *lb = check_lib(L, 1);
  CK_BBOOL present = lua_toboolean(L, 2) ? CK_TRUE : CK_FALSE;
  CK_ULONG n = 0;
  CK_RV rv;
  CK_SLOT_ID *ids;
  do {                                      /* a slot may appear between the two calls */
    check_lib_rv(L, lb->fl->C_GetSlotList(present, NULL, &n), "C_GetSlotList");
    ids = lua_newuserdatauv(L, (n ? n : 1) * sizeof *ids, 0);
    rv = lb->fl->C_GetSlotList(present, ids, &n);
  } while (rv == CKR_BUFFER_TOO_SMALL);
  check_lib_rv(L, rv, "C_GetSlotList");
  lua_createtable(L, (int)n, 0);
  for (CK_ULONG i = 0; i < n; i++) {
    lua_pushinteger(L, (lua_Integer)ids[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static void push_token_info(lua_State *L, library *lb, CK_SLOT_ID slot) {
  CK_TOKEN_INFO ti;
  CK_RV rv = lb->fl->C_GetTokenInfo(slot, &ti);
  if (rv != CKR_OK) raise_rv(L, rv, "C_GetTokenInfo", lua_pushfstring(L, "slot %I", (lua_Integer)slot), 1);
  lua_createtable(L, 0, 40);
  lua_pushinteger(L, (lua_Integer)slot);
  lua_setfield(L, -2, "slot");
  set_padded(L, "label", ti.label, sizeof ti.label);
  set_padded(L, "manufacturer", ti.manufacturerID, sizeof ti.manufacturerID);
  set_padded(L, "model", ti.model, sizeof ti.model);
  set_padded(L, "serial", ti.serialNumber, sizeof ti.serialNumber);
  lua_pushinteger(L, (lua_Integer)ti.flags);
  lua_setfield(L, -2, "flags");
  set_flags(L, TOKEN_FLAGS, ti.flags);
  set_ulong(L, "max_sessions", ti.ulMaxSessionCount);
  set_ulong(L, "sessions", ti.ulSessionCount);
  set_ulong(L, "max_rw_sessions", ti.ulMaxRwSessionCount);
  set_ulong(L, "rw_sessions", ti.ulRwSessionCount);
  set_ulong(L, "max_pin_len", ti.ulMaxPinLen);
  set_ulong(L, "min_pin_len", ti.ulMinPinLen);
  set_ulong(L, "total_public_memory", ti.ulTotalPublicMemory);
  set_ulong(L, "free_public_memory", ti.ulFreePublicMemory);
  set_ulong(L, "total_private_memory", ti.ulTotalPrivateMemory);
  set_ulong(L, "free_private_memory", ti.ulFreePrivateMemory);
  set_version(L, "hardware_version", ti.hardwareVersion);
  set_version(L, "firmware_version", ti.firmwareVersion);
  if (ti.flags & CKF_CLOCK_ON_TOKEN) set_padded(L, "utc_time", ti.utcTime, sizeof ti.utcTime);
}

/* lib:token(slot) -> token info, flags decoded to booleans */
static int lib_token(lua_State *L) {
  library *lb = check_lib(L, 1);
  push_token_info(L, lb, check_slot(L, 2));
  return 1;
}

/* lib:mechanisms(slot) -> {name, ...}; unnamed ones as "0x........" */
static int lib_mechanisms(lua_State *L) {
  library *lb = check_lib(L, 1);
  CK_SLOT_ID slot = check_slot(L, 2);
  CK_ULONG n = 0;
  check_lib_rv(L, lb->fl->C_GetMechanismList(slot, NULL, &n), "C_GetMechanismList");
  CK_MECHANISM_TYPE *types = lua_newuserdatauv(L, (n ? n : 1) * sizeof *types, 0);
  check_lib_rv(L, lb->fl->C_GetMechanismList(slot, types, &n), "C_GetMechanismList");
  lua_createtable(L, (int)n, 0);
  for (CK_ULONG i = 0; i < n; i++) {
    const char *name = mech_name(types[i]);
    char hex[24];
    snprintf(hex, sizeof hex, "0x%08lx", (unsigned long)types[i]);
    lua_pushstring(L, name ? name : hex);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* ---- sessions ------------------------------------------------------------- */

/* lib:open_slot(slot, rw) -> session */
static int lib_open_slot(lua_State *L) {
  library *lb = check_lib(L, 1);
  CK_SLOT_ID slot = check_slot(L, 2);
  int rw = lua_toboolean(L, 3);
  CK_TOKEN_INFO ti;
  check_lib_rv(L, lb->fl->C_GetTokenInfo(slot, &ti), "C_GetTokenInfo");
  lua_settop(L, 1);
  session *s = lua_newuserdatauv(L, sizeof *s, 1);
  memset(s, 0, sizeof *s);
  s->closed = 1;                            /* created closed, then opened */
  luaL_setmetatable(L, SESSION_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  s->slot = slot;
  s->rw = rw;
  push_padded(L, ti.label, sizeof ti.label);
  push_padded(L, ti.serialNumber, sizeof ti.serialNumber);
  snprintf(s->token, sizeof s->token, "%s#%s", lua_tostring(L, -2), lua_tostring(L, -1));
  lua_pop(L, 2);
  CK_FLAGS flags = CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0);
  check_rv(L, s, lb->fl->C_OpenSession(slot, flags, NULL, NULL, &s->h), "C_OpenSession");
  s->lib = lb;
  s->closed = 0;
  lb->sessions++;
  return 1;
}

static session *check_session(lua_State *L, int idx) {
  session *s = luaL_checkudata(L, idx, SESSION_MT);
  if (s->closed) dhsm_usage_error(L, "pkcs11: this session is closed");
  if (s->lib->fl == NULL) dhsm_usage_error(L, "pkcs11: the library of this session was finalized");
  return s;
}

static CK_FUNCTION_LIST_PTR fl_of(session *s) {
  return s->lib->fl;
}

static int sess_close(lua_State *L) {
  session *s = luaL_checkudata(L, 1, SESSION_MT);
  if (s->closed) return 0;
  s->closed = 1;
  library *lb = s->lib;
  if (lb->fl) lb->fl->C_CloseSession(s->h);  /* whatever it says, the handle is gone */
  if (--lb->sessions == 0 && lb->closing) lib_release(lb);
  return 0;
}

static int sess_tostring(lua_State *L) {
  session *s = luaL_checkudata(L, 1, SESSION_MT);
  lua_pushfstring(L, "pkcs11 session on token %s (slot %I, %s)", s->token, (lua_Integer)s->slot,
                  s->closed ? "closed" : s->rw ? "rw" : "ro");
  return 1;
}

/* s:token() -> the token info of the session's slot, read now */
static int sess_token(lua_State *L) {
  session *s = check_session(L, 1);
  push_token_info(L, s->lib, s->slot);
  return 1;
}

/* s:info() -> {slot=, state=, rw=, device_error=, token=} */
static int sess_info(lua_State *L) {
  session *s = check_session(L, 1);
  CK_SESSION_INFO si;
  check_rv(L, s, fl_of(s)->C_GetSessionInfo(s->h, &si), "C_GetSessionInfo");
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)si.slotID);
  lua_setfield(L, -2, "slot");
  const char *state = name_of(SESSION_STATES, si.state);
  if (state) lua_pushstring(L, state);
  else lua_pushinteger(L, (lua_Integer)si.state);
  lua_setfield(L, -2, "state");
  lua_pushboolean(L, (si.flags & CKF_RW_SESSION) != 0);
  lua_setfield(L, -2, "rw");
  lua_pushinteger(L, (lua_Integer)si.ulDeviceError);
  lua_setfield(L, -2, "device_error");
  lua_pushstring(L, s->token);
  lua_setfield(L, -2, "token");
  return 1;
}

/* ---- login ---------------------------------------------------------------- */

/* core.login(s, "user"|"so", pin): one C_Login, nothing else.  The PIN
** goes from the secret to the token without a copy.  Never retryable: a
** repeated failed login is how a partition gets zeroized. */
static int p11_login(lua_State *L) {
  static const char *const who[] = {"so", "user", NULL};
  session *s = check_session(L, 1);
  CK_USER_TYPE type = luaL_checkoption(L, 2, NULL, who) == 0 ? CKU_SO : CKU_USER;
  size_t len;
  const char *pin = dhsm_secret_check(L, 3, &len);
  CK_RV rv = fl_of(s)->C_Login(s->h, type, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)len);
  if (rv != CKR_OK) raise_rv(L, rv, "C_Login", session_target(L, s), 0);
  return 0;
}

/* s:logout() */
static int sess_logout(lua_State *L) {
  session *s = check_session(L, 1);
  check_rv(L, s, fl_of(s)->C_Logout(s->h), "C_Logout");
  return 0;
}

/* s:init_pin(pin): C_InitPIN, logged in as the SO - the user's (Luna: the
** Crypto Officer's) first PIN, what LunaCM's `role init -name co` does.
** A new PIN, not a login: no attempt is counted. */
static int sess_init_pin(lua_State *L) {
  session *s = check_session(L, 1);
  size_t len;
  const char *pin = dhsm_secret_check(L, 2, &len);
  check_rv(L, s, fl_of(s)->C_InitPIN(s->h, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)len), "C_InitPIN");
  return 0;
}

/* ---- objects -------------------------------------------------------------- */

static CK_OBJECT_HANDLE check_handle(lua_State *L, int idx) {
  if (!lua_isinteger(L, idx) || lua_tointeger(L, idx) <= 0)
    dhsm_usage_error(L, "pkcs11: argument #%d must be an object handle (a positive integer), got %s",
                     idx - 1, luaL_typename(L, idx));
  return (CK_OBJECT_HANDLE)lua_tointeger(L, idx);
}

/* s:find(template) -> {handle, ...} */
static int sess_find(lua_State *L) {
  session *s = check_session(L, 1);
  template t;
  check_template(L, 2, &t, "find");
  lua_newtable(L);                          /* before Init: nothing may fail between Init and Final */
  check_rv(L, s, fl_of(s)->C_FindObjectsInit(s->h, t.a, t.n), "C_FindObjectsInit");
  CK_OBJECT_HANDLE batch[64];
  CK_ULONG got;
  lua_Integer n = 0;
  for (;;) {
    CK_RV rv = fl_of(s)->C_FindObjects(s->h, batch, 64, &got);
    if (rv != CKR_OK) {
      fl_of(s)->C_FindObjectsFinal(s->h);
      check_rv(L, s, rv, "C_FindObjects");
    }
    if (got == 0) break;
    for (CK_ULONG i = 0; i < got; i++) {
      lua_pushinteger(L, (lua_Integer)batch[i]);
      lua_rawseti(L, -2, ++n);
    }
  }
  check_rv(L, s, fl_of(s)->C_FindObjectsFinal(s->h), "C_FindObjectsFinal");
  return 1;
}

/* The attribute names at idx (a list, or nil for DEFAULT_ATTRS) into defs. */
static int attr_names(lua_State *L, int idx, const attr_def **defs) {
  int n = 0;
  if (lua_isnoneornil(L, idx)) {
    for (; DEFAULT_ATTRS[n]; n++) defs[n] = find_attr(DEFAULT_ATTRS[n]);
    return n;
  }
  if (!lua_istable(L, idx)) dhsm_usage_error(L, "pkcs11: attributes: expected a list of attribute names");
  for (lua_Integer i = 1; lua_rawgeti(L, idx, i) != LUA_TNIL; i++, n++) {
    const char *name = lua_tostring(L, -1);
    const attr_def *d = name ? find_attr(name) : NULL;
    if (d == NULL) dhsm_usage_error(L, "pkcs11: attributes: unknown attribute %s", luaL_tolstring(L, -1, NULL));
    if (n == MAX_ATTRS) dhsm_usage_error(L, "pkcs11: attributes: more than %d names", MAX_ATTRS);
    defs[n] = d;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return n;
}

/* Attributes a token cannot show (sensitive, not of this object) come
** back unavailable with these codes; the rest are still filled in. */
static int attrs_ok(CK_RV rv) {
  return rv == CKR_OK || rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID;
}

/* s:attributes(handle [, names]) -> {name = value}; what the token will
** not show is absent. */
static int sess_attributes(lua_State *L) {
  session *s = check_session(L, 1);
  CK_OBJECT_HANDLE h = check_handle(L, 2);
  const attr_def *defs[MAX_ATTRS];
  CK_ATTRIBUTE a[MAX_ATTRS];
  int n = attr_names(L, 3, defs);
  for (int i = 0; i < n; i++) a[i] = (CK_ATTRIBUTE){defs[i]->type, NULL, 0};
  CK_RV rv = fl_of(s)->C_GetAttributeValue(s->h, h, a, (CK_ULONG)n);
  if (!attrs_ok(rv)) check_rv(L, s, rv, "C_GetAttributeValue");
  size_t total = 0;
  for (int i = 0; i < n; i++)
    if (a[i].ulValueLen != CK_UNAVAILABLE_INFORMATION) total += a[i].ulValueLen;
  unsigned char *buf = lua_newuserdatauv(L, total ? total : 1, 0);
  for (int i = 0; i < n; i++) {
    if (a[i].ulValueLen == CK_UNAVAILABLE_INFORMATION) continue;
    a[i].pValue = buf;
    buf += a[i].ulValueLen;
  }
  rv = fl_of(s)->C_GetAttributeValue(s->h, h, a, (CK_ULONG)n);
  if (!attrs_ok(rv)) check_rv(L, s, rv, "C_GetAttributeValue");
  lua_createtable(L, 0, n);
  for (int i = 0; i < n; i++) {
    if (a[i].ulValueLen == CK_UNAVAILABLE_INFORMATION || a[i].pValue == NULL) continue;
    push_attr(L, defs[i], &a[i]);
    lua_setfield(L, -2, defs[i]->name);
  }
  return 1;
}

/* s:destroy(handle) -> true */
static int sess_destroy(lua_State *L) {
  session *s = check_session(L, 1);
  CK_OBJECT_HANDLE h = check_handle(L, 2);
  check_rv(L, s, fl_of(s)->C_DestroyObject(s->h, h), "C_DestroyObject");
  lua_pushboolean(L, 1);
  return 1;
}

/* s:generate_key(mech, template, what) -> handle */
static int sess_generate_key(lua_State *L) {
  session *s = check_session(L, 1);
  const mech_def *m = check_mech(L, 2);
  const char *what = luaL_checkstring(L, 4);
  template t;
  check_template(L, 3, &t, what);
  CK_MECHANISM mech = {m->type, NULL, 0};
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  check_rv(L, s, fl_of(s)->C_GenerateKey(s->h, &mech, t.a, t.n, &h), "C_GenerateKey");
  lua_pushinteger(L, (lua_Integer)h);
  return 1;
}

/* s:generate_key_pair(mech, public, private, what) -> private, public */
static int sess_generate_key_pair(lua_State *L) {
  session *s = check_session(L, 1);
  const mech_def *m = check_mech(L, 2);
  const char *what = luaL_checkstring(L, 5);
  template pub, priv;
  check_template(L, 3, &pub, lua_pushfstring(L, "%s (public key)", what));
  check_template(L, 4, &priv, lua_pushfstring(L, "%s (private key)", what));
  CK_MECHANISM mech = {m->type, NULL, 0};
  CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
  check_rv(L, s, fl_of(s)->C_GenerateKeyPair(s->h, &mech, pub.a, pub.n, priv.a, priv.n, &hpub, &hpriv),
           "C_GenerateKeyPair");
  lua_pushinteger(L, (lua_Integer)hpriv);
  lua_pushinteger(L, (lua_Integer)hpub);
  return 2;
}

/* ---- mechanism parameters ------------------------------------------------- */

/* A CK_MECHANISM and the storage of its parameter, for one call. */
typedef struct mech_call {
  const mech_def *def;
  CK_MECHANISM m;
  CK_RSA_PKCS_PSS_PARAMS pss;
  CK_GCM_PARAMS gcm;
  unsigned char iv[16];
  const unsigned char *ivp;
  size_t iv_len;
  unsigned char digest[EVP_MAX_MD_SIZE];  /* P_PREHASH: what CKM_ECDSA signs */
} mech_call;

/* The options a kind of mechanism takes: anything else is a mistake worth naming. */
static const char *const OPTIONS[][4] = {
  [P_NONE] = {NULL}, [P_PSS] = {"hash", "salt_len", NULL},
  [P_GCM] = {"iv", "aad", "tag_bits", NULL}, [P_IV] = {"iv", NULL}, [P_PREHASH] = {NULL},
};

static void check_options(lua_State *L, int idx, const mech_def *m) {
  if (lua_isnoneornil(L, idx)) return;
  if (!lua_istable(L, idx)) dhsm_usage_error(L, "pkcs11: %s: options must be a table", m->name);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    int known = 0;
    for (int i = 0; OPTIONS[m->param][i]; i++) known |= strcmp(OPTIONS[m->param][i], key) == 0;
    if (!known) dhsm_usage_error(L, "pkcs11: %s takes no option '%s'", m->name, key);
    lua_pop(L, 1);
  }
}

/* opts[field] as a string (NULL when absent); the string stays in opts. */
static const char *opt_string(lua_State *L, int idx, const char *field, size_t *len, const mech_def *m) {
  *len = 0;
  if (lua_isnoneornil(L, idx)) return NULL;
  int t = lua_getfield(L, idx, field);
  const char *p = t == LUA_TSTRING ? lua_tolstring(L, -1, len) : NULL;
  lua_pop(L, 1);
  if (t != LUA_TNIL && p == NULL) dhsm_usage_error(L, "pkcs11: %s: option '%s' must be a string", m->name, field);
  return p;
}

static lua_Integer opt_integer(lua_State *L, int idx, const char *field, lua_Integer dflt, const mech_def *m) {
  if (lua_isnoneornil(L, idx)) return dflt;
  int t = lua_getfield(L, idx, field);
  int ok = lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 0;
  lua_Integer v = ok ? lua_tointeger(L, -1) : dflt;
  lua_pop(L, 1);
  if (t != LUA_TNIL && !ok) dhsm_usage_error(L, "pkcs11: %s: option '%s' must be a non-negative integer", m->name, field);
  return v;
}

static void pss_params(lua_State *L, mech_call *mc, int opts) {
  CK_MECHANISM_TYPE hash = mc->def->hash;
  if (hash == 0) {
    size_t n;
    const char *name = opt_string(L, opts, "hash", &n, mc->def);
    const mech_def *h = find_mech(name ? name : "SHA256");
    hash = h ? h->type : 0;
  }
  const hash_def *h = find_hash(hash);
  if (h == NULL)
    dhsm_usage_error(L, "pkcs11: %s: option 'hash' must be SHA1, SHA224, SHA256, SHA384 or SHA512", mc->def->name);
  mc->pss.hashAlg = hash;
  mc->pss.mgf = h->mgf;
  mc->pss.sLen = (CK_ULONG)opt_integer(L, opts, "salt_len", (lua_Integer)h->len, mc->def);
  mc->m.pParameter = &mc->pss;
  mc->m.ulParameterLen = sizeof mc->pss;
}

/* The IV: opts.iv, or for encryption a fresh one from the token's RNG
** (an IV reused under one key breaks GCM outright, so by default nobody picks one). */
static void iv_param(lua_State *L, session *s, mech_call *mc, int opts, size_t want, int encrypting) {
  mc->ivp = (const unsigned char *)opt_string(L, opts, "iv", &mc->iv_len, mc->def);
  if (mc->ivp == NULL) {
    if (!encrypting) dhsm_usage_error(L, "pkcs11: %s: decrypting needs the iv= the encryption used", mc->def->name);
    check_rv(L, s, fl_of(s)->C_GenerateRandom(s->h, mc->iv, (CK_ULONG)want), "C_GenerateRandom");
    mc->ivp = mc->iv;
    mc->iv_len = want;
  }
  if (mc->def->param == P_IV && mc->iv_len != 16)
    dhsm_usage_error(L, "pkcs11: %s: the iv must be 16 bytes, got %d", mc->def->name, (int)mc->iv_len);
}

static void gcm_params(lua_State *L, session *s, mech_call *mc, int opts, int encrypting) {
  size_t aad_len;
  iv_param(L, s, mc, opts, 12, encrypting);
  const char *aad = opt_string(L, opts, "aad", &aad_len, mc->def);
  mc->gcm.pIv = (CK_BYTE_PTR)mc->ivp;
  mc->gcm.ulIvLen = (CK_ULONG)mc->iv_len;
  mc->gcm.ulIvBits = (CK_ULONG)mc->iv_len * 8;
  mc->gcm.pAAD = (CK_BYTE_PTR)aad;
  mc->gcm.ulAADLen = (CK_ULONG)aad_len;
  mc->gcm.ulTagBits = (CK_ULONG)opt_integer(L, opts, "tag_bits", 128, mc->def);
  mc->m.pParameter = &mc->gcm;
  mc->m.ulParameterLen = sizeof mc->gcm;
}

/* The mechanism named at idx with its parameter from the options table at opts. */
static void mech_setup(lua_State *L, session *s, int idx, int opts, int encrypting, mech_call *mc) {
  memset(mc, 0, sizeof *mc);
  mc->def = check_mech(L, idx);
  mc->m.mechanism = mc->def->type;
  check_options(L, opts, mc->def);
  switch (mc->def->param) {
    case P_PSS: pss_params(L, mc, opts); break;
    case P_GCM: gcm_params(L, s, mc, opts, encrypting); break;
    case P_IV:
      iv_param(L, s, mc, opts, 16, encrypting);
      mc->m.pParameter = (void *)mc->ivp;
      mc->m.ulParameterLen = (CK_ULONG)mc->iv_len;
      break;
    case P_PREHASH:
      mc->m.mechanism = CKM_ECDSA;
      break;
  }
}

/* ECDSA_SHA*: the hash is taken here and the token signs the digest with
** CKM_ECDSA.  Every token has CKM_ECDSA (SoftHSM 2.6 has no
** CKM_ECDSA_SHA256), the signature is the same, and a Luna across the
** network is sent 32 bytes rather than the whole message. */
static void prehash(lua_State *L, mech_call *mc, const char **data, size_t *len) {
  if (mc->def->param != P_PREHASH) return;
  unsigned int n = 0;
  if (!EVP_Digest(*data, *len, mc->digest, &n, find_hash(mc->def->hash)->md(), NULL))
    luaL_error(L, "pkcs11: %s: the digest failed", mc->def->name);
  *data = (const char *)mc->digest;
  *len = n;
}

/* ---- crypto --------------------------------------------------------------- */

/* C_Sign, C_Encrypt, C_Decrypt and C_Digest share this shape. */
typedef CK_RV (*single_part)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);

/* Run a single-part operation after its Init and push the output.  b was
** set up with `cap` bytes before the Init, so nothing raises between Init
** and the call (that would leave the operation active).  A token wanting
** more room says so and keeps the operation for the second call. */
static void finish(lua_State *L, session *s, luaL_Buffer *b, size_t cap, single_part fn,
                   const char *fname, const char *in, size_t len) {
  CK_ULONG n = (CK_ULONG)cap;
  CK_RV rv = fn(s->h, (CK_BYTE_PTR)in, (CK_ULONG)len, (CK_BYTE_PTR)luaL_prepbuffsize(b, cap), &n);
  if (rv == CKR_BUFFER_TOO_SMALL)
    rv = fn(s->h, (CK_BYTE_PTR)in, (CK_ULONG)len, (CK_BYTE_PTR)luaL_prepbuffsize(b, n), &n);
  check_rv(L, s, rv, fname);
  luaL_pushresultsize(b, n);
}

/* s:sign(key, mech, data [, opts]) -> signature, as the token gives it: for
** ECDSA that is raw r||s (PKCS#11 section 2.3.1), not DER; ecdsa_der converts. */
static int sess_sign(lua_State *L) {
  session *s = check_session(L, 1);
  CK_OBJECT_HANDLE key = check_handle(L, 2);
  size_t len;
  const char *data = luaL_checklstring(L, 4, &len);
  mech_call mc;
  mech_setup(L, s, 3, 5, 0, &mc);
  prehash(L, &mc, &data, &len);
  luaL_Buffer b;
  luaL_buffinitsize(L, &b, SIG_GUESS);
  check_rv(L, s, fl_of(s)->C_SignInit(s->h, &mc.m, key), "C_SignInit");
  finish(L, s, &b, SIG_GUESS, fl_of(s)->C_Sign, "C_Sign", data, len);
  return 1;
}

/* s:verify(key, mech, data, signature [, opts]) -> true | false */
static int sess_verify(lua_State *L) {
  session *s = check_session(L, 1);
  CK_OBJECT_HANDLE key = check_handle(L, 2);
  size_t len, siglen;
  const char *data = luaL_checklstring(L, 4, &len);
  const char *sig = luaL_checklstring(L, 5, &siglen);
  mech_call mc;
  mech_setup(L, s, 3, 6, 0, &mc);
  prehash(L, &mc, &data, &len);
  check_rv(L, s, fl_of(s)->C_VerifyInit(s->h, &mc.m, key), "C_VerifyInit");
  CK_RV rv = fl_of(s)->C_Verify(s->h, (CK_BYTE_PTR)data, (CK_ULONG)len, (CK_BYTE_PTR)sig, (CK_ULONG)siglen);
  if (rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE) {
    lua_pushboolean(L, 0);
    return 1;
  }
  check_rv(L, s, rv, "C_Verify");
  lua_pushboolean(L, 1);
  return 1;
}

/* encrypt/decrypt: the output, and for encryption the IV when the mechanism has one. */
static int crypt(lua_State *L, int encrypting) {
  session *s = check_session(L, 1);
  CK_OBJECT_HANDLE key = check_handle(L, 2);
  size_t len;
  const char *data = luaL_checklstring(L, 4, &len);
  mech_call mc;
  mech_setup(L, s, 3, 5, encrypting, &mc);
  size_t cap = len + 32;                    /* a GCM tag or a CBC pad block */
  luaL_Buffer b;
  luaL_buffinitsize(L, &b, cap);
  CK_FUNCTION_LIST_PTR fl = fl_of(s);
  if (encrypting) {
    check_rv(L, s, fl->C_EncryptInit(s->h, &mc.m, key), "C_EncryptInit");
    finish(L, s, &b, cap, fl->C_Encrypt, "C_Encrypt", data, len);
  } else {
    check_rv(L, s, fl->C_DecryptInit(s->h, &mc.m, key), "C_DecryptInit");
    finish(L, s, &b, cap, fl->C_Decrypt, "C_Decrypt", data, len);
  }
  if (!encrypting || mc.ivp == NULL) return 1;
  lua_pushlstring(L, (const char *)mc.ivp, mc.iv_len);
  return 2;
}

/* s:encrypt(key, mech, data [, {iv=, aad=, tag_bits=}]) -> ciphertext [, iv] */
static int sess_encrypt(lua_State *L) {
  return crypt(L, 1);
}

/* s:decrypt(key, mech, data [, {iv=, aad=, tag_bits=}]) -> plaintext */
static int sess_decrypt(lua_State *L) {
  return crypt(L, 0);
}

/* s:digest(mech, data) -> digest */
static int sess_digest(lua_State *L) {
  session *s = check_session(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 3, &len);
  mech_call mc;
  mech_setup(L, s, 2, 4, 0, &mc);
  luaL_Buffer b;
  luaL_buffinitsize(L, &b, 64);
  check_rv(L, s, fl_of(s)->C_DigestInit(s->h, &mc.m), "C_DigestInit");
  finish(L, s, &b, 64, fl_of(s)->C_Digest, "C_Digest", data, len);
  return 1;
}

/* s:random(n) -> n bytes from the token's RNG */
static int sess_random(lua_State *L) {
  session *s = check_session(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  if (n < 0 || n > MAX_RANDOM) return dhsm_usage_error(L, "pkcs11: random: n must be 0-%d, got %I", MAX_RANDOM, n);
  luaL_Buffer b;
  CK_BYTE_PTR out = (CK_BYTE_PTR)luaL_buffinitsize(L, &b, (size_t)n);
  if (n > 0) check_rv(L, s, fl_of(s)->C_GenerateRandom(s->h, out, (CK_ULONG)n), "C_GenerateRandom");
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* ---- module --------------------------------------------------------------- */

/* core.rv_name(number) -> "CKR_..." (for a number read in a log) */
static int p11_rv_name(lua_State *L) {
  char buf[24];
  lua_pushstring(L, rv_name((CK_RV)dhsm_check_integer(L, 1, "pkcs11.rv_name", "rv"), buf));
  return 1;
}

/* core.mechanism(name) -> canonical name, or nil when unknown */
static int p11_mechanism(lua_State *L) {
  const mech_def *m = find_mech(dhsm_check_string(L, 1, "pkcs11.mechanism", "name", NULL));
  if (m == NULL) return 0;
  lua_pushstring(L, mech_name(m->type));
  return 1;
}

/* ---- ECDSA signature formats -------------------------------------------- */

/* PKCS#11 (CKM_ECDSA) gives r||s, each half the curve's size, big-endian;
** X.509, CMS, TLS and `openssl dgst -verify` want the DER of
** SEQUENCE { INTEGER r, INTEGER s } (RFC 3279 section 2.2.3). */

static int bad_signature(lua_State *L, const char *fn, const char *why) {
  return dhsm_raise(L, "usage", "BadSignature", 0, "pkcs11.%s: %s", fn, why);
}

/* core.ecdsa_der(raw) -> DER */
static int p11_ecdsa_der(lua_State *L) {
  size_t len;
  const unsigned char *raw = (const unsigned char *)dhsm_check_string(L, 1, "pkcs11.ecdsa_der", "raw", &len);
  if (len == 0 || len % 2 != 0 || len > 2 * 66)
    return bad_signature(L, "ecdsa_der", lua_pushfstring(L,
      "expected a raw r||s signature of an even length up to 132 bytes, got %d bytes", (int)len));
  BIGNUM *r = BN_bin2bn(raw, (int)(len / 2), NULL), *s = BN_bin2bn(raw + len / 2, (int)(len / 2), NULL);
  ECDSA_SIG *sig = ECDSA_SIG_new();
  int zero = r && s && (BN_is_zero(r) || BN_is_zero(s));
  if (!r || !s || !sig || zero || !ECDSA_SIG_set0(sig, r, s)) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    if (zero) return bad_signature(L, "ecdsa_der", "r or s is zero: not a signature");
    return luaL_error(L, "pkcs11.ecdsa_der: out of memory");
  }
  unsigned char *der = NULL;                 /* sig owns r and s now */
  int n = i2d_ECDSA_SIG(sig, &der);
  ECDSA_SIG_free(sig);
  if (n <= 0) return luaL_error(L, "pkcs11.ecdsa_der: out of memory");
  lua_pushlstring(L, (const char *)der, (size_t)n);
  OPENSSL_free(der);
  return 1;
}

/* A big-endian integer, left-padded with zeros to n bytes; 0 when it is longer. */
static int put_padded(const BIGNUM *v, unsigned char *out, int n) {
  return BN_num_bytes(v) <= n && BN_bn2binpad(v, out, n) == n;
}

/* core.ecdsa_raw(der, size) -> r||s, each half `size` bytes (32 for P-256,
** 48 for P-384, 66 for P-521).  Strict DER only: what does not re-encode
** to the same bytes (trailing data, BER lengths, padding) is refused. */
static int p11_ecdsa_raw(lua_State *L) {
  size_t len;
  const unsigned char *der = (const unsigned char *)dhsm_check_string(L, 1, "pkcs11.ecdsa_raw", "der", &len);
  lua_Integer size = dhsm_check_integer(L, 2, "pkcs11.ecdsa_raw", "size");
  if (size < 1 || size > 66)
    return dhsm_usage_error(L, "pkcs11.ecdsa_raw: size is the curve's size in bytes (32, 48, 66), got %I", size);
  const unsigned char *p = der;
  ECDSA_SIG *sig = len <= 512 ? d2i_ECDSA_SIG(NULL, &p, (long)len) : NULL;
  unsigned char *again = NULL;
  int n = sig ? i2d_ECDSA_SIG(sig, &again) : -1;
  int strict = sig && p == der + len && n == (int)len && memcmp(again, der, len) == 0;
  OPENSSL_free(again);
  if (!strict) {
    ECDSA_SIG_free(sig);
    return bad_signature(L, "ecdsa_raw", "not a DER ECDSA signature (SEQUENCE of two INTEGERs, nothing after)");
  }
  const BIGNUM *r, *s;
  ECDSA_SIG_get0(sig, &r, &s);
  unsigned char out[2 * 66];
  int fits = !BN_is_negative(r) && !BN_is_negative(s) && !BN_is_zero(r) && !BN_is_zero(s)
             && put_padded(r, out, (int)size) && put_padded(s, out + size, (int)size);
  ECDSA_SIG_free(sig);
  if (!fits)
    return bad_signature(L, "ecdsa_raw", lua_pushfstring(L,
      "r and s must be positive and fit in %I bytes each", size));
  lua_pushlstring(L, (const char *)out, (size_t)(2 * size));
  return 1;
}

/* ---- classes --------------------------------------------------------------- */

/* Leave the __index table of class tname in field `field` of the table below. */
static void export_class(lua_State *L, const char *tname, const luaL_Reg *methods,
                         const luaL_Reg *meta, const char *field) {
  dhsm_newclass(L, tname, methods, meta);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, field);
  lua_pop(L, 1);
}

int luaopen_dhsm_pkcs11_core(lua_State *L) {
  static const luaL_Reg lib_methods[] = {
    {"info", lib_info}, {"slot", lib_slot}, {"token", lib_token},
    {"mechanisms", lib_mechanisms}, {"open_slot", lib_open_slot}, {"close", lib_close},
    {NULL, NULL}
  };
  static const luaL_Reg lib_meta[] = {
    {"__gc", lib_close}, {"__close", lib_close}, {"__tostring", lib_tostring}, {NULL, NULL}
  };
  static const luaL_Reg sess_methods[] = {
    {"token", sess_token}, {"info", sess_info}, {"logout", sess_logout}, {"init_pin", sess_init_pin}, {"find", sess_find},
    {"attributes", sess_attributes}, {"destroy", sess_destroy},
    {"generate_key", sess_generate_key}, {"generate_key_pair", sess_generate_key_pair},
    {"sign", sess_sign}, {"verify", sess_verify}, {"encrypt", sess_encrypt},
    {"decrypt", sess_decrypt}, {"digest", sess_digest}, {"random", sess_random},
    {"close", sess_close}, {NULL, NULL}
  };
  static const luaL_Reg sess_meta[] = {
    {"__gc", sess_close}, {"__close", sess_close}, {"__tostring", sess_tostring}, {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"load", p11_load}, {"login", p11_login}, {"mechanism", p11_mechanism}, {"rv_name", p11_rv_name},
    {"slot_ids", p11_slot_ids}, {"ecdsa_der", p11_ecdsa_der}, {"ecdsa_raw", p11_ecdsa_raw},
    {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  export_class(L, LIBRARY_MT, lib_methods, lib_meta, "library");
  export_class(L, SESSION_MT, sess_methods, sess_meta, "session");
  return 1;
}
