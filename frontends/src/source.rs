//! Where a model comes from: a Hugging Face style folder (`config.json`, and `model.safetensors`
//! when present) or a `model.toml` (docs/model-toml.md); weights from a file or from a seed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use tttc_files::Cap;

use crate::builder::ModelBuilder;
use crate::config::ModelConfig;
use crate::init::initialise;
use crate::json::StrictValue;
use crate::weights::{load_safetensors, Weights};

/// A model ready to run: its config, its forward graph and a weight for every graph parameter.
pub struct Model {
    pub config: ModelConfig,
    /// The config as a Hugging Face `config.json` object: the folder's config.json as read, or
    /// model.toml's `[config]` table with its `model_type` (`tttc train` writes it to checkpoints).
    pub config_json: Value,
    pub builder: ModelBuilder,
    pub weights: Weights,
}

/// Seed used when a model without weights names none.
pub const DEFAULT_SEED: u64 = 0;

/// Loads `path` (a folder with `config.json`, or a `model.toml`). `weights`, when given, wins
/// over the folder's `model.safetensors` and a `weights` entry in model.toml.
pub fn load(path: &Path, weights: Option<&Path>) -> Result<Model> {
    let (config, config_json, own_weights, seed) = read_definition(path)?;
    check_size(&config, true)?;
    let builder = crate::build(&config)?;
    let weights = match weights.map(Path::to_path_buf).or(own_weights) {
        Some(file) => {
            let w = load_safetensors(&file, weights_cap(&builder))?;
            check_weights(&builder, &config, w).with_context(|| format!("in {}", file.display()))?
        }
        None => initialise(&builder, seed),
    };
    Ok(Model { config, config_json, builder, weights })
}

/// Bytes the pass pipeline holds at its peak per node of the frontend's graph (about 3.5 KB,
/// measured on TTT-Linear at 200 layers).
const PIPELINE_BYTES_PER_NODE: u64 = 4096;

/// Refuses a model whose graph (and, with `weights`, its f32 weights) cannot fit in the memory
/// budget, estimated from a one- and a two-layer build before the whole graph is built or any
/// weight allocated: a model's size is a fixed part plus the same amount per layer.
pub fn check_size(config: &ModelConfig, weights: bool) -> Result<()> {
    let measure = |layers| -> Result<(u64, u64)> {
        let b = crate::build(&config.with_layers(layers))?;
        Ok((count_nodes(&b.g), parameters(&b)))
    };
    let ((n1, p1), (n2, p2)) = (measure(1)?, measure(2)?);
    let layers = config.num_hidden_layers();
    let extra = layers.saturating_sub(1) as u64;
    let nodes = n1.saturating_add(n2.saturating_sub(n1).saturating_mul(extra));
    let params = p1.saturating_add(p2.saturating_sub(p1).saturating_mul(extra));
    let graph_bytes = nodes.saturating_mul(PIPELINE_BYTES_PER_NODE);
    let (bytes, what) = match weights {
        true => {
            (graph_bytes.saturating_add(params.saturating_mul(4)), format!("the model ({layers} layers, {params} parameters in f32, a graph of {nodes} nodes)"))
        }
        false => (graph_bytes, format!("the model's graph ({layers} layers, {nodes} nodes)")),
    };
    tttc_files::memory::check(&what, bytes)
}

fn count_nodes(g: &tttc_ir::Graph) -> u64 {
    g.nodes.iter().fold(0u64, |total, n| total.saturating_add(1 + n.op.body().map_or(0, count_nodes)))
}

/// The number of parameter values of the model `b`.
fn parameters(b: &ModelBuilder) -> u64 {
    let elements = |arg: &tttc_ir::Arg| b.g.ty(arg.value).shape.iter().fold(1u64, |n, d| n.saturating_mul(d.as_const().unwrap_or(0) as u64));
    b.g.params().fold(0u64, |total, arg| total.saturating_add(elements(arg)))
}

/// The most bytes a weights file of the model `b` can hold: every parameter in f64 (the widest
/// float read), plus the largest header safetensors accepts.
pub fn weights_cap(b: &ModelBuilder) -> Cap {
    Cap::new("the model's weights file", parameters(b).saturating_mul(8).saturating_add(100_000_000))
}

/// The graph of the model at `path`, without reading or drawing its weights.
pub fn load_structure(path: &Path) -> Result<ModelBuilder> {
    structure_of(&read_definition(path)?.0)
}

/// The forward graph of `config`, refused before it is built when its memory estimate (the graph
/// alone) exceeds the budget.
pub fn structure_of(config: &ModelConfig) -> Result<ModelBuilder> {
    check_size(config, false)?;
    crate::build(config)
}

/// The config of the model at `path`, without building its graph or reading its weights.
pub fn load_config(path: &Path) -> Result<ModelConfig> {
    Ok(read_definition(path)?.0)
}

/// The config (parsed and as JSON), the weights file it names (if any) and the initialisation seed.
fn read_definition(path: &Path) -> Result<(ModelConfig, Value, Option<PathBuf>, u64)> {
    Ok(if path.is_dir() {
        let cfg_path = path.join("config.json");
        let text = tttc_files::read_text(&cfg_path, Cap::CONFIG)?;
        let (config, json) = parse_config_json(&text).with_context(|| format!("in {}", cfg_path.display()))?;
        let file = path.join("model.safetensors");
        (config, json, file.exists().then_some(file), DEFAULT_SEED)
    } else if path.extension().is_some_and(|e| e == "toml") {
        let text = tttc_files::read_text(path, Cap::CONFIG)?;
        let t = parse_model_toml(&text, path.parent().unwrap_or(Path::new("."))).with_context(|| format!("in {}", path.display()))?;
        (t.config, t.json, t.weights, t.seed)
    } else if path.exists() {
        bail!("{} is neither a folder with config.json nor a .toml file", path.display());
    } else {
        bail!("model {} does not exist", path.display());
    })
}

/// A folder's `config.json` text, parsed (a duplicate key or a malformed file is an error) and
/// read as a config.
pub fn parse_config_json(text: &str) -> Result<(ModelConfig, Value)> {
    let json = serde_json::from_str::<StrictValue>(text).map_err(|e| anyhow::anyhow!("malformed config.json: {e}"))?.0;
    Ok((ModelConfig::from_json(&json)?, json))
}

/// `model.toml` (docs/model-toml.md): the family, an optional weights file (relative to the toml)
/// and seed, and a `[config]` table with the family's Hugging Face config keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelTomlFile {
    model_type: String,
    weights: Option<PathBuf>,
    seed: Option<u64>,
    #[allow(dead_code)] // documentation for people
    name: Option<String>,
    #[allow(dead_code)]
    description: Option<String>,
    config: Option<StrictValue>,
}

struct ModelToml {
    config: ModelConfig,
    json: Value,
    weights: Option<PathBuf>,
    seed: u64,
}

fn parse_model_toml(text: &str, dir: &Path) -> Result<ModelToml> {
    let file: ModelTomlFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
        let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
        anyhow::anyhow!("malformed model.toml: {at}{}", one_line(e.message()))
    })?;
    let Value::Object(mut config) = file.config.map_or(Value::Object(Default::default()), |c| c.0) else {
        bail!("config must be a table");
    };
    if config.contains_key("model_type") {
        bail!("model_type belongs at the top level, not in [config]");
    }
    config.insert("model_type".into(), Value::String(file.model_type));
    let json = Value::Object(config);
    Ok(ModelToml { config: ModelConfig::from_json(&json)?, json, weights: file.weights.map(|w| dir.join(w)), seed: file.seed.unwrap_or(DEFAULT_SEED) })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every graph parameter present with its shape; a tied model's `lm_head.weight`, when the file
/// holds one, must equal the embedding.
fn check_weights(b: &ModelBuilder, config: &ModelConfig, mut file: Weights) -> Result<Weights> {
    let mut out = Weights::new();
    let mut missing = Vec::new();
    for arg in b.g.params() {
        let want: Vec<usize> = b.g.ty(arg.value).shape.iter().map(|d| d.as_const().expect("static")).collect();
        match file.remove(&arg.name) {
            None => missing.push(arg.name.clone()),
            Some(t) => {
                if t.dtype() != tttc_ir::DType::F32 {
                    bail!("tensor {} has dtype {}, expected a float type (f32, f16 or bf16)", arg.name, t.dtype());
                }
                if t.shape != want {
                    bail!("tensor {} has shape {:?}, expected {:?}", arg.name, t.shape, want);
                }
                out.insert(arg.name.clone(), t);
            }
        }
    }
    if !missing.is_empty() {
        let extra: Vec<&String> = file.keys().filter(|k| k.as_str() != "lm_head.weight").collect();
        let hint = if extra.is_empty() { String::new() } else { format!(" (unexpected: {})", list(&extra)) };
        bail!("missing tensor {}{hint}", list(&missing));
    }
    if config.tie_word_embeddings() {
        if let Some(head) = file.get("lm_head.weight") {
            if let Some(e) = b.embedding.as_ref().and_then(|e| out.get(e)) {
                if head != e {
                    bail!("tie_word_embeddings is true but lm_head.weight differs from the embedding");
                }
            }
        }
    }
    Ok(out)
}

fn list<T: std::fmt::Display>(names: &[T]) -> String {
    let shown: Vec<String> = names.iter().take(3).map(|n| n.to_string()).collect();
    let more = if names.len() > 3 { format!(" and {} more", names.len() - 3) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

/// A command's outputs with the model's files (`source_files`) declared as inputs: no output may
/// overwrite one of them.
pub fn outputs_reading_model(path: &Path) -> tttc_files::Outputs {
    let mut outputs = tttc_files::Outputs::new();
    for file in source_files(path) {
        outputs.reads("the model's", &file);
    }
    outputs
}

/// The files the model at `path` is read from: a folder's config.json, model.safetensors and
/// tokenizer.json, or a model.toml and the weights file it names. Outputs must not overwrite any
/// of them.
pub fn source_files(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        return ["config.json", "model.safetensors", "tokenizer.json"].iter().map(|f| path.join(f)).collect();
    }
    let mut files = vec![path.to_path_buf()];
    let text = tttc_files::read_text(path, Cap::CONFIG).unwrap_or_default();
    if let Some(weights) = toml::from_str::<toml::Table>(&text).ok().and_then(|t| t.get("weights")?.as_str().map(PathBuf::from)) {
        files.push(path.parent().unwrap_or(Path::new(".")).join(weights));
    }
    files
}
