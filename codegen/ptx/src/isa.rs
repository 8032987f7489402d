//! The subset of PTX that tttc emits, as typed values: a [`Module`] of [`Kernel`]s, each a list
//! of [`Stmt`]s over virtual registers. [`Module::to_text`] prints it as PTX text (what `ptxas` and
//! the CUDA driver read) and [`crate::parse`] reads that text back, so every consumer — the
//! simulator included — works from the text that is shipped.

use std::fmt::{self, Write};

/// An instruction's operand type, as written in its suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    Pred,
    B32,
    U32,
    S32,
    F32,
    B64,
    U64,
    S64,
    F64,
}

impl Ty {
    pub fn name(self) -> &'static str {
        match self {
            Ty::Pred => "pred",
            Ty::B32 => "b32",
            Ty::U32 => "u32",
            Ty::S32 => "s32",
            Ty::F32 => "f32",
            Ty::B64 => "b64",
            Ty::U64 => "u64",
            Ty::S64 => "s64",
            Ty::F64 => "f64",
        }
    }

    pub fn from_name(s: &str) -> Option<Ty> {
        Some(match s {
            "pred" => Ty::Pred,
            "b32" => Ty::B32,
            "u32" => Ty::U32,
            "s32" => Ty::S32,
            "f32" => Ty::F32,
            "b64" => Ty::B64,
            "u64" => Ty::U64,
            "s64" => Ty::S64,
            "f64" => Ty::F64,
            _ => return None,
        })
    }

    pub fn bytes(self) -> usize {
        match self {
            Ty::Pred => 1,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 => 4,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Ty::F32 | Ty::F64)
    }

    pub fn is_signed(self) -> bool {
        matches!(self, Ty::S32 | Ty::S64)
    }

    /// The register class that holds values of this type.
    pub fn class(self) -> Class {
        match self {
            Ty::Pred => Class::Pred,
            Ty::B32 | Ty::U32 | Ty::S32 => Class::R32,
            Ty::F32 => Class::F32,
            Ty::B64 | Ty::U64 | Ty::S64 => Class::R64,
            Ty::F64 => Class::F64,
        }
    }
}

/// A register class: one `.reg` declaration per class, registers numbered from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Pred,
    R32,
    R64,
    F32,
    F64,
}

impl Class {
    pub const ALL: [Class; 5] = [Class::Pred, Class::R32, Class::R64, Class::F32, Class::F64];

    pub fn prefix(self) -> &'static str {
        match self {
            Class::Pred => "%p",
            Class::R32 => "%r",
            Class::R64 => "%rd",
            Class::F32 => "%f",
            Class::F64 => "%fd",
        }
    }

    /// The type of its `.reg` declaration.
    pub fn decl(self) -> Ty {
        match self {
            Class::Pred => Ty::Pred,
            Class::R32 => Ty::B32,
            Class::R64 => Ty::B64,
            Class::F32 => Ty::F32,
            Class::F64 => Ty::F64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reg {
    pub class: Class,
    pub n: u32,
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.class.prefix(), self.n)
    }
}

/// A special register, read with `mov`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
}

impl fmt::Display for Special {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let axis = |a: &u8| ["x", "y", "z"][*a as usize];
        match self {
            Special::Tid(a) => write!(f, "%tid.{}", axis(a)),
            Special::Ntid(a) => write!(f, "%ntid.{}", axis(a)),
            Special::Ctaid(a) => write!(f, "%ctaid.{}", axis(a)),
            Special::Nctaid(a) => write!(f, "%nctaid.{}", axis(a)),
            Special::LaneId => write!(f, "%laneid"),
        }
    }
}

/// A source operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val {
    Reg(Reg),
    Int(i64),
    F32(f32),
    F64(f64),
    Special(Special),
}

impl From<Reg> for Val {
    fn from(r: Reg) -> Val {
        Val::Reg(r)
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Reg(r) => write!(f, "{r}"),
            Val::Int(i) => write!(f, "{i}"),
            // Exact bit patterns: PTX's hexadecimal float literals.
            Val::F32(x) => write!(f, "0f{:08X}", x.to_bits()),
            Val::F64(x) => write!(f, "0d{:016X}", x.to_bits()),
            Val::Special(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    Global,
    Shared,
    Param,
    /// No state space: a generic address, in the shared window or in global memory.
    Generic,
}

impl Space {
    pub fn name(self) -> &'static str {
        match self {
            Space::Global => "global",
            Space::Shared => "shared",
            Space::Param => "param",
            Space::Generic => "",
        }
    }
}

/// A memory address: a register or a symbol (a parameter or a shared array), plus a byte offset.
#[derive(Clone, Debug, PartialEq)]
pub enum Base {
    Reg(Reg),
    Symbol(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Addr {
    pub base: Base,
    pub offset: i64,
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.base {
            Base::Reg(r) => write!(f, "[{r}")?,
            Base::Symbol(s) => write!(f, "[{s}")?,
        }
        match self.offset {
            0 => write!(f, "]"),
            o if o > 0 => write!(f, "+{o}]"),
            o => write!(f, "{o}]"),
        }
    }
}

/// Two-operand arithmetic and logic. Float forms are always written with `.rn` so that no
/// assembler contracts a `mul` and an `add` into an `fma`: the simulator's results are the
/// hardware's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    /// Integer: the low half of the product; float: the rounded product.
    Mul,
    /// `u32 × u32 → u64` (or signed): the whole product, in a register twice as wide.
    MulWide,
    Div,
    Rem,
    Min,
    Max,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

impl BinOp {
    /// The mnemonic with its modifiers for operand type `ty`.
    pub fn mnemonic(self, ty: Ty) -> String {
        let base = match self {
            BinOp::Add => "add",
            BinOp::Sub => "sub",
            BinOp::Mul => "mul",
            BinOp::MulWide => "mul.wide",
            BinOp::Div => "div",
            BinOp::Rem => "rem",
            BinOp::Min => "min",
            BinOp::Max => "max",
            BinOp::And => "and",
            BinOp::Or => "or",
            BinOp::Xor => "xor",
            BinOp::Shl => "shl",
            BinOp::Shr => "shr",
        };
        let rounded = ty.is_float() && matches!(self, BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div);
        let low = !ty.is_float() && self == BinOp::Mul;
        format!("{base}{}{}.{}", if rounded { ".rn" } else { "" }, if low { ".lo" } else { "" }, ty.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Abs,
    Not,
    /// `sqrt.rn`: correctly rounded.
    Sqrt,
    /// `rcp.rn`: correctly rounded.
    Rcp,
}

impl UnOp {
    pub fn mnemonic(self, ty: Ty) -> String {
        let base = match self {
            UnOp::Neg => "neg",
            UnOp::Abs => "abs",
            UnOp::Not => "not",
            UnOp::Sqrt => "sqrt.rn",
            UnOp::Rcp => "rcp.rn",
        };
        format!("{base}.{}", ty.name())
    }
}

/// `setp` comparisons; `Nan` is true when either operand is NaN (`.nan`, floats only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Nan,
}

impl Cmp {
    pub const ALL: [Cmp; 7] = [Cmp::Eq, Cmp::Ne, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge, Cmp::Nan];

    pub fn name(self) -> &'static str {
        match self {
            Cmp::Eq => "eq",
            Cmp::Ne => "ne",
            Cmp::Lt => "lt",
            Cmp::Le => "le",
            Cmp::Gt => "gt",
            Cmp::Ge => "ge",
            Cmp::Nan => "nan",
        }
    }
}

/// `cvt` rounding: to nearest even (`rn`), to nearest with ties away (`rna`, for tf32), or
/// toward zero to an integer (`rzi`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Round {
    Rn,
    Rna,
    Rzi,
}

impl Round {
    pub fn name(self) -> &'static str {
        match self {
            Round::Rn => "rn",
            Round::Rna => "rna",
            Round::Rzi => "rzi",
        }
    }
}

/// `cvt`'s destination: a plain type, or tf32 (an f32 rounded to 10 mantissa bits, in a `.b32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CvtTo {
    Ty(Ty),
    Tf32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

impl ShflMode {
    pub fn name(self) -> &'static str {
        match self {
            ShflMode::Up => "up",
            ShflMode::Down => "down",
            ShflMode::Bfly => "bfly",
            ShflMode::Idx => "idx",
        }
    }
}

/// One instruction.
#[derive(Clone, Debug, PartialEq)]
pub enum Inst {
    Mov {
        ty: Ty,
        dst: Reg,
        src: Val,
    },
    /// `mov.u32 dst, symbol`: the address of a shared array in the shared window.
    SharedAddr {
        dst: Reg,
        symbol: String,
    },
    /// `ld.{space}.{ty}`; `vec` 2 or 4 loads that many consecutive elements (`.v2`/`.v4`).
    Ld {
        space: Space,
        ty: Ty,
        dst: Vec<Reg>,
        addr: Addr,
    },
    St {
        space: Space,
        ty: Ty,
        addr: Addr,
        src: Vec<Val>,
    },
    /// `cvta.to.global.u64`: a generic address (a kernel's pointer parameter) as a global one.
    CvtaGlobal {
        dst: Reg,
        src: Reg,
    },
    /// `cvta.shared.u64`: a shared-window address (zero-extended to 64 bits) as a generic one.
    CvtaShared {
        dst: Reg,
        src: Reg,
    },
    Bin {
        op: BinOp,
        ty: Ty,
        dst: Reg,
        a: Val,
        b: Val,
    },
    Un {
        op: UnOp,
        ty: Ty,
        dst: Reg,
        a: Val,
    },
    /// Floats: `fma.rn` (one rounding); integers: `mad.lo` (the low half of `a·b + c`).
    Fma {
        ty: Ty,
        dst: Reg,
        a: Val,
        b: Val,
        c: Val,
    },
    Setp {
        cmp: Cmp,
        ty: Ty,
        dst: Reg,
        a: Val,
        b: Val,
    },
    /// `dst = p ? a : b`.
    Selp {
        ty: Ty,
        dst: Reg,
        a: Val,
        b: Val,
        p: Reg,
    },
    Cvt {
        round: Option<Round>,
        to: CvtTo,
        from: Ty,
        dst: Reg,
        src: Val,
    },
    Bra {
        target: u32,
    },
    /// `bar.sync 0`: every thread of the block waits here for the others.
    BarSync,
    /// `shfl.sync.{mode}.b32 dst, src, lane, clamp, mask`.
    Shfl {
        mode: ShflMode,
        dst: Reg,
        src: Val,
        lane: Val,
        clamp: Val,
        mask: u32,
    },
    /// `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {d0..d3}, {a0..a3}, {b0, b1}, {c0..c3}`.
    MmaTf32 {
        d: [Reg; 4],
        a: [Reg; 4],
        b: [Reg; 2],
        c: [Reg; 4],
    },
    Ret,
    /// `.pragma "nounroll"`: the loop whose header holds it is not unrolled by the assembler.
    NoUnroll,
}

/// An instruction with its guard (`@%p` or `@!%p`), or a label.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Label(u32),
    Inst { guard: Option<(Reg, bool)>, inst: Inst },
}

impl Stmt {
    pub fn inst(inst: Inst) -> Stmt {
        Stmt::Inst { guard: None, inst }
    }
}

/// A kernel parameter: a pointer (`.u64`) or a 32- or 64-bit integer.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub ty: Ty,
}

/// A `.shared` array of `bytes` bytes aligned to `align`.
#[derive(Clone, Debug, PartialEq)]
pub struct Shared {
    pub name: String,
    pub bytes: usize,
    pub align: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    pub shared: Vec<Shared>,
    /// Registers used per class (the count in its `.reg` declaration).
    pub regs: Vec<(Class, u32)>,
    pub body: Vec<Stmt>,
}

impl Kernel {
    /// Whether it runs `mma` instructions.
    pub fn uses_tensor_cores(&self) -> bool {
        self.body.iter().any(|s| matches!(s, Stmt::Inst { inst: Inst::MmaTf32 { .. }, .. }))
    }

    pub fn shared_bytes(&self) -> usize {
        self.shared.iter().fold(0, |at, s| at.div_ceil(s.align) * s.align + s.bytes)
    }
}

/// The PTX ISA version written in every module: accepted by CUDA 12.0 and later drivers, for
/// sm_80 and sm_90 alike.
pub const PTX_VERSION: &str = "7.8";

#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    /// `sm_80` or `sm_90`.
    pub target: String,
    pub kernels: Vec<Kernel>,
}

impl Module {
    pub fn to_text(&self) -> String {
        let mut s =
            format!("//\n// Generated by tttc {}\n//\n\n.version {PTX_VERSION}\n.target {}\n.address_size 64\n", env!("CARGO_PKG_VERSION"), self.target);
        for k in &self.kernels {
            s.push('\n');
            write_kernel(&mut s, k).expect("writing to a String");
        }
        s
    }
}

fn write_kernel(s: &mut String, k: &Kernel) -> fmt::Result {
    writeln!(s, ".visible .entry {}(", k.name)?;
    for (i, p) in k.params.iter().enumerate() {
        writeln!(s, "\t.param .{} {}{}", p.ty.name(), p.name, if i + 1 < k.params.len() { "," } else { "" })?;
    }
    writeln!(s, ")\n{{")?;
    for (class, n) in &k.regs {
        if *n > 0 {
            writeln!(s, "\t.reg .{} {}<{n}>;", class.decl().name(), class.prefix())?;
        }
    }
    for sh in &k.shared {
        writeln!(s, "\t.shared .align {} .b8 {}[{}];", sh.align, sh.name, sh.bytes)?;
    }
    for st in &k.body {
        match st {
            Stmt::Label(l) => writeln!(s, "$L{l}:")?,
            Stmt::Inst { guard, inst } => {
                s.push('\t');
                if let Some((p, negated)) = guard {
                    write!(s, "@{}{p} ", if *negated { "!" } else { "" })?;
                }
                writeln!(s, "{inst};")?;
            }
        }
    }
    writeln!(s, "}}")
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

fn vector<T: fmt::Display>(items: &[T]) -> String {
    if items.len() == 1 {
        items[0].to_string()
    } else {
        format!("{{{}}}", list(items))
    }
}

fn dotted(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!(".{name}")
    }
}

fn vec_suffix(n: usize) -> &'static str {
    match n {
        2 => ".v2",
        4 => ".v4",
        _ => "",
    }
}

impl fmt::Display for Inst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Inst::Mov { ty, dst, src } => write!(f, "mov.{} {dst}, {src}", ty.name()),
            Inst::SharedAddr { dst, symbol } => write!(f, "mov.u32 {dst}, {symbol}"),
            Inst::Ld { space, ty, dst, addr } => write!(f, "ld{}{}.{} {}, {addr}", dotted(space.name()), vec_suffix(dst.len()), ty.name(), vector(dst)),
            Inst::St { space, ty, addr, src } => write!(f, "st{}{}.{} {addr}, {}", dotted(space.name()), vec_suffix(src.len()), ty.name(), vector(src)),
            Inst::CvtaGlobal { dst, src } => write!(f, "cvta.to.global.u64 {dst}, {src}"),
            Inst::CvtaShared { dst, src } => write!(f, "cvta.shared.u64 {dst}, {src}"),
            Inst::Bin { op, ty, dst, a, b } => write!(f, "{} {dst}, {a}, {b}", op.mnemonic(*ty)),
            Inst::Un { op, ty, dst, a } => write!(f, "{} {dst}, {a}", op.mnemonic(*ty)),
            Inst::Fma { ty, dst, a, b, c } => {
                let m = if ty.is_float() { "fma.rn" } else { "mad.lo" };
                write!(f, "{m}.{} {dst}, {a}, {b}, {c}", ty.name())
            }
            Inst::Setp { cmp, ty, dst, a, b } => write!(f, "setp.{}.{} {dst}, {a}, {b}", cmp.name(), ty.name()),
            Inst::Selp { ty, dst, a, b, p } => write!(f, "selp.{} {dst}, {a}, {b}, {p}", ty.name()),
            Inst::Cvt { round, to, from, dst, src } => {
                let to = match to {
                    CvtTo::Ty(t) => t.name(),
                    CvtTo::Tf32 => "tf32",
                };
                let round = round.map(|r| format!(".{}", r.name())).unwrap_or_default();
                write!(f, "cvt{round}.{to}.{} {dst}, {src}", from.name())
            }
            Inst::Bra { target } => write!(f, "bra $L{target}"),
            Inst::BarSync => write!(f, "bar.sync 0"),
            Inst::Shfl { mode, dst, src, lane, clamp, mask } => write!(f, "shfl.sync.{}.b32 {dst}, {src}, {lane}, {clamp}, 0x{mask:08x}", mode.name()),
            Inst::MmaTf32 { d, a, b, c } => {
                write!(f, "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {{{}}}, {{{}}}, {{{}}}, {{{}}}", list(d), list(a), list(b), list(c))
            }
            Inst::Ret => write!(f, "ret"),
            Inst::NoUnroll => write!(f, ".pragma \"nounroll\""),
        }
    }
}
