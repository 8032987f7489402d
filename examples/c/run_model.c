/* Runs a model that `tttc compile` compiled for the CPU: reads each argument from
 * ARGS/<name>.bin (raw little-endian, the type and shape cpu/model.h lists at the lengths
 * given), calls tttc_forward and writes each output to OUT/<name>.bin. The lengths (the header's
 * TTTC_LENGTH_NAMES, in order: B and T when both were compiled above 1) default to their bounds.
 *
 *   cc -O2 -I DIR/cpu examples/c/run_model.c DIR/cpu/model.o -lm -lpthread -o run_model
 *   ./run_model ARGS OUT [LENGTH...]
 */
#include <stdio.h>
#include <stdlib.h>

#include "files.h"
#include "model.h"

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s ARGS OUT [LENGTH...]\n", argv[0]); return 2; }
    int64_t lengths[TTTC_LENGTHS + 1];
    read_lengths(argc, argv, 3, TTTC_LENGTHS, TTTC_MAX_LENGTHS, lengths);
    const void *args[TTTC_FORWARD_ARGS];
    void *outputs[TTTC_FORWARD_OUTPUTS];
    for (int j = 0; j < TTTC_FORWARD_ARGS; j++) args[j] = read_file(argv[1], TTTC_FORWARD_ARG_NAMES[j], tttc_forward_arg_bytes(lengths, j));
    for (int j = 0; j < TTTC_FORWARD_OUTPUTS; j++) outputs[j] = alloc(tttc_forward_output_bytes(lengths, j));
    void *workspace = alloc(TTTC_FORWARD_WORKSPACE_BYTES);
    int32_t status = tttc_forward(lengths, args, outputs, workspace);
    if (status != 0) { fprintf(stderr, "error: tttc_forward returned %d (1: a token id out of range, 2: a length out of range)\n", status); return 1; }
    for (int j = 0; j < TTTC_FORWARD_OUTPUTS; j++) write_file(argv[2], "", TTTC_FORWARD_OUTPUT_NAMES[j], outputs[j], tttc_forward_output_bytes(lengths, j));
    return 0;
}
