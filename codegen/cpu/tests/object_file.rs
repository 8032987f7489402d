//! The object file and header a graph's kernels compile to, linked into a C program with the
//! system's C compiler and run: its results match the interpreter's.

use std::process::Command;

use tttc_ir::{Graph, Tensor, Type, UnaryOp};

#[test]
fn kernels_link_into_a_c_program_and_compute_what_the_interpreter_does() {
    // y = tanh(x) · col: one kernel, x read per element, col once per row.
    let mut g = Graph::new("tanh_scaled");
    let x = g.input("x", Type::f32(&[2, 5]));
    let col = g.input("col", Type::f32(&[2, 1]));
    let t = g.unary(UnaryOp::Tanh, x).unwrap();
    let y = g.mul(t, col).unwrap();
    g.output("y", y);
    let xs: Vec<f32> = (0..10).map(|i| i as f32 * 0.37 - 1.5).collect();
    let cols = [0.5f32, -2.0];
    let want = tttc_ir::run(&g, &[&Tensor::f32(vec![2, 5], xs.clone()), &Tensor::f32(vec![2, 1], cols.to_vec())], tttc_ir::Precision::F32).unwrap();

    let out = tttc_codegen_cpu::kernel_object(&g, "demo").unwrap();
    assert_eq!(out.kernels, 1);
    assert!(out.header.contains("void demo_kernel_0(int64_t n, int64_t rows"), "{}", out.header);
    let dir = std::env::temp_dir().join(format!("tttc-object-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kernels.o"), &out.object).unwrap();
    std::fs::write(dir.join("kernels.h"), &out.header).unwrap();
    let fmt = |v: &[f32]| v.iter().map(|x| format!("{x:e}f")).collect::<Vec<_>>().join(", ");
    let main = format!(
        "#include <stdio.h>\n#include \"kernels.h\"\nint main(void) {{\n  float x[10] = {{{}}}; float col[2] = {{{}}}; float y[10];\n  \
         const float *ins[2] = {{x, col}}; const int64_t strides[2] = {{5, 1}}; float *outs[1] = {{y}};\n  \
         demo_kernel_0(5, 2, ins, strides, outs);\n  for (int i = 0; i < 10; i++) printf(\"%.9g\\n\", y[i]);\n  return 0;\n}}\n",
        fmt(&xs),
        fmt(&cols)
    );
    std::fs::write(dir.join("main.c"), main).unwrap();
    let exe = dir.join("demo");
    let cc = Command::new("cc").current_dir(&dir).args(["main.c", "kernels.o", "-lm", "-o"]).arg(&exe).output().expect("a C compiler (cc)");
    assert!(cc.status.success(), "cc: {}", String::from_utf8_lossy(&cc.stderr));
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    let got: Vec<f32> = String::from_utf8(run.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    let want = want[0].as_f32().unwrap();
    for (a, b) in got.iter().zip(want) {
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "C program {a}, interpreter {b}");
    }
    assert_eq!(got.len(), 10);
    std::fs::remove_dir_all(&dir).ok();
}
