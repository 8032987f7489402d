//! Bad configs are refused with a one-line error that names the key; the keys Hugging Face
//! writes without effect on the math are ignored; every shipped config still loads.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tttc_frontends::config::{
    IGNORED_KEYS, LACT_IGNORED_KEYS, LLAMA_IGNORED_KEYS, MAMBA_IGNORED_KEYS, MAX_CONV_KERNEL, MAX_LAYERS, MAX_SIZE, TTT_IGNORED_KEYS,
};
use tttc_frontends::parse_config_json;

fn ttt() -> Value {
    json!({"model_type": "ttt", "vocab_size": 13, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
           "num_attention_heads": 2, "mini_batch_size": 4})
}

fn mamba() -> Value {
    json!({"model_type": "mamba", "vocab_size": 13, "hidden_size": 16, "num_hidden_layers": 1, "state_size": 4})
}

fn llama() -> Value {
    json!({"model_type": "llama", "vocab_size": 13, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1})
}

fn lact() -> Value {
    json!({"model_type": "lact_swiglu", "vocab_size": 13, "hidden_size": 16, "num_hidden_layers": 1, "num_attn_heads": 2,
           "num_lact_heads": 2, "lact_chunk_size": 4, "window_size": 4})
}

/// `base` with `key` set to `value` (`null` deletes it).
fn with(mut base: Value, key: &str, value: Value) -> Value {
    let m = base.as_object_mut().unwrap();
    if value.is_null() {
        m.remove(key);
    } else {
        m.insert(key.into(), value);
    }
    base
}

/// The error reading `text` as a folder's config.json, as `tttc` prints it; it must be one line.
fn error_of(text: &str) -> String {
    let e = format!("{:#}", parse_config_json(text).err().unwrap_or_else(|| panic!("accepted: {text}")));
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

fn refused(config: &Value, needles: &[&str]) {
    let e = error_of(&config.to_string());
    for n in needles {
        assert!(e.contains(n), "error does not mention {n:?}: {e}");
    }
}

fn accepted(config: &Value) {
    if let Err(e) = parse_config_json(&config.to_string()) {
        panic!("refused {config}: {e:#}");
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The error loading a model.toml with this text.
fn toml_error(name: &str, text: &str) -> String {
    let path = scratch("config_errors").join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let e = format!("{:#}", tttc_frontends::load_config(&path).err().unwrap_or_else(|| panic!("accepted: {text}")));
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

const TTT_TOML: &str = "model_type = \"ttt\"\n[config]\nvocab_size = 13\nhidden_size = 16\nintermediate_size = 24\n\
                        num_hidden_layers = 1\nnum_attention_heads = 2\n";

#[test]
fn unknown_keys_are_refused_with_the_closest_key() {
    assert_eq!(error_of(&with(ttt(), "mini_bach_size", json!(8)).to_string()), "unknown config key mini_bach_size (did you mean mini_batch_size?)");
    // A misspelt required key is reported as the typo, not as the missing key.
    let typo = with(with(ttt(), "hidden_size", Value::Null), "hiden_size", json!(16));
    assert_eq!(error_of(&typo.to_string()), "unknown config key hiden_size (did you mean hidden_size?)");
    assert_eq!(error_of(&with(ttt(), "quantization_config", json!({"bits": 4})).to_string()), "unknown config key quantization_config");
    refused(&with(mamba(), "stat_size", json!(8)), &["unknown config key stat_size (did you mean state_size?)"]);
    refused(&with(llama(), "rope_thetta", json!(1.0)), &["unknown config key rope_thetta (did you mean rope_theta?)"]);
    refused(&with(ttt(), "ttt_inner", json!({"activaton": "relu"})), &["unknown config key ttt_inner.activaton (did you mean ttt_inner.activation?)"]);
    // A key of another family is unknown to this one.
    refused(&with(llama(), "mini_batch_size", json!(16)), &["unknown config key mini_batch_size"]);
    // A key with a newline is shown escaped, keeping the error on one line.
    refused(&with(ttt(), "a\nb", json!(1)), &["unknown config key \"a\\nb\""]);
    let e = toml_error("unknown", &format!("{TTT_TOML}use_gat = true\n"));
    assert!(e.contains("unknown config key use_gat (did you mean use_gate?)"), "{e}");
}

/// Every ignored key is ignored whatever its value, in every family.
#[test]
fn ignored_keys_are_ignored() {
    for (base, own) in [(ttt(), TTT_IGNORED_KEYS), (mamba(), MAMBA_IGNORED_KEYS), (llama(), LLAMA_IGNORED_KEYS), (lact(), LACT_IGNORED_KEYS)] {
        let mut c = base.clone();
        // LaCT reads pad_token_id: that row of the embedding gets no gradient.
        let read = |k: &&&str| base["model_type"] == "lact_swiglu" && **k == "pad_token_id";
        for (i, key) in IGNORED_KEYS.iter().chain(own).filter(|k| !read(k)).enumerate() {
            c = with(c, key, json!([i, "x", {"y": i}]));
        }
        accepted(&c);
        assert_eq!(tttc_frontends::ModelConfig::from_json(&c).unwrap(), tttc_frontends::ModelConfig::from_json(&base).unwrap());
    }
}

/// LaCT's own 760M config (its `configs/760M_lact_swiglu_nh4_fwlow_rank_momentum.json`, every key)
/// loads as written: a real checkpoint's config.json carries these keys.
#[test]
fn lact_shipped_config_loads() {
    let shipped = json!({
        "attention_bias": false, "bos_token_id": 1, "eos_token_id": 2, "fuse_cross_entropy": true, "fuse_norm": true,
        "hidden_act": "swish", "hidden_size": 1536, "num_attn_heads": 24, "num_hidden_layers": 24, "initializer_range": 0.02,
        "max_position_embeddings": 32768, "model_type": "lact_swiglu", "num_lact_heads": 4, "inter_multi": 1,
        "qkv_bias": false, "attn_qk_norm": false, "qkv_silu": true, "lact_chunk_size": 2048, "window_size": 2048,
        "use_muon": false, "lr_dim": 1, "lr_parameterization": "mamba", "learnable_ttt_scale": true, "w0_w2_low_rank": 32,
        "fw_init_gain": 0.5, "use_momentum": true, "rope_theta": 1000000, "norm_eps": 1e-06, "tie_word_embeddings": false,
        "use_cache": true, "vocab_size": 32000, "fp32_states": false, "use_fused_kernel": false
    });
    accepted(&shipped);
}

#[test]
fn duplicate_keys_are_refused_at_any_level() {
    let text = ttt().to_string().replacen("\"hidden_size\":16", "\"hidden_size\":16,\"hidden_size\":32", 1);
    assert!(error_of(&text).contains("duplicate config key hidden_size"));
    let text = with(ttt(), "ttt_inner", json!({"bias": true})).to_string().replacen("\"bias\":true", "\"bias\":true,\"bias\":false", 1);
    assert!(error_of(&text).contains("duplicate config key ttt_inner.bias"));
    // Also inside a key that is otherwise ignored.
    let text = with(ttt(), "id2label", json!({"0": "a"})).to_string().replacen("\"0\":\"a\"", "\"0\":\"a\",\"0\":\"b\"", 1);
    assert!(error_of(&text).contains("duplicate config key id2label.0"));
}

#[test]
fn unsupported_settings_are_refused() {
    refused(&with(ttt(), "rope_scaling", json!({"type": "linear", "factor": 2.0})), &["rope_scaling", "not supported"]);
    refused(&with(llama(), "rope_scaling", json!({"type": "dynamic", "factor": 2.0})), &["rope_scaling", "not supported"]);
    refused(&with(llama(), "attention_dropout", json!(0.1)), &["attention_dropout", "not supported"]);
    refused(&with(mamba(), "time_step_init_scheme", json!("constant")), &["time_step_init_scheme", "not supported"]);
    refused(&with(mamba(), "rescale_prenorm_residual", json!(true)), &["rescale_prenorm_residual", "not supported"]);
    refused(&with(llama(), "pruned_heads", json!({"0": [1]})), &["pruned_heads", "not supported"]);
    refused(&with(mamba(), "hidden_act", json!("gelu")), &["hidden_act", "not supported"]);
    // Their references' values are accepted.
    accepted(&with(with(ttt(), "rope_scaling", Value::Null), "pruned_heads", json!({})));
    accepted(&with(llama(), "attention_dropout", json!(0)));
    accepted(&with(with(mamba(), "time_step_init_scheme", json!("random")), "rescale_prenorm_residual", json!(false)));
}

/// SPEC-lact.md §2: what LaCT's code computes only for some values, and configs it cannot mean.
#[test]
fn lact_settings_outside_its_function_are_refused() {
    refused(&with(lact(), "lr_dim", json!(2)), &["lr_dim", "not supported"]);
    refused(&with(lact(), "lr_parameterization", json!("linear")), &["lr_parameterization", "not supported"]);
    refused(&with(lact(), "ttt_loss_type", json!("l2")), &["ttt_loss_type", "not supported"]);
    refused(&with(lact(), "hidden_act", json!("silu")), &["hidden_act", "\"swish\""]);
    let null_theta = lact().to_string().replacen('{', "{\"rope_theta\":null,", 1);
    assert!(error_of(&null_theta).contains("rope_theta = null"));
    refused(&with(with(lact(), "hidden_size", json!(3072)), "num_attn_heads", json!(25)), &["hidden_size 3072", "num_attn_heads 25"]);
    refused(&with(lact(), "num_lact_heads", json!(3)), &["num_lact_heads 3"]);
    refused(&with(with(lact(), "hidden_size", json!(18)), "num_attn_heads", json!(6)), &["head dimension 3", "even"]);
    refused(&with(with(lact(), "use_muon", json!(true)), "use_fused_kernel", json!(true)), &["use_fused_kernel", "use_muon"]);
    refused(&with(lact(), "pad_token_id", json!(13)), &["pad_token_id = 13"]);
    refused(&with(lact(), "inter_multi", json!(0.01)), &["inter_multi"]);
    // Without Muon the fused kernel computes this function (to its renorm's eps): accepted.
    accepted(&with(lact(), "use_fused_kernel", json!(true)));
    // A null window is unbounded attention; an absent one LaCT's default (`with` deletes a key
    // set to null).
    let window = |config: &Value| match parse_config_json(&config.to_string()).unwrap().0 {
        tttc_frontends::ModelConfig::Lact(c) => c.window_size,
        _ => panic!("not a LaCT config"),
    };
    let mut unbounded = lact();
    unbounded["window_size"] = Value::Null;
    assert_eq!(window(&unbounded), None);
    assert_eq!(window(&with(lact(), "window_size", Value::Null)), Some(2048));
    // The keys every checkpoint sets have LaCTSWIGLUConfig's defaults too.
    let bare = parse_config_json(r#"{"model_type": "lact_swiglu"}"#).unwrap().0;
    let tttc_frontends::ModelConfig::Lact(c) = bare else { panic!("not a LaCT config") };
    assert_eq!((c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attn_heads, c.num_lact_heads), (32000, 2048, 24, 32, 4));
    accepted(&with(with(lact(), "w0_w2_low_rank", json!(-1)), "inter_multi", json!(1.5)));
    // Muon on chunks shorter than the head size is ill-conditioned in f32: a warning, not an error.
    let (config, _) = parse_config_json(&with(lact(), "use_muon", json!(true)).to_string()).unwrap();
    assert!(config.warnings().iter().any(|w| w.contains("lact_chunk_size 4") && w.contains("ill-conditioned")), "{:?}", config.warnings());
    let (config, _) = parse_config_json(&lact().to_string()).unwrap();
    assert!(config.warnings().is_empty());
}

/// A bidirectional layer's config holds its constructor's arguments only, and a language model
/// is not built from it.
#[test]
fn a_bidirectional_lact_layer_is_a_layer() {
    let layer = json!({"model_type": "lact_bidirectional_layer", "dim": 16, "head_dim": 8});
    accepted(&layer);
    refused(&with(layer.clone(), "head_dim", json!(5)), &["dim = 16", "head_dim 5"]);
    refused(&with(layer.clone(), "vocab_size", json!(5)), &["unknown config key vocab_size"]);
    let (config, _) = parse_config_json(&layer.to_string()).unwrap();
    assert!(tttc_frontends::build_layer(&config).is_ok());
    let e = format!("{:#}", tttc_frontends::build(&config).err().unwrap());
    assert!(e.contains("one layer, not a language model"), "{e}");
}

#[test]
fn out_of_range_numbers_are_refused() {
    for base in [ttt(), llama()] {
        for bad in [json!(0.0), json!(-10000.0), json!("10000")] {
            refused(&with(base.clone(), "rope_theta", bad.clone()), &["config key rope_theta must be a finite number > 0"]);
            refused(&with(base.clone(), "rms_norm_eps", bad), &["config key rms_norm_eps must be a finite number > 0"]);
        }
        refused(&with(base.clone(), "initializer_range", json!(-0.02)), &["config key initializer_range must be a finite number >= 0"]);
        accepted(&with(base.clone(), "initializer_range", json!(0)));
    }
    refused(&with(mamba(), "layer_norm_epsilon", json!(0)), &["config key layer_norm_epsilon must be a finite number > 0"]);
    refused(&with(mamba(), "initializer_range", json!(-1)), &["initializer_range"]);
    refused(&with(ttt(), "ttt_base_lr", json!("fast")), &["config key ttt_base_lr must be a finite number"]);
    let m = with(with(mamba(), "time_step_min", json!(0.2)), "time_step_max", json!(0.1));
    refused(&m, &["config key time_step_min = 0.2 is above time_step_max = 0.1"]);
    refused(&with(mamba(), "time_step_min", json!(0)), &["config key time_step_min must be a finite number > 0"]);
    refused(&with(mamba(), "time_step_max", json!(-0.1)), &["config key time_step_max must be a finite number > 0"]);
    refused(&with(mamba(), "time_step_floor", json!("0.1")), &["config key time_step_floor must be a finite number"]);
    refused(&with(mamba(), "time_step_scale", json!([1.0])), &["config key time_step_scale must be a finite number"]);
    // JSON has no NaN or infinity; TOML has, and they are refused with the key's name.
    for (key, value) in [("rope_theta", "nan"), ("ttt_base_lr", "inf"), ("rms_norm_eps", "-inf"), ("initializer_range", "nan")] {
        let e = toml_error(key, &format!("{TTT_TOML}{key} = {value}\n"));
        assert!(e.contains(&format!("config key {key} = ")) && e.contains("is not a finite number"), "{e}");
    }
    let e = toml_error("floor", "model_type = \"mamba\"\n[config]\nvocab_size = 13\nhidden_size = 16\nnum_hidden_layers = 1\ntime_step_floor = inf\n");
    assert!(e.contains("config key time_step_floor = inf is not a finite number"), "{e}");
}

#[test]
fn sizes_above_the_bound_are_refused() {
    let e = error_of(&with(ttt(), "hidden_size", json!(1u64 << 40)).to_string());
    assert_eq!(e, "config key hidden_size = 1099511627776 is too large (at most 2147483648)");
    let too_big = json!(MAX_SIZE as u64 + 1);
    let ttt_sizes = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "mini_batch_size", "conv_kernel"];
    let mamba_sizes = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "state_size", "conv_kernel", "time_step_rank", "expand"];
    let llama_sizes = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"];
    for (base, keys) in [(ttt(), &ttt_sizes[..]), (mamba(), &mamba_sizes[..]), (llama(), &llama_sizes[..])] {
        for key in keys {
            let e = error_of(&with(base.clone(), key, too_big.clone()).to_string());
            assert!(e.starts_with(&format!("config key {key} = 2147483649 is too large (at most ")), "{e}");
        }
        // The graph repeats nodes per layer and per convolution tap: fewer of those.
        refused(&with(base.clone(), "num_hidden_layers", json!(1025)), &["config key num_hidden_layers = 1025 is too large (at most 1024)"]);
    }
    for base in [ttt(), mamba()] {
        refused(&with(base, "conv_kernel", json!(65)), &["config key conv_kernel = 65 is too large (at most 64)"]);
    }
    // Sizes made of sizes: the inner model's hidden width (a multiple of the head dimension 8)
    // and Mamba's expand · hidden_size.
    refused(&with(ttt(), "ttt_inner", json!({"widths": [1u64 << 30]})), &["ttt_inner.widths", "too large"]);
    refused(&with(ttt(), "ttt_inner", json!({"widths": [u64::MAX]})), &["ttt_inner.widths", "too large"]);
    refused(&with(mamba(), "expand", json!(1u64 << 30)), &["config key expand", "too large"]);
}

/// The largest sizes accepted build a graph (symbolically: nothing of a weight's size is
/// allocated) without an internal error.
#[test]
fn the_largest_sizes_build() {
    let max = json!(MAX_SIZE);
    let configs = [
        json!({"model_type": "ttt", "vocab_size": max, "hidden_size": max, "intermediate_size": max, "num_hidden_layers": MAX_LAYERS,
               "num_attention_heads": MAX_SIZE / 2, "mini_batch_size": max, "conv_kernel": MAX_CONV_KERNEL, "pre_conv": true,
               "share_qk": true, "use_gate": true, "ttt_inner": {"widths": [1, 1]}}),
        json!({"model_type": "mamba", "vocab_size": max, "hidden_size": max, "intermediate_size": max, "num_hidden_layers": MAX_LAYERS,
               "state_size": max, "conv_kernel": MAX_CONV_KERNEL, "time_step_rank": max}),
        json!({"model_type": "llama", "vocab_size": max, "hidden_size": max, "intermediate_size": max, "num_hidden_layers": MAX_LAYERS,
               "num_attention_heads": MAX_SIZE / 2, "num_key_value_heads": 1}),
    ];
    for c in configs {
        let (config, _) = parse_config_json(&c.to_string()).unwrap();
        if let Err(e) = tttc_frontends::build(&config) {
            panic!("{c}: {e:#}");
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn children(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// Every reference case and every example loads, and builds.
#[test]
fn every_shipped_config_loads() {
    let folders = ["tests/vectors", "tests/vectors-gated", "tests/vectors-lact"];
    let cases = folders.into_iter().flat_map(|f| children(&repo().join(f))).filter(|p| p.join("config.json").exists() && !p.join("layer.safetensors").exists());
    let examples = [repo().join("examples"), repo().join("examples/comparison")].into_iter().flat_map(|d| children(&d));
    let models: Vec<PathBuf> = cases.chain(examples.filter(|p| p.extension().is_some_and(|e| e == "toml"))).collect();
    assert!(models.len() >= 15, "{models:?}");
    for m in models {
        if let Err(e) = tttc_frontends::load_structure(&m) {
            panic!("{}: {e:#}", m.display());
        }
    }
}
