//! The `tttc` command line.

// Tensors are large and short-lived: an allocator that keeps freed pages for the next tensor
// avoids the page faults (and zeroing) of the system allocator's mmap for every large value.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "tttc", version, about = "A compiler for test-time-training layers (TTT, LaCT), Mamba and Llama models")]
#[command(long_about = "tttc reads a model (a Hugging Face style folder with config.json and \
model.safetensors, or a model.toml), builds a graph of general tensor ops from it, and runs it.\n\n\
MODEL is a folder holding config.json (its model.safetensors, when present, supplies the weights) \
or a model.toml file (see docs/model-toml.md). Without weights, tttc initialises them from a seed.\n\n\
Bad input gets one line naming the problem and a non-zero exit. A command's outputs appear together \
or not at all, and never overwrite one of its inputs or a file that is not a regular file; only \
regular files are read; every run estimates its memory before allocating and refuses what does \
not fit in --max-memory (docs/errors.md).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The most memory a run may use (bytes, or with K, M, G or T: 8G) [default: the least of
    /// the memory the system reports available, the cgroup's and the process's limits]. Every run estimates its parameters, activations and workspace
    /// from the config and the input sizes before allocating, and refuses one that does not fit.
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,
}

/// `8G`, `512M`, `1024`: a size in bytes, with binary units.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let (digits, shift) = match s.trim().char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        Some((i, 'T' | 't')) => (&s[..i], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| format!("{s:?} is not a size (a number of bytes, or with K, M, G or T)"))?;
    n.checked_mul(1 << shift).filter(|&b| b > 0).ok_or_else(|| format!("{s:?} is not a positive size that fits in 64 bits"))
}

#[derive(Subcommand)]
enum Command {
    /// Run a forward pass: logits for every position and the mean next-token loss.
    #[command(long_about = "Run a forward pass.\n\nIN is a safetensors file holding `input_ids` \
(i64 [B, T]), and for a packed batch `cu_seqlens`; other tensors in it are ignored. OUT receives \
`logits` (f32 [B, T, V]) and, when T > 1, `loss` (f32 scalar: the mean cross-entropy of each \
position's prediction of the next token).\n\n\
--state-out S writes the recurrent state after the sequence; --state-in S starts from such a \
state, so a long sequence can run in pieces of any lengths with the logits of one run (a TTT \
piece may start inside a mini-batch; docs/state.md). OUT and S are written atomically: on any \
error they are not created and existing files are left untouched.")]
    Run(RunArgs),
    /// Generate tokens after a prompt: greedy or sampled, the state carried from token to token.
    #[command(long_about = "Generate tokens after a prompt.\n\n\
The prompt is `input_ids` (i64 [B, P]) in the safetensors file IN (--prompt), or, for a model \
with a tokenizer (a `tttc train` checkpoint), text (--prompt-text). It runs through the model's \
prefill graph in parallel (for TTT, the dual form, handing over inside a mini-batch when the \
prompt ends in one), then each new token costs one step of the model's step graph, which carries the \
recurrent state: TTT's inner weights and gradient sums (or momentum, or the current \
mini-batch's step with the per-chunk update) and conv windows, LaCT's fast weights, \
momentum, current chunk's update and attention window, Mamba's scan state and conv window, \
Llama's KV cache. A step's cost does not grow with the context for TTT, LaCT with a window and \
Mamba.\n\n\
Tokens are chosen greedily by default; --temperature > 0 samples from the softmax, restricted \
by --top-k and --top-p, with a generator seeded by --seed. OUT receives `tokens` (i64 \
[B, P + N]) and `logits` (f32 [B, N, V], the logits each new token was chosen from), written \
atomically. With a tokenizer the text streams to stdout as it is generated.\n\nWith --state-in S \
(a state file of `tttc run --state-out`) the prompt continues the sequence S ended: it runs from \
S in the parallel form, and `tokens` holds this prompt and the new tokens.")]
    Generate(GenerateArgs),
    /// Gradients: the loss and its gradient with respect to every parameter.
    #[command(long_about = "Compute the loss and its gradient with respect to every parameter.\n\n\
IN is a safetensors file holding `input_ids` (i64 [B, T], T ≥ 2). OUT receives `loss` (f32 \
scalar, as `tttc run` computes it) and one f32 tensor per parameter, named like the weights (a \
tied head's gradient is part of the embedding's). The gradient is exact reverse-mode autodiff of \
the whole graph, through the scans (TTT's outer gradient includes the second-order terms of its \
inner updates). OUT is written atomically.\n\nThe forward pass is rematerialised: only the \
values at the boundaries of --remat segments of the graph are kept for the reverse sweep, and each \
segment is recomputed just before it is differentiated (one more forward pass, much less memory). \
Segments are cut where the fewest bytes are live (between layers, say).\n\nWith --state-in S the \
sequence continues from the state S (as tttc run does), and OUT also holds the gradient of this \
piece's loss with respect to each tensor of S but its position, named `state.NAME`: what truncated \
backpropagation through time hands to the piece before (docs/state.md).")]
    Grad {
        #[command(flatten)]
        args: RunArgs,
        /// Rematerialisation segments (1: keep every activation; default: of the counts around
        /// √ of the graph's nodes, the one with the smallest estimated peak memory).
        #[arg(long)]
        remat: Option<usize>,
    },
    /// Train a model on a text file (byte tokens) and write checkpoints that `run` loads.
    #[command(long_about = "Train a model on a text file and write checkpoints.\n\n\
The tokenizer is byte-level: token ids are the file's bytes (the model's vocab_size must be at \
least 256). The last --val-fraction of the file is the validation split. Every step draws \
--batch-size random windows of --context tokens from the training split (a generator seeded by \
--seed) and takes one AdamW step on the mean next-token loss (as `tttc run` computes it), after \
clipping the global gradient norm; the learning rate warms up linearly for --warmup steps, then \
decays along a cosine to 10% of --lr at the last step. The gradient graph is compiled once.\n\n\
Progress goes to stderr, one line per --log-every steps, with the validation loss (the mean over \
--eval-batches fixed batches of the validation split) every --eval-every steps; DIR/log.jsonl gets \
the same as JSON objects. DIR becomes a checkpoint every --checkpoint-every steps and at the end: \
config.json, model.safetensors and tokenizer.json (so `tttc run DIR` loads it as a model), \
optimizer.safetensors (AdamW's moments and the step), trainer.json (step, data, options, the \
generator's state) and log.jsonl. A checkpoint is built next to DIR and then swapped in. \
--resume DIR continues a checkpoint exactly where it stopped: the same losses as a run that was \
never interrupted. A NaN or infinite loss stops training with an error naming the step; the last \
checkpoint stays as it was. See docs/training.md.")]
    Train(Box<TrainArgs>),
    /// Compare training runs: their validation losses as a table and a plot.
    #[command(long_about = "Compare finished training runs.\n\nReads each RUN folder's log.jsonl \
(written by `tttc train`), prints a Markdown table of the validation loss at the start, at the \
end and at its best, and the mean tokens/s, and draws the validation curves into the PNG file.")]
    Compare {
        /// Run folders of `tttc train`.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// PNG file for the validation curves.
        #[arg(short, long)]
        output: PathBuf,
        /// The plot's title.
        #[arg(long, default_value = "validation loss")]
        title: String,
    },
    /// Print the model's IR as text, as built or after a pass (it parses back to the same graph).
    #[command(long_about = "Print the model's IR as text.\n\nThe graph is verified first. Its text \
parses back to the same graph (`tttc_ir::text::parse`). Parameters are listed as `param` \
arguments with their Hugging Face names; `B` and `T` are the symbolic batch and sequence sizes. \
With --after PASS, the pass pipeline runs up to and including PASS and the IR it leaves is printed \
(docs/passes.md describes the passes).")]
    Ir {
        /// Model folder (config.json) or model.toml.
        model: PathBuf,
        #[arg(long, value_name = "PASS", help = after_help(false), long_help = after_help(true))]
        after: Option<String>,
    },
    /// Run the pass pipeline; write the IR after every pass, the model compiled for this CPU (object file and C header) and for NVIDIA GPUs (PTX), and a manifest.
    #[command(long_about = "Run the pass pipeline on a model's graph and write what each pass made \
of it.\n\nThe weights are not needed: only the model's structure is read. DIR receives \
ir/00-input.ir (the frontend's graph), ir/NN-PASS.ir (the IR after each pass, in pipeline order) \
and manifest.json: the tttc version, the model (path, model_type, parameter count and bytes), the \
shape bindings used for the estimates (B = --batch, T = --seq-len), each pass (what it does, its \
time, nodes before and after, the graph's FLOPs, bytes moved and intermediate bytes after it) and \
the final graph's regions (each top-level scan: the TTT mini-batch loop, the Mamba scan; and the \
rest), and the compiled model's symbol, workspace size, arguments and outputs. DIR/cpu/model.o \
and DIR/cpu/model.h hold the whole forward pass, the training step (T >= 2) and decoding's prefill \
(a prompt of T tokens) and step (one token, the state in and out; not for Llama, whose KV cache \
grows) compiled for this machine's CPU for every B from 1 to --batch and T from 1 to --seq-len, \
the lengths given at each call: C functions `tttc_forward`, `tttc_loss_and_grad`, `tttc_prefill` \
and `tttc_step` that need only the C library (see docs/cpu-model.md and examples/c/). \
DIR/gpu/sm_80.ptx and DIR/gpu/sm_90.ptx hold the same forward pass as PTX kernels for the same \
lengths, read at each run, and DIR/gpu/program.json the order to launch them in, on which buffers (the manifest's gpu entry lists the lengths, the slots, the workspace and every kernel; see docs/gpu-model.md); DIR/gpu/loss_and_grad/, DIR/gpu/prefill/ and DIR/gpu/step/ hold the others the same way. When ptxas is found (TTTC_PTXAS, or PATH; the pip package nvidia-cuda-nvcc-cu12 has it) and --no-ptxas is not given, both modules are assembled, an error fails the compile, and each kernel's registers, spills and shared memory per target go into the manifest. A config of one layer \
(model_type lact_bidirectional_layer) compiles that layer instead: `tttc_forward` (x and the parameters to y) and `tttc_vjp` \
(also the cotangent d.y, to d.x and d.NAME per parameter), on the CPU and in gpu/ and gpu/vjp/ (see docs/lact.md). Every graph is verified after each pass. A \
progress line per pass goes to stderr. DIR is built next to itself and then put in its place in \
one step; an existing DIR is replaced only if it is empty or an earlier compile wrote it: its \
manifest.json lists every file it holds, and a file it does not list (a driver you added) is named \
and the compile refused. See docs/passes.md and docs/errors.md.")]
    Compile {
        /// Model folder (config.json) or model.toml.
        model: PathBuf,
        /// Output folder [default: <model stem>.tttc in the current folder].
        #[arg(short, long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// The largest batch size B the CPU model takes (any from 1 up), the one the GPU programs take,
        /// and the one the cost estimates are computed for (at most 2^31).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1 << 31))]
        batch: u64,
        /// The longest sequence T the CPU model takes (any from 1 up), the one the GPU programs take,
        /// and the one the cost estimates are computed for (at most 2^31).
        #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=1 << 31))]
        seq_len: u64,
        /// Compile a run that continues from a saved state at position P (the `position` of a
        /// `tttc run --state-out` file) instead of the forward pass from a fresh state: the state's
        /// tensors become arguments and outputs named `state.NAME` (docs/state.md).
        #[arg(long, value_name = "P")]
        resume_at: Option<usize>,
        /// Leave the PTX unassembled even when ptxas is found: much faster for large kernels
        /// (ptxas takes most of a compile's time), but the manifest then has no register counts,
        /// spills or GPU estimate.
        #[arg(long)]
        no_ptxas: bool,
    },
    /// Time one layer at the 125m width across context lengths, with the peers in the same run.
    #[command(long_about = "Time one sequence-mixing layer at the 125m width (D 768, 12 heads, \
mini-batch 16), batch 1, f32: TTT-Linear and TTT-MLP (as the reference layers run: no conv, no \
gate, separate q/k/v), Mamba's mixer and self-attention, forward (with --grad, forward + \
backward: the gradient of sum(y · r) with respect to the input and every parameter), for each \
--seq-lens.\n\n\
Each configuration is compiled (pass pipeline and backend; the time to the first result is \
reported), warmed up once and then called at least --reps times (more for short calls, up to a \
second); the median and the minimum are reported, and GFLOP/s from the same analytic FLOP counts \
the peer harness uses. The machine's f32 GEMM rate (2048×768×768 on all threads) is measured \
first, and each tttc row shows its share of it. After the table: the time to compile the \
12-layer 125m TTT-Linear, and one gradient step of a 2-layer model at that width on the first \
--seq-lens tokens (with --peers, ttt-lm-pytorch's TTTForCausalLM forward + loss.backward() in \
eager PyTorch, in the same run).\n\n\
With --peers PYTHON --peer-bench SCRIPT, the peer harness (PyTorch reference layers, \
torch.compile, ttt-lm-jax under jax.jit) runs right after each tttc configuration, in the same \
run; its Python needs torch and jax, and --ttt-pytorch-path / --ttt-jax-path point at the \
reference checkouts. torch.compile compiles for minutes at long contexts: it runs up to \
--compile-max-t, and jax.jit beyond. A Markdown table goes to stdout; --output also writes one \
JSON line per timing.\n\n\
With --decode, decoding instead: for each layer's family (attention: Llama) at the 125m width \
with --depths layers, a prompt of each --contexts length, then --decode-tokens tokens one step \
at a time; the per-token median and minimum, and the floor set by the memory bandwidth measured \
in the same run (every weight and the state read once per token, the state written once). With \
--peers, the reference TTT decode (16-token prompt, 64 tokens) runs for the TTT families.\n\n\
With --packed, packed batches instead: --packed-sequences sequences with lengths drawn (seeded) \
from --packed-lengths MIN,MAX, through each layer's family with the first --depths layers, as one \
packed row with cu_seqlens and as a batch padded to the longest, both compiled once and timed in \
the same run; tokens per second count the real tokens.")]
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Layers to time.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [LayerArg::TttLinear, LayerArg::TttMlp, LayerArg::Mamba, LayerArg::Attention])]
    layers: Vec<LayerArg>,
    /// Context lengths T.
    #[arg(long, value_delimiter = ',', default_values_t = [512usize, 2048, 8192])]
    seq_lens: Vec<usize>,
    /// Time decoding (per-token latency of whole models) instead of one layer's forward.
    #[arg(long)]
    decode: bool,
    /// With --decode: the models' depths (with --packed: the first).
    #[arg(long, value_delimiter = ',', default_values_t = [2usize, 12])]
    depths: Vec<usize>,
    /// Time a packed batch of sequences of mixed lengths (whole models) against the same batch
    /// padded to its longest: tokens per second for both, counting the real tokens.
    #[arg(long, conflicts_with = "decode")]
    packed: bool,
    /// With --packed: how many sequences.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    packed_sequences: u64,
    /// With --packed: the range the sequences' lengths are drawn from (seeded).
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 4096], value_name = "MIN,MAX")]
    packed_lengths: Vec<usize>,
    /// With --decode: prompt lengths before the timed tokens.
    #[arg(long, value_delimiter = ',', default_values_t = [128usize, 512, 2048, 8192])]
    contexts: Vec<usize>,
    /// With --decode: timed tokens per configuration.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    decode_tokens: u64,
    /// Where tttc's layers execute.
    #[arg(long, value_parser = backend_parser(), default_value = "cpu")]
    backend: &'static dyn tttc_runtime::Backend,
    /// Timed calls per configuration (at least).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    reps: u64,
    /// Python of an environment with torch and jax, to time the peers in the same run.
    #[arg(long, value_name = "PYTHON", requires = "peer_bench")]
    peers: Option<PathBuf>,
    /// The peer harness (peer_bench.py).
    #[arg(long, value_name = "SCRIPT")]
    peer_bench: Option<PathBuf>,
    /// Folder holding ttt-lm-pytorch's ttt.py.
    #[arg(long, value_name = "DIR")]
    ttt_pytorch_path: Option<PathBuf>,
    /// Root of a ttt-lm-jax checkout.
    #[arg(long, value_name = "DIR")]
    ttt_jax_path: Option<PathBuf>,
    /// Longest context torch.compile runs at.
    #[arg(long, default_value_t = 512)]
    compile_max_t: usize,
    /// Also write one JSON line per timing here.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Also draw latency against context length (log-log), one curve per layer and
    /// implementation, into this PNG.
    #[arg(long, value_name = "PNG")]
    plot: Option<PathBuf>,
    /// After the table, where the time of one more call of each tttc configuration went (CPU
    /// backend): per kind of step, milliseconds and calls.
    #[arg(long)]
    profile: bool,
    /// Time forward + backward instead of the forward: the gradient of sum(y · r) (r fixed) with
    /// respect to the layer's input and every parameter, and the peers' --grad runs (PyTorch
    /// eager besides torch.compile and jax.jit; Mamba's only up to --compile-max-t, as the
    /// reference's eager backward loops over tokens in Python); GFLOP/s count three forwards.
    #[arg(long, conflicts_with_all = ["decode", "packed"])]
    grad: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LayerArg {
    TttLinear,
    TttMlp,
    Mamba,
    Attention,
}

/// Help for `tttc ir --after`, naming the pipeline's passes.
fn after_help(long: bool) -> String {
    let short = format!("Print the IR after this pass of the pipeline ({})", tttc_passes::pass_names().join(", "));
    if !long {
        return short;
    }
    let mut s = format!(
        "{short}.\n\nThe passes run in this order, each followed by the verifier; the IR printed is \
the graph after the named pass:"
    );
    for p in tttc_passes::pipeline() {
        s += &format!("\n  {:<16} {}", p.name, p.about);
    }
    s
}

/// What `run` and `grad` read and write.
#[derive(clap::Args)]
struct RunArgs {
    /// Model folder (config.json) or model.toml.
    model: PathBuf,
    /// Safetensors file with `input_ids` [B, T]; or, for a packed batch of N sequences laid end
    /// to end, `input_ids` [1, total] and `cu_seqlens` (i64 [N + 1]: 0, the offsets where each
    /// next sequence starts, total).
    #[arg(long)]
    input: PathBuf,
    /// Safetensors file to write the results to.
    #[arg(short, long)]
    output: PathBuf,
    /// Weights file; wins over the folder's model.safetensors and model.toml's `weights`.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Where the graph executes.
    #[arg(long, value_parser = backend_parser(), default_value = "cpu")]
    backend: &'static dyn tttc_runtime::Backend,
    /// Safetensors file to write the state after the sequence to: what decoding would continue
    /// from (TTT's inner weights, gradient sums and position; LaCT's fast weights, momentum,
    /// current chunk's update and attention window; Mamba's scan state; Llama's KV cache; the
    /// convolutions' last inputs). docs/state.md lists the names and shapes.
    #[arg(long, value_name = "S")]
    state_out: Option<PathBuf>,
    /// Safetensors file with the state to start from, as --state-out writes it: the sequence
    /// continues the one that state ended (the same logits as one run over both). With a packed
    /// batch, one state per sequence (`seq.{i}.NAME`). With `grad`, OUT also gets the gradient
    /// with respect to each state tensor, `state.NAME`.
    #[arg(long, value_name = "S")]
    state_in: Option<PathBuf>,
    /// Write the results even when the logits, the loss or a gradient hold NaN or infinite
    /// values (otherwise that is an error and nothing is written).
    #[arg(long)]
    allow_nonfinite: bool,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Model folder (config.json) or model.toml.
    model: PathBuf,
    /// Safetensors file with the prompts' `input_ids` (i64 [B, P]).
    #[arg(long, value_name = "IN", required_unless_present = "prompt_text", conflicts_with = "prompt_text")]
    prompt: Option<PathBuf>,
    /// The prompt as text, for a model with a tokenizer (a `tttc train` checkpoint).
    #[arg(long, value_name = "TEXT")]
    prompt_text: Option<String>,
    /// Tokens to generate after each prompt.
    #[arg(long, value_name = "N")]
    max_new_tokens: usize,
    /// Safetensors file to write `tokens` and `logits` to.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// 0 chooses the likeliest token; above 0, sampling from softmax(logits / temperature).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample among the K likeliest tokens only.
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Sample among the likeliest tokens whose probabilities add up to P (nucleus sampling).
    #[arg(long, value_name = "P")]
    top_p: Option<f64>,
    /// Seed of the sampling generator.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weights file; wins over the folder's model.safetensors and model.toml's `weights`.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Where the graphs execute.
    #[arg(long, value_parser = backend_parser(), default_value = "cpu")]
    backend: &'static dyn tttc_runtime::Backend,
    /// Safetensors file with a state to start from, as `tttc run --state-out` writes it: the
    /// prompt continues the sequence that state ended (docs/state.md).
    #[arg(long, value_name = "S")]
    state_in: Option<PathBuf>,
    /// Write the results even when the logits hold NaN or infinite values (otherwise that is an
    /// error and nothing is written).
    #[arg(long)]
    allow_nonfinite: bool,
}

/// What `train` reads and writes; options left out take their default, or the checkpoint's value
/// with --resume.
#[derive(clap::Args)]
struct TrainArgs {
    /// Model folder (config.json) or model.toml to train (optional with --resume).
    model: Option<PathBuf>,
    /// Training text (its bytes are the tokens).
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Run folder: checkpoints and log.jsonl.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Optimizer steps in all (the schedule runs over them) [required unless --resume].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,
    /// Windows per batch [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: Option<u64>,
    /// Tokens per window [default: 64].
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    context: Option<u64>,
    /// Seed of the batch and validation windows [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Peak learning rate [default: 3e-3].
    #[arg(long)]
    lr: Option<f64>,
    /// Decoupled AdamW weight decay, on parameters of rank ≥ 2 [default: 0.1].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clipping bound, 0 for none [default: 1.0].
    #[arg(long)]
    clip: Option<f64>,
    /// Linear warmup steps [default: 10% of --steps].
    #[arg(long)]
    warmup: Option<u64>,
    /// Fraction of the data file (its end) kept for validation [default: 0.1].
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Log a line every this many steps [default: 10].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    log_every: Option<u64>,
    /// Validation loss every this many steps, 0 for never [default: 50].
    #[arg(long)]
    eval_every: Option<u64>,
    /// Batches in the fixed validation set [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    eval_batches: Option<u64>,
    /// Checkpoint every this many steps, 0 for only at the end [default: 0].
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Continue the run of this checkpoint folder (DIR itself, or another).
    #[arg(long, value_name = "CKPT")]
    resume: Option<PathBuf>,
    /// Stop after this step with a checkpoint, as if interrupted (the schedule still spans --steps).
    #[arg(long, value_name = "STEP", value_parser = clap::value_parser!(u64).range(1..))]
    stop_after: Option<u64>,
    /// Where the graphs execute.
    #[arg(long, value_parser = backend_parser(), default_value = "cpu")]
    backend: &'static dyn tttc_runtime::Backend,
}

/// `--backend`: a name from the runtime's registry, each listed in `--help` with its line.
fn backend_parser() -> impl clap::builder::TypedValueParser<Value = &'static dyn tttc_runtime::Backend> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let names = tttc_runtime::backends().iter().map(|b| PossibleValue::new(b.name()).help(b.about()));
    PossibleValuesParser::new(names).map(|name| tttc_runtime::backend(&name).expect("clap checked the name"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return command_line_error(e),
    };
    if let Some(bytes) = cli.max_memory {
        tttc_files::memory::set_limit(bytes);
    }
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of contexts, outermost first.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", msg.join(": "));
            // A run stopped by a signal exits as shells report one: 128 + the signal's number.
            match e.downcast_ref::<tttc_tools::train::Interrupted>() {
                Some(i) => ExitCode::from(128 + i.signal as u8),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Help and version go out as clap writes them; a mistake on the command line is one line, its
/// tips appended (`--help` shows the usage).
fn command_line_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
        e.exit();
    }
    let text = e.render().to_string();
    let lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let message: Vec<&str> = lines.take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information")).collect();
    let joined = message.iter().enumerate().map(|(i, l)| match i {
        0 => l.to_string(),
        _ if l.starts_with("tip:") => format!("; {l}"),
        _ => format!(" {l}"),
    });
    eprintln!("{} (see --help)", joined.collect::<String>());
    ExitCode::from(2)
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => run(&args),
        Command::Generate(args) => generate(&args),
        Command::Bench(args) => bench(&args),
        Command::Grad { args, remat } => grad(&args, remat),
        Command::Train(args) => train(*args),
        Command::Compare { runs, output, title } => {
            print!("{}", tttc_tools::compare::compare_runs(&runs, &output, &title)?);
            Ok(())
        }
        Command::Ir { model, after } => {
            let mut graph = structure_only(&model)?;
            tttc_ir::verify(&graph)?;
            if let Some(pass) = after {
                if let Some(r) = tttc_passes::run_pipeline(&graph, Some(&pass))?.pop() {
                    graph = r.graph;
                }
            }
            print!("{}", tttc_ir::text::print(&graph));
            Ok(())
        }
        Command::Compile { model, output, batch, seq_len, resume_at, no_ptxas } => {
            let request = tttc_compile::Request {
                model: &model,
                out: output.as_deref(),
                batch: usize::try_from(batch).context("--batch is too large")?,
                seq_len: usize::try_from(seq_len).context("--seq-len is too large")?,
                resume_at,
                assemble: !no_ptxas,
            };
            let report = tttc_compile::compile(&request, &mut |line| eprintln!("{line}"))?;
            eprintln!("wrote {}", report.out.display());
            Ok(())
        }
    }
}

/// The graph of a model without loading its weights.
fn structure_only(model: &Path) -> Result<tttc_ir::Graph> {
    Ok(tttc_frontends::load_structure(model)?.g)
}

/// The model and the `input_ids` that `grad` reads.
fn load_inputs(args: &RunArgs) -> Result<(tttc_frontends::Model, tttc_ir::Tensor, &'static dyn tttc_runtime::Backend)> {
    let model = load_model(&args.model, args.weights.as_deref())?;
    let mut inputs = tttc_runtime::read_tensors(&args.input)?;
    let ids = inputs.remove("input_ids").with_context(|| format!("{} has no tensor input_ids", args.input.display()))?;
    anyhow::ensure!(!inputs.contains_key("cu_seqlens"), "tttc grad takes no packed batch (cu_seqlens): give each sequence its own run");
    let backend = args.backend;
    Ok((model, ids, backend))
}

fn run(args: &RunArgs) -> Result<()> {
    let mut outputs =
        outputs_reading(&args.model, &[("--weights", args.weights.as_deref()), ("--input", Some(&args.input)), ("--state-in", args.state_in.as_deref())]);
    let out_file = outputs.file("--output", &args.output)?;
    let state_file = args.state_out.as_ref().map(|p| outputs.file("--state-out", p)).transpose()?;
    let model = load_model(&args.model, args.weights.as_deref())?;
    let mut inputs = tttc_runtime::read_tensors(&args.input)?;
    let ids = inputs.remove("input_ids").with_context(|| format!("{} has no tensor input_ids", args.input.display()))?;
    let backend = args.backend;
    let start = read_state(args.state_in.as_deref())?;
    let (out, states): (tttc_runtime::Forward, Option<Vec<(String, tttc_ir::Tensor)>>) = match (inputs.remove("cu_seqlens"), start) {
        (Some(cu), start) => {
            let p = tttc_runtime::packed::forward_packed(&model, &ids, &cu, backend, args.state_out.is_some(), start)?;
            // One state per sequence: `seq.{i}.NAME` (their shapes may differ: a KV cache's length).
            let states =
                p.states.map(|per| per.into_iter().enumerate().flat_map(|(i, st)| st.into_iter().map(move |(n, t)| (format!("seq.{i}.{n}"), t))).collect());
            (p.forward, states)
        }
        (None, Some(start)) => {
            let (out, state) = tttc_runtime::forward_from_state(&model, &ids, &start, backend)?;
            (out, Some(state))
        }
        (None, None) if args.state_out.is_none() => (tttc_runtime::forward(&model, &ids, backend)?, None),
        (None, None) => {
            let (out, state) = tttc_runtime::forward_with_state(&model, &ids, backend)?;
            (out, Some(state))
        }
    };
    let mut tensors = vec![("logits", &out.logits)];
    let mut summary = format!("wrote {}: logits {:?}", args.output.display(), out.logits.shape);
    if let Some(loss) = &out.loss {
        tensors.push(("loss", loss));
        summary += &format!(", loss {:.6}", loss.to_f64().expect("float")[0]);
    }
    check_finite(&tensors, args.allow_nonfinite)?;
    outputs.write(out_file, &tttc_runtime::tensor_bytes(&tensors)?)?;
    if let (Some(file), Some(state)) = (state_file, &states) {
        outputs.write(file, &tttc_runtime::tensor_bytes(&state.iter().map(|(n, t)| (n.as_str(), t)).collect::<Vec<_>>())?)?;
    }
    outputs.commit()?;
    if let (Some(path), Some(state)) = (&args.state_out, &states) {
        eprintln!("wrote {}: {} state tensors", path.display(), state.len());
    }
    eprintln!("{summary}");
    Ok(())
}

/// A command's outputs, with the model's files and the `inputs` it reads declared: no output may
/// overwrite one of them.
fn outputs_reading(model: &Path, inputs: &[(&str, Option<&Path>)]) -> tttc_files::Outputs {
    let mut outputs = tttc_frontends::outputs_reading_model(model);
    for (flag, path) in inputs {
        if let Some(path) = path {
            outputs.reads(flag, path);
        }
    }
    outputs
}

/// Loads the model, warning (one line each) about weights that hold NaN or infinite values.
fn load_model(path: &Path, weights: Option<&Path>) -> Result<tttc_frontends::Model> {
    let model = tttc_frontends::load(path, weights)?;
    for warning in model.config.warnings() {
        eprintln!("warning: {warning}");
    }
    warn_nonfinite("weight", model.weights.iter().map(|(n, t)| (n.as_str(), t)));
    Ok(model)
}

/// One warning line per tensor holding NaN or infinite values.
fn warn_nonfinite<'a>(what: &str, tensors: impl Iterator<Item = (&'a str, &'a tttc_ir::Tensor)>) {
    for (name, t) in tensors {
        let bad = nonfinite(t);
        if bad > 0 {
            eprintln!("warning: {what} {name} holds {bad} NaN or infinite values");
        }
    }
}

/// How many of a float tensor's values are NaN or infinite.
fn nonfinite(t: &tttc_ir::Tensor) -> usize {
    match &t.data {
        tttc_ir::Data::F32(v) => v.iter().filter(|x| !x.is_finite()).count(),
        tttc_ir::Data::F64(v) => v.iter().filter(|x| !x.is_finite()).count(),
        tttc_ir::Data::I64(_) => 0,
    }
}

/// Refuses results holding NaN or infinite values, unless `allow` (--allow-nonfinite).
fn check_finite(results: &[(&str, &tttc_ir::Tensor)], allow: bool) -> Result<()> {
    if allow {
        return Ok(());
    }
    if let Some((name, bad)) = results.iter().map(|(n, t)| (n, nonfinite(t))).find(|(_, bad)| *bad > 0) {
        bail!("{name} holds {bad} NaN or infinite values; nothing written (--allow-nonfinite writes them anyway)");
    }
    Ok(())
}

fn bench_packed(a: &BenchArgs, layers: Vec<tttc_tools::bench::Layer>, files: BenchFiles) -> Result<()> {
    use tttc_tools::bench::packed;
    let [min_len, max_len] = a.packed_lengths[..] else { anyhow::bail!("--packed-lengths takes two lengths, MIN,MAX") };
    anyhow::ensure!(0 < min_len && min_len <= max_len, "--packed-lengths {min_len},{max_len} must be a range MIN,MAX with 0 < MIN ≤ MAX");
    let req = packed::PackedRequest {
        layers,
        depth: a.depths[0],
        sequences: a.packed_sequences as usize,
        min_len,
        max_len,
        backend: a.backend,
        reps: a.reps as usize,
    };
    let lengths = packed::lengths(req.sequences, min_len, max_len);
    println!(
        "{} sequences of lengths {:?} ({} tokens), {}-layer models, {} backend\n",
        lengths.len(),
        lengths,
        lengths.iter().sum::<usize>(),
        req.depth,
        req.backend.name()
    );
    println!("| model | packed ms | padded ms | packed tokens/s | padded tokens/s | packed / padded speed |");
    println!("|---|---|---|---|---|---|");
    let mut lines = Vec::new();
    packed::packed(&req, |t| {
        let tokens = t.tokens() as f64;
        println!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2}× |",
            t.layer.model_name(),
            t.packed_s * 1e3,
            t.padded_s * 1e3,
            tokens / t.packed_s,
            tokens / t.padded_s,
            t.padded_s / t.packed_s
        );
        lines.push(t.to_json().to_string());
    })?;
    files.finish(&lines, |_| unreachable!("bench refuses --plot with --packed"))
}

fn bench_decode(a: &BenchArgs, layers: Vec<tttc_tools::bench::Layer>, peers: Option<tttc_tools::bench::Peers>, files: BenchFiles) -> Result<()> {
    use tttc_tools::bench::decode;
    let bandwidth = decode::read_bandwidth();
    println!("memory read bandwidth on {} threads: {bandwidth:.1} GB/s\n", tttc_codegen_cpu::threads());
    println!("| model | layers | context | who | median ms/token | min ms | tokens/s | MB read per token | floor ms | × floor |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let req = decode::DecodeRequest {
        layers,
        depths: a.depths.clone(),
        contexts: a.contexts.clone(),
        backend: a.backend,
        tokens: a.decode_tokens as usize,
        peers,
        profile: a.profile,
    };
    let mut lines = Vec::new();
    let timings = decode::decode(&req, |t| {
        let floor = t.bytes / bandwidth / 1e6;
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} |",
            t.model,
            t.depth,
            t.context,
            t.who,
            t.median_ms,
            t.min_ms,
            1e3 / t.median_ms,
            t.bytes / 1e6,
            floor,
            t.median_ms / floor
        );
        lines.push(t.to_json().to_string());
    })?;
    for t in timings.iter().filter(|t| !t.profile.is_empty()) {
        print_profile(&format!("a {} token ({} layers, context {})", t.model, t.depth, t.context), &t.profile);
    }
    let tttc = timings.iter().filter(|t| t.who.starts_with("tttc"));
    let series =
        tttc_tools::plot::Series::group(tttc.map(|t| (format!("{} {} layers", t.model, t.depth), (t.context.parse().unwrap_or(f64::NAN), t.median_ms))));
    let axes = ("context (tokens before)", "milliseconds per token");
    files.finish(&lines, |path| tttc_tools::plot::latency_curves(path, "Decoding at the 125m width, batch 1, f32", axes, &series))
}

/// Where the time of `what` went: a Markdown table of step kinds, milliseconds and calls.
fn print_profile(what: &str, profile: &[(String, f64, u64)]) {
    println!("\nProfile of {what}: {:.2} ms in leaf steps\n", profile.iter().map(|p| p.1).sum::<f64>());
    println!("| step | ms | calls |\n|---|---|---|");
    for (kind, ms, calls) in profile {
        println!("| {kind} | {ms:.2} | {calls} |");
    }
}

/// `tttc bench`'s files, declared before the timings start: `--output`'s JSON lines and `--plot`.
struct BenchFiles {
    outputs: tttc_files::Outputs,
    json: Option<tttc_files::Output>,
    plot: Option<tttc_files::Output>,
}

impl BenchFiles {
    fn new(a: &BenchArgs) -> Result<BenchFiles> {
        let mut outputs = tttc_files::Outputs::new();
        for (flag, path) in [("--peers", &a.peers), ("--peer-bench", &a.peer_bench)] {
            if let Some(path) = path {
                outputs.reads(flag, path);
            }
        }
        let json = a.output.as_ref().map(|p| outputs.file("--output", p)).transpose()?;
        let plot = a.plot.as_ref().map(|p| outputs.file("--plot", p)).transpose()?;
        Ok(BenchFiles { outputs, json, plot })
    }

    /// Writes the JSON `lines` and the plot (drawn by `draw` at the path it is given), together.
    fn finish(mut self, lines: &[String], draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        if let Some(out) = self.json {
            self.outputs.write(out, (lines.join("\n") + "\n").as_bytes())?;
        }
        if let Some(out) = self.plot {
            self.outputs.write_with(out, draw)?;
        }
        self.outputs.commit()
    }
}

fn generate(a: &GenerateArgs) -> Result<()> {
    use std::io::Write;
    let sampling = tttc_runtime::generate::Sampling { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed };
    sampling.check()?;
    let mut outputs =
        outputs_reading(&a.model, &[("--weights", a.weights.as_deref()), ("--prompt", a.prompt.as_deref()), ("--state-in", a.state_in.as_deref())]);
    let out_file = outputs.file("--output", &a.output)?;
    let model = load_model(&a.model, a.weights.as_deref())?;
    // The byte tokenizer of a `tttc train` checkpoint; another tokenizer is not read.
    let tokenizer = tttc_tools::train::byte_tokenizer(&a.model);
    let has_tokenizer = matches!(tokenizer, Ok(true));
    let prompt = match (&a.prompt, &a.prompt_text) {
        (Some(path), _) => {
            let mut inputs = tttc_runtime::read_tensors(path)?;
            anyhow::ensure!(
                !inputs.contains_key("cu_seqlens"),
                "tttc generate takes no packed prompt (cu_seqlens in {}): give the prompts as rows of input_ids [B, P]",
                path.display()
            );
            inputs.remove("input_ids").with_context(|| format!("{} has no tensor input_ids", path.display()))?
        }
        (None, Some(text)) => {
            anyhow::ensure!(tokenizer?, "--prompt-text needs a model with the byte tokenizer of a tttc train checkpoint; {} has none", a.model.display());
            anyhow::ensure!(!text.is_empty(), "--prompt-text is empty");
            tttc_ir::Tensor::i64(vec![1, text.len()], text.bytes().map(i64::from).collect())
        }
        (None, None) => unreachable!("clap requires --prompt or --prompt-text"),
    };
    let start = read_state(a.state_in.as_deref())?;
    let decoder = tttc_runtime::generate::Decoder::new(&model)?;
    // One prompt with a tokenizer streams its text; a batch prints each row at the end.
    let stream = has_tokenizer && prompt.shape.first() == Some(&1);
    let mut stdout = std::io::stdout();
    let out = decoder.generate(&model.weights, &prompt, start.as_ref(), a.max_new_tokens, &sampling, a.backend, |_, next| {
        if stream {
            let _ = stdout.write_all(&[next[0].clamp(0, 255) as u8]);
            let _ = stdout.flush();
        }
    })?;
    let tensors = [("tokens", &out.tokens), ("logits", &out.logits)];
    check_finite(&tensors, a.allow_nonfinite)?;
    outputs.write(out_file, &tttc_runtime::tensor_bytes(&tensors)?)?;
    outputs.commit()?;
    if stream {
        println!();
    } else if has_tokenizer {
        let cols = out.tokens.shape[1];
        for (r, row) in out.tokens.as_i64().expect("tokens are i64").chunks(cols).enumerate() {
            let bytes: Vec<u8> = row.iter().map(|&t| t.clamp(0, 255) as u8).collect();
            println!("[{r}] {}", String::from_utf8_lossy(&bytes));
        }
    }
    eprintln!("wrote {}: tokens {:?}, logits {:?}", a.output.display(), out.tokens.shape, out.logits.shape);
    Ok(())
}

/// The state file `--state-in` names, if any.
fn read_state(path: Option<&Path>) -> Result<Option<tttc_runtime::State>> {
    let Some(path) = path else { return Ok(None) };
    let file = tttc_runtime::read_tensors(path).with_context(|| format!("--state-in {}", path.display()))?;
    warn_nonfinite("state tensor", file.iter().map(|(n, t)| (n.as_str(), t)));
    Ok(Some(file.into_iter().collect()))
}

fn grad(args: &RunArgs, remat: Option<usize>) -> Result<()> {
    anyhow::ensure!(args.state_out.is_none(), "tttc grad writes no state: --state-out belongs to tttc run");
    anyhow::ensure!(remat != Some(0), "--remat takes at least 1 segment (1: keep every activation)");
    let mut outputs =
        outputs_reading(&args.model, &[("--weights", args.weights.as_deref()), ("--input", Some(&args.input)), ("--state-in", args.state_in.as_deref())]);
    let out_file = outputs.file("--output", &args.output)?;
    let (model, ids, backend) = load_inputs(args)?;
    let out = match read_state(args.state_in.as_deref())? {
        Some(start) => tttc_runtime::GradientStep::resumed(&model, &start, remat)?.run_from(&model.weights, &ids, &start, backend)?,
        None => tttc_runtime::GradientStep::with_segments(&model, remat)?.run(&model.weights, &ids, backend)?,
    };
    let mut tensors = vec![("loss", &out.loss)];
    tensors.extend(out.grads.iter().map(|(n, t)| (n.as_str(), t)));
    check_finite(&tensors, args.allow_nonfinite)?;
    outputs.write(out_file, &tttc_runtime::tensor_bytes(&tensors)?)?;
    outputs.commit()?;
    let loss = out.loss.to_f64().expect("float")[0];
    eprintln!("wrote {}: loss {loss:.6} and {} gradients", args.output.display(), out.grads.len());
    Ok(())
}

fn train(a: TrainArgs) -> Result<()> {
    let n = |v: Option<u64>| v.map(|v| v as usize);
    let choices = tttc_tools::OptionChoices {
        steps: n(a.steps),
        batch_size: n(a.batch_size),
        context: n(a.context),
        seed: a.seed,
        lr: a.lr,
        weight_decay: a.weight_decay,
        clip: a.clip,
        warmup: n(a.warmup),
        val_fraction: a.val_fraction,
        eval_every: n(a.eval_every),
        eval_batches: n(a.eval_batches),
        log_every: n(a.log_every),
        checkpoint_every: n(a.checkpoint_every),
    };
    let backend = a.backend;
    let summary = tttc_tools::train(&tttc_tools::TrainRequest {
        model: a.model,
        data: a.data,
        out: a.output.clone(),
        resume: a.resume,
        stop_after: n(a.stop_after),
        choices,
        backend,
    })?;
    let val = summary.val_loss.map(|v| format!(", val_loss {v:.4}")).unwrap_or_default();
    eprintln!(
        "trained to step {}: loss {:.4}{val}, {:.3} s per step; checkpoint in {}",
        summary.step,
        summary.loss,
        summary.seconds_per_step,
        a.output.display()
    );
    Ok(())
}

fn bench(a: &BenchArgs) -> Result<()> {
    use tttc_tools::bench::{self, Layer};
    anyhow::ensure!(a.seq_lens.iter().all(|&t| t > 0), "--seq-lens must be positive");
    anyhow::ensure!(a.contexts.iter().all(|&t| t > 0) && a.depths.iter().all(|&d| d > 0), "--contexts and --depths must be positive");
    let layers: Vec<Layer> = a
        .layers
        .iter()
        .map(|l| match l {
            LayerArg::TttLinear => Layer::TttLinear,
            LayerArg::TttMlp => Layer::TttMlp,
            LayerArg::Mamba => Layer::Mamba,
            LayerArg::Attention => Layer::Attention,
        })
        .collect();
    let peers = a.peers.clone().map(|python| bench::Peers {
        python,
        script: a.peer_bench.clone().expect("clap requires --peer-bench with --peers"),
        ttt_pytorch: a.ttt_pytorch_path.clone(),
        ttt_jax: a.ttt_jax_path.clone(),
        compile_max_t: a.compile_max_t,
    });
    anyhow::ensure!(!(a.packed && a.plot.is_some()), "--plot draws latency curves: not with --packed");
    let files = BenchFiles::new(a)?;
    if a.decode {
        return bench_decode(a, layers, peers, files);
    }
    if a.packed {
        return bench_packed(a, layers, files);
    }
    let req = bench::BenchRequest { layers, seq_lens: a.seq_lens.clone(), backend: a.backend, reps: a.reps as usize, peers, profile: a.profile, grad: a.grad };
    if a.grad {
        println!("Forward + backward: the gradient of sum(y · r) with respect to the input and every parameter.\n");
    }
    let ceiling = bench::gemm_ceiling()?;
    println!("f32 GEMM 2048×768×768 through gemm on {} threads: {ceiling:.1} GFLOP/s\n", tttc_codegen_cpu::threads());
    // The CPU's rate is no ceiling for a GPU's rows (the peers run on the CPU).
    let share = |t: &bench::Timing| match t.who.starts_with("tttc") && !a.backend.capabilities().on_cpu {
        true => "–".to_string(),
        false => format!("{:.0}%", 100.0 * t.gflops / ceiling),
    };
    println!("| layer | T | who | median ms | min ms | GFLOP/s | % of GEMM rate | compile + first call s |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut lines = Vec::new();
    let timings = bench::bench(&req, |t| {
        println!("| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.2} |", t.layer, t.t, t.who, t.median_ms, t.min_ms, t.gflops, share(t), t.first_s);
        lines.push(t.to_json().to_string());
    })?;
    let (passes, codegen) = bench::compile_time()?;
    println!("\nCompiling the 12-layer 125m TTT-Linear: graph and passes {passes:.2} s, CPU code generation {codegen:.2} s.");
    let t = a.seq_lens[0];
    let grad_backend = req.backend;
    let step = bench::gradient_step(t, grad_backend, a.reps as usize, a.profile, req.peers.as_ref())?;
    let (step_ms, build_s) = (step.median_ms, step.build_s);
    println!(
        "Gradient step of a 2-layer TTT-Linear LM at the 125m width (vocabulary 32000), B = 1, T = {t}, on {}: {step_ms:.0} ms \
({:.0} tokens/s; building and compiling the step {build_s:.2} s).",
        grad_backend.name(),
        t as f64 / step_ms * 1e3
    );
    if let Some(eager) = step.eager_ms {
        println!("ttt-lm-pytorch's TTTForCausalLM, forward + loss.backward() in eager PyTorch, same run: {eager:.0} ms ({:.2}× tttc's time).", eager / step_ms);
    }
    for t in timings.iter().filter(|t| !t.profile.is_empty()) {
        print_profile(&format!("{} at T = {} ({})", t.layer, t.t, t.who), &t.profile);
    }
    if !step.profile.is_empty() {
        print_profile(&format!("the 2-layer LM's gradient step at T = {t}"), &step.profile);
    }
    let series = tttc_tools::plot::Series::group(timings.iter().map(|t| (format!("{}: {}", t.layer, t.who), (t.t as f64, t.median_ms))));
    let (axes, title) = if a.grad {
        (("sequence length T", "milliseconds per forward + backward"), "One layer at the 125m width, batch 1, f32, forward + backward")
    } else {
        (("sequence length T", "milliseconds per forward call"), "One layer at the 125m width, batch 1, f32, forward")
    };
    files.finish(&lines, |path| tttc_tools::plot::latency_curves(path, title, axes, &series))
}
