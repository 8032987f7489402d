/* Runs a model that `tttc compile` compiled for the CPU: reads each argument from
 * ARGS/<name>.bin (raw little-endian, the type and shape cpu/model.h lists), calls
 * tttc_forward and writes each output to OUT/<name>.bin.
 *
 *   cc -O2 -I DIR/cpu examples/c/run_model.c DIR/cpu/model.o -lm -o run_model
 *   ./run_model ARGS OUT
 */
#include <stdio.h>
#include <stdlib.h>

#include "files.h"
#include "model.h"

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s ARGS OUT\n", argv[0]); return 2; }
    const void *args[TTTC_FORWARD_ARGS];
    void *outputs[TTTC_FORWARD_OUTPUTS];
    for (int j = 0; j < TTTC_FORWARD_ARGS; j++) args[j] = read_file(argv[1], TTTC_FORWARD_ARG_NAMES[j], TTTC_FORWARD_ARG_BYTES[j]);
    for (int j = 0; j < TTTC_FORWARD_OUTPUTS; j++) outputs[j] = alloc(TTTC_FORWARD_OUTPUT_BYTES[j]);
    void *workspace = alloc(TTTC_FORWARD_WORKSPACE_BYTES);
    int32_t status = tttc_forward(args, outputs, workspace);
    if (status != 0) { fprintf(stderr, "error: tttc_forward returned %d (a token id out of range)\n", status); return 1; }
    for (int j = 0; j < TTTC_FORWARD_OUTPUTS; j++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s.bin", argv[2], TTTC_FORWARD_OUTPUT_NAMES[j]);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(outputs[j], 1, TTTC_FORWARD_OUTPUT_BYTES[j], f) != (size_t)TTTC_FORWARD_OUTPUT_BYTES[j]) { fprintf(stderr, "error: cannot write %s\n", path); return 1; }
        fclose(f);
    }
    return 0;
}
