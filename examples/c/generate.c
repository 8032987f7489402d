/* Greedy decoding with a model that `tttc compile` compiled for the CPU: reads the prompt
 * ARGS/input_ids.bin (int64 [B][T]) and each weight from ARGS/<name>.bin (raw little-endian, the
 * type and shape cpu/model.h lists), runs tttc_prefill on the prompt and then
 * tttc_step on each chosen token, N new tokens per row in all, each the argmax of its logits (the
 * first on a tie, as `tttc generate` picks). Prints each row's new tokens on a line, and writes
 * OUT/tokens.bin (int64 [B][T + N]: the prompt, then the new tokens) and OUT/logits.bin
 * (float [B][N][V]: the logits each new token was chosen from), as `tttc generate` names them.
 * The lengths (the header's TTTC_LENGTH_NAMES, in order: B and T when both were compiled above 1)
 * default to their bounds.
 *
 *   cc -O2 -I DIR/cpu examples/c/generate.c DIR/cpu/model.o -lm -lpthread -o generate
 *   ./generate ARGS N OUT [LENGTH...]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "files.h"
#include "model.h"

/* The argmax of each row of logits [rows][V] becomes that row's next token. */
static void pick(const float *logits, int64_t rows, int64_t vocab, int64_t *next) {
    for (int r = 0; r < rows; r++) {
        const float *row = logits + r * vocab;
        int64_t best = 0;
        for (int64_t i = 1; i < vocab; i++)
            if (row[i] > row[best]) best = i;
        next[r] = best;
    }
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s ARGS N OUT [LENGTH...]\n", argv[0]); return 2; }
    long n = strtol(argv[2], NULL, 10);
    if (n < 1) { fprintf(stderr, "error: N must be at least 1\n"); return 2; }
    int64_t lengths[TTTC_LENGTHS + 1];
    read_lengths(argc, argv, 4, TTTC_LENGTHS, TTTC_MAX_LENGTHS, lengths);
    const int64_t B = length_of("B", TTTC_MAX_B, TTTC_LENGTHS, TTTC_LENGTH_NAMES, lengths);
    const int64_t T = length_of("T", TTTC_MAX_T, TTTC_LENGTHS, TTTC_LENGTH_NAMES, lengths);

    /* The prefill's arguments: input_ids, then the weights. */
    void *args[TTTC_PREFILL_ARGS];
    void *outputs[TTTC_PREFILL_OUTPUTS];
    for (int j = 0; j < TTTC_PREFILL_ARGS; j++) args[j] = read_file(argv[1], TTTC_PREFILL_ARG_NAMES[j], tttc_prefill_arg_bytes(lengths, j));
    for (int k = 0; k < TTTC_PREFILL_OUTPUTS; k++) outputs[k] = alloc(tttc_prefill_output_bytes(lengths, k));
    void *workspace = alloc(TTTC_PREFILL_WORKSPACE_BYTES);
    int32_t status = tttc_prefill(lengths, (const void *const *)args, outputs, workspace);
    if (status != 0) { fprintf(stderr, "error: tttc_prefill returned %d (1: a token id out of range, 2: a length out of range)\n", status); return 1; }
    free(workspace);

    /* Output 0 of both entry points is the logits [B][1][V]; outputs 1.. are the state, which the
     * step takes back as its arguments 1.. (the same names, in the same order). Each step writes
     * the next state into the other of two copies: arguments and outputs must not overlap. */
    int states = TTTC_STEP_OUTPUTS - 1;
    int64_t vocab = tttc_step_output_bytes(lengths, 0) / (4 * B);
    int64_t token[TTTC_MAX_B];
    const void *step_args[TTTC_STEP_ARGS];
    void *step_outputs[TTTC_STEP_OUTPUTS];
    step_args[0] = token;
    step_outputs[0] = alloc(tttc_step_output_bytes(lengths, 0));
    for (int s = 1; s <= states; s++) {
        if (strcmp(TTTC_PREFILL_OUTPUT_NAMES[s], TTTC_STEP_ARG_NAMES[s]) != 0 || strcmp(TTTC_STEP_OUTPUT_NAMES[s], TTTC_STEP_ARG_NAMES[s]) != 0 ||
            tttc_prefill_output_bytes(lengths, s) != tttc_step_arg_bytes(lengths, s) || tttc_step_output_bytes(lengths, s) != tttc_step_arg_bytes(lengths, s)) {
            fprintf(stderr, "error: state slot %d is not %s everywhere\n", s, TTTC_STEP_ARG_NAMES[s]);
            return 1;
        }
        step_args[s] = outputs[s];
        step_outputs[s] = alloc(tttc_step_output_bytes(lengths, s));
    }
    /* The step's weights are the prefill's, by name. */
    for (int j = states + 1; j < TTTC_STEP_ARGS; j++) {
        int i = 1;
        while (i < TTTC_PREFILL_ARGS && strcmp(TTTC_PREFILL_ARG_NAMES[i], TTTC_STEP_ARG_NAMES[j]) != 0) i++;
        step_args[j] = i < TTTC_PREFILL_ARGS ? args[i] : read_file(argv[1], TTTC_STEP_ARG_NAMES[j], tttc_step_arg_bytes(lengths, j));
    }

    int64_t *tokens = alloc(B * (T + n) * 8);
    float *logits = alloc(B * n * vocab * 4);
    const int64_t *prompt = args[0];
    const float *chosen_from = outputs[0];
    workspace = alloc(TTTC_STEP_WORKSPACE_BYTES);
    for (long k = 0; k < n; k++) {
        pick(chosen_from, B, vocab, token);
        for (int r = 0; r < B; r++) {
            if (k == 0) memcpy(tokens + r * (T + n), prompt + r * T, T * 8);
            tokens[r * (T + n) + T + k] = token[r];
            memcpy(logits + (r * n + k) * vocab, chosen_from + r * vocab, vocab * 4);
        }
        if (k + 1 == n) break;
        status = tttc_step(lengths, step_args, step_outputs, workspace);
        if (status != 0) { fprintf(stderr, "error: tttc_step returned %d\n", status); return 1; }
        /* The state written becomes the next step's; its old copy takes the next write. */
        for (int s = 1; s <= states; s++) {
            void *old = (void *)step_args[s];
            step_args[s] = step_outputs[s];
            step_outputs[s] = old;
        }
        chosen_from = step_outputs[0];
    }
    for (int r = 0; r < B; r++) {
        for (long k = 0; k < n; k++) printf("%s%lld", k ? " " : "", (long long)tokens[r * (T + n) + T + k]);
        printf("\n");
    }
    write_file(argv[3], "", "tokens", tokens, B * (T + n) * 8);
    write_file(argv[3], "", "logits", logits, B * n * vocab * 4);
    return 0;
}
