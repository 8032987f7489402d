/* Runs a model that `tttc compile` compiled for the CPU: reads each argument from
 * ARGS/<name>.bin (raw little-endian, the type and shape cpu/model.h lists at the lengths
 * given), calls tttc_forward and writes each output to OUT/<name>.bin. The lengths (the header's
 * TTTC_LENGTH_NAMES, in order: B and T when both were compiled above 1) default to their bounds.
 * Built with -DTTTC_RUN_VJP it calls a compiled layer's tttc_vjp instead (its backward: the
 * cotangent ARGS/d.y.bin in, the gradients OUT/d.NAME.bin out).
 *
 *   cc -O2 -I DIR/cpu examples/c/run_model.c DIR/cpu/model.o -lm -lpthread -o run_model
 *   ./run_model ARGS OUT [LENGTH...]
 */
#include <stdio.h>
#include <stdlib.h>

#include "files.h"
#include "model.h"

#ifdef TTTC_RUN_VJP
#define ENTRY tttc_vjp
#define ENTRY_NAME "tttc_vjp"
#define ENTRY_ARGS TTTC_VJP_ARGS
#define ENTRY_OUTPUTS TTTC_VJP_OUTPUTS
#define ENTRY_ARG_NAMES TTTC_VJP_ARG_NAMES
#define ENTRY_OUTPUT_NAMES TTTC_VJP_OUTPUT_NAMES
#define ENTRY_WORKSPACE_BYTES TTTC_VJP_WORKSPACE_BYTES
#define entry_arg_bytes tttc_vjp_arg_bytes
#define entry_output_bytes tttc_vjp_output_bytes
#define ENTRY_ERRORS "(2: a length out of range)"
#else
#define ENTRY tttc_forward
#define ENTRY_NAME "tttc_forward"
#define ENTRY_ARGS TTTC_FORWARD_ARGS
#define ENTRY_OUTPUTS TTTC_FORWARD_OUTPUTS
#define ENTRY_ARG_NAMES TTTC_FORWARD_ARG_NAMES
#define ENTRY_OUTPUT_NAMES TTTC_FORWARD_OUTPUT_NAMES
#define ENTRY_WORKSPACE_BYTES TTTC_FORWARD_WORKSPACE_BYTES
#define entry_arg_bytes tttc_forward_arg_bytes
#define entry_output_bytes tttc_forward_output_bytes
#define ENTRY_ERRORS "(1: a token id out of range, 2: a length out of range)"
#endif

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s ARGS OUT [LENGTH...]\n", argv[0]); return 2; }
    int64_t lengths[TTTC_LENGTHS + 1];
    read_lengths(argc, argv, 3, TTTC_LENGTHS, TTTC_MAX_LENGTHS, lengths);
    const void *args[ENTRY_ARGS];
    void *outputs[ENTRY_OUTPUTS];
    for (int j = 0; j < ENTRY_ARGS; j++) args[j] = read_file(argv[1], ENTRY_ARG_NAMES[j], entry_arg_bytes(lengths, j));
    for (int j = 0; j < ENTRY_OUTPUTS; j++) outputs[j] = alloc(entry_output_bytes(lengths, j));
    void *workspace = alloc(ENTRY_WORKSPACE_BYTES);
    int32_t status = ENTRY(lengths, args, outputs, workspace);
    if (status != 0) { fprintf(stderr, "error: " ENTRY_NAME " returned %d " ENTRY_ERRORS "\n", status); return 1; }
    for (int j = 0; j < ENTRY_OUTPUTS; j++) write_file(argv[2], "", ENTRY_OUTPUT_NAMES[j], outputs[j], entry_output_bytes(lengths, j));
    return 0;
}
