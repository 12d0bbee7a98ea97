/*
** buf.h - a growable byte buffer for modules that assemble requests and
** replies in C (and must wipe them when they held a secret).
*/
#ifndef DHSM_BUF_H
#define DHSM_BUF_H

#include <stddef.h>

typedef struct dhsm_buf {
  char *p;                 /* NUL-terminated after every add */
  size_t len, cap;
  int oom;                 /* an allocation failed: the content is incomplete */
} dhsm_buf;

void dhsm_buf_add(dhsm_buf *b, const char *s, size_t n);
void dhsm_buf_adds(dhsm_buf *b, const char *s);
/* Free the memory, wiping it first (it may have held a secret). */
void dhsm_buf_free(dhsm_buf *b);

#endif
