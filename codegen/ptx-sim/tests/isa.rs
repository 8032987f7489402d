//! The simulator against the PTX ISA, on small hand-written programs: so that a simulator bug
//! cannot hide a kernel bug. Expected values come from the ISA's definitions computed here in
//! Rust, independently of the simulator's code.

use tttc_ptx::parse;
use tttc_ptx_sim::{launch, Dims, Memory};

fn module(body: &str) -> tttc_ptx::isa::Module {
    parse(&format!(".version 7.8\n.target sm_80\n.address_size 64\n{body}")).expect("the test program parses")
}

fn floats(mem: &Memory, ptr: u64, n: usize) -> Vec<f32> {
    mem.read(ptr, 4 * n).unwrap().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn words(mem: &Memory, ptr: u64, n: usize) -> Vec<u32> {
    mem.read(ptr, 4 * n).unwrap().chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn upload(mem: &mut Memory, xs: &[f32]) -> u64 {
    let p = mem.alloc(4 * xs.len());
    let bytes: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
    mem.write(p, &bytes).unwrap();
    p
}

fn dims(grid: u32, block: u32) -> Dims {
    Dims { grid: [grid, 1, 1], block: [block, 1, 1] }
}

/// Thread i of block b writes `out[b·ntid + i] = f(in[..])`: f32 rounding of each op, `fma`'s single
/// rounding, tf32 conversion, NaN comparisons, integer shifts and conversions.
#[test]
fn arithmetic_follows_the_isa() {
    let m = module(
        r#"
.visible .entry k(
	.param .u64 x,
	.param .u64 out
)
{
	.reg .pred %p<3>;
	.reg .b32 %r<8>;
	.reg .b64 %rd<6>;
	.reg .f32 %f<12>;
	ld.param.u64 %rd0, [x];
	cvta.to.global.u64 %rd0, %rd0;
	ld.param.u64 %rd1, [out];
	cvta.to.global.u64 %rd1, %rd1;
	ld.global.v4.f32 {%f0, %f1, %f2, %f3}, [%rd0];
	mul.rn.f32 %f4, %f0, %f1;
	add.rn.f32 %f4, %f4, %f2;
	fma.rn.f32 %f5, %f0, %f1, %f2;
	cvt.rna.tf32.f32 %r0, %f3;
	setp.lt.f32 %p0, %f3, 0fFFC00000;
	setp.ne.f32 %p1, %f3, 0fFFC00000;
	selp.u32 %r1, 1, 0, %p0;
	selp.u32 %r2, 1, 0, %p1;
	mov.u32 %r3, -8;
	shr.s32 %r4, %r3, 1;
	shr.u32 %r5, %r3, 28;
	cvt.rzi.s32.f32 %r6, %f2;
	cvt.rn.f32.s32 %f6, %r3;
	st.global.v4.f32 [%rd1], {%f4, %f5, %f6, %f0};
	st.global.b32 [%rd1+16], %r0;
	st.global.v2.u32 [%rd1+24], {%r1, %r2};
	st.global.u32 [%rd1+32], %r4;
	st.global.u32 [%rd1+36], %r5;
	st.global.s32 [%rd1+40], %r6;
	ret;
}
"#,
    );
    let mut mem = Memory::new();
    // a·b + c where the product needs more than 24 bits: fma keeps them, mul then add does not.
    let (a, b, c) = (1.0 + f32::EPSILON, 1.0 - f32::EPSILON, -1.0);
    // 1 + 2⁻¹¹ + 2⁻²³... a tie at tf32 precision after truncation: 1 + 2⁻¹¹ is exactly half a
    // tf32 ulp (2⁻¹⁰) above 1, so rna rounds it away from zero to 1 + 2⁻¹⁰.
    let tie = 1.0 + 2f32.powi(-11);
    let x = upload(&mut mem, &[a, b, c, tie]);
    let out = mem.alloc(44);
    launch(&m.kernels[0], dims(1, 1), &[x, out], &mut mem).unwrap();
    let f = floats(&mem, out, 4);
    assert_eq!(f[0], a * b + c, "mul.rn then add.rn round twice");
    assert_eq!(f[1], a.mul_add(b, c), "fma.rn rounds once");
    assert_ne!(f[0], f[1], "the inputs must tell fma from mul+add");
    assert_eq!(f[2], -8.0);
    let w = words(&mem, out + 16, 7);
    assert_eq!(f32::from_bits(w[0]), 1.0 + 2f32.powi(-10), "cvt.rna.tf32 rounds ties away from zero");
    assert_eq!((w[2], w[3]), (0, 1), "lt with NaN is false, ne with NaN is true");
    assert_eq!(w[4] as i32, -4, "shr.s32 is arithmetic");
    assert_eq!(w[5], 0xf, "shr.u32 is logical");
    assert_eq!(w[6] as i32, -1, "cvt.rzi rounds toward zero");
}

/// Reversing a block's values through shared memory, with a barrier between the writes and the
/// reads: the result is right and no race is reported. Without the barrier, the race is.
const REVERSE: &str = r#"
.visible .entry reverse(
	.param .u64 x
)
{
	.reg .b32 %r<6>;
	.reg .b64 %rd<4>;
	.reg .f32 %f<2>;
	.shared .align 4 .b8 buf[256];
	ld.param.u64 %rd0, [x];
	cvta.to.global.u64 %rd0, %rd0;
	mov.u32 %r0, %tid.x;
	mul.wide.u32 %rd1, %r0, 4;
	add.u64 %rd2, %rd0, %rd1;
	ld.global.f32 %f0, [%rd2];
	mov.u32 %r1, buf;
	shl.b32 %r2, %r0, 2;
	add.u32 %r3, %r1, %r2;
	st.shared.f32 [%r3], %f0;
	BARRIER
	mov.u32 %r4, 63;
	sub.u32 %r4, %r4, %r0;
	shl.b32 %r4, %r4, 2;
	add.u32 %r4, %r1, %r4;
	ld.shared.f32 %f1, [%r4];
	st.global.f32 [%rd2], %f1;
	ret;
}
"#;

#[test]
fn shared_memory_with_a_barrier() {
    let m = module(&REVERSE.replace("BARRIER", "bar.sync 0;"));
    let mut mem = Memory::new();
    let xs: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let x = upload(&mut mem, &xs);
    let counts = launch(&m.kernels[0], dims(1, 64), &[x], &mut mem).unwrap();
    let expected: Vec<f32> = xs.iter().rev().copied().collect();
    assert_eq!(floats(&mem, x, 64), expected);
    assert_eq!(counts.barriers, 1);
}

#[test]
fn a_missing_barrier_is_reported_as_a_race() {
    let m = module(&REVERSE.replace("BARRIER", ""));
    let mut mem = Memory::new();
    let x = upload(&mut mem, &[0.0; 64]);
    let err = launch(&m.kernels[0], dims(1, 64), &[x], &mut mem).unwrap_err().to_string();
    assert!(err.contains("data race") && err.contains("kernel reverse") && err.contains("no bar.sync between"), "{err}");
}

#[test]
fn out_of_bounds_accesses_are_errors() {
    // 64 threads store one float each into an allocation of 63 floats.
    let m = module(
        r#"
.visible .entry fill(
	.param .u64 out
)
{
	.reg .b32 %r<2>;
	.reg .b64 %rd<4>;
	ld.param.u64 %rd0, [out];
	cvta.to.global.u64 %rd0, %rd0;
	mov.u32 %r0, %tid.x;
	mul.wide.u32 %rd1, %r0, 4;
	add.u64 %rd2, %rd0, %rd1;
	st.global.u32 [%rd2], %r0;
	ret;
}
"#,
    );
    let mut mem = Memory::new();
    let out = mem.alloc(63 * 4);
    let err = launch(&m.kernels[0], dims(1, 64), &[out], &mut mem).unwrap_err().to_string();
    assert!(err.contains("outside every allocation") && err.contains("thread (63, 0, 0)") && err.contains("st.global.u32"), "{err}");
    // Shared memory: the reversal's block of 65 threads reads past its 256 bytes.
    let m = module(&REVERSE.replace("BARRIER", "bar.sync 0;"));
    let x = upload(&mut mem, &[0.0; 65]);
    let err = launch(&m.kernels[0], dims(1, 65), &[x], &mut mem).unwrap_err().to_string();
    assert!(err.contains("out of bounds"), "{err}");
}

#[test]
fn a_barrier_some_threads_never_reach_is_an_error() {
    let m = module(
        r#"
.visible .entry k(
	.param .u64 out
)
{
	.reg .pred %p<1>;
	.reg .b32 %r<1>;
	mov.u32 %r0, %tid.x;
	setp.ge.u32 %p0, %r0, 16;
	@%p0 ret;
	bar.sync 0;
	ret;
}
"#,
    );
    let err = launch(&m.kernels[0], dims(1, 32), &[0], &mut Memory::new()).unwrap_err().to_string();
    assert!(err.contains("bar.sync reached by 16 of 32"), "{err}");
}

/// A butterfly sum over a warp and a shift down by one, per the ISA's shfl.sync pseudocode.
#[test]
fn shuffles_follow_the_isa() {
    let m = module(
        r#"
.visible .entry k(
	.param .u64 out
)
{
	.reg .b32 %r<8>;
	.reg .b64 %rd<4>;
	ld.param.u64 %rd0, [out];
	cvta.to.global.u64 %rd0, %rd0;
	mov.u32 %r0, %laneid;
	mov.u32 %r1, %r0;
	shfl.sync.bfly.b32 %r2, %r1, 16, 31, 0xffffffff;
	add.u32 %r1, %r1, %r2;
	shfl.sync.bfly.b32 %r2, %r1, 8, 31, 0xffffffff;
	add.u32 %r1, %r1, %r2;
	shfl.sync.bfly.b32 %r2, %r1, 4, 31, 0xffffffff;
	add.u32 %r1, %r1, %r2;
	shfl.sync.bfly.b32 %r2, %r1, 2, 31, 0xffffffff;
	add.u32 %r1, %r1, %r2;
	shfl.sync.bfly.b32 %r2, %r1, 1, 31, 0xffffffff;
	add.u32 %r1, %r1, %r2;
	shfl.sync.down.b32 %r3, %r0, 1, 31, 0xffffffff;
	mul.wide.u32 %rd1, %r0, 8;
	add.u64 %rd2, %rd0, %rd1;
	st.global.v2.u32 [%rd2], {%r1, %r3};
	ret;
}
"#,
    );
    let mut mem = Memory::new();
    let out = mem.alloc(8 * 32);
    launch(&m.kernels[0], dims(1, 32), &[out], &mut mem).unwrap();
    let w = words(&mem, out, 64);
    for lane in 0..32 {
        assert_eq!(w[2 * lane], (0..32).sum::<u32>(), "lane {lane}: the butterfly sum");
        // Down by one: lane 31 has no source in range and keeps its own value.
        assert_eq!(w[2 * lane + 1], if lane < 31 { lane as u32 + 1 } else { 31 }, "lane {lane}: shfl.down");
    }
}

/// One m16n8k8 tf32 product: each lane loads its fragments with the row and column formulas of
/// the ISA's figures ("mma-1688-A-tf32", "mma-1688-B-tf32", "mma-1688-C"), so a wrong fragment
/// layout in the simulator gives a wrong product.
#[test]
fn mma_fragments_follow_the_isa() {
    let m = module(
        r#"
.visible .entry mma(
	.param .u64 a,
	.param .u64 b,
	.param .u64 c
)
{
	.reg .b32 %r<24>;
	.reg .b64 %rd<16>;
	.reg .f32 %f<16>;
	ld.param.u64 %rd0, [a];
	cvta.to.global.u64 %rd0, %rd0;
	ld.param.u64 %rd1, [b];
	cvta.to.global.u64 %rd1, %rd1;
	ld.param.u64 %rd2, [c];
	cvta.to.global.u64 %rd2, %rd2;
	mov.u32 %r0, %laneid;
	shr.u32 %r1, %r0, 2;
	and.b32 %r2, %r0, 3;
	// A is 16x8 row-major: a0 (g, q), a1 (g+8, q), a2 (g, q+4), a3 (g+8, q+4).
	mad.lo.u32 %r3, %r1, 8, %r2;
	mul.wide.u32 %rd3, %r3, 4;
	add.u64 %rd3, %rd0, %rd3;
	ld.global.f32 %f0, [%rd3];
	ld.global.f32 %f1, [%rd3+256];
	ld.global.f32 %f2, [%rd3+16];
	ld.global.f32 %f3, [%rd3+272];
	cvt.rna.tf32.f32 %r4, %f0;
	cvt.rna.tf32.f32 %r5, %f1;
	cvt.rna.tf32.f32 %r6, %f2;
	cvt.rna.tf32.f32 %r7, %f3;
	// B is 8x8 row-major (k, n): b0 (q, g), b1 (q+4, g).
	mad.lo.u32 %r8, %r2, 8, %r1;
	mul.wide.u32 %rd4, %r8, 4;
	add.u64 %rd4, %rd1, %rd4;
	ld.global.f32 %f4, [%rd4];
	ld.global.f32 %f5, [%rd4+128];
	cvt.rna.tf32.f32 %r9, %f4;
	cvt.rna.tf32.f32 %r10, %f5;
	// C and D are 16x8 row-major: ci (g + 8(i>>1), 2q + (i&1)).
	shl.b32 %r11, %r2, 1;
	mad.lo.u32 %r12, %r1, 8, %r11;
	mul.wide.u32 %rd5, %r12, 4;
	add.u64 %rd5, %rd2, %rd5;
	ld.global.v2.f32 {%f6, %f7}, [%rd5];
	ld.global.v2.f32 {%f8, %f9}, [%rd5+256];
	mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%f6, %f7, %f8, %f9}, {%r4, %r5, %r6, %r7}, {%r9, %r10}, {%f6, %f7, %f8, %f9};
	st.global.v2.f32 [%rd5], {%f6, %f7};
	st.global.v2.f32 [%rd5+256], {%f8, %f9};
	ret;
}
"#,
    );
    let mut mem = Memory::new();
    // Integers and halves: exact in tf32 and in the sums, so the comparison is exact.
    let a: Vec<f32> = (0..128).map(|i| ((i * 7) % 13) as f32 * 0.5 - 3.0).collect();
    let b: Vec<f32> = (0..64).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
    let c: Vec<f32> = (0..128).map(|i| (i % 9) as f32).collect();
    let (pa, pb, pc) = (upload(&mut mem, &a), upload(&mut mem, &b), upload(&mut mem, &c));
    let counts = launch(&m.kernels[0], dims(1, 32), &[pa, pb, pc], &mut mem).unwrap();
    assert_eq!(counts.mma, 1);
    let d = floats(&mem, pc, 128);
    for r in 0..16 {
        for n in 0..8 {
            let want: f32 = (0..8).map(|k| a[r * 8 + k] * b[k * 8 + n]).sum::<f32>() + c[r * 8 + n];
            assert_eq!(d[r * 8 + n], want, "D[{r}][{n}]");
        }
    }
}

#[test]
fn instructions_outside_the_subset_are_rejected_by_name() {
    let err = parse(".version 7.8\n.target sm_80\n.address_size 64\n.visible .entry k(\n)\n{\n\tex2.approx.f32 %f0, %f1;\n}\n").unwrap_err();
    assert!(format!("{err:#}").contains("unsupported instruction `ex2.approx.f32`"), "{err:#}");
}

#[test]
fn printing_and_parsing_round_trip() {
    let m = module(&REVERSE.replace("BARRIER", "bar.sync 0;"));
    let printed = m.to_text();
    assert_eq!(parse(&printed).unwrap(), m, "{printed}");
}

/// Threads of one block exchanging values through global memory: ordered by a barrier, and a
/// race without it; two blocks writing the same word are never ordered within a launch.
const EXCHANGE: &str = r#"
.visible .entry exchange(
	.param .u64 buf,
	.param .u64 out
)
{
	.reg .b32 %r<4>;
	.reg .b64 %rd<8>;
	.reg .f32 %f<2>;
	ld.param.u64 %rd0, [buf];
	cvta.to.global.u64 %rd0, %rd0;
	ld.param.u64 %rd1, [out];
	cvta.to.global.u64 %rd1, %rd1;
	mov.u32 %r0, %tid.x;
	cvt.rn.f32.u32 %f0, %r0;
	mul.wide.u32 %rd2, %r0, 4;
	add.u64 %rd3, %rd0, %rd2;
	st.global.f32 [%rd3], %f0;
	BARRIER
	mov.u32 %r1, 31;
	sub.u32 %r1, %r1, %r0;
	mul.wide.u32 %rd4, %r1, 4;
	add.u64 %rd5, %rd0, %rd4;
	ld.global.f32 %f1, [%rd5];
	mov.u32 %r2, %ctaid.x;
	mad.lo.u32 %r3, %r2, 32, %r0;
	mul.wide.u32 %rd6, %r3, 4;
	add.u64 %rd7, %rd1, %rd6;
	st.global.f32 [%rd7], %f1;
	ret;
}
"#;

#[test]
fn global_memory_races_are_reported() {
    let mut mem = Memory::new();
    let (buf, out) = (mem.alloc(4 * 32), mem.alloc(4 * 64));
    let ordered = module(&EXCHANGE.replace("BARRIER", "bar.sync 0;"));
    launch(&ordered.kernels[0], dims(1, 32), &[buf, out], &mut mem).unwrap();
    let expected: Vec<f32> = (0..32).rev().map(|i| i as f32).collect();
    assert_eq!(floats(&mem, out, 32), expected);
    let unordered = module(&EXCHANGE.replace("BARRIER", ""));
    let err = launch(&unordered.kernels[0], dims(1, 32), &[buf, out], &mut mem).unwrap_err().to_string();
    assert!(err.contains("data race: global address"), "{err}");
    // Two blocks: each writes the same 32 words of `buf`.
    let err = launch(&ordered.kernels[0], dims(2, 32), &[buf, out], &mut mem).unwrap_err().to_string();
    assert!(err.contains("data race") && err.contains("block (1, 0, 0)"), "{err}");
}
