//! Writing a kernel: fresh registers per class, parameters, labels, and one method per
//! instruction shape that returns its destination, so generators read like the math they emit.

use std::collections::HashMap;

use tttc_ir::Size;

use crate::isa::*;

/// The parameter through which a kernel reads the lengths it is launched with.
pub const LENGTHS_PARAM: &str = "lengths";

pub struct Builder {
    name: String,
    /// The state space of accesses to device memory: global, or generic where some buffers
    /// may live in shared memory (a persistent kernel's carries).
    memory: Space,
    params: Vec<Param>,
    shared: Vec<Shared>,
    counts: [u32; 5],
    body: Vec<Stmt>,
    labels: u32,
    /// The length symbols a launch passes (as `int64`s at [`LENGTHS_PARAM`], in this order) and
    /// the greatest value of each.
    lengths: Vec<(String, usize)>,
    /// What runs before the body: the lengths loaded and the sizes computed from them, once.
    prologue: Vec<Stmt>,
    /// Whether a size is being computed (the sizes it needs go where it goes).
    computing: bool,
    sizes: Computed,
    lengths_ptr: Option<Reg>,
    /// While a size scope is open: where in the body its sizes go, and the sizes known before it.
    scope: Option<(usize, Computed)>,
}

/// The sizes computed so far, as `u64` and as `u32` (`true`) registers.
type Computed = HashMap<(Size, bool), Reg>;

fn slot(c: Class) -> usize {
    Class::ALL.iter().position(|&x| x == c).expect("every class is listed")
}

impl Builder {
    /// A kernel whose sizes may depend on `lengths` (each symbol with its greatest value).
    pub fn new(name: impl Into<String>, lengths: &[(String, usize)]) -> Builder {
        Builder {
            name: name.into(),
            memory: Space::Global,
            params: Vec::new(),
            shared: Vec::new(),
            counts: [0; 5],
            body: Vec::new(),
            labels: 0,
            lengths: lengths.to_vec(),
            prologue: Vec::new(),
            computing: false,
            sizes: HashMap::new(),
            lengths_ptr: None,
            scope: None,
        }
    }

    /// The greatest value `s` takes with the lengths up to their bounds.
    pub fn most(&self, s: Size) -> usize {
        let range = s.range(&|sym| self.lengths.iter().find(|(name, _)| name == sym).map(|&(_, v)| (1, v as i64)));
        range.expect("every length symbol has a bound").1.max(0) as usize
    }

    /// `s` as a `u64` operand: an immediate when it is a constant, else a register computed
    /// once, at the start of the kernel, from the lengths.
    pub fn size(&mut self, s: Size) -> Val {
        self.size_as(s, false)
    }

    /// `s` as a `u32` operand (sizes a tile index is compared with).
    pub fn size32(&mut self, s: Size) -> Val {
        self.size_as(s, true)
    }

    fn size_as(&mut self, s: Size, narrow: bool) -> Val {
        if let Some(c) = s.constant() {
            return Val::Int(c);
        }
        if let Some(&r) = self.sizes.get(&(s, narrow)) {
            return r.into();
        }
        self.lengths_ptr();
        let outer = !self.computing;
        // Computed in the kernel's prologue, or at the start of the open scope.
        let mut code = Vec::new();
        if outer {
            std::mem::swap(&mut self.body, &mut code);
            self.computing = true;
        }
        let r = if narrow {
            let wide = self.size(s);
            self.cvt(None, Ty::U32, Ty::U64, wide)
        } else {
            self.compute(s)
        };
        if outer {
            std::mem::swap(&mut self.body, &mut code);
            self.computing = false;
            match &mut self.scope {
                Some((at, _)) => {
                    let n = code.len();
                    self.body.splice(*at..*at, code);
                    *at += n;
                }
                None => self.prologue.append(&mut code),
            }
        }
        self.sizes.insert((s, narrow), r);
        r.into()
    }

    /// From here until [`Builder::close_size_scope`], sizes not computed yet are computed here
    /// rather than in the kernel's prologue, and forgotten at the close: their registers are
    /// live only in between (a persistent kernel's bodies for whole and shorter chunks need
    /// different sizes).
    pub fn open_size_scope(&mut self) {
        assert!(self.scope.is_none(), "size scopes do not nest");
        self.scope = Some((self.body.len(), self.sizes.clone()));
    }

    pub fn close_size_scope(&mut self) {
        let (_, known) = self.scope.take().expect("a size scope is open");
        self.sizes = known;
    }

    /// The value of a size that is not a constant: a length loaded, or the size's terms with a
    /// positive coefficient summed, then those with a negative one subtracted (all arithmetic
    /// unsigned), each length among them loaded once.
    fn compute(&mut self, s: Size) -> Reg {
        let terms = s.terms();
        if let [(1, atoms)] = terms.as_slice() {
            if let [tttc_ir::size::Atom::Sym(name)] = atoms.as_slice() {
                let j = self.lengths.iter().position(|(x, _)| x == name).expect("every length symbol is passed");
                let at = self.lengths_ptr();
                return self.ld(self.memory, Ty::U64, at, 8 * j as i64);
            }
        }
        let total = self.mov(Ty::U64, Val::Int(0));
        for (coefficient, atoms) in terms {
            let mut term = Val::Int(coefficient.abs());
            for atom in &atoms {
                let v = match atom {
                    tttc_ir::size::Atom::Sym(name) => self.size(Size::sym(name)),
                    tttc_ir::size::Atom::Div(x, d) => {
                        let x = self.size(*x);
                        self.bin(BinOp::Div, Ty::U64, x, Val::Int(*d)).into()
                    }
                    tttc_ir::size::Atom::Rem(x, d) => {
                        let x = self.size(*x);
                        self.bin(BinOp::Rem, Ty::U64, x, Val::Int(*d)).into()
                    }
                };
                term = match term {
                    Val::Int(1) => v,
                    t => self.bin(BinOp::Mul, Ty::U64, v, t).into(),
                };
            }
            let op = if coefficient > 0 { BinOp::Add } else { BinOp::Sub };
            self.bin_to(total, op, Ty::U64, total, term);
        }
        total
    }

    /// The pointer to the lengths, loaded once, in the kernel's prologue.
    fn lengths_ptr(&mut self) -> Reg {
        if let Some(r) = self.lengths_ptr {
            return r;
        }
        std::mem::swap(&mut self.body, &mut self.prologue);
        let r = self.ptr_param(LENGTHS_PARAM);
        std::mem::swap(&mut self.body, &mut self.prologue);
        self.lengths_ptr = Some(r);
        r
    }

    pub fn reg(&mut self, class: Class) -> Reg {
        let n = &mut self.counts[slot(class)];
        *n += 1;
        Reg { class, n: *n - 1 }
    }

    /// A register of `ty`'s class.
    pub fn tmp(&mut self, ty: Ty) -> Reg {
        self.reg(ty.class())
    }

    /// Device memory accessed with generic addresses from here on (set before the parameters).
    pub fn use_generic_addresses(&mut self) {
        self.memory = Space::Generic;
    }

    /// The state space of accesses to device memory.
    pub fn memory(&self) -> Space {
        self.memory
    }

    /// A pointer parameter, loaded and converted to a global address (left generic under
    /// [`Builder::use_generic_addresses`]).
    pub fn ptr_param(&mut self, name: &str) -> Reg {
        let generic = self.param(name, Ty::U64);
        if self.memory == Space::Generic {
            return generic;
        }
        let global = self.reg(Class::R64);
        self.emit(Inst::CvtaGlobal { dst: global, src: generic });
        global
    }

    /// An integer parameter of type `ty` (`u32` or `u64`), loaded into a register.
    pub fn param(&mut self, name: &str, ty: Ty) -> Reg {
        self.params.push(Param { name: name.to_string(), ty });
        let dst = self.tmp(ty);
        self.emit(Inst::Ld { space: Space::Param, ty, dst: vec![dst], addr: Addr { base: Base::Symbol(name.to_string()), offset: 0 } });
        dst
    }

    /// A shared array; its address (in the shared window) as a `u32` register.
    /// Declared once per kernel: asking again for the same name gives its address again (grown
    /// to the larger size).
    pub fn shared(&mut self, name: &str, bytes: usize, align: usize) -> Reg {
        match self.shared.iter_mut().find(|s| s.name == name) {
            Some(s) => {
                s.bytes = s.bytes.max(bytes);
                s.align = s.align.max(align);
            }
            None => self.shared.push(Shared { name: name.to_string(), bytes, align }),
        }
        let dst = self.reg(Class::R32);
        self.emit(Inst::SharedAddr { dst, symbol: name.to_string() });
        dst
    }

    pub fn emit(&mut self, inst: Inst) {
        self.body.push(Stmt::inst(inst));
    }

    pub fn guarded(&mut self, p: Reg, negated: bool, inst: Inst) {
        self.body.push(Stmt::Inst { guard: Some((p, negated)), inst });
    }

    pub fn label(&mut self) -> u32 {
        self.labels += 1;
        self.labels - 1
    }

    pub fn place(&mut self, label: u32) {
        self.body.push(Stmt::Label(label));
    }

    pub fn special(&mut self, s: Special) -> Reg {
        let dst = self.reg(Class::R32);
        self.emit(Inst::Mov { ty: Ty::U32, dst, src: Val::Special(s) });
        dst
    }

    pub fn mov(&mut self, ty: Ty, src: impl Into<Val>) -> Reg {
        let dst = self.tmp(ty);
        self.emit(Inst::Mov { ty, dst, src: src.into() });
        dst
    }

    /// A `mov` of type `ty` into a new register of `class`: bits moved between classes.
    pub fn mov_as(&mut self, ty: Ty, class: Class, src: impl Into<Val>) -> Reg {
        let dst = self.reg(class);
        self.emit(Inst::Mov { ty, dst, src: src.into() });
        dst
    }

    pub fn bin(&mut self, op: BinOp, ty: Ty, a: impl Into<Val>, b: impl Into<Val>) -> Reg {
        let out = if op == BinOp::MulWide {
            match ty {
                Ty::U32 => Ty::U64,
                Ty::S32 => Ty::S64,
                t => t,
            }
        } else {
            ty
        };
        let dst = self.tmp(out);
        self.emit(Inst::Bin { op, ty, dst, a: a.into(), b: b.into() });
        dst
    }

    /// `dst = op(a, b)` into an existing register.
    pub fn bin_to(&mut self, dst: Reg, op: BinOp, ty: Ty, a: impl Into<Val>, b: impl Into<Val>) {
        self.emit(Inst::Bin { op, ty, dst, a: a.into(), b: b.into() });
    }

    pub fn un(&mut self, op: UnOp, ty: Ty, a: impl Into<Val>) -> Reg {
        let dst = self.tmp(ty);
        self.emit(Inst::Un { op, ty, dst, a: a.into() });
        dst
    }

    pub fn fma(&mut self, ty: Ty, a: impl Into<Val>, b: impl Into<Val>, c: impl Into<Val>) -> Reg {
        let dst = self.tmp(ty);
        self.emit(Inst::Fma { ty, dst, a: a.into(), b: b.into(), c: c.into() });
        dst
    }

    pub fn setp(&mut self, cmp: Cmp, ty: Ty, a: impl Into<Val>, b: impl Into<Val>) -> Reg {
        let dst = self.reg(Class::Pred);
        self.emit(Inst::Setp { cmp, ty, dst, a: a.into(), b: b.into() });
        dst
    }

    pub fn selp(&mut self, ty: Ty, p: Reg, a: impl Into<Val>, b: impl Into<Val>) -> Reg {
        let dst = self.tmp(ty);
        self.emit(Inst::Selp { ty, dst, a: a.into(), b: b.into(), p });
        dst
    }

    pub fn cvt(&mut self, round: Option<Round>, to: Ty, from: Ty, src: impl Into<Val>) -> Reg {
        let dst = self.tmp(to);
        self.emit(Inst::Cvt { round, to: CvtTo::Ty(to), from, dst, src: src.into() });
        dst
    }

    pub fn ld(&mut self, space: Space, ty: Ty, base: Reg, offset: i64) -> Reg {
        let dst = self.tmp(ty);
        self.emit(Inst::Ld { space, ty, dst: vec![dst], addr: Addr { base: Base::Reg(base), offset } });
        dst
    }

    pub fn st(&mut self, space: Space, ty: Ty, base: Reg, offset: i64, src: impl Into<Val>) {
        self.emit(Inst::St { space, ty, addr: Addr { base: Base::Reg(base), offset }, src: vec![src.into()] });
    }

    /// `base + index · bytes` as a 64-bit address, for a 64-bit index.
    pub fn element(&mut self, base: Reg, index: Reg, bytes: usize) -> Reg {
        let scaled = self.bin(BinOp::Mul, Ty::U64, index, Val::Int(bytes as i64));
        self.bin(BinOp::Add, Ty::U64, base, scaled)
    }

    pub fn bra(&mut self, target: u32) {
        self.emit(Inst::Bra { target });
    }

    /// Branches to `target` when `p` is true (`negated`: when false).
    pub fn bra_if(&mut self, p: Reg, negated: bool, target: u32) {
        self.guarded(p, negated, Inst::Bra { target });
    }

    pub fn finish(mut self) -> Kernel {
        self.emit(Inst::Ret);
        self.prologue.append(&mut self.body);
        self.body = self.prologue;
        let regs = Class::ALL.iter().map(|&c| (c, self.counts[slot(c)])).filter(|(_, n)| *n > 0).collect();
        Kernel { name: self.name, params: self.params, shared: self.shared, regs, body: self.body }
    }
}
