/*
 * memcpy for the static musl build, linked in its place with `-Wl,--wrap=memcpy` (build.rs).
 *
 * Why: musl's x86-64 memcpy starts every copy with `rep movsq` and finishes the tail a byte at
 * a time with `movsb`. On the Xeon it was measured on that costs ~35 ns per call whatever the
 * size, and a refresh makes a few hundred copies, most of a few bytes (hyper's header pieces,
 * the log line, the metadata's JSON): ~10 % of the agent's CPU. Copies of up to 32 bytes here
 * are two overlapping loads and stores (~2 ns); longer ones are one `rep movsb`, which CPUs
 * with ERMS / FSRM run at full speed. BENCHMARKS.md (issue 17) has the figures.
 *
 * It never calls memcpy itself: fixed-size __builtin_memcpy compiles to plain moves (the
 * self-test below is built at the same optimization level; tests/memcpy.rs runs it).
 */
#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint64_t low, high;
} bytes16;

/* Copies n bytes, sizeof(type) <= n <= 2 * sizeof(type), as a `type` from each end: both are
 * loaded before either is stored, and the two may overlap. */
#define COPY_ENDS(type)                                                                     \
  do {                                                                                       \
    type head, tail;                                                                         \
    __builtin_memcpy(&head, s, sizeof head);                                                 \
    __builtin_memcpy(&tail, s + n - sizeof tail, sizeof tail);                               \
    __builtin_memcpy(d, &head, sizeof head);                                                 \
    __builtin_memcpy(d + n - sizeof tail, &tail, sizeof tail);                               \
  } while (0)

void *__wrap_memcpy(void *restrict dst, const void *restrict src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  if (n > 32) {
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
  } else if (n >= 16) {
    COPY_ENDS(bytes16);
  } else if (n >= 8) {
    COPY_ENDS(uint64_t);
  } else if (n >= 4) {
    COPY_ENDS(uint32_t);
  } else if (n >= 2) {
    COPY_ENDS(uint16_t);
  } else if (n == 1) {
    *d = *s;
  }
  return dst;
}

#ifdef MEMCPY_SELF_TEST
/* Every size up to 600 bytes (both short paths, their edges, and `rep movsb`) at every source
 * and destination alignment within 16 bytes, against a byte-by-byte copy; the bytes around the
 * destination must stay untouched and the destination must come back. */
#include <stdio.h>

int main(void) {
  static unsigned char src[700], dst[700];
  unsigned long checked = 0;
  for (size_t n = 0; n <= 600; n++)
    for (size_t from = 0; from < 16; from++)
      for (size_t to = 0; to < 16; to++) {
        for (size_t i = 0; i < sizeof src; i++) {
          src[i] = (unsigned char)(i * 13 + 5);
          dst[i] = (unsigned char)(i * 7 + 1);
        }
        if (__wrap_memcpy(dst + to, src + from, n) != dst + to) {
          printf("n=%zu from=%zu to=%zu: wrong return value\n", n, from, to);
          return 1;
        }
        for (size_t i = 0; i < sizeof dst; i++) {
          int inside = i >= to && i < to + n;
          unsigned char want = inside ? src[i - to + from] : (unsigned char)(i * 7 + 1);
          if (dst[i] != want) {
            printf("n=%zu from=%zu to=%zu: byte %zu is %u, not %u\n", n, from, to, i, dst[i], want);
            return 1;
          }
        }
        checked++;
      }
  printf("%lu copies checked\n", checked);
  return 0;
}
#endif
