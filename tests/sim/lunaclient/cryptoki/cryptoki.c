/*
** cryptoki.c - the simulated Luna client's PKCS#11 library (build/sim/libcryptoki-sim.so),
** standing in for Luna's libCryptoki2 on the simulated client host (tests/sim).
**
** The partitions are SoftHSM2 tokens whose serial is the Luna partition serial (see
** appliance/softhsm.py), so the physical slots are SoftHSM's, passed through unchanged. What
** SoftHSM lacks is Luna's HA groups: LunaCM keeps them in Chrystoki.conf,
**
**     VirtualToken = { VirtualToken00Label = myHA; VirtualToken00SN = 1<first member>;
**                      VirtualToken00Members = <sn1>,<sn2>; }
**     HAConfiguration = { HAOnly = 0|1; ... }
**
** and a real client library shows each group as a virtual slot whose token serial is the
** group serial, and whose login logs in to every member. This library does that:
**
**   - It dlopens the real SoftHSM2 ($DHSM_SIM_SOFTHSM, else /usr/lib/softhsm/libsofthsm2.so)
**     and C_GetFunctionList returns a copy of SoftHSM's function list with the entries below
**     replaced; everything else (objects, crypto, PINs) goes straight to SoftHSM.
**   - C_Initialize reads Chrystoki.conf, found as the Luna library finds it:
**     $ChrystokiConfigurationPath (the folder holding Chrystoki.conf, or the file), else
**     $DHSM_ESTATE_DIR/client/Chrystoki.conf, else /etc/Chrystoki.conf. A file that cannot be
**     found or read, or that does not parse, fails C_Initialize with CKR_GENERAL_ERROR: a
**     client whose HA configuration is unreadable must not quietly lose its groups.
**   - C_GetSlotList: SoftHSM's slots (none when HAOnly = 1, and their IDs are then refused),
**     then one virtual slot per group, with IDs from VIRTUAL_BASE (SoftHSM's slot IDs are
**     31-bit, so they never meet). A group's members are found by token serial among
**     SoftHSM's tokens; "present" members are those found.
**   - A virtual slot's token info is its first present member's, with label = group label,
**     serialNumber = group serial and model "LunaVirtual"; its slot info says "HA Virtual
**     Card Slot" (vtl listSlots' words). No member present: no token.
**   - C_OpenSession on a virtual slot opens a session on the first present member and returns
**     that handle, so object and crypto calls on it go to that member unchanged.
**   - C_Login on such a session logs in on every present member, in member order, opening a
**     session on each other member (kept for the group while it is logged in). Every present
**     member is tried, so each member's appliance counts the attempt (below); a member that
**     refuses (CKR_PIN_INCORRECT, say) fails the login with its code (the first refusal's, in
**     member order), and the members that accepted are logged out again. C_Logout,
**     C_CloseSession (of the group's last session), C_CloseAllSessions and C_Finalize undo what
**     was opened.
**   - Failed logins are counted by the appliances, as on a real client, where C_Login travels to
**     the appliance holding the partition, which counts failures (Partition SO: 10 zeroize the
**     partition; Crypto Officer: 10 lock it) and refuses a locked role even with the right PIN.
**     SoftHSM counts nothing, so every C_Login as CKU_SO or CKU_USER on a partition token (a
**     physical slot, or each member reached through a virtual slot) that SoftHSM answers with a
**     verdict on the PIN (CKR_OK or CKR_PIN_INCORRECT) is reported to the estate, as lunacm's
**     logins are (lunaclient/lunacm/auth.py): SIM_REPORTER (lunaclient/report_login.py, its path
**     set by the Makefile) runs under /usr/bin/python3 with the token serial (= the Luna
**     partition serial), the role and ok|fail - never the PIN - and posts the estate's
**     `/_sim/partitions/SERIAL/login`. The appliance's answer decides: when it refuses
**     (CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKR_TOKEN_NOT_PRESENT), a login SoftHSM accepted is
**     undone and the refusal returned. A report that cannot be made (no estate found from the
**     Chrystoki.conf C_Initialize read or $DHSM_ESTATE_DIR, the estate down, a serial no
**     appliance has, so also a token that is not an estate partition: none is expected in the
**     estate's SoftHSM store) fails the login with CKR_DEVICE_ERROR, never a silent success.
**     Other C_Login results (already logged in, a read-only session for the SO, ...) and
**     CKU_CONTEXT_SPECIFIC are SoftHSM's, uncounted, as they are no verdict on a PIN.
**
** Simplified (what a real HA slot does and this one does not): no replication between members
** (objects made through the virtual slot land on the first member only; `hagroup synchronize`
** copies them), no load balancing, no failover of open sessions, no member drop-out or
** recovery (a member is present while its token exists, whatever its appliance's state). A
** login as CKU_CONTEXT_SPECIFIC goes to the first member alone; logging out the group also logs
** out the application's own sessions on the member tokens (PKCS#11 logins are per token). Each
** counted login starts a Python process (some 0.1 s) with the library's lock held. Application
** mutex callbacks in C_Initialize's arguments are passed to SoftHSM; this file locks its own
** tables with pthreads.
*/
#define _GNU_SOURCE /* pipe2 */

#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define DEFAULT_SOFTHSM "/usr/lib/softhsm/libsofthsm2.so"
#define CONF_NAME "Chrystoki.conf"
#define MAX_CONF_BYTES (1L << 20)
#define MAX_GROUPS 64
#define MAX_MEMBERS 32
#define VIRTUAL_BASE 0x80000000UL /* above every SoftHSM slot ID (31-bit) */
#define VIRTUAL_MODEL "LunaVirtual"
#define VIRTUAL_SLOT_DESCRIPTION "HA Virtual Card Slot"
#define PYTHON "/usr/bin/python3" /* Debian's: the estate uses nothing else */
#define MAX_ANSWER 4096           /* the reporter's one JSON line, as far as it is read */
#ifndef SIM_REPORTER
#error "build with -DSIM_REPORTER='\"<repo>/tests/sim/lunaclient/report_login.py\"' (the Makefile does)"
#endif

extern char **environ;

/* One HA group, as Chrystoki.conf's VirtualToken section has it. */
struct group {
  long number;                          /* the NN of VirtualTokenNN... */
  char label[33];                       /* a token label has 32 characters */
  char serial[17];                      /* and a serial 16 */
  char members[MAX_MEMBERS][17];        /* member partition serials, in order */
  size_t n_members;
  /* login state of the group: the sessions opened on members other than the one a
  ** virtual session lives on, and whether this library logged each of them in */
  int logged_in;
  CK_SESSION_HANDLE member_session[MAX_MEMBERS]; /* 0: none */
  int member_logged[MAX_MEMBERS];
};

/* A session opened on a virtual slot: a SoftHSM session on the group's first member. */
struct vsession {
  CK_SESSION_HANDLE handle;
  CK_SLOT_ID physical; /* the member slot it lives on */
  size_t group;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *softhsm;                 /* dlopen handle */
static CK_FUNCTION_LIST_PTR real;     /* SoftHSM's function list */
static CK_FUNCTION_LIST ours;         /* the copy handed out */
static int initialized;
static struct group groups[MAX_GROUPS];
static size_t n_groups;
static int ha_only;
static struct vsession *vsessions;
static size_t n_vsessions, cap_vsessions;
/* what C_Initialize found, for the reporter to find the estate by: the Chrystoki.conf read,
** and $DHSM_ESTATE_DIR then ("" when unset) */
static char conf_file[4096];
static char estate_dir[4096];

/* ------------------------------------------------------------------------------------------
** Chrystoki.conf */

/* The configuration file's path, as the Luna library finds it (see the header); 0 when none. */
static int conf_path(char *out, size_t size) {
  struct stat st;
  const char *env = getenv("ChrystokiConfigurationPath");
  if (env && *env) {
    if (stat(env, &st) == 0 && S_ISDIR(st.st_mode))
      return snprintf(out, size, "%s/%s", env, CONF_NAME) < (int)size;
    return snprintf(out, size, "%s", env) < (int)size;
  }
  env = getenv("DHSM_ESTATE_DIR");
  if (env && *env) return snprintf(out, size, "%s/client/%s", env, CONF_NAME) < (int)size;
  return snprintf(out, size, "/etc/%s", CONF_NAME) < (int)size;
}

/* Whole file into a NUL-terminated buffer (caller frees); NULL when it cannot be read. */
static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  char *text = NULL;
  long size = -1;
  if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
  if (size >= 0 && size <= MAX_CONF_BYTES && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)size + 1))) {
    if (fread(text, 1, (size_t)size, f) != (size_t)size) {
      free(text);
      text = NULL;
    } else {
      text[size] = '\0';
    }
  }
  fclose(f);
  return text;
}

/* Skip blanks and '#' comments (to the end of the line). */
static const char *skip(const char *p) {
  for (;;) {
    while (isspace((unsigned char)*p)) p++;
    if (*p != '#') return p;
    while (*p && *p != '\n') p++;
  }
}

/* Copy [start, end) with surrounding blanks trimmed into out (size bytes); 0 when too long. */
static int copy_trimmed(char *out, size_t size, const char *start, const char *end) {
  while (start < end && isspace((unsigned char)*start)) start++;
  while (end > start && isspace((unsigned char)end[-1])) end--;
  if ((size_t)(end - start) >= size) return 0;
  memcpy(out, start, (size_t)(end - start));
  out[end - start] = '\0';
  return 1;
}

static struct group *group_numbered(long number) {
  for (size_t i = 0; i < n_groups; i++)
    if (groups[i].number == number) return &groups[i];
  if (n_groups == MAX_GROUPS) return NULL;
  struct group *g = &groups[n_groups++];
  memset(g, 0, sizeof *g);
  g->number = number;
  return g;
}

/* "sn1,sn2" -> g->members; 0 when a member is too long or there are too many. */
static int set_members(struct group *g, const char *value) {
  g->n_members = 0;
  while (*value) {
    const char *comma = strchr(value, ',');
    const char *end = comma ? comma : value + strlen(value);
    char member[64];
    if (!copy_trimmed(member, sizeof member, value, end) || strlen(member) > 16) return 0;
    if (*member) {
      if (g->n_members == MAX_MEMBERS) return 0;
      strcpy(g->members[g->n_members++], member);
    }
    value = comma ? comma + 1 : end;
  }
  return 1;
}

/* One `Key = value;` of section `section`; 0 when a value it needs cannot be represented. */
static int take_entry(const char *section, const char *key, const char *value) {
  if (strcmp(section, "HAConfiguration") == 0 && strcmp(key, "HAOnly") == 0) {
    ha_only = atoi(value) == 1;
    return 1;
  }
  if (strcmp(section, "VirtualToken") != 0 || strncmp(key, "VirtualToken", 12) != 0) return 1;
  const char *digits = key + 12, *field = digits;
  while (isdigit((unsigned char)*field)) field++;
  if (field == digits || field - digits > 6) return 1; /* not VirtualTokenNN...: a key we do not know */
  long number = strtol(digits, NULL, 10);
  if (strcmp(field, "Label") != 0 && strcmp(field, "SN") != 0 && strcmp(field, "Members") != 0) return 1;
  struct group *g = group_numbered(number);
  if (g == NULL) return 0;
  if (strcmp(field, "Label") == 0) return copy_trimmed(g->label, sizeof g->label, value, value + strlen(value));
  if (strcmp(field, "SN") == 0) return copy_trimmed(g->serial, sizeof g->serial, value, value + strlen(value));
  return set_members(g, value);
}

/* Parse `Section = { Key = value; ... }` blocks (the format conf.py reads: a value runs to
** its ';' on the same line, section names may hold spaces); 0 on anything else. */
static int parse_conf(const char *text) {
  const char *p = skip(text);
  while (*p) {
    const char *name = p;
    while (*p && *p != '=' && *p != '{' && *p != '}' && *p != ';' && *p != '\n' && *p != '#') p++;
    char section[128];
    if (*p != '=' || !copy_trimmed(section, sizeof section, name, p) || !*section) return 0;
    p = skip(p + 1);
    if (*p != '{') return 0;
    p = skip(p + 1);
    while (*p != '}') {
      const char *key_start = p;
      while (isalnum((unsigned char)*p) || *p == '_' || *p == '.') p++;
      char key[128];
      if (p == key_start || !copy_trimmed(key, sizeof key, key_start, p)) return 0;
      while (*p == ' ' || *p == '\t') p++;
      if (*p != '=') return 0;
      const char *value_start = ++p;
      while (*p && *p != ';' && *p != '\n' && *p != '{' && *p != '}' && *p != '#') p++;
      if (*p != ';') return 0;
      char value[4096];
      if (!copy_trimmed(value, sizeof value, value_start, p) || !take_entry(section, key, value)) return 0;
      p = skip(p + 1);
      if (!*p) return 0; /* section not closed */
    }
    p = skip(p + 1);
  }
  return 1;
}

static int by_number(const void *a, const void *b) {
  long x = ((const struct group *)a)->number, y = ((const struct group *)b)->number;
  return (x > y) - (x < y);
}

/* Read the groups and HAOnly; 0 when the configuration cannot be found, read or parsed. */
static int load_conf(void) {
  char path[4096];
  n_groups = 0;
  ha_only = 0;
  if (!conf_path(path, sizeof path)) return 0;
  const char *estate = getenv("DHSM_ESTATE_DIR");
  if (snprintf(estate_dir, sizeof estate_dir, "%s", estate ? estate : "") >= (int)sizeof estate_dir) return 0;
  strcpy(conf_file, path); /* both 4096 bytes */
  char *text = read_file(path);
  if (text == NULL) return 0;
  int ok = parse_conf(text);
  free(text);
  if (!ok) {
    n_groups = 0;
    return 0;
  }
  qsort(groups, n_groups, sizeof groups[0], by_number);
  for (size_t i = 0; i < n_groups; i++) /* LunaCM numbers a group 1<first member> */
    if (!*groups[i].serial && groups[i].n_members)
      snprintf(groups[i].serial, sizeof groups[i].serial, "1%.15s", groups[i].members[0]);
  return 1;
}

/* ------------------------------------------------------------------------------------------
** members, virtual slots and sessions (called with `lock` held) */

static int is_virtual(CK_SLOT_ID slot) { return slot >= VIRTUAL_BASE; }

static struct group *virtual_group(CK_SLOT_ID slot) {
  return is_virtual(slot) && slot - VIRTUAL_BASE < n_groups ? &groups[slot - VIRTUAL_BASE] : NULL;
}

/* Does the blank-padded field equal the string? */
static int padded_equals(const unsigned char *field, size_t size, const char *text) {
  size_t n = strlen(text);
  if (n > size || memcmp(field, text, n) != 0) return 0;
  for (size_t i = n; i < size; i++)
    if (field[i] != ' ' && field[i] != '\0') return 0;
  return 1;
}

static void pad(unsigned char *field, size_t size, const char *text) {
  size_t n = strlen(text);
  memset(field, ' ', size);
  memcpy(field, text, n < size ? n : size);
}

/* The SoftHSM slot holding the token with that serial; 0 when there is none. */
static int member_slot(const char *serial, CK_SLOT_ID *out) {
  CK_ULONG count = 0;
  if (real->C_GetSlotList(CK_TRUE, NULL, &count) != CKR_OK || count == 0) return 0;
  CK_SLOT_ID *slots = calloc(count, sizeof *slots);
  int found = 0;
  if (slots && real->C_GetSlotList(CK_TRUE, slots, &count) == CKR_OK) {
    for (CK_ULONG i = 0; i < count && !found; i++) {
      CK_TOKEN_INFO info;
      if (real->C_GetTokenInfo(slots[i], &info) == CKR_OK &&
          padded_equals(info.serialNumber, sizeof info.serialNumber, serial)) {
        *out = slots[i];
        found = 1;
      }
    }
  }
  free(slots);
  return found;
}

/* The group's first present member: its slot (and index); 0 when none is present. */
static int first_member(const struct group *g, CK_SLOT_ID *slot, size_t *index) {
  for (size_t i = 0; i < g->n_members; i++) {
    if (member_slot(g->members[i], slot)) {
      if (index) *index = i;
      return 1;
    }
  }
  return 0;
}

static struct vsession *find_vsession(CK_SESSION_HANDLE h) {
  for (size_t i = 0; i < n_vsessions; i++)
    if (vsessions[i].handle == h) return &vsessions[i];
  return NULL;
}

static void forget_vsession(struct vsession *v) {
  *v = vsessions[--n_vsessions];
}

static int group_has_sessions(size_t group) {
  for (size_t i = 0; i < n_vsessions; i++)
    if (vsessions[i].group == group) return 1;
  return 0;
}

/* Undo a group login: the other members logged out and their sessions closed. The member the
** virtual sessions live on is logged out through `primary` when given (0: the caller did it,
** or its sessions are closed). */
static void undo_group_login(struct group *g, CK_SESSION_HANDLE primary) {
  if (primary) real->C_Logout(primary);
  for (size_t i = 0; i < MAX_MEMBERS; i++) {
    if (g->member_session[i]) {
      if (g->member_logged[i]) real->C_Logout(g->member_session[i]);
      real->C_CloseSession(g->member_session[i]);
    }
    g->member_session[i] = 0;
    g->member_logged[i] = 0;
  }
  g->logged_in = 0;
}

/* ------------------------------------------------------------------------------------------
** failed logins, counted by the appliances (see the header; called with `lock` held) */

/* Run the reporter for one login on the token SERIAL -> the CK_RV its one line `{"rv": N, ...}`
** gives: CKR_OK when the appliance accepts what SoftHSM said, else its refusal;
** CKR_DEVICE_ERROR when no such line comes (the reporter could not run, or crashed). */
static CK_RV report_login(const char *serial, CK_USER_TYPE user, int ok) {
  char *argv[] = { PYTHON, "-I", SIM_REPORTER, "--conf", conf_file, "--dir", estate_dir,
                   (char *)serial, user == CKU_SO ? "so" : "co", ok ? "ok" : "fail", NULL };
  if (!*estate_dir) /* no --dir: the reporter finds the estate from the configuration */
    memmove(&argv[5], &argv[7], 4 * sizeof argv[0]);
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return CKR_DEVICE_ERROR;
  pid_t pid = -1;
  posix_spawn_file_actions_t actions;
  if (posix_spawn_file_actions_init(&actions) == 0) {
    if (posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0) != 0 ||
        posix_spawn_file_actions_adddup2(&actions, out[1], 1) != 0 ||
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0) != 0 ||
        posix_spawn(&pid, PYTHON, &actions, NULL, argv, environ) != 0)
      pid = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  close(out[1]);
  char answer[MAX_ANSWER + 1], rest[256];
  size_t got = 0;
  while (pid > 0) { /* to the end, so the reporter never blocks on a full pipe */
    ssize_t n = got < MAX_ANSWER ? read(out[0], answer + got, MAX_ANSWER - got) : read(out[0], rest, sizeof rest);
    if (n > 0 && got < MAX_ANSWER) got += (size_t)n;
    else if (n == 0 || (n < 0 && errno != EINTR)) break;
  }
  close(out[0]);
  while (pid > 0 && waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
  answer[got] = '\0';
  static const char head[] = "{\"rv\": ";
  if (pid <= 0 || strncmp(answer, head, sizeof head - 1) != 0) return CKR_DEVICE_ERROR;
  char *end;
  errno = 0;
  unsigned long rv = strtoul(answer + sizeof head - 1, &end, 10);
  if (errno != 0 || end == answer + sizeof head - 1 || (*end != ',' && *end != '}')) return CKR_DEVICE_ERROR;
  return (CK_RV)rv;
}

/* C_Login on a SoftHSM session of a partition token, counted by the partition's appliance:
** SoftHSM checks the PIN, its verdict is reported, and a refusal by the appliance has the last
** word (SoftHSM's login undone). Only CKU_SO / CKU_USER and a verdict (CKR_OK,
** CKR_PIN_INCORRECT) are reported; anything else is SoftHSM's answer, unchanged. */
static CK_RV counted_login(CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len) {
  CK_RV rv = real->C_Login(session, user, pin, pin_len);
  if ((user != CKU_SO && user != CKU_USER) || (rv != CKR_OK && rv != CKR_PIN_INCORRECT)) return rv;
  CK_SESSION_INFO session_info;
  CK_TOKEN_INFO token;
  char serial[sizeof token.serialNumber + 1];
  CK_RV said = CKR_DEVICE_ERROR;
  if (real->C_GetSessionInfo(session, &session_info) == CKR_OK &&
      real->C_GetTokenInfo(session_info.slotID, &token) == CKR_OK) {
    size_t n = sizeof token.serialNumber;
    while (n > 0 && (token.serialNumber[n - 1] == ' ' || token.serialNumber[n - 1] == '\0')) n--;
    memcpy(serial, token.serialNumber, n);
    serial[n] = '\0';
    said = report_login(serial, user, rv == CKR_OK);
  }
  if (said == CKR_OK) return rv;
  if (rv == CKR_OK) real->C_Logout(session);
  return said;
}

/* ------------------------------------------------------------------------------------------
** the functions replaced in the list */

static CK_RV sim_initialize(CK_VOID_PTR args) {
  pthread_mutex_lock(&lock);
  CK_RV rv = CKR_CRYPTOKI_ALREADY_INITIALIZED;
  if (!initialized) {
    rv = load_conf() ? real->C_Initialize(args) : CKR_GENERAL_ERROR;
    initialized = rv == CKR_OK;
  }
  pthread_mutex_unlock(&lock);
  return rv;
}

static CK_RV sim_finalize(CK_VOID_PTR reserved) {
  pthread_mutex_lock(&lock);
  CK_RV rv = CKR_CRYPTOKI_NOT_INITIALIZED;
  if (initialized) {
    for (size_t i = 0; i < n_groups; i++) undo_group_login(&groups[i], 0);
    free(vsessions); /* the library may be unloaded next: nothing of ours outlives C_Finalize */
    vsessions = NULL;
    n_vsessions = cap_vsessions = 0;
    rv = real->C_Finalize(reserved); /* closes every SoftHSM session */
    initialized = 0;
  }
  pthread_mutex_unlock(&lock);
  return rv;
}

static CK_RV sim_get_slot_list(CK_BBOOL token_present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count) {
  if (count == NULL) return CKR_ARGUMENTS_BAD;
  pthread_mutex_lock(&lock);
  CK_RV rv = CKR_CRYPTOKI_NOT_INITIALIZED;
  CK_SLOT_ID *physical = NULL;
  CK_ULONG n_physical = 0, total = 0;
  if (!initialized) goto out;
  if (!ha_only) {
    if ((rv = real->C_GetSlotList(token_present, NULL, &n_physical)) != CKR_OK) goto out;
    if (n_physical && (physical = calloc(n_physical, sizeof *physical)) == NULL) {
      rv = CKR_HOST_MEMORY;
      goto out;
    }
    if (n_physical && (rv = real->C_GetSlotList(token_present, physical, &n_physical)) != CKR_OK) goto out;
  }
  int present[MAX_GROUPS];
  for (size_t i = 0; i < n_groups; i++) {
    CK_SLOT_ID unused;
    present[i] = first_member(&groups[i], &unused, NULL);
  }
  total = n_physical;
  for (size_t i = 0; i < n_groups; i++) total += !token_present || present[i];
  rv = CKR_OK;
  if (list != NULL) {
    if (*count < total) {
      rv = CKR_BUFFER_TOO_SMALL;
    } else {
      CK_ULONG k = 0;
      for (; k < n_physical; k++) list[k] = physical[k];
      for (size_t i = 0; i < n_groups; i++)
        if (!token_present || present[i]) list[k++] = VIRTUAL_BASE + i;
    }
  }
  *count = total;
out:
  free(physical);
  pthread_mutex_unlock(&lock);
  return rv;
}

/* The checks every slot-taking function makes: initialised, and a slot this library shows
** (a physical slot is refused when HAOnly hides it). */
static CK_RV check_slot(CK_SLOT_ID slot) {
  if (!initialized) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (is_virtual(slot) ? virtual_group(slot) == NULL : ha_only) return CKR_SLOT_ID_INVALID;
  return CKR_OK;
}

static CK_RV sim_get_slot_info(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info) {
  pthread_mutex_lock(&lock);
  CK_RV rv = check_slot(slot);
  if (rv == CKR_OK && !is_virtual(slot)) {
    rv = real->C_GetSlotInfo(slot, info);
  } else if (rv == CKR_OK && info == NULL) {
    rv = CKR_ARGUMENTS_BAD;
  } else if (rv == CKR_OK) {
    CK_SLOT_ID member;
    if (first_member(virtual_group(slot), &member, NULL) && (rv = real->C_GetSlotInfo(member, info)) == CKR_OK) {
      info->flags |= CKF_TOKEN_PRESENT;
    } else if (rv == CKR_OK) { /* no member present: an empty slot */
      memset(info, 0, sizeof *info);
      pad(info->manufacturerID, sizeof info->manufacturerID, "SoftHSM project");
      info->flags = CKF_REMOVABLE_DEVICE;
    }
    if (rv == CKR_OK) pad(info->slotDescription, sizeof info->slotDescription, VIRTUAL_SLOT_DESCRIPTION);
  }
  pthread_mutex_unlock(&lock);
  return rv;
}

static CK_RV sim_get_token_info(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
  pthread_mutex_lock(&lock);
  CK_RV rv = check_slot(slot);
  if (rv == CKR_OK && !is_virtual(slot)) {
    rv = real->C_GetTokenInfo(slot, info);
  } else if (rv == CKR_OK) {
    struct group *g = virtual_group(slot);
    CK_SLOT_ID member;
    if (!first_member(g, &member, NULL)) {
      rv = CKR_TOKEN_NOT_PRESENT;
    } else if ((rv = real->C_GetTokenInfo(member, info)) == CKR_OK) {
      pad(info->label, sizeof info->label, g->label);
      pad(info->serialNumber, sizeof info->serialNumber, g->serial);
      pad(info->model, sizeof info->model, VIRTUAL_MODEL);
    }
  }
  pthread_mutex_unlock(&lock);
  return rv;
}

/* The slot a mechanism query or a token call goes to: the slot itself, or a group's first member. */
static CK_RV route_slot(CK_SLOT_ID slot, CK_SLOT_ID *to) {
  CK_RV rv = check_slot(slot);
  if (rv != CKR_OK) return rv;
  if (!is_virtual(slot)) {
    *to = slot;
    return CKR_OK;
  }
  return first_member(virtual_group(slot), to, NULL) ? CKR_OK : CKR_TOKEN_NOT_PRESENT;
}

static CK_RV sim_get_mechanism_list(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count) {
  pthread_mutex_lock(&lock);
  CK_SLOT_ID to;
  CK_RV rv = route_slot(slot, &to);
  pthread_mutex_unlock(&lock);
  return rv == CKR_OK ? real->C_GetMechanismList(to, list, count) : rv;
}

static CK_RV sim_get_mechanism_info(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info) {
  pthread_mutex_lock(&lock);
  CK_SLOT_ID to;
  CK_RV rv = route_slot(slot, &to);
  pthread_mutex_unlock(&lock);
  return rv == CKR_OK ? real->C_GetMechanismInfo(to, type, info) : rv;
}

static CK_RV sim_init_token(CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len, CK_UTF8CHAR_PTR label) {
  pthread_mutex_lock(&lock);
  CK_RV rv = check_slot(slot);
  pthread_mutex_unlock(&lock);
  if (rv == CKR_OK && is_virtual(slot)) return CKR_FUNCTION_NOT_SUPPORTED; /* an HA group is no token */
  return rv == CKR_OK ? real->C_InitToken(slot, pin, pin_len, label) : rv;
}

static CK_RV sim_open_session(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                              CK_SESSION_HANDLE_PTR session) {
  pthread_mutex_lock(&lock);
  CK_SLOT_ID to;
  CK_RV rv = route_slot(slot, &to);
  if (rv == CKR_OK) rv = real->C_OpenSession(to, flags, app, notify, session);
  if (rv == CKR_OK && is_virtual(slot)) {
    if (n_vsessions == cap_vsessions) {
      size_t cap = cap_vsessions ? 2 * cap_vsessions : 16;
      struct vsession *grown = realloc(vsessions, cap * sizeof *grown);
      if (grown == NULL) {
        real->C_CloseSession(*session);
        rv = CKR_HOST_MEMORY;
        goto out;
      }
      vsessions = grown;
      cap_vsessions = cap;
    }
    vsessions[n_vsessions++] = (struct vsession){ *session, to, (size_t)(slot - VIRTUAL_BASE) };
  }
out:
  pthread_mutex_unlock(&lock);
  return rv;
}

static CK_RV sim_close_session(CK_SESSION_HANDLE session) {
  pthread_mutex_lock(&lock);
  CK_RV rv = initialized ? real->C_CloseSession(session) : CKR_CRYPTOKI_NOT_INITIALIZED;
  struct vsession *v = find_vsession(session);
  if (v != NULL && (rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID)) {
    size_t group = v->group;
    forget_vsession(v);
    /* the last session of the group is gone: its token logged itself out in SoftHSM, the
    ** other members are logged out here */
    if (!group_has_sessions(group)) undo_group_login(&groups[group], 0);
  }
  pthread_mutex_unlock(&lock);
  return rv;
}

static CK_RV sim_close_all_sessions(CK_SLOT_ID slot) {
  pthread_mutex_lock(&lock);
  CK_RV rv = check_slot(slot);
  if (rv == CKR_OK && is_virtual(slot)) {
    size_t group = (size_t)(slot - VIRTUAL_BASE);
    undo_group_login(&groups[group], 0);
    for (size_t i = n_vsessions; i-- > 0;) {
      if (vsessions[i].group == group) {
        real->C_CloseSession(vsessions[i].handle);
        forget_vsession(&vsessions[i]);
      }
    }
  } else if (rv == CKR_OK && (rv = real->C_CloseAllSessions(slot)) == CKR_OK) {
    /* the application closed a member's sessions itself: the virtual sessions living there
    ** are gone, and so are the group's own sessions on that member */
    for (size_t i = n_vsessions; i-- > 0;)
      if (vsessions[i].physical == slot) forget_vsession(&vsessions[i]);
    for (size_t g = 0; g < n_groups; g++) {
      for (size_t m = 0; m < groups[g].n_members; m++) {
        CK_SLOT_ID at;
        if (groups[g].member_session[m] && member_slot(groups[g].members[m], &at) && at == slot) {
          groups[g].member_session[m] = 0;
          groups[g].member_logged[m] = 0;
        }
      }
      if (groups[g].logged_in && !group_has_sessions(g)) undo_group_login(&groups[g], 0);
    }
  }
  pthread_mutex_unlock(&lock);
  return rv;
}

static CK_RV sim_get_session_info(CK_SESSION_HANDLE session, CK_SESSION_INFO_PTR info) {
  pthread_mutex_lock(&lock);
  CK_RV rv = initialized ? real->C_GetSessionInfo(session, info) : CKR_CRYPTOKI_NOT_INITIALIZED;
  struct vsession *v = rv == CKR_OK ? find_vsession(session) : NULL;
  if (v != NULL) info->slotID = VIRTUAL_BASE + v->group; /* the session is the virtual slot's */
  pthread_mutex_unlock(&lock);
  return rv;
}

/* Log in on every present member of the virtual session's group, in member order, each login
** counted by its member's appliance; the first refusal fails the whole login. */
static CK_RV group_login(struct vsession *v, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len) {
  struct group *g = &groups[v->group];
  CK_SESSION_INFO info;
  CK_RV rv = real->C_GetSessionInfo(v->handle, &info), first = CKR_OK;
  if (rv != CKR_OK) return rv;
  int primary_logged = 0;
  for (size_t i = 0; i < g->n_members; i++) {
    CK_SLOT_ID slot;
    if (!member_slot(g->members[i], &slot)) continue; /* not present: left out */
    if (slot == v->physical) {
      rv = counted_login(v->handle, user, pin, pin_len);
      primary_logged = rv == CKR_OK;
    } else if ((rv = real->C_OpenSession(slot, info.flags & (CKF_RW_SESSION | CKF_SERIAL_SESSION), NULL, NULL,
                                         &g->member_session[i])) != CKR_OK) {
      /* a session of the group's own on this member, opened as the application's was: none */
      g->member_session[i] = 0;
    } else {
      rv = counted_login(g->member_session[i], user, pin, pin_len);
      if (rv == CKR_USER_ALREADY_LOGGED_IN) rv = CKR_OK; /* the application logged in there itself */
      else g->member_logged[i] = rv == CKR_OK;
    }
    if (first == CKR_OK) first = rv; /* the other members are still tried: each counts the attempt */
  }
  if (first != CKR_OK) { /* one member refused: every member this login reached is logged out again */
    undo_group_login(g, primary_logged ? v->handle : 0);
    return first;
  }
  g->logged_in = 1;
  return CKR_OK;
}

static CK_RV sim_login(CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len) {
  pthread_mutex_lock(&lock);
  CK_RV rv = CKR_CRYPTOKI_NOT_INITIALIZED;
  struct vsession *v = initialized ? find_vsession(session) : NULL;
  if (!initialized) {
    /* rv stays */
  } else if (v == NULL || user == CKU_CONTEXT_SPECIFIC) {
    rv = counted_login(session, user, pin, pin_len); /* CKU_CONTEXT_SPECIFIC: SoftHSM's alone */
  } else if (groups[v->group].logged_in) {
    rv = CKR_USER_ALREADY_LOGGED_IN;
  } else {
    rv = group_login(v, user, pin, pin_len);
  }
  pthread_mutex_unlock(&lock);
  return rv;
}

static CK_RV sim_logout(CK_SESSION_HANDLE session) {
  pthread_mutex_lock(&lock);
  CK_RV rv = CKR_CRYPTOKI_NOT_INITIALIZED;
  struct vsession *v = initialized ? find_vsession(session) : NULL;
  if (!initialized) {
    /* rv stays */
  } else if (v == NULL || !groups[v->group].logged_in) {
    rv = real->C_Logout(session);
  } else {
    rv = real->C_Logout(session);
    undo_group_login(&groups[v->group], 0);
  }
  pthread_mutex_unlock(&lock);
  return rv;
}

/* ------------------------------------------------------------------------------------------
** the entry point */

/* dlopen SoftHSM and build our list once; 0 on failure. Called with `lock` held. */
static int load_real(void) {
  if (real != NULL) return 1;
  const char *path = getenv("DHSM_SIM_SOFTHSM");
  softhsm = dlopen(path && *path ? path : DEFAULT_SOFTHSM, RTLD_NOW | RTLD_LOCAL);
  if (softhsm == NULL) return 0;
  CK_C_GetFunctionList get;
  /* dlsym hands back an object pointer; POSIX guarantees it converts to a function pointer */
  *(void **)&get = dlsym(softhsm, "C_GetFunctionList");
  CK_FUNCTION_LIST_PTR list = NULL;
  if (get == NULL || get(&list) != CKR_OK || list == NULL) {
    dlclose(softhsm);
    softhsm = NULL;
    return 0;
  }
  ours = *list;
  ours.C_Initialize = sim_initialize;
  ours.C_Finalize = sim_finalize;
  ours.C_GetFunctionList = C_GetFunctionList;
  ours.C_GetSlotList = sim_get_slot_list;
  ours.C_GetSlotInfo = sim_get_slot_info;
  ours.C_GetTokenInfo = sim_get_token_info;
  ours.C_GetMechanismList = sim_get_mechanism_list;
  ours.C_GetMechanismInfo = sim_get_mechanism_info;
  ours.C_InitToken = sim_init_token;
  ours.C_OpenSession = sim_open_session;
  ours.C_CloseSession = sim_close_session;
  ours.C_CloseAllSessions = sim_close_all_sessions;
  ours.C_GetSessionInfo = sim_get_session_info;
  ours.C_Login = sim_login;
  ours.C_Logout = sim_logout;
  real = list;
  return 1;
}

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
  if (list == NULL) return CKR_ARGUMENTS_BAD;
  pthread_mutex_lock(&lock);
  int ok = load_real();
  pthread_mutex_unlock(&lock);
  if (!ok) return CKR_GENERAL_ERROR;
  *list = &ours;
  return CKR_OK;
}
