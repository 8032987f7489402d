//! A whole graph as PTX kernels plus the host program that launches them: the model's schedule
//! (the one the compiled CPU model is emitted from), one kernel per instruction (identical
//! kernels shared), and scans driven from the host chunk by chunk or run whole by one
//! persistent kernel. Compiled with `Lengths::UpTo`, the kernels read the lengths of each call
//! and the host evaluates grids, offsets and trip counts from them: one program serves every
//! length up to the bounds. [`GpuModel::run`] executes the program on any [`Device`]: the PTX
//! simulator or a GPU.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use tttc_ir::{DType, Data, DimEnv, Graph, Size, Tensor, TensorView};
use tttc_lower::schedule::{self, BufId, Function, Home, Instr, Lengths, Run, ScanInstr, Schedule, Signature, Slicing};

use crate::isa::{Kernel, Module};
use crate::kernels::{self, elem_bytes, Generated, ParamRef};
use crate::persistent;

/// Where kernels run: device memory addressed by 64-bit pointers, and launches of the model's
/// kernels by index.
pub trait Device {
    fn alloc(&mut self, bytes: usize) -> Result<u64>;
    fn free(&mut self, ptr: u64);
    fn upload(&mut self, ptr: u64, bytes: &[u8]) -> Result<()>;
    fn download(&mut self, ptr: u64, len: usize) -> Result<Vec<u8>>;
    /// Launches kernel `kernel` of the model's module over `grid` blocks of `block` threads.
    fn launch(&mut self, kernel: usize, grid: [u32; 3], block: [u32; 3], params: &[u64]) -> Result<()>;
}

/// One kernel launch of the host program.
#[derive(Clone, Debug)]
pub struct Launch {
    pub kernel: usize,
    /// Blocks per axis at the lengths of the call (a launch with none is skipped).
    pub grid: [Size; 3],
    pub block: [u32; 3],
    pub params: Vec<ParamRef>,
}

/// The copy kernels that move a scan's piece between its place and a staging buffer, for a
/// whole chunk and for the shorter last one.
#[derive(Clone, Debug, Default)]
struct PieceCopies {
    full: Option<Launch>,
    tail: Option<Launch>,
}

enum Step {
    Launches(Vec<Launch>),
    /// A scan driven from the host, one launch per body instruction per chunk.
    Scan {
        seqs: Vec<PieceCopies>,
        outputs: Vec<PieceCopies>,
    },
    /// A scan as one persistent kernel, and its work in one run; then its accumulators' sums
    /// over the lanes, each with its work.
    Persistent {
        launch: Launch,
        work: Work,
        sums: Vec<(Launch, Work)>,
    },
}

/// `bytes` (at least 4) of zeroed device memory, recorded in `held` to be freed after the call.
fn held_alloc(dev: &mut dyn Device, held: &mut Vec<u64>, bytes: usize) -> Result<u64> {
    let p = dev.alloc(bytes.max(4))?;
    held.push(p);
    Ok(p)
}

pub struct GpuModel {
    schedule: Schedule,
    steps: Vec<Vec<Step>>,
    pub kernels: Vec<Kernel>,
    pub signature: Signature,
}

/// Deduplicates kernels by their text (the name aside).
struct Kernels {
    list: Vec<Kernel>,
    by_text: HashMap<String, usize>,
}

impl Kernels {
    fn add(&mut self, g: Generated) -> Launch {
        let mut k = g.kernel;
        let text = Module { target: String::new(), kernels: vec![k.clone()] }.to_text();
        let n = self.list.len();
        let index = *self.by_text.entry(text).or_insert_with(|| {
            k.name = format!("tttc_k{n}");
            self.list.push(k);
            n
        });
        Launch { kernel: index, grid: g.grid, block: g.block, params: g.params }
    }
}

impl GpuModel {
    /// Compiles `graph` (after the pass pipeline) for every length up to the ones `env` binds.
    pub fn compile(graph: &Graph, env: &DimEnv) -> Result<GpuModel> {
        let (schedule, mut signature) = schedule::model(graph, env, Lengths::UpTo, schedule::Products::GPU, 1)?;
        let lengths = &signature.lengths.clone();
        let mut kernels = Kernels { list: Vec::new(), by_text: HashMap::new() };
        let mut steps = Vec::new();
        let entry = schedule.functions.len() - 1;
        for (fi, f) in schedule.functions.iter().enumerate() {
            let mut fs = Vec::new();
            for instr in &f.instrs {
                fs.push(match instr {
                    // The model's own scans become persistent kernels where their lanes separate.
                    Instr::Scan(s) if fi == entry => match persistent::compile(&schedule, f, s, lengths)? {
                        Some(p) => {
                            signature.workspace_bytes = signature.workspace_bytes.max(f.arena + p.scratch_bytes);
                            let sums = p.sums.into_iter().map(|(g, w)| (kernels.add(g), w)).collect();
                            Step::Persistent { launch: kernels.add(p.generated), work: p.work, sums }
                        }
                        None => scan_copies(f, s, &mut kernels, lengths),
                    },
                    Instr::Scan(s) => scan_copies(f, s, &mut kernels, lengths),
                    _ => Step::Launches(kernels::for_instr(f, instr, &schedule.specs, lengths).into_iter().map(|g| kernels.add(g)).collect()),
                });
            }
            steps.push(fs);
        }
        Ok(GpuModel { schedule, steps, kernels: kernels.list, signature })
    }

    /// The kernels as a PTX module for `target` (`sm_80` or `sm_90`).
    pub fn module(&self, target: &str) -> Module {
        Module { target: target.to_string(), kernels: self.kernels.clone() }
    }

    /// Runs the model on `dev` (which has this model's kernels loaded, in order), at the lengths
    /// the arguments' shapes give.
    pub fn run(&self, dev: &mut dyn Device, args: &[&Tensor]) -> Result<Vec<Tensor>> {
        let mut held = Vec::new();
        let result = self.run_on(dev, args, &mut held);
        for p in held {
            dev.free(p);
        }
        result
    }

    fn run_on(&self, dev: &mut dyn Device, args: &[&Tensor], held: &mut Vec<u64>) -> Result<Vec<Tensor>> {
        let sig = &self.signature;
        let values = sig.bind(args)?;
        let mut arg_ptrs = Vec::new();
        for t in args {
            let bytes = tensor_bytes(t);
            let p = held_alloc(dev, held, bytes.len())?;
            dev.upload(p, &bytes)?;
            arg_ptrs.push(p);
        }
        let mut out_shapes = Vec::new();
        let mut out_ptrs = Vec::new();
        for o in &sig.outputs {
            let shape = sig.shape(o, &values)?;
            out_ptrs.push(held_alloc(dev, held, shape.iter().product::<usize>() * elem_bytes(o.dtype))?);
            out_shapes.push(shape);
        }
        self.execute(dev, values, &arg_ptrs, &out_ptrs, held)?;
        sig.outputs
            .iter()
            .zip(&out_ptrs)
            .zip(out_shapes)
            .map(|((o, &p), shape)| {
                let bytes = dev.download(p, shape.iter().product::<usize>() * elem_bytes(o.dtype))?;
                Ok(match o.dtype {
                    DType::F32 => Tensor::f32(shape, bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()),
                    DType::I64 => Tensor::i64(shape, bytes.chunks(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()),
                })
            })
            .collect()
    }

    /// Runs the model on arguments already in `dev`'s memory, writing its outputs there: a
    /// framework's device tensors, used in place (their pointers are the views').
    ///
    /// # Safety
    /// Every view points at device memory of `dev` holding its type and shape, valid for the
    /// call; the outputs overlap neither each other nor the arguments.
    pub unsafe fn run_in_place(&self, dev: &mut dyn Device, args: &[TensorView], outs: &[TensorView]) -> Result<()> {
        let sig = &self.signature;
        let values = sig.bind_views(args)?;
        ensure!(outs.len() == sig.outputs.len(), "the model has {} outputs, got {}", sig.outputs.len(), outs.len());
        for (o, out) in sig.outputs.iter().zip(outs) {
            let shape = sig.shape(o, &values)?;
            ensure!(out.dtype == o.dtype && out.shape == shape, "output {}: compiled for {}{shape:?}, got {}{:?}", o.name, o.dtype, out.dtype, out.shape);
        }
        let ptrs = |views: &[TensorView]| -> Vec<u64> { views.iter().map(|v| v.ptr as u64).collect() };
        let mut held = Vec::new();
        let result = self.execute(dev, values, &ptrs(args), &ptrs(outs), &mut held);
        for p in held {
            dev.free(p);
        }
        result
    }

    /// Runs the model at the lengths `values` on arguments and outputs at these device pointers:
    /// its workspace, status word and lengths allocated (into `held`), its status checked.
    fn execute(&self, dev: &mut dyn Device, values: Vec<usize>, args: &[u64], outs: &[u64], held: &mut Vec<u64>) -> Result<()> {
        let sig = &self.signature;
        let workspace = held_alloc(dev, held, sig.workspace_bytes)?;
        let status = held_alloc(dev, held, 4)?;
        let lengths = held_alloc(dev, held, 8 * values.len())?;
        dev.upload(lengths, &values.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect::<Vec<u8>>())?;
        let call = Call { signature: sig, values, lengths, status };
        let model = self.schedule.functions.len() - 1;
        self.call(dev, &call, model, args, outs, workspace)?;
        let code = u32::from_le_bytes(dev.download(status, 4)?.try_into().expect("4 bytes"));
        match code {
            0 => Ok(()),
            kernels::INDEX_OUT_OF_RANGE => bail!("an index (a token id or a target) is out of range"),
            c => bail!("the model failed with status {c}"),
        }
    }

    /// Launches `l` with the pointers `ptrs` (its buffers', or a copy's two), then the scratch,
    /// the status word and the lengths where it takes them (they follow every buffer), unless
    /// its grid is empty at this call's lengths.
    fn launch(&self, dev: &mut dyn Device, call: &Call, l: &Launch, mut params: Vec<u64>, scratch: u64) -> Result<()> {
        let mut grid = [0u32; 3];
        for (g, &d) in grid.iter_mut().zip(&l.grid) {
            *g = u32::try_from(call.value(d)).context("a grid wider than a launch takes")?;
        }
        if grid.contains(&0) {
            return Ok(());
        }
        params.extend(l.params.iter().filter_map(|p| match p {
            ParamRef::Buf(_) => None,
            ParamRef::Status => Some(call.status),
            ParamRef::Scratch => Some(scratch),
            ParamRef::Lengths => Some(call.lengths),
        }));
        dev.launch(l.kernel, grid, l.block, &params).with_context(|| format!("kernel {}", self.kernels[l.kernel].name))
    }

    /// Runs function `fi` with its arguments and outputs at `args`/`outs` and its workspace at `ws`.
    fn call(&self, dev: &mut dyn Device, call: &Call, fi: usize, args: &[u64], outs: &[u64], ws: u64) -> Result<()> {
        let f = &self.schedule.functions[fi];
        let ptr = |b: BufId| -> u64 {
            let (r, at) = f.locate(b);
            call.value(at) as u64
                + match f.bufs[r].home {
                    Home::Arg(j) => args[j],
                    Home::Out(j) => outs[j],
                    Home::Work => ws + f.bufs[r].offset as u64,
                    Home::Alias(_) | Home::View { .. } => unreachable!("locate() follows aliases and views"),
                }
        };
        let buffers = |l: &Launch| -> Vec<u64> { l.params.iter().filter_map(|p| if let ParamRef::Buf(b) = p { Some(ptr(*b)) } else { None }).collect() };
        for (instr, step) in f.instrs.iter().zip(&self.steps[fi]) {
            match (instr, step) {
                (_, Step::Launches(ls)) => {
                    for l in ls {
                        self.launch(dev, call, l, buffers(l), ws + f.arena as u64)?;
                    }
                }
                (_, Step::Persistent { launch: l, sums, .. }) => {
                    self.launch(dev, call, l, buffers(l), ws + f.arena as u64).context("a whole scan")?;
                    for (l, _) in sums {
                        self.launch(dev, call, l, buffers(l), ws + f.arena as u64).context("a whole scan's sums over its lanes")?;
                    }
                }
                (Instr::Scan(s), Step::Scan { seqs, outputs }) => {
                    let nested = ws + s.workspace_at as u64;
                    let n = call.value(s.iterations());
                    for run in s.runs() {
                        let first = call.value(run.first);
                        for i in first..first + call.value(run.count) {
                            self.iteration(dev, call, f, s, (seqs, outputs), &ptr, (i, n, run), nested)?;
                        }
                    }
                }
                _ => unreachable!("steps are built per instruction"),
            }
        }
        Ok(())
    }

    /// Iteration `i` of the `n` of scan `s` (one of `run`'s): carries read from the initial
    /// values or the last iteration's buffer, pieces of the sequences addressed in place or
    /// staged, the body function called, staged outputs copied into place.
    #[allow(clippy::too_many_arguments)]
    fn iteration(
        &self,
        dev: &mut dyn Device,
        call: &Call,
        f: &Function,
        s: &ScanInstr,
        (seqs, outputs): (&[PieceCopies], &[PieceCopies]),
        ptr: &dyn Fn(BufId) -> u64,
        (i, n, run): (usize, usize, Run),
        nested: u64,
    ) -> Result<()> {
        let (mut args, mut outs) = (Vec::new(), Vec::new());
        let written = ScanInstr::carry_written(i, n);
        for (init, pair) in &s.carries {
            let read = if i == 0 { ptr(*init) } else { ptr(pair[1 - written]) };
            args.push(read);
            outs.push(ptr(pair[written]));
        }
        let k = s.chunk_of(i, n);
        let piece_at = |sl: &Slicing| -> u64 { ptr(sl.buf) + (k * call.value(s.step(f, sl)) * elem_bytes(f.bufs[sl.buf].dtype)) as u64 };
        let copy = |dev: &mut dyn Device, c: &PieceCopies, dst: u64, src: u64| -> Result<()> {
            let l = if run.tail { c.tail.as_ref() } else { c.full.as_ref() }.expect("built for every staged piece");
            self.launch(dev, call, l, vec![dst, src], 0)
        };
        for (sl, copies) in s.seqs.iter().zip(seqs) {
            let from = piece_at(sl);
            args.push(match sl.staging {
                None => from,
                Some(stage) => {
                    copy(dev, copies, ptr(stage), from)?;
                    ptr(stage)
                }
            });
        }
        args.extend(s.invariants.iter().map(|&b| ptr(b)));
        for sl in &s.outputs {
            outs.push(match sl.staging {
                None => piece_at(sl),
                Some(stage) => ptr(stage),
            });
        }
        self.call(dev, call, run.function, &args, &outs, nested)?;
        for (sl, copies) in s.outputs.iter().zip(outputs) {
            if let Some(stage) = sl.staging {
                copy(dev, copies, piece_at(sl), ptr(stage))?;
            }
        }
        Ok(())
    }
}

/// What one run of a model launches with: its lengths' values (the signature's order), and the
/// device copies of them and of the status word.
struct Call<'a> {
    signature: &'a Signature,
    values: Vec<usize>,
    lengths: u64,
    status: u64,
}

impl Call<'_> {
    /// A size's value at this call's lengths.
    fn value(&self, s: Size) -> usize {
        self.signature.value(s, &self.values).expect("every size of the program is defined at lengths within the bounds")
    }
}

/// The staging copies of a scan's sequences (into the staging buffer) and outputs (back).
fn scan_copies(f: &Function, s: &ScanInstr, kernels: &mut Kernels, lengths: &[(String, usize)]) -> Step {
    let rem = s.tail.map(|t| t.1);
    let mut piece = |sl: &Slicing, back: bool| -> PieceCopies {
        if sl.staging.is_none() {
            return PieceCopies::default();
        }
        let mut make = |len: Size| -> Launch {
            let copy = s.piece(f, sl, len);
            let copy = if back { copy.swapped() } else { copy };
            kernels.add(kernels::copy_kernel(&copy, elem_bytes(f.bufs[sl.buf].dtype), lengths))
        };
        PieceCopies { full: (!s.full.is_zero()).then(|| make(Size::of(s.chunk))), tail: rem.map(&mut make) }
    };
    let seqs = s.seqs.iter().map(|sl| piece(sl, false)).collect();
    let outputs = s.outputs.iter().map(|sl| piece(sl, true)).collect();
    Step::Scan { seqs, outputs }
}

fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    match &t.data {
        Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::F64(_) => unreachable!("refused by Signature::bind"),
    }
}

/// What one kernel does in one forward pass, over all its launches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Work {
    pub launches: u64,
    pub flops: u64,
    /// Bytes of global memory read and written, counting each buffer a launch touches once (for a
    /// persistent scan kernel: its operands and outputs, once).
    pub bytes: u64,
    /// For a persistent scan kernel: the barrier-separated phases each block runs one after
    /// another (iterations × phases per iteration): its latency chain.
    pub serial_steps: u64,
}

impl GpuModel {
    /// Per kernel, its launches, FLOPs and bytes in one forward pass (scan bodies counted once
    /// per iteration).
    pub fn work(&self) -> Vec<Work> {
        let mut work = vec![Work::default(); self.kernels.len()];
        self.add_work(self.schedule.functions.len() - 1, 1, &mut work);
        work
    }

    fn add_work(&self, fi: usize, times: u64, work: &mut [Work]) {
        let f = &self.schedule.functions[fi];
        for (instr, step) in f.instrs.iter().zip(&self.steps[fi]) {
            match (instr, step) {
                (Instr::Scan(s), Step::Scan { seqs, outputs }) => {
                    self.add_work(s.body, times * self.schedule.at_bound(s.full), work);
                    if let Some((tail, _)) = s.tail {
                        self.add_work(tail, times * self.schedule.at_bound(s.tail_count), work);
                    }
                    for c in seqs.iter().chain(outputs) {
                        for (l, n) in [(&c.full, self.schedule.at_bound(s.full)), (&c.tail, self.schedule.at_bound(s.tail_count))] {
                            if let Some(l) = l {
                                let w = &mut work[l.kernel];
                                w.launches += times * n;
                                let threads =
                                    l.grid.iter().map(|&d| self.schedule.at_bound(d)).product::<u64>() * l.block.iter().map(|&d| d as u64).product::<u64>();
                                w.bytes += times * n * 2 * 4 * threads;
                            }
                        }
                    }
                }
                (_, Step::Persistent { launch, work: w, sums }) => {
                    for (l, w) in std::iter::once((launch, w)).chain(sums.iter().map(|(l, w)| (l, w))) {
                        let k = &mut work[l.kernel];
                        k.launches += times * w.launches;
                        k.flops += times * w.flops;
                        k.bytes += times * w.bytes;
                        k.serial_steps += times * w.serial_steps;
                    }
                }
                (_, Step::Launches(ls)) => {
                    let at = |s: Size| self.schedule.at_bound(s);
                    let (flops, moved) = (instr.flops(&self.schedule.specs, &at), instr.bytes(f, &at));
                    for l in ls {
                        let w = &mut work[l.kernel];
                        w.launches += times;
                        w.flops += times * flops;
                        w.bytes += times * moved;
                    }
                }
                _ => unreachable!("steps are built per instruction"),
            }
        }
    }

    /// Per kernel, the grid and block of its launches (the first, where several use it) with
    /// every length at its bound.
    pub fn launch_dims(&self) -> Vec<Option<([u32; 3], [u32; 3])>> {
        let mut dims = vec![None; self.kernels.len()];
        let mut note = |l: &Launch| {
            let grid = l.grid.map(|d| u32::try_from(self.schedule.at_bound(d)).unwrap_or(u32::MAX));
            dims[l.kernel].get_or_insert((grid, l.block));
        };
        for steps in &self.steps {
            for step in steps {
                match step {
                    Step::Launches(ls) => ls.iter().for_each(&mut note),
                    Step::Persistent { launch, sums, .. } => std::iter::once(launch).chain(sums.iter().map(|s| &s.0)).for_each(&mut note),
                    Step::Scan { seqs, outputs } => seqs.iter().chain(outputs).flat_map(|c| c.full.iter().chain(&c.tail)).for_each(&mut note),
                }
            }
        }
        dims
    }

    /// The host program as data, for integrators (docs/gpu-model.md describes every field):
    /// per function its buffers and its steps (kernel launches and scans), the model last.
    pub fn program(&self) -> serde_json::Value {
        use serde_json::json;
        let launch = |l: &Launch| {
            let params: Vec<serde_json::Value> = l
                .params
                .iter()
                .map(|p| match p {
                    ParamRef::Buf(b) => json!({ "buffer": b }),
                    ParamRef::Status => json!({ "status": true }),
                    ParamRef::Scratch => json!({ "scratch": true }),
                    ParamRef::Lengths => json!({ "lengths": true }),
                })
                .collect();
            json!({ "kernel": self.kernels[l.kernel].name, "grid": l.grid, "block": l.block, "params": params })
        };
        // A staging copy's two pointers: into the staging buffer for a sequence, back for an output.
        let copies = |c: &PieceCopies, into_staging: bool| {
            let params = if into_staging { json!([{ "staging": true }, { "piece": true }]) } else { json!([{ "piece": true }, { "staging": true }]) };
            let one = |l: &Launch| {
                let mut v = launch(l);
                let mut two = params.clone();
                if l.params.contains(&ParamRef::Lengths) {
                    two.as_array_mut().expect("a list").push(json!({ "lengths": true }));
                }
                v["params"] = two;
                v
            };
            json!({ "full": c.full.as_ref().map(one), "tail": c.tail.as_ref().map(one) })
        };
        let functions: Vec<serde_json::Value> = self
            .schedule
            .functions
            .iter()
            .zip(&self.steps)
            .map(|(f, steps)| {
                let buffers: Vec<serde_json::Value> = f.bufs.iter().map(|b| {
                    let home = match b.home {
                        Home::Arg(j) => json!({ "arg": j }),
                        Home::Out(j) => json!({ "output": j }),
                        Home::Work => json!({ "workspace": b.offset }),
                        Home::Alias(a) => json!({ "alias": a }),
                        Home::View { of, at } => json!({ "view": of, "at_bytes": at }),
                    };
                    json!({ "dtype": b.dtype.name(), "shape": b.shape, "home": home })
                }).collect();
                let steps: Vec<serde_json::Value> = f.instrs.iter().zip(steps).flat_map(|(instr, step)| match (instr, step) {
                    (Instr::Scan(s), Step::Scan { seqs, outputs }) => {
                        let slicing = |sl: &Slicing, c: &PieceCopies, into_staging: bool| json!({ "buffer": sl.buf, "per": sl.per, "staging": sl.staging, "copy": copies(c, into_staging) });
                        vec![json!({ "scan": {
                            "body": s.body,
                            "full": s.full,
                            "tail": s.tail.map(|(f, len)| json!({ "function": f, "length": len, "count": s.tail_count })),
                            "chunk": s.chunk,
                            "axis": s.axis,
                            "reverse": s.reverse,
                            "carries": s.carries.iter().map(|(init, pair)| json!({ "init": init, "buffers": pair })).collect::<Vec<_>>(),
                            "seqs": s.seqs.iter().zip(seqs).map(|(sl, c)| slicing(sl, c, true)).collect::<Vec<_>>(),
                            "invariants": s.invariants,
                            "outputs": s.outputs.iter().zip(outputs).map(|(sl, c)| slicing(sl, c, false)).collect::<Vec<_>>(),
                        }})]
                    }
                    (_, Step::Launches(ls)) => ls.iter().map(|l| json!({ "launch": launch(l) })).collect(),
                    (_, Step::Persistent { launch: l, sums, .. }) => std::iter::once(l).chain(sums.iter().map(|s| &s.0)).map(|l| json!({ "launch": launch(l) })).collect(),
                    _ => unreachable!("steps are built per instruction"),
                }).collect();
                json!({ "buffers": buffers, "arena_bytes": f.arena, "workspace_bytes": f.workspace, "steps": steps })
            })
            .collect();
        json!({ "entry": self.schedule.functions.len() - 1, "functions": functions })
    }
}
