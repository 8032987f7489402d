//! Config combinations the shipped reference cases do not cover (biases, kernel, state and rank
//! sizes, GQA down to one kv head, every TTT option, mini-batch sizes) build, verify, print and
//! parse back, and run on seeded weights with finite logits and loss of the right shapes.

mod common;
use common::*;

use serde_json::json;

fn variants() -> Vec<serde_json::Value> {
    let ttt = |extra: serde_json::Value| {
        let mut base = json!({"model_type": "ttt", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "vocab_size": 19});
        base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        base
    };
    vec![
        json!({"model_type": "mamba", "hidden_size": 24, "num_hidden_layers": 2, "vocab_size": 31,
               "use_bias": true, "use_conv_bias": false, "tie_word_embeddings": false,
               "state_size": 5, "conv_kernel": 3, "expand": 3}),
        json!({"model_type": "mamba", "hidden_size": 40, "num_hidden_layers": 1, "vocab_size": 17,
               "time_step_rank": "auto", "layer_norm_epsilon": 1e-3, "conv_kernel": 1}),
        json!({"model_type": "llama", "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 23, "attention_bias": true,
               "mlp_bias": true, "tie_word_embeddings": true, "rope_theta": 500000.0}),
        json!({"model_type": "llama", "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
               "num_attention_heads": 2, "vocab_size": 11}),
        ttt(json!({"mini_batch_size": 4, "ttt_layer_type": "linear", "pre_conv": true, "conv_kernel": 2})),
        ttt(json!({"mini_batch_size": 8, "ttt_layer_type": "mlp", "share_qk": true, "tie_word_embeddings": false})),
        ttt(json!({"mini_batch_size": 3, "ttt_layer_type": "mlp", "use_gate": true, "ttt_base_lr": 0.5,
                   "rope_theta": 500.0, "rms_norm_eps": 1e-5})),
        ttt(json!({"mini_batch_size": 1, "ttt_layer_type": "linear", "share_qk": true, "pre_conv": true, "use_gate": true})),
    ]
}

#[test]
fn config_variants_run() {
    let dir = scratch("variants");
    let (b, t) = (2usize, 11usize);
    for (i, config) in variants().iter().enumerate() {
        let model = dir.join(format!("variant{i}"));
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), config.to_string()).unwrap();
        let vocab = config["vocab_size"].as_i64().unwrap();
        let ids: Vec<i64> = (0..(b * t) as i64).map(|k| (k * 7 + 3) % vocab).collect();
        let input = model.join("in.safetensors");
        write_raw(&input, &[("input_ids".into(), safetensors::Dtype::I64, vec![b, t], i64_bytes(&ids))]);
        let out = model.join("out.safetensors");
        let r = tttc(&["run", p(&model), "--input", p(&input), "--output", p(&out)]);
        assert!(r.status.success(), "variant {config}: {}", String::from_utf8_lossy(&r.stderr));
        let got = read(&out);
        assert_eq!(got["logits"].shape, vec![b, t, vocab as usize], "variant {config}");
        assert!(got["logits"].f32.iter().chain(&got["loss"].f32).all(|x| x.is_finite()), "variant {config}: not finite");

        let graph = tttc_frontends::load_structure(&model).unwrap().g;
        tttc_ir::verify(&graph).unwrap();
        let text = tttc_ir::text::print(&graph);
        assert_eq!(tttc_ir::text::parse(&text).unwrap(), graph, "variant {config}: IR does not round-trip");
    }
}
