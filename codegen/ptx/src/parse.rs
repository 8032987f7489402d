//! PTX text back into [`crate::isa`]: exactly the subset tttc prints, with line-numbered errors
//! for anything else. The simulator runs what this returns, so a kernel is checked as shipped.

use anyhow::{bail, ensure, Context, Result};

use crate::isa::*;

/// Parses a module printed by [`Module::to_text`] (or written by hand in the same subset).
pub fn parse(text: &str) -> Result<Module> {
    let mut p = Parser { lines: text.lines().enumerate().map(|(i, l)| (i + 1, strip_comment(l).trim())).filter(|(_, l)| !l.is_empty()).collect(), at: 0 };
    let mut target = None;
    let mut kernels = Vec::new();
    while let Some((n, line)) = p.peek() {
        if let Some(rest) = line.strip_prefix(".version") {
            ensure!(!rest.trim().is_empty(), "line {n}: .version without a number");
            p.at += 1;
        } else if let Some(rest) = line.strip_prefix(".target") {
            target = Some(rest.trim().to_string());
            p.at += 1;
        } else if line.starts_with(".address_size") {
            ensure!(line.ends_with("64"), "line {n}: only 64-bit addresses are supported");
            p.at += 1;
        } else if line.starts_with(".visible .entry") || line.starts_with(".entry") {
            kernels.push(p.kernel().with_context(|| format!("in the kernel starting at line {n}"))?);
        } else {
            bail!("line {n}: unexpected `{line}`");
        }
    }
    Ok(Module { target: target.context("no .target line")?, kernels })
}

fn strip_comment(l: &str) -> &str {
    l.split("//").next().unwrap_or("")
}

struct Parser<'a> {
    lines: Vec<(usize, &'a str)>,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<(usize, &'a str)> {
        self.lines.get(self.at).copied()
    }

    fn next(&mut self) -> Result<(usize, &'a str)> {
        let l = self.peek().context("unexpected end of text")?;
        self.at += 1;
        Ok(l)
    }

    fn kernel(&mut self) -> Result<Kernel> {
        let (n, head) = self.next()?;
        let name = head.rsplit(' ').next().unwrap_or("").trim_end_matches('(').trim();
        ensure!(head.ends_with('(') && is_ident(name), "line {n}: expected `.visible .entry NAME(`");
        let mut params = Vec::new();
        loop {
            let (n, l) = self.next()?;
            if l == ")" {
                break;
            }
            let l = l.trim_end_matches(',');
            let parts: Vec<&str> = l.split_whitespace().collect();
            let ty = parts.get(1).and_then(|t| t.strip_prefix('.')).and_then(Ty::from_name);
            match (parts.as_slice(), ty) {
                ([".param", _, pname], Some(ty)) if is_ident(pname) => params.push(Param { name: pname.to_string(), ty }),
                _ => bail!("line {n}: expected `.param .TYPE NAME`, got `{l}`"),
            }
        }
        let (n, open) = self.next()?;
        ensure!(open == "{", "line {n}: expected `{{`");
        let mut kernel = Kernel { name: name.to_string(), params, shared: Vec::new(), regs: Vec::new(), body: Vec::new() };
        loop {
            let (n, l) = self.next()?;
            if l == "}" {
                break;
            }
            // Several statements may share a line.
            let mut rest = l;
            while !rest.is_empty() {
                if let Some(label) = rest.strip_prefix("$L").and_then(|r| r.split_once(':')) {
                    let id = label.0.parse().with_context(|| format!("line {n}: bad label"))?;
                    kernel.body.push(Stmt::Label(id));
                    rest = label.1.trim();
                    continue;
                }
                let (stmt, after) = rest.split_once(';').with_context(|| format!("line {n}: missing `;` in `{rest}`"))?;
                rest = after.trim();
                let stmt = stmt.trim();
                if stmt.starts_with(".reg") {
                    kernel.regs.push(reg_decl(stmt).with_context(|| format!("line {n}: `{stmt}`"))?);
                } else if stmt == ".pragma \"nounroll\"" {
                    kernel.body.push(Stmt::inst(Inst::NoUnroll));
                } else if stmt.starts_with(".shared") {
                    kernel.shared.push(shared_decl(stmt).with_context(|| format!("line {n}: `{stmt}`"))?);
                } else {
                    kernel.body.push(statement(stmt).with_context(|| format!("line {n}: `{stmt}`"))?);
                }
            }
        }
        Ok(kernel)
    }
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// `.reg .f32 %f<12>`
fn reg_decl(s: &str) -> Result<(Class, u32)> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, ty, regs] = parts.as_slice() else { bail!("expected `.reg .TYPE %x<N>`") };
    let ty = ty.strip_prefix('.').and_then(Ty::from_name).context("unknown register type")?;
    let (prefix, count) = regs.strip_suffix('>').and_then(|r| r.split_once('<')).context("expected `%x<N>`")?;
    let class = Class::ALL.into_iter().find(|c| c.prefix() == prefix && c.decl() == ty).context("register prefix and type do not match")?;
    Ok((class, count.parse()?))
}

/// `.shared .align 16 .b8 smem[4096]`
fn shared_decl(s: &str) -> Result<Shared> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, ".align", align, ".b8", array] = parts.as_slice() else { bail!("expected `.shared .align A .b8 NAME[BYTES]`") };
    let (name, bytes) = array.strip_suffix(']').and_then(|a| a.split_once('[')).context("expected NAME[BYTES]")?;
    ensure!(is_ident(name), "bad name `{name}`");
    Ok(Shared { name: name.to_string(), bytes: bytes.parse()?, align: align.parse()? })
}

fn statement(s: &str) -> Result<Stmt> {
    let (guard, s) = match s.strip_prefix('@') {
        Some(g) => {
            let (p, rest) = g.split_once(char::is_whitespace).context("a guard without an instruction")?;
            let (negated, p) = match p.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, p),
            };
            let r = reg(p)?;
            ensure!(r.class == Class::Pred, "a guard must be a predicate");
            (Some((r, negated)), rest.trim())
        }
        None => (None, s),
    };
    let (mnemonic, operands) = s.split_once(char::is_whitespace).unwrap_or((s, ""));
    let ops = split_operands(operands.trim());
    Ok(Stmt::Inst { guard, inst: instruction(mnemonic, &ops)? })
}

/// Splits at commas outside braces and brackets.
fn split_operands(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s[start..].trim().is_empty() {
        out.push(s[start..].trim());
    }
    out
}

fn count(ops: &[&str], n: usize) -> Result<()> {
    ensure!(ops.len() == n, "expected {n} operands, got {}", ops.len());
    Ok(())
}

fn ty_of(name: &str) -> Result<Ty> {
    Ty::from_name(name).with_context(|| format!("unknown type `.{name}`"))
}

fn instruction(mnemonic: &str, ops: &[&str]) -> Result<Inst> {
    let parts: Vec<&str> = mnemonic.split('.').collect();
    let last = parts.last().copied().unwrap_or("");
    let has = |m: &str| parts[1..].contains(&m);
    Ok(match parts[0] {
        "mov" => {
            count(ops, 2)?;
            if mnemonic == "mov.u32" && is_ident(ops[1]) {
                Inst::SharedAddr { dst: reg(ops[0])?, symbol: ops[1].to_string() }
            } else {
                Inst::Mov { ty: ty_of(last)?, dst: reg(ops[0])?, src: val(ops[1])? }
            }
        }
        "ld" | "st" => {
            let space = match parts.get(1) {
                Some(&"global") => Space::Global,
                Some(&"shared") => Space::Shared,
                Some(&"param") => Space::Param,
                Some(&("v2" | "v4")) => Space::Generic,
                Some(t) if Ty::from_name(t).is_some() => Space::Generic,
                _ => bail!("unsupported state space in `{mnemonic}`"),
            };
            count(ops, 2)?;
            let ty = ty_of(last)?;
            let width = if has("v2") {
                2
            } else if has("v4") {
                4
            } else {
                1
            };
            if parts[0] == "ld" {
                let dst = vector(ops[0])?.iter().map(|r| reg(r)).collect::<Result<Vec<_>>>()?;
                ensure!(dst.len() == width, "`{mnemonic}` needs {width} registers");
                Inst::Ld { space, ty, dst, addr: addr(ops[1])? }
            } else {
                let src = vector(ops[1])?.iter().map(|v| val(v)).collect::<Result<Vec<_>>>()?;
                ensure!(src.len() == width, "`{mnemonic}` needs {width} values");
                Inst::St { space, ty, addr: addr(ops[0])?, src }
            }
        }
        "cvta" => {
            count(ops, 2)?;
            match mnemonic {
                "cvta.to.global.u64" => Inst::CvtaGlobal { dst: reg(ops[0])?, src: reg(ops[1])? },
                "cvta.shared.u64" => Inst::CvtaShared { dst: reg(ops[0])?, src: reg(ops[1])? },
                _ => bail!("unsupported `{mnemonic}`"),
            }
        }
        "add" | "sub" | "mul" | "div" | "rem" | "min" | "max" | "and" | "or" | "xor" | "shl" | "shr" => {
            count(ops, 3)?;
            let op = match parts[0] {
                "add" => BinOp::Add,
                "sub" => BinOp::Sub,
                "mul" if has("wide") => BinOp::MulWide,
                "mul" => BinOp::Mul,
                "div" => BinOp::Div,
                "rem" => BinOp::Rem,
                "min" => BinOp::Min,
                "max" => BinOp::Max,
                "and" => BinOp::And,
                "or" => BinOp::Or,
                "xor" => BinOp::Xor,
                "shl" => BinOp::Shl,
                _ => BinOp::Shr,
            };
            let ty = ty_of(last)?;
            ensure!(op.mnemonic(ty) == mnemonic, "unsupported form `{mnemonic}` (tttc writes `{}`)", op.mnemonic(ty));
            Inst::Bin { op, ty, dst: reg(ops[0])?, a: val(ops[1])?, b: val(ops[2])? }
        }
        "neg" | "abs" | "not" | "sqrt" | "rcp" => {
            count(ops, 2)?;
            let op = match parts[0] {
                "neg" => UnOp::Neg,
                "abs" => UnOp::Abs,
                "not" => UnOp::Not,
                "sqrt" => UnOp::Sqrt,
                _ => UnOp::Rcp,
            };
            let ty = ty_of(last)?;
            ensure!(op.mnemonic(ty) == mnemonic, "unsupported form `{mnemonic}`");
            Inst::Un { op, ty, dst: reg(ops[0])?, a: val(ops[1])? }
        }
        "fma" | "mad" => {
            count(ops, 4)?;
            let ty = ty_of(last)?;
            let expected = format!("{}.{}", if ty.is_float() { "fma.rn" } else { "mad.lo" }, ty.name());
            ensure!(mnemonic == expected, "unsupported form `{mnemonic}`");
            Inst::Fma { ty, dst: reg(ops[0])?, a: val(ops[1])?, b: val(ops[2])?, c: val(ops[3])? }
        }
        "setp" => {
            count(ops, 3)?;
            let cmp = Cmp::ALL.into_iter().find(|c| parts.get(1) == Some(&c.name())).with_context(|| format!("unsupported comparison in `{mnemonic}`"))?;
            ensure!(parts.len() == 3, "unsupported form `{mnemonic}`");
            Inst::Setp { cmp, ty: ty_of(last)?, dst: reg(ops[0])?, a: val(ops[1])?, b: val(ops[2])? }
        }
        "selp" => {
            count(ops, 4)?;
            Inst::Selp { ty: ty_of(last)?, dst: reg(ops[0])?, a: val(ops[1])?, b: val(ops[2])?, p: reg(ops[3])? }
        }
        "cvt" => {
            count(ops, 2)?;
            let (round, types) = match parts.get(1).copied() {
                Some("rn") => (Some(Round::Rn), &parts[2..]),
                Some("rna") => (Some(Round::Rna), &parts[2..]),
                Some("rzi") => (Some(Round::Rzi), &parts[2..]),
                _ => (None, &parts[1..]),
            };
            let [to, from] = types else { bail!("unsupported form `{mnemonic}`") };
            let to = if *to == "tf32" { CvtTo::Tf32 } else { CvtTo::Ty(ty_of(to)?) };
            Inst::Cvt { round, to, from: ty_of(from)?, dst: reg(ops[0])?, src: val(ops[1])? }
        }
        "bra" => {
            count(ops, 1)?;
            let target = ops[0].strip_prefix("$L").and_then(|l| l.parse().ok()).context("a branch target must be a label `$LN`")?;
            Inst::Bra { target }
        }
        "bar" => {
            ensure!(mnemonic == "bar.sync" && ops == ["0"], "only `bar.sync 0` is supported");
            Inst::BarSync
        }
        "shfl" => {
            count(ops, 5)?;
            let mode = [ShflMode::Up, ShflMode::Down, ShflMode::Bfly, ShflMode::Idx]
                .into_iter()
                .find(|m| parts.get(2) == Some(&m.name()))
                .context("unsupported shuffle mode")?;
            ensure!(mnemonic == format!("shfl.sync.{}.b32", mode.name()), "unsupported form `{mnemonic}`");
            let mask = match val(ops[4])? {
                Val::Int(m) => m as u32,
                _ => bail!("the shuffle's member mask must be a constant"),
            };
            Inst::Shfl { mode, dst: reg(ops[0])?, src: val(ops[1])?, lane: val(ops[2])?, clamp: val(ops[3])?, mask }
        }
        "mma" => {
            ensure!(mnemonic == "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", "unsupported `{mnemonic}`");
            count(ops, 4)?;
            let regs = |s: &str, n: usize| -> Result<Vec<Reg>> {
                let v = vector(s)?.iter().map(|r| reg(r)).collect::<Result<Vec<_>>>()?;
                ensure!(v.len() == n, "expected {n} registers in `{s}`");
                Ok(v)
            };
            let (d, a, b, c) = (regs(ops[0], 4)?, regs(ops[1], 4)?, regs(ops[2], 2)?, regs(ops[3], 4)?);
            Inst::MmaTf32 { d: [d[0], d[1], d[2], d[3]], a: [a[0], a[1], a[2], a[3]], b: [b[0], b[1]], c: [c[0], c[1], c[2], c[3]] }
        }
        "ret" => Inst::Ret,
        _ => bail!("unsupported instruction `{mnemonic}`"),
    })
}

/// `{a, b}` or a single operand.
fn vector(s: &str) -> Result<Vec<&str>> {
    Ok(match s.strip_prefix('{') {
        Some(inner) => inner.strip_suffix('}').context("unclosed `{`")?.split(',').map(str::trim).collect(),
        None => vec![s],
    })
}

fn reg(s: &str) -> Result<Reg> {
    // Longest prefixes first: `%rd` before `%r`, `%fd` before `%f`.
    for class in [Class::R64, Class::F64, Class::R32, Class::F32, Class::Pred] {
        if let Some(n) = s.strip_prefix(class.prefix()).and_then(|n| n.parse().ok()) {
            return Ok(Reg { class, n });
        }
    }
    bail!("expected a register, got `{s}`")
}

fn special(s: &str) -> Option<Special> {
    let axis = |a: &str| match a {
        "x" => Some(0),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    if s == "%laneid" {
        return Some(Special::LaneId);
    }
    let (name, a) = s.split_once('.')?;
    let a = axis(a)?;
    Some(match name {
        "%tid" => Special::Tid(a),
        "%ntid" => Special::Ntid(a),
        "%ctaid" => Special::Ctaid(a),
        "%nctaid" => Special::Nctaid(a),
        _ => return None,
    })
}

fn val(s: &str) -> Result<Val> {
    if let Some(sp) = special(s) {
        return Ok(Val::Special(sp));
    }
    if s.starts_with('%') {
        return Ok(Val::Reg(reg(s)?));
    }
    if let Some(h) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
        return Ok(Val::F32(f32::from_bits(u32::from_str_radix(h, 16).with_context(|| format!("bad f32 literal `{s}`"))?)));
    }
    if let Some(h) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
        return Ok(Val::F64(f64::from_bits(u64::from_str_radix(h, 16).with_context(|| format!("bad f64 literal `{s}`"))?)));
    }
    if let Some(h) = s.strip_prefix("0x") {
        return Ok(Val::Int(u64::from_str_radix(h, 16).with_context(|| format!("bad literal `{s}`"))? as i64));
    }
    Ok(Val::Int(s.parse().with_context(|| format!("expected an operand, got `{s}`"))?))
}

/// `[%rd1+8]`, `[name]`, `[%r3-4]`
fn addr(s: &str) -> Result<Addr> {
    let inner = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).with_context(|| format!("expected an address, got `{s}`"))?;
    let split = inner.char_indices().skip(1).find(|(_, c)| *c == '+' || *c == '-').map(|(i, _)| i);
    let (base, offset) = match split {
        Some(i) => (&inner[..i], inner[i..].trim_start_matches('+').parse::<i64>().with_context(|| format!("bad offset in `{s}`"))?),
        None => (inner, 0),
    };
    let base = if base.starts_with('%') {
        Base::Reg(reg(base)?)
    } else {
        ensure!(is_ident(base), "bad address base `{base}`");
        Base::Symbol(base.to_string())
    };
    Ok(Addr { base, offset })
}
