/* The tensor files the drivers in this folder read and write: DIR/<name>.bin holds a tensor's
 * elements, row-major, little-endian, as `tttc` writes and reads them (docs/cpu-model.md). */
#ifndef TTTC_EXAMPLE_FILES_H
#define TTTC_EXAMPLE_FILES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* The lengths a model is called with (`count` of them): the numbers argv[first..] in order, each
 * defaulting to its bound (the entry points check the values: 2 when one is out of range). */
static inline void read_lengths(int argc, char **argv, int first, int count, const int64_t *bounds, int64_t *lengths) {
    if (argc - first > count) { fprintf(stderr, "error: %d lengths given, the model takes %d\n", argc - first, count); exit(2); }
    for (int i = 0; i < count; i++) lengths[i] = first + i < argc ? strtoll(argv[first + i], NULL, 10) : bounds[i];
}

/* The length called `name` among `names`, or `fixed` when the model was compiled at one value. */
static inline int64_t length_of(const char *name, int64_t fixed, int count, const char *const *names, const int64_t *lengths) {
    for (int i = 0; i < count; i++)
        if (strcmp(names[i], name) == 0) return lengths[i];
    return fixed;
}

#endif
