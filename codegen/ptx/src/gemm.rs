//! Matrix products on tensor cores at f32 accuracy: `mma.sync.m16n8k8` on tf32 operands, each
//! f32 operand split into a tf32 high part and a tf32 low part (its rounding error), three
//! products per step (hi·hi + hi·lo + lo·hi; the lo·lo term is below f32's precision).
//!
//! A block of 128 threads (four warps, 2×2) computes a 64×64 tile of C; each warp a 32×32
//! sub-tile, as 2×4 m16n8 accumulators held in registers. Per step of 16 along K the block
//! stages a 64×16 tile of A and a 16×64 tile of B in shared memory (rows padded so that a
//! warp's fragment loads hit 32 different banks), with a barrier before the fragments are read
//! and another before the tiles are overwritten. Edges are predicated: sizes need not be
//! multiples of the tile.

use tttc_ir::Size;

use crate::build::Builder;
use crate::isa::*;
use crate::kernels::{dot, unravel, Dims, Product, Spread, Store};

const BM: usize = 64;
const BN: usize = 64;
const BK: usize = 16;
const THREADS: usize = 128;
/// Floats per row of the staged tiles.
const A_PITCH: usize = BK + 4;
const B_PITCH: usize = BN + 8;

/// Shared memory the staged tiles take.
pub const SHARED_BYTES: usize = (BM * A_PITCH + BK * B_PITCH) * 4;

/// Whether the tensor-core kernel applies: at least one m16n8k8 tile at the longest lengths,
/// and a batch that fits the grid's third dimension.
pub fn applies(b: &Builder, p: &Product) -> bool {
    b.most(p.m) >= 16 && b.most(p.n) >= 8 && b.most(p.k) >= 8 && b.most(p.batch.iter().product()) <= 65_535
}

/// The product `p` (pointers `[a, b]`), each element of C stored as `store` says (into `c`,
/// through the epilogue). On a grid, one block per 64×64 tile of C (and per batch index, along
/// z); in a persistent kernel's block, the block computes every tile in turn.
pub fn emit(b: &mut Builder, spread: Spread, store: Store, ptrs: [Reg; 2], p: &Product) -> Dims {
    let (tiles_n, tiles_m, count) = (p.n.div_ceil(BN), p.m.div_ceil(BM), p.batch.iter().product::<Size>());
    let block = [THREADS as u32, 1, 1];
    match spread {
        Spread::Grid => {
            let (tn, tm, z) = (b.special(Special::Ctaid(0)), b.special(Special::Ctaid(1)), b.special(Special::Ctaid(2)));
            tile(b, store, ptrs, p, (tn, tm, z));
            ([tiles_n, tiles_m, count], block)
        }
        Spread::Block => {
            let (across, down, tiles) = (b.size32(tiles_n), b.size32(tiles_m), b.size32(tiles_n * tiles_m * count));
            let t = b.mov(Ty::U32, Val::Int(0));
            let top = b.label();
            b.place(top);
            b.emit(Inst::NoUnroll);
            let tn = b.bin(BinOp::Rem, Ty::U32, t, across);
            let rest = b.bin(BinOp::Div, Ty::U32, t, across);
            let tm = b.bin(BinOp::Rem, Ty::U32, rest, down);
            let z = b.bin(BinOp::Div, Ty::U32, rest, down);
            tile(b, store, ptrs, p, (tn, tm, z));
            b.bin_to(t, BinOp::Add, Ty::U32, t, Val::Int(1));
            let more = b.setp(Cmp::Lt, Ty::U32, t, tiles);
            b.bra_if(more, false, top);
            ([Size::ONE; 3], block)
        }
    }
}

/// One 64×64 tile of C: columns from `tn`·64, rows from `tm`·64, batch index `z`.
fn tile(b: &mut Builder, store: Store, [pa, pb]: [Reg; 2], p: &Product, (tn, tm, z): (Reg, Reg, Reg)) {
    let Product { ref a, b: ref bm, ref batch, m, n, k } = *p;
    let tid = b.special(Special::Tid(0));
    let lane = b.bin(BinOp::And, Ty::B32, tid, Val::Int(31));
    let warp = b.bin(BinOp::Shr, Ty::U32, tid, Val::Int(5));
    let g = b.bin(BinOp::Shr, Ty::U32, lane, Val::Int(2));
    let q = b.bin(BinOp::And, Ty::B32, lane, Val::Int(3));
    let wm = b.bin(BinOp::Shr, Ty::U32, warp, Val::Int(1));
    let wm = b.bin(BinOp::Mul, Ty::U32, wm, Val::Int(32));
    let wn = b.bin(BinOp::And, Ty::B32, warp, Val::Int(1));
    let wn = b.bin(BinOp::Mul, Ty::U32, wn, Val::Int(32));
    let bn0 = b.bin(BinOp::Mul, Ty::U32, tn, Val::Int(BN as i64));
    let bm0 = b.bin(BinOp::Mul, Ty::U32, tm, Val::Int(BM as i64));

    // This tile's matrices in the batch.
    let z = b.cvt(None, Ty::U64, Ty::U32, z);
    let zi = unravel(b, z, batch);
    let a_off = dot(b, &zi, &a.batch_strides, Size::ZERO);
    let b_off = dot(b, &zi, &bm.batch_strides, Size::ZERO);
    let mn = b.size(m * n);
    let c_off = b.bin(BinOp::Mul, Ty::U64, z, mn);
    let pa = b.element(pa, a_off, 4);
    let pb = b.element(pb, b_off, 4);

    let sa = b.shared("a_tile", BM * A_PITCH * 4, 16);
    let sb = b.shared("b_tile", BK * B_PITCH * 4, 16);
    let acc: Vec<[Reg; 4]> = (0..8).map(|_| std::array::from_fn(|_| b.mov(Ty::F32, Val::F32(0.0)))).collect();

    // Each thread stages 8 elements of each tile: A rows tid/16 + 8j at column tid%16, B rows
    // tid/64 + 2j at column tid%64.
    let a_row = b.bin(BinOp::Shr, Ty::U32, tid, Val::Int(4));
    let a_col = b.bin(BinOp::And, Ty::B32, tid, Val::Int(15));
    let b_row = b.bin(BinOp::Shr, Ty::U32, tid, Val::Int(6));
    let b_col = b.bin(BinOp::And, Ty::B32, tid, Val::Int(63));
    let a_stage = shared_at(b, sa, a_row, A_PITCH, a_col);
    let b_stage = shared_at(b, sb, b_row, B_PITCH, b_col);
    // Where this thread's fragments start: A at (wm + g, q), B at (q, wn + g).
    let a_frag_row = b.bin(BinOp::Add, Ty::U32, wm, g);
    let a_frag = shared_at(b, sa, a_frag_row, A_PITCH, q);
    let b_frag_col = b.bin(BinOp::Add, Ty::U32, wn, g);
    let b_frag = shared_at(b, sb, q, B_PITCH, b_frag_col);
    let a_grow0 = b.bin(BinOp::Add, Ty::U32, bm0, a_row);
    let b_gcol = b.bin(BinOp::Add, Ty::U32, bn0, b_col);

    let k0 = b.mov(Ty::U32, Val::Int(0));
    let top = b.label();
    b.place(top);
    for j in 0..BM * BK / THREADS {
        let row = b.bin(BinOp::Add, Ty::U32, a_grow0, Val::Int((8 * j) as i64));
        let col = b.bin(BinOp::Add, Ty::U32, k0, a_col);
        let v = load_checked(b, pa, (row, m, a.row_stride), (col, k, a.col_stride));
        b.st(Space::Shared, Ty::F32, a_stage, (8 * j * A_PITCH * 4) as i64, v);
    }
    for j in 0..BK * BN / THREADS {
        let row = b.bin(BinOp::Add, Ty::U32, k0, b_row);
        let row = b.bin(BinOp::Add, Ty::U32, row, Val::Int((2 * j) as i64));
        let v = load_checked(b, pb, (row, k, bm.row_stride), (b_gcol, n, bm.col_stride));
        b.st(Space::Shared, Ty::F32, b_stage, (2 * j * B_PITCH * 4) as i64, v);
    }
    b.emit(Inst::BarSync);
    for kk in (0..BK).step_by(8) {
        // A fragments (ISA: a_i at row g + 8(i & 1), column q + 4(i >> 1)), per 16-row tile.
        let a_parts: Vec<([Reg; 4], [Reg; 4])> = (0..2)
            .map(|mi| {
                let parts: Vec<(Reg, Reg)> = (0..4)
                    .map(|i| {
                        let (r, c) = (mi * 16 + 8 * (i & 1), kk + 4 * (i >> 1));
                        let x = b.ld(Space::Shared, Ty::F32, a_frag, ((r * A_PITCH + c) * 4) as i64);
                        split(b, x)
                    })
                    .collect();
                (std::array::from_fn(|i| parts[i].0), std::array::from_fn(|i| parts[i].1))
            })
            .collect();
        // B fragments (ISA: b_i at row q + 4i, column g), per 8-column tile.
        let b_parts: Vec<([Reg; 2], [Reg; 2])> = (0..4)
            .map(|ni| {
                let parts: Vec<(Reg, Reg)> = (0..2)
                    .map(|i| {
                        let (r, c) = (kk + 4 * i, ni * 8);
                        let x = b.ld(Space::Shared, Ty::F32, b_frag, ((r * B_PITCH + c) * 4) as i64);
                        split(b, x)
                    })
                    .collect();
                ([parts[0].0, parts[1].0], [parts[0].1, parts[1].1])
            })
            .collect();
        for mi in 0..2 {
            for ni in 0..4 {
                let d = acc[mi * 4 + ni];
                let ((a_hi, a_lo), (b_hi, b_lo)) = (a_parts[mi], b_parts[ni]);
                // The small terms first, the large one last.
                for (x, y) in [(a_lo, b_hi), (a_hi, b_lo), (a_hi, b_hi)] {
                    b.emit(Inst::MmaTf32 { d, a: x, b: y, c: d });
                }
            }
        }
    }
    b.emit(Inst::BarSync);
    b.bin_to(k0, BinOp::Add, Ty::U32, k0, Val::Int(BK as i64));
    let k32 = b.size32(k);
    let more = b.setp(Cmp::Lt, Ty::U32, k0, k32);
    b.bra_if(more, false, top);

    // C fragments (ISA: c_i at row g + 8(i >> 1), column 2q + (i & 1)).
    let row0 = b.bin(BinOp::Add, Ty::U32, bm0, a_frag_row);
    let q2 = b.bin(BinOp::Mul, Ty::U32, q, Val::Int(2));
    let col0 = b.bin(BinOp::Add, Ty::U32, bn0, wn);
    let col0 = b.bin(BinOp::Add, Ty::U32, col0, q2);
    for mi in 0..2 {
        for ni in 0..4 {
            #[allow(clippy::needless_range_loop)] // `i` also places the fragment (ISA layout)
            for i in 0..4 {
                let row = b.bin(BinOp::Add, Ty::U32, row0, Val::Int((mi * 16 + 8 * (i >> 1)) as i64));
                let col = b.bin(BinOp::Add, Ty::U32, col0, Val::Int((ni * 8 + (i & 1)) as i64));
                let inside = both_below(b, (row, m), (col, n));
                let outside = b.label();
                b.bra_if(inside, true, outside);
                let width = b.size32(n);
                let at = b.fma(Ty::U32, row, width, col);
                let at = b.cvt(None, Ty::U64, Ty::U32, at);
                let at = b.bin(BinOp::Add, Ty::U64, at, c_off);
                store.element(b, at, acc[mi * 4 + ni][i]);
                b.place(outside);
            }
        }
    }
}

/// The shared-memory address of `(row, col)` in a tile of `pitch` floats per row.
fn shared_at(b: &mut Builder, base: Reg, row: Reg, pitch: usize, col: Reg) -> Reg {
    let at = b.fma(Ty::U32, row, Val::Int(pitch as i64), col);
    let bytes = b.bin(BinOp::Shl, Ty::B32, at, Val::Int(2));
    b.bin(BinOp::Add, Ty::U32, base, bytes)
}

/// `row < rows && col < cols`.
fn both_below(b: &mut Builder, (row, rows): (Reg, Size), (col, cols): (Reg, Size)) -> Reg {
    let (rows, cols) = (b.size32(rows), b.size32(cols));
    let r = b.setp(Cmp::Lt, Ty::U32, row, rows);
    let c = b.setp(Cmp::Lt, Ty::U32, col, cols);
    b.bin(BinOp::And, Ty::Pred, r, c)
}

/// The f32 at `(row, col)` of a matrix read with the given strides, or 0 outside it.
fn load_checked(b: &mut Builder, base: Reg, (row, rows, row_stride): (Reg, Size, Size), (col, cols, col_stride): (Reg, Size, Size)) -> Reg {
    let inside = both_below(b, (row, rows), (col, cols));
    let (row_step, col_step) = (b.size32(row_stride * 4), b.size32(col_stride * 4));
    let r = b.bin(BinOp::MulWide, Ty::U32, row, row_step);
    let c = b.bin(BinOp::MulWide, Ty::U32, col, col_step);
    let off = b.bin(BinOp::Add, Ty::U64, r, c);
    let p = b.bin(BinOp::Add, Ty::U64, base, off);
    let v = b.mov(Ty::F32, Val::F32(0.0));
    b.guarded(inside, false, Inst::Ld { space: b.memory(), ty: Ty::F32, dst: vec![v], addr: Addr { base: Base::Reg(p), offset: 0 } });
    v
}

/// `x` as tf32 high and low parts (`.b32` registers): hi = tf32(x), lo = tf32(x − hi).
fn split(b: &mut Builder, x: Reg) -> (Reg, Reg) {
    let hi = b.reg(Class::R32);
    b.emit(Inst::Cvt { round: Some(Round::Rna), to: CvtTo::Tf32, from: Ty::F32, dst: hi, src: x.into() });
    let hi_f = b.mov_as(Ty::B32, Class::F32, hi);
    let rest = b.bin(BinOp::Sub, Ty::F32, x, hi_f);
    let lo = b.reg(Class::R32);
    b.emit(Inst::Cvt { round: Some(Round::Rna), to: CvtTo::Tf32, from: Ty::F32, dst: lo, src: rest.into() });
    (hi, lo)
}
