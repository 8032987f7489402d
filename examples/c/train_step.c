/* One training step of a model that `tttc compile` compiled for the CPU: reads each argument
 * from ARGS/<name>.bin (raw little-endian, the type and shape cpu/model.h lists: input_ids, then
 * the weights), calls tttc_loss_and_grad, takes one SGD step (w -= LR * dL/dw) on every weight,
 * and runs tttc_forward with the new weights. It writes OUT/loss.bin (the loss before the step),
 * OUT/grad.<name>.bin (each gradient), OUT/<name>.bin (each new weight) and OUT/loss_after.bin
 * (the loss after the step), and prints both losses. The lengths (the header's
 * TTTC_LENGTH_NAMES, in order) default to their bounds.
 *
 *   cc -O2 -I DIR/cpu examples/c/train_step.c DIR/cpu/model.o -lm -lpthread -o train_step
 *   ./train_step ARGS OUT LR [LENGTH...]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "files.h"
#include "model.h"

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s ARGS OUT LR [LENGTH...]\n", argv[0]); return 2; }
    float lr = strtof(argv[3], NULL);
    int64_t lengths[TTTC_LENGTHS + 1];
    read_lengths(argc, argv, 4, TTTC_LENGTHS, TTTC_MAX_LENGTHS, lengths);

    /* The training step's arguments are the forward pass's: input_ids and the weights. */
    void *args[TTTC_LOSS_AND_GRAD_ARGS];
    void *grads[TTTC_LOSS_AND_GRAD_OUTPUTS];
    for (int j = 0; j < TTTC_LOSS_AND_GRAD_ARGS; j++) args[j] = read_file(argv[1], TTTC_LOSS_AND_GRAD_ARG_NAMES[j], tttc_loss_and_grad_arg_bytes(lengths, j));
    for (int k = 0; k < TTTC_LOSS_AND_GRAD_OUTPUTS; k++) grads[k] = alloc(tttc_loss_and_grad_output_bytes(lengths, k));
    void *workspace = alloc(TTTC_LOSS_AND_GRAD_WORKSPACE_BYTES);
    int32_t status = tttc_loss_and_grad(lengths, (const void *const *)args, grads, workspace);
    if (status != 0) { fprintf(stderr, "error: tttc_loss_and_grad returned %d (1: a token id out of range, 2: a length out of range)\n", status); return 1; }
    free(workspace);
    write_file(argv[2], "", "loss", grads[0], 4);

    /* Output 0 is the loss; output k > 0 is the gradient of the argument of the same name. */
    for (int k = 1; k < TTTC_LOSS_AND_GRAD_OUTPUTS; k++) {
        const char *name = TTTC_LOSS_AND_GRAD_OUTPUT_NAMES[k];
        write_file(argv[2], "grad.", name, grads[k], tttc_loss_and_grad_output_bytes(lengths, k));
        int j = 0;
        while (j < TTTC_LOSS_AND_GRAD_ARGS && strcmp(TTTC_LOSS_AND_GRAD_ARG_NAMES[j], name) != 0) j++;
        if (j == TTTC_LOSS_AND_GRAD_ARGS) { fprintf(stderr, "error: gradient %s has no argument\n", name); return 1; }
        float *w = args[j];
        const float *g = grads[k];
        for (int64_t i = 0; i < tttc_loss_and_grad_output_bytes(lengths, k) / 4; i++) w[i] -= lr * g[i];
        write_file(argv[2], "", name, w, tttc_loss_and_grad_arg_bytes(lengths, j));
    }

    /* The loss at the new weights, through the forward entry point (its arguments by name). */
    const void *forward_args[TTTC_FORWARD_ARGS];
    void *outputs[TTTC_FORWARD_OUTPUTS];
    for (int j = 0; j < TTTC_FORWARD_ARGS; j++) {
        int i = 0;
        while (i < TTTC_LOSS_AND_GRAD_ARGS && strcmp(TTTC_LOSS_AND_GRAD_ARG_NAMES[i], TTTC_FORWARD_ARG_NAMES[j]) != 0) i++;
        if (i == TTTC_LOSS_AND_GRAD_ARGS) { fprintf(stderr, "error: no argument %s\n", TTTC_FORWARD_ARG_NAMES[j]); return 1; }
        forward_args[j] = args[i];
    }
    int loss_at = -1;
    for (int k = 0; k < TTTC_FORWARD_OUTPUTS; k++) {
        outputs[k] = alloc(tttc_forward_output_bytes(lengths, k));
        if (strcmp(TTTC_FORWARD_OUTPUT_NAMES[k], "loss") == 0) loss_at = k;
    }
    workspace = alloc(TTTC_FORWARD_WORKSPACE_BYTES);
    status = tttc_forward(lengths, forward_args, outputs, workspace);
    if (status != 0 || loss_at < 0) { fprintf(stderr, "error: tttc_forward returned %d\n", status); return 1; }
    write_file(argv[2], "", "loss_after", outputs[loss_at], 4);
    printf("loss %.6f, after one SGD step (lr %g) %.6f\n", *(float *)grads[0], lr, *(float *)outputs[loss_at]);
    return 0;
}
