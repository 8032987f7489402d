//! `tttc._native`, the native module of the `tttc` Python package: a sequence-mixing layer
//! compiled on its own and run on a framework's tensors.
//!
//! A [`Layer`] is one TTT layer, Mamba mixer or attention layer (`tttc_frontends::build_layer_for`)
//! from a Hugging Face config. Its [`Entry`]s are the graphs a framework calls: the forward pass
//! (`x [B, T, D]` → `y`, optionally from a state and with the state after it) and its
//! vector–Jacobian product (the cotangents of `y` and of the state after it → the gradients of `x`,
//! of every parameter and of the state given), from the passes' one reverse-mode autodiff, whole or
//! cut into the halves autograd calls (a forward that keeps residuals, a backward that reads
//! them). All are symbolic in B and T, compiled once per backend. The Python side (`tttc/torch.py`,
//! `tttc/jax.py`) checks devices, dtypes and strides and hands over addresses: f32 tensors are read
//! and written in place by the compiled code; f64 runs the reference interpreter in f64 (gradient
//! checks). Errors come back as `tttc.Error` with tttc's one-line messages; nothing panics across
//! the boundary (PyO3 turns a panic into an exception).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

mod xla;

use anyhow::{bail, ensure, Context, Result};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tttc_frontends::{Mode, ModelConfig};
use tttc_ir::{ArgKind, DType, Data, Dim, Graph, Precision, Tensor, TensorView};
use tttc_passes::ADJOINT;
use tttc_runtime::{DeviceStream, Executable};

create_exception!(tttc, Error, PyValueError, "A tttc error: bad input, or a layer that cannot be built or run.");

/// An anyhow error as tttc prints it: one line, its causes joined by ": ".
fn py_error(e: anyhow::Error) -> PyErr {
    Error::new_err(format!("{e:#}"))
}

/// One sequence-mixing layer of a model family, from its config: the graphs a framework calls,
/// built and compiled on first use.
#[pyclass(frozen, module = "tttc._native")]
struct Layer {
    config: ModelConfig,
    prefix: &'static str,
    entries: Mutex<HashMap<EntryKey, Py<Entry>>>,
}

/// Which graph of a layer, from a fresh state or from one at a position (a TTT state's within its
/// mini-batch, a KV cache's length), with or without the state after the sequence.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct EntryKey {
    kind: Kind,
    start: Option<usize>,
    state_out: bool,
}

/// A layer's graphs: the forward pass; its vector–Jacobian product (`vjp`: the forward computed
/// again inside); or that product cut at its cotangents (`tttc_passes::split_at`): the forward
/// pass that also gives the residuals the backward reads (`saving`), and the backward from them
/// (`backward`), as a framework's autograd calls them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Forward,
    Vjp,
    Saving,
    Backward,
}

impl Kind {
    fn named(name: &str) -> Result<Kind> {
        Ok(match name {
            "forward" => Kind::Forward,
            "vjp" => Kind::Vjp,
            "saving" => Kind::Saving,
            "backward" => Kind::Backward,
            other => bail!("no layer graph {other:?} (forward, vjp, saving, backward)"),
        })
    }
}

#[pymethods]
impl Layer {
    /// A layer of the family `config_json` describes (a Hugging Face config.json's text: its
    /// `model_type` and the keys tttc reads, checked as `tttc run` checks a model's).
    #[new]
    fn new(config_json: &str) -> PyResult<Layer> {
        let (config, _) = tttc_frontends::parse_config_json(config_json).map_err(py_error)?;
        let prefix = tttc_frontends::layer_prefix(&config);
        // Built once here so that a config tttc cannot build fails now, not at the first call.
        tttc_frontends::build_layer(&config).map_err(py_error)?;
        Ok(Layer { config, prefix, entries: Mutex::new(HashMap::new()) })
    }

    /// The config's `model_type`: `ttt`, `mamba`, `llama`, `lact_swiglu` or
    /// `lact_bidirectional_layer`.
    #[getter]
    fn family(&self) -> &'static str {
        self.config.family()
    }

    /// Where the layer's names sit in a whole model (`model.layers.0.seq_modeling_block.`):
    /// the names this module gives are relative to it.
    #[getter]
    fn prefix(&self) -> &'static str {
        self.prefix
    }

    /// The layer's parameters: `(name, shape)`, names relative to [`Layer::prefix`], in the
    /// order the graphs take them.
    fn parameters(&self) -> PyResult<Vec<(String, Vec<usize>)>> {
        let g = tttc_frontends::build_layer(&self.config).map_err(py_error)?.g;
        let params = g.args.iter().filter(|a| a.kind == ArgKind::Param);
        params.map(|a| Ok((self.short(&a.name), g.ty(a.value).resolve(&Default::default()).map_err(py_error)?))).collect()
    }

    /// The parameters drawn from `seed` as tttc initialises a model's (docs/model-toml.md):
    /// `(name, shape, f32 little-endian bytes)`.
    fn initial_weights(&self, seed: u64) -> PyResult<Vec<NamedBytes>> {
        let builder = tttc_frontends::build_layer(&self.config).map_err(py_error)?;
        let weights = tttc_frontends::init::initialise(&builder, seed);
        Ok(weights.iter().map(|(name, t)| (self.short(name), t.shape.clone(), f32_bytes(t))).collect())
    }

    /// The graph `kind` (`forward`, `vjp`, `saving` or `backward`, see [`Kind`]) from a fresh
    /// state (`start` None) or a state at position `start`, handing on the state after the
    /// sequence when `state_out`.
    #[pyo3(signature = (kind, start=None, state_out=false))]
    fn entry(&self, py: Python<'_>, kind: &str, start: Option<usize>, state_out: bool) -> PyResult<Py<Entry>> {
        let key = EntryKey { kind: Kind::named(kind).map_err(py_error)?, start, state_out };
        if let Some(e) = self.entries.lock().expect("not poisoned").get(&key) {
            return Ok(e.clone_ref(py));
        }
        let built = py.detach(|| self.build(key)).map_err(py_error)?;
        let mut entries = self.entries.lock().expect("not poisoned");
        for (k, entry) in built {
            entries.insert(k, Py::new(py, entry)?);
        }
        Ok(entries[&key].clone_ref(py))
    }
}

const STATE: &str = "state.";

impl Layer {
    /// `name` relative to the layer's prefix (`state.` kept off: a state name is the state
    /// file's, docs/state.md).
    fn short(&self, name: &str) -> String {
        name.strip_prefix(self.prefix).unwrap_or(name).to_string()
    }

    /// A graph argument's or output's name as the Python side reads it: `x`, `y`, `param:NAME`
    /// (`params` holds the parameters' names), `state:NAME`, `saved:K` for a residual, and
    /// `grad:` before what an adjoint is of.
    fn python_name(&self, name: &str, params: &[&str]) -> String {
        if let Some(k) = name.strip_prefix(tttc_passes::SAVED) {
            return format!("saved:{k}");
        }
        if let Some(rest) = name.strip_prefix(ADJOINT) {
            return format!("grad:{}", self.python_name(rest, params));
        }
        if params.contains(&name) {
            return format!("param:{}", self.short(name));
        }
        match name.strip_prefix(STATE) {
            Some(state) => format!("state:{}", self.short(state)),
            None => name.to_string(),
        }
    }

    /// The entry `key` names, and the one built with it (a split's other part).
    fn build(&self, key: EntryKey) -> Result<Vec<(EntryKey, Entry)>> {
        let mode = match (key.start, key.state_out) {
            (Some(position), _) => Mode::Resume { position },
            (None, true) => Mode::Run,
            (None, false) => Mode::Forward,
        };
        let mut forward = tttc_frontends::build_layer_for(&self.config, mode)?.g;
        if !key.state_out {
            forward = tttc_passes::keep_outputs(&forward, &["y"]);
        }
        if key.kind == Kind::Forward {
            return Ok(vec![(key, self.entry_of(tttc_passes::compile(&forward)?))]);
        }
        // Every output's cotangent but the state's position (a count of tokens).
        let position = format!("{STATE}position");
        let vjp = tttc_passes::vector_jacobian_product(&tttc_passes::differentiable(&forward)?, &[&position])?;
        if key.kind == Kind::Vjp {
            return Ok(vec![(key, self.entry_of(tttc_passes::compile(&tttc_passes::gradients_only(&vjp))?))]);
        }
        let cotangents: Vec<&str> = vjp.args.iter().map(|a| a.name.as_str()).filter(|n| n.starts_with(ADJOINT)).collect();
        let split = tttc_passes::split_at(&vjp, &cotangents)?;
        Ok(vec![
            (EntryKey { kind: Kind::Saving, ..key }, self.entry_of(tttc_passes::compile(&split.before)?)),
            (EntryKey { kind: Kind::Backward, ..key }, self.entry_of(tttc_passes::compile(&split.after)?)),
        ])
    }

    /// A compiled graph with its arguments and outputs named for Python.
    fn entry_of(&self, graph: Graph) -> Entry {
        let params: Vec<&str> = graph.args.iter().filter(|a| a.kind == ArgKind::Param).map(|a| a.name.as_str()).collect();
        let inputs = graph.args.iter().map(|a| (self.python_name(&a.name, &params), io_type(graph.ty(a.value)))).collect();
        let outputs = graph.outputs.iter().map(|(n, v)| (self.python_name(n, &params), io_type(graph.ty(*v)))).collect();
        let exe = Arc::new(Executable::new(graph));
        Entry { xla_id: xla::register(exe.clone()), exe, inputs, outputs }
    }
}

/// An argument's or output's type for Python: its element type and, per axis,
/// `(symbol, offset, per)`: the size is `⌈(symbol's value + offset) / per⌉` (`B` or `T`; a count
/// of chunks has a `per` above 1), or `offset` for a constant, which has no symbol.
type IoType = (&'static str, Vec<(Option<String>, i64, usize)>);

fn io_type(ty: &tttc_ir::Type) -> IoType {
    (ty.dtype.name(), ty.shape.iter().map(|d: &Dim| (d.sym.clone(), d.offset, d.per)).collect())
}

/// One compiled graph of a layer, with its arguments and outputs named for Python.
#[pyclass(frozen, module = "tttc._native")]
struct Entry {
    exe: Arc<Executable>,
    /// What the XLA handler calls it (`xla::register`).
    xla_id: i64,
    inputs: Vec<(String, IoType)>,
    outputs: Vec<(String, IoType)>,
}

/// A tensor from Python: its address, element type (`f32`, `f64` or `i64`) and shape.
type PyTensor = (usize, String, Vec<usize>);

#[pymethods]
impl Entry {
    /// The arguments in the order [`Entry::run`] takes them: `(name, (dtype, shape))`.
    #[getter]
    fn inputs(&self) -> Vec<(String, IoType)> {
        self.inputs.clone()
    }

    /// The outputs in the order [`Entry::run`] writes them.
    #[getter]
    fn outputs(&self) -> Vec<(String, IoType)> {
        self.outputs.clone()
    }

    /// The value of the `entry` attribute that makes an XLA call of [`xla_handler`] run this
    /// graph.
    #[getter]
    fn xla_id(&self) -> i64 {
        self.xla_id
    }

    /// Runs the graph on `backend` (`cpu`, `interp`, …) on the tensors `args` (in the order of
    /// [`Entry::inputs`]), writing the outputs into `outs`, allocated by the caller at the shapes
    /// [`Entry::inputs`] and the arguments' sizes give. All f32 (i64 where the graph says so), or
    /// all f64: then the reference interpreter computes in f64.
    ///
    /// `gpu`: the tensors are in the memory of GPU `(ordinal, stream)` (a `CUstream` handle,
    /// the framework's current stream, which the run is ordered on); the backend must be `cuda`.
    ///
    /// The addresses must be those of dense tensors of the types and shapes given, the outputs
    /// apart from each other and from the arguments (the Python package's wrappers check this).
    #[pyo3(signature = (backend, args, outs, gpu=None))]
    fn run(&self, py: Python<'_>, backend: &str, args: Vec<PyTensor>, outs: Vec<PyTensor>, gpu: Option<(usize, u64)>) -> PyResult<()> {
        let backend = tttc_runtime::backend(backend).map_err(py_error)?;
        let gpu = gpu.map(|(ordinal, stream)| DeviceStream { ordinal, stream });
        py.detach(|| self.run_on(backend, &args, &outs, gpu)).map_err(py_error)
    }
}

impl Entry {
    fn run_on(&self, backend: &dyn tttc_runtime::Backend, args: &[PyTensor], outs: &[PyTensor], gpu: Option<DeviceStream>) -> Result<()> {
        let f64s = args.iter().chain(outs).filter(|(_, d, _)| d == "f64").count();
        let floats = args.iter().chain(outs).filter(|(_, d, _)| d != "i64").count();
        ensure!(f64s == 0 || f64s == floats, "the tensors mix float64 and float32: give all of them in one precision");
        let arg_views: Vec<TensorView> = args.iter().map(view).collect::<Result<_>>()?;
        let out_views: Vec<TensorView> = outs.iter().map(view).collect::<Result<_>>()?;
        let expected = self.exe.output_types(&arg_views.iter().map(|v| (v.dtype, v.shape)).collect::<Vec<_>>())?;
        ensure!(out_views.len() == expected.len(), "{} outputs given, the graph has {}", out_views.len(), expected.len());
        for ((name, _), (out, (dtype, shape))) in self.outputs.iter().zip(out_views.iter().zip(&expected)) {
            ensure!(
                out.dtype == *dtype && out.shape == shape.as_slice(),
                "output {name} must be {}{shape:?}, got {}{:?}",
                dtype.name(),
                out.dtype.name(),
                out.shape
            );
        }
        if let Some(at) = gpu {
            ensure!(f64s == 0, "float64 runs tttc's reference interpreter, on CPU tensors only");
            // SAFETY: as `Entry::run` requires of its caller, in GPU memory.
            return unsafe { self.exe.run_on_device(&arg_views, &out_views, backend, at) };
        }
        if f64s > 0 {
            // SAFETY: the views are the caller's dense f64 (or i64) tensors of these shapes.
            return unsafe { run_f64(&self.exe.graph, &arg_views, &out_views) };
        }
        // SAFETY: as `Entry::run` requires of its caller.
        unsafe { self.exe.run_in_place(&arg_views, &out_views, backend) }
    }
}

/// A Python tensor as a view: its element type as the graph's (f64 holds an f32 value computed in
/// f64).
fn view(t: &PyTensor) -> Result<TensorView<'_>> {
    let dtype = match t.1.as_str() {
        "f32" | "f64" => DType::F32,
        "i64" => DType::I64,
        other => bail!("tensors of {other} are not supported: give float32 (float64 for gradient checks)"),
    };
    ensure!(t.0 != 0 || t.2.contains(&0), "a tensor without memory (address 0)");
    Ok(TensorView { dtype, shape: &t.2, ptr: t.0 as *mut u8 })
}

/// Runs `graph` in the reference interpreter in f64 on f64 (and i64) tensors in the caller's
/// memory, writing the outputs there.
///
/// # Safety
/// The views point at dense f64 data for f32 types (i64 for i64) of their shapes; the outputs
/// overlap nothing else.
unsafe fn run_f64(graph: &Graph, args: &[TensorView], outs: &[TensorView]) -> Result<()> {
    let read = |v: &TensorView| {
        let n = v.shape.iter().product();
        let shape = v.shape.to_vec();
        // SAFETY: the caller's promise.
        match v.dtype {
            DType::F32 => Tensor::f64(shape, unsafe { std::slice::from_raw_parts(v.ptr as *const f64, n) }.to_vec()),
            DType::I64 => Tensor::i64(shape, unsafe { std::slice::from_raw_parts(v.ptr as *const i64, n) }.to_vec()),
        }
    };
    let tensors: Vec<Tensor> = args.iter().map(read).collect();
    let results = tttc_ir::run(graph, &tensors.iter().collect::<Vec<_>>(), Precision::F64)?;
    for (t, out) in results.iter().zip(outs) {
        let bytes = match &t.data {
            Data::F64(v) => v.len() * 8,
            Data::I64(v) => v.len() * 8,
            Data::F32(_) => bail!("the interpreter gave f32 data in an f64 run"),
        };
        // SAFETY: `out` holds the output's elements at 8 bytes each (checked shapes).
        unsafe { std::ptr::copy_nonoverlapping(t.as_ptr(), out.ptr, bytes) };
    }
    Ok(())
}

/// A model folder or `model.toml` (as `tttc run` takes it): its config.json text and its weights
/// (`(name, shape, f32 little-endian bytes)`), loaded or drawn from the model's seed.
#[pyfunction]
fn load_model(py: Python<'_>, path: &str) -> PyResult<(String, Vec<NamedBytes>)> {
    let model = py.detach(|| tttc_frontends::load(std::path::Path::new(path), None)).map_err(py_error)?;
    let weights = model.weights.iter().map(|(name, t)| (name.clone(), t.shape.clone(), f32_bytes(t))).collect();
    Ok((model.config_json.to_string(), weights))
}

/// Writes a model folder `tttc run` loads: `config.json` (`config_json`, checked as a model's config)
/// and `model.safetensors` with `weights` (`(name, (address, "f32", shape))` of the caller's dense
/// f32 tensors), both appearing together or not at all (docs/errors.md).
#[pyfunction]
fn save_model(py: Python<'_>, folder: &str, config_json: &str, weights: Vec<(String, PyTensor)>) -> PyResult<()> {
    let (_, json) = tttc_frontends::parse_config_json(config_json).map_err(py_error)?;
    let tensors: Vec<(String, Tensor)> = weights
        .iter()
        .map(|(name, t)| {
            let v = view(t)?;
            ensure!(t.1 == "f32", "weight {name} is {}: checkpoints hold float32", t.1);
            // SAFETY: the caller's dense f32 tensor of this shape (the Python wrapper's promise).
            Ok((name.clone(), unsafe { v.copied() }))
        })
        .collect::<Result<_>>()
        .map_err(py_error)?;
    py.detach(|| -> Result<()> {
        let dir = std::path::Path::new(folder);
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut outputs = tttc_files::Outputs::new();
        let config = outputs.file("the config", &dir.join("config.json"))?;
        let model = outputs.file("the weights", &dir.join("model.safetensors"))?;
        outputs.write(config, serde_json::to_string_pretty(&json)?.as_bytes())?;
        outputs.write(model, &tttc_runtime::tensor_bytes(&named)?)?;
        outputs.commit()
    })
    .map_err(py_error)
}

/// What a language model around the layers needs from a config.json's text, with tttc's defaults
/// filled in (SPEC): the family and the sizes and switches of its embedding, blocks, norms and
/// head, as JSON.
#[pyfunction]
fn model_shape(config_json: &str) -> PyResult<String> {
    let (config, _) = tttc_frontends::parse_config_json(config_json).map_err(py_error)?;
    let shape = match &config {
        ModelConfig::Ttt(c) => serde_json::json!({
            "family": "ttt", "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
            "norm_eps": c.rms_norm_eps, "tie_word_embeddings": c.tie_word_embeddings,
            "pre_conv": c.pre_conv, "conv_kernel": c.conv_kernel, "mlp_bias": false,
        }),
        ModelConfig::Mamba(c) => serde_json::json!({
            "family": "mamba", "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers, "norm_eps": c.layer_norm_epsilon,
            "tie_word_embeddings": c.tie_word_embeddings,
        }),
        ModelConfig::Llama(c) => serde_json::json!({
            "family": "llama", "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
            "norm_eps": c.rms_norm_eps, "tie_word_embeddings": c.tie_word_embeddings, "mlp_bias": c.mlp_bias,
        }),
        ModelConfig::Lact(c) => serde_json::json!({
            "family": "lact", "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
            "norm_eps": c.norm_eps, "tie_word_embeddings": c.tie_word_embeddings, "mlp_bias": false,
            "pad_token_id": c.pad_token_id,
        }),
        ModelConfig::LactBidirectional(_) => {
            return Err(Error::new_err(
                "model_type \"lact_bidirectional_layer\" describes one layer, not a language model: use tttc.torch.Layer or BidirectionalLaCT",
            ))
        }
    };
    Ok(shape.to_string())
}

/// A weight for Python: its name, shape and f32 little-endian bytes.
type NamedBytes = (String, Vec<usize>, Vec<u8>);

/// A float tensor's elements as f32 little-endian bytes (what `torch.frombuffer` reads).
fn f32_bytes(t: &Tensor) -> Vec<u8> {
    t.to_f32().unwrap_or_default().iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The address of the XLA FFI handler that runs a layer's graphs (`xla::layer_handler`), for
/// `jax.ffi.register_ffi_target`.
#[pyfunction]
fn xla_handler() -> usize {
    xla::layer_handler as *const () as usize
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Layer>()?;
    m.add_class::<Entry>()?;
    m.add_function(wrap_pyfunction!(load_model, m)?)?;
    m.add_function(wrap_pyfunction!(model_shape, m)?)?;
    m.add_function(wrap_pyfunction!(save_model, m)?)?;
    m.add_function(wrap_pyfunction!(xla_handler, m)?)?;
    m.add("Error", m.py().get_type::<Error>())?;
    Ok(())
}
