/*
** buf.c - the growable buffer of include/dhsm/buf.h.
*/
#include <stdlib.h>
#include <string.h>

#include "dhsm/buf.h"

void dhsm_buf_add(dhsm_buf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = malloc(cap);           /* not realloc: the old block is wiped */
    if (p == NULL) {
      b->oom = 1;
      return;
    }
    if (b->p) {
      memcpy(p, b->p, b->len);
      explicit_bzero(b->p, b->cap);
      free(b->p);
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

void dhsm_buf_adds(dhsm_buf *b, const char *s) {
  dhsm_buf_add(b, s, strlen(s));
}

void dhsm_buf_free(dhsm_buf *b) {
  if (b->p) explicit_bzero(b->p, b->cap);
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}
