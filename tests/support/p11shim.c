/*
** p11shim.c - test code: a PKCS#11 library that is SoftHSM2 with one slot
** broken, the way an HA member that went away or a pulled token looks to
** a client: C_GetSlotInfo and C_GetTokenInfo of that slot fail with
** CKR_GENERAL_ERROR, every other call and slot is SoftHSM2's own.
**
**   P11SHIM_LIB     the real library (libsofthsm2.so)
**   P11SHIM_BROKEN  the label of the token whose slot breaks
**
** Built by tests/lua/pkcs11_test.lua in its temporary folder; not part of
** dhsm.
*/
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST real_copy, shim;
static CK_FUNCTION_LIST_PTR real;

/* Is `slot` the one holding the token labelled $P11SHIM_BROKEN? */
static int is_broken(CK_SLOT_ID slot) {
  const char *label = getenv("P11SHIM_BROKEN");
  CK_TOKEN_INFO ti;
  if (label == NULL || real->C_GetTokenInfo(slot, &ti) != CKR_OK) return 0;
  size_t n = strlen(label);
  if (n > sizeof ti.label) return 0;
  for (size_t i = n; i < sizeof ti.label; i++)
    if (ti.label[i] != ' ') return 0;
  return memcmp(ti.label, label, n) == 0;
}

static CK_RV shim_get_token_info(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
  return is_broken(slot) ? CKR_GENERAL_ERROR : real->C_GetTokenInfo(slot, info);
}

static CK_RV shim_get_slot_info(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info) {
  return is_broken(slot) ? CKR_GENERAL_ERROR : real->C_GetSlotInfo(slot, info);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
  if (real == NULL) {
    const char *path = getenv("P11SHIM_LIB");
    void *dl = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
    void *sym = dl ? dlsym(dl, "C_GetFunctionList") : NULL;
    CK_C_GetFunctionList get;
    if (sym == NULL) return CKR_GENERAL_ERROR;
    memcpy(&get, &sym, sizeof get);
    CK_FUNCTION_LIST_PTR fl;
    if (get(&fl) != CKR_OK) return CKR_GENERAL_ERROR;
    real_copy = *fl;
    real = &real_copy;
    shim = *fl;
    shim.C_GetTokenInfo = shim_get_token_info;
    shim.C_GetSlotInfo = shim_get_slot_info;
  }
  *out = &shim;
  return CKR_OK;
}
