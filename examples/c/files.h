/* The tensor files the drivers in this folder read and write: DIR/<name>.bin holds a tensor's
 * elements, row-major, little-endian, as `tttc` writes and reads them (docs/cpu-model.md). */
#ifndef TTTC_EXAMPLE_FILES_H
#define TTTC_EXAMPLE_FILES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* malloc that never returns NULL for a size of 0 (an empty tensor is still an address). */
static inline void *alloc(int64_t bytes) {
    void *p = malloc(bytes > 0 ? bytes : 1);
    if (!p) { fprintf(stderr, "error: out of memory for %lld bytes\n", (long long)bytes); exit(1); }
    return p;
}

/* DIR/NAME.bin, which must hold at least `bytes` bytes. */
static inline void *read_file(const char *dir, const char *name, int64_t bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.bin", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "error: cannot open %s\n", path); exit(1); }
    void *data = alloc(bytes);
    if (fread(data, 1, bytes, f) != (size_t)bytes) { fprintf(stderr, "error: %s holds fewer than %lld bytes\n", path, (long long)bytes); exit(1); }
    fclose(f);
    return data;
}

/* DIR/PREFIXNAME.bin with `bytes` bytes of `data`. */
static inline void write_file(const char *dir, const char *prefix, const char *name, const void *data, int64_t bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s%s.bin", dir, prefix, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != (size_t)bytes) { fprintf(stderr, "error: cannot write %s\n", path); exit(1); }
    fclose(f);
}

#endif
