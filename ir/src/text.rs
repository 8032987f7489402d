//! The text format: a readable, line-per-node spelling of a [`Graph`] that parses back to the same
//! graph.
//!
//! ```text
//! graph tiny(%0: i64[B,T] input "input_ids", %1: f32[97,64] param "embed.weight") {
//!   %2 = gather(%1, %0) {axis=0} : f32[B,T,64]
//!   %3 = const() {value=1e-6, dtype=f32} : f32[]
//!   %4 = add(%2, %3) : f32[B,T,64]
//!   %5, %6 = scan(%3, %4) {axis=1, chunk=16, carries=1, seqs=1} : f32[], f32[B,T,64] body step(%0: f32[] input "c", %1: f32[B,n,64] input "x") {
//!     %2 = add(%1, %0) : f32[B,n,64]
//!     return c=%0, y=%2
//!   }
//!   return logits=%6
//! }
//! ```
//!
//! * Values are `%` followed by a name; [`print`] numbers them `%0, %1, …` in definition order
//!   (arguments, then node results), each graph and scan body on its own.
//! * An argument is `%v: TYPE input|param "name"`; argument names are always quoted, graph and
//!   output names only when they are not identifiers. Strings escape `"`, `\` and control characters.
//! * A node is `RESULTS = OP(OPERANDS) {ATTRIBUTES} : RESULT TYPES`, the attribute block left out
//!   when the op has none; a scan (and a grad or fused region) adds `body NAME(ARGS) { … }`, its
//!   body graph.
//! * Types are `f32[B,T-1,64]`; a dimension is an integer or a symbol with an optional offset,
//!   optionally a chunk count: `T/16`, `(T-1)/16` (⌈(T-1)/16⌉).
//! * Floats print in Rust's shortest round-trip form (`1e-6`, `0.5`, `-inf`, `NaN`).
//! * `//` starts a comment that runs to the end of the line.
//!
//! [`parse`] checks every recorded type against type inference as it goes (naming the line), and
//! then runs the verifier on the whole graph.

use std::collections::HashMap;
use std::fmt;

use anyhow::{anyhow, Result};

use crate::graph::{Arg, ArgKind, Graph, Node, ValueId};
use crate::infer::infer;
use crate::op::{Fused, Grad, Op, Scan};
use crate::types::{DType, Dim, Type};

/// Inline argument lists longer than this go one argument per line.
const MAX_LINE: usize = 100;
/// Scan bodies nest at most this deep (a guard against runaway recursion on hostile input).
const MAX_DEPTH: usize = 64;

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&print(self))
    }
}

// ---------------------------------------------------------------------------------------------
// Printing

/// Prints `g` in the text format, renumbering values in definition order.
pub fn print(g: &Graph) -> String {
    let mut out = String::new();
    print_graph(&mut out, g, "graph ", 0);
    out.push('\n');
    out
}

fn is_ident(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A graph, output or symbol name: bare when it is an identifier, quoted otherwise.
fn name(s: &str) -> String {
    if is_ident(s) {
        s.to_string()
    } else {
        quote(s)
    }
}

fn dim(d: &Dim) -> String {
    let base = match (&d.sym, d.offset) {
        (None, n) => n.to_string(),
        (Some(s), 0) => name(s),
        (Some(s), n) if n > 0 => format!("{}+{n}", name(s)),
        (Some(s), n) => format!("{}{n}", name(s)),
    };
    match (d.per, d.offset) {
        (1, _) => base,
        (p, 0) => format!("{base}/{p}"),
        (p, _) => format!("({base})/{p}"),
    }
}

fn dims(ds: &[Dim]) -> String {
    let parts: Vec<String> = ds.iter().map(dim).collect();
    format!("[{}]", parts.join(","))
}

fn ty(t: &Type) -> String {
    format!("{}{}", t.dtype, dims(&t.shape))
}

fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else {
        format!("{v:?}")
    }
}

fn attrs(op: &Op) -> Vec<(&'static str, String)> {
    match op {
        Op::Unary(_) | Op::Binary(_) | Op::MatMul | Op::Fused(_) | Op::Barrier | Op::StopGradient => vec![],
        Op::Const { value, dtype } => vec![("value", float(*value)), ("dtype", dtype.to_string())],
        Op::Iota { len, dtype } => vec![("len", dim(len)), ("dtype", dtype.to_string())],
        Op::Cast { to } => vec![("to", to.to_string())],
        Op::Reduce { axis, keepdim, .. } => vec![("axis", axis.to_string()), ("keepdim", keepdim.to_string())],
        Op::Reshape { shape } | Op::Broadcast { shape } => vec![("shape", dims(shape))],
        Op::Transpose { perm } => {
            let ps: Vec<String> = perm.iter().map(|p| p.to_string()).collect();
            vec![("perm", format!("[{}]", ps.join(",")))]
        }
        Op::Slice { axis, start, end } => {
            vec![("axis", axis.to_string()), ("start", start.to_string()), ("end", end.map_or("none".to_string(), |e| e.to_string()))]
        }
        Op::Concat { axis } | Op::Gather { axis } => vec![("axis", axis.to_string())],
        Op::Pad { axis, before, after } => {
            vec![("axis", axis.to_string()), ("before", before.to_string()), ("after", after.to_string())]
        }
        Op::OneHot { depth } | Op::ScatterAdd { depth } => vec![("depth", depth.to_string())],
        Op::TriMask { fill, window } => {
            let mut a = vec![("fill", float(*fill))];
            a.extend(window.map(|w| ("window", w.to_string())));
            a
        }
        Op::Scan(s) => {
            let mut a = vec![("axis", s.axis.to_string()), ("chunk", s.chunk.to_string()), ("carries", s.carries.to_string()), ("seqs", s.seqs.to_string())];
            if s.reverse {
                a.push(("reverse", "true".to_string()));
            }
            a
        }
        Op::Grad(g) => {
            let ws: Vec<String> = g.wrt.iter().map(|w| w.to_string()).collect();
            vec![("wrt", format!("[{}]", ws.join(",")))]
        }
    }
}

/// Canonical numbers: definition order, first definition wins (a graph that defines a value twice
/// does not verify, and its text does not parse).
fn numbering(g: &Graph) -> HashMap<ValueId, usize> {
    let mut num = HashMap::new();
    let defs = g.args.iter().map(|a| a.value).chain(g.nodes.iter().flat_map(|n| n.outputs.iter().copied()));
    for v in defs {
        let next = num.len();
        num.entry(v).or_insert(next);
    }
    num
}

/// Writes `{keyword}{name}(args) {` … `}` (no trailing newline); `indent` is the indentation of the
/// line the header starts on.
fn print_graph(out: &mut String, g: &Graph, keyword: &str, indent: usize) {
    let num = numbering(g);
    // Values that are never defined print under a name the parser rejects.
    let val = |v: &ValueId| match num.get(v) {
        Some(n) => format!("%{n}"),
        None => format!("%undef{}", v.0),
    };
    let ty_of = |v: &ValueId| g.types.get(v.index()).map_or("?".to_string(), ty);
    let pad = " ".repeat(indent);
    let inner = " ".repeat(indent + 2);

    let args: Vec<String> = g
        .args
        .iter()
        .map(|a| {
            let kind = match a.kind {
                ArgKind::Input => "input",
                ArgKind::Param => "param",
            };
            format!("{}: {} {kind} {}", val(&a.value), ty_of(&a.value), quote(&a.name))
        })
        .collect();
    let head = format!("{keyword}{}(", name(&g.name));
    let line_start = out.rfind('\n').map_or(0, |i| i + 1);
    let inline_len = out.len() - line_start + head.len() + args.iter().map(|a| a.len() + 2).sum::<usize>() + 3;
    out.push_str(&head);
    if args.is_empty() || inline_len <= MAX_LINE {
        out.push_str(&args.join(", "));
    } else {
        for (i, a) in args.iter().enumerate() {
            out.push('\n');
            out.push_str(&inner);
            out.push_str(a);
            if i + 1 < args.len() {
                out.push(',');
            }
        }
        out.push('\n');
        out.push_str(&pad);
    }
    out.push_str(") {\n");

    for node in &g.nodes {
        out.push_str(&inner);
        if !node.outputs.is_empty() {
            let rs: Vec<String> = node.outputs.iter().map(val).collect();
            out.push_str(&rs.join(", "));
            out.push_str(" = ");
        }
        let operands: Vec<String> = node.inputs.iter().map(val).collect();
        out.push_str(&format!("{}({})", node.op.name(), operands.join(", ")));
        let at = attrs(&node.op);
        if !at.is_empty() {
            let parts: Vec<String> = at.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!(" {{{}}}", parts.join(", ")));
        }
        if !node.outputs.is_empty() {
            let ts: Vec<String> = node.outputs.iter().map(ty_of).collect();
            out.push_str(" : ");
            out.push_str(&ts.join(", "));
        }
        if let Some(body) = node.op.body() {
            print_graph(out, body, " body ", indent + 2);
        }
        out.push('\n');
    }

    out.push_str(&inner);
    out.push_str("return");
    let outs: Vec<String> = g.outputs.iter().map(|(n, v)| format!("{}={}", name(n), val(v))).collect();
    if !outs.is_empty() {
        out.push(' ');
        out.push_str(&outs.join(", "));
    }
    out.push('\n');
    out.push_str(&pad);
    out.push('}');
}

// ---------------------------------------------------------------------------------------------
// Lexing

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `%name`, without the `%`.
    Value(String),
    /// An unsigned number as written (`16`, `0.5`, `1e-6`).
    Num(String),
    Str(String),
    Punct(char),
    Eof,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "'{s}'"),
            Tok::Value(s) => write!(f, "'%{s}'"),
            Tok::Num(s) => write!(f, "'{s}'"),
            Tok::Str(s) => write!(f, "string {}", quote(s)),
            Tok::Punct(c) => write!(f, "'{c}'"),
            Tok::Eof => f.write_str("end of input"),
        }
    }
}

fn lex(s: &str) -> Result<Vec<(Tok, usize)>> {
    let cs: Vec<char> = s.chars().collect();
    let mut toks = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let word = |i: &mut usize| {
        let start = *i;
        while *i < cs.len() && (cs[*i].is_ascii_alphanumeric() || cs[*i] == '_') {
            *i += 1;
        }
        cs[start..*i].iter().collect::<String>()
    };
    while i < cs.len() {
        let c = cs[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '/' if cs.get(i + 1) == Some(&'/') => {
                while i < cs.len() && cs[i] != '\n' {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => toks.push((Tok::Ident(word(&mut i)), line)),
            '%' => {
                i += 1;
                let w = word(&mut i);
                if w.is_empty() {
                    let found = cs.get(i).map_or("end of input".to_string(), |c| format!("{c:?}"));
                    return Err(anyhow!("line {line}: expected a value name after '%', found {found}"));
                }
                toks.push((Tok::Value(w), line));
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < cs.len() && cs[i].is_ascii_digit() {
                    i += 1;
                }
                if cs.get(i) == Some(&'.') && cs.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
                    i += 1;
                    while i < cs.len() && cs[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                if matches!(cs.get(i), Some('e' | 'E')) {
                    let mut j = i + 1;
                    if matches!(cs.get(j), Some('+' | '-')) {
                        j += 1;
                    }
                    if cs.get(j).is_some_and(|c| c.is_ascii_digit()) {
                        i = j;
                        while i < cs.len() && cs[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                toks.push((Tok::Num(cs[start..i].iter().collect()), line));
            }
            '"' => {
                let start_line = line;
                i += 1;
                let mut text = String::new();
                loop {
                    let Some(&c) = cs.get(i) else {
                        return Err(anyhow!("line {start_line}: unterminated string"));
                    };
                    i += 1;
                    match c {
                        '"' => break,
                        '\n' => return Err(anyhow!("line {start_line}: unterminated string")),
                        '\\' => {
                            let Some(&e) = cs.get(i) else {
                                return Err(anyhow!("line {start_line}: unterminated string"));
                            };
                            i += 1;
                            match e {
                                '"' => text.push('"'),
                                '\\' => text.push('\\'),
                                'n' => text.push('\n'),
                                't' => text.push('\t'),
                                'r' => text.push('\r'),
                                'u' => {
                                    let bad = || anyhow!("line {line}: expected '\\u{{HEX}}' in a string");
                                    if cs.get(i) != Some(&'{') {
                                        return Err(bad());
                                    }
                                    let close = cs[i..].iter().take(10).position(|&c| c == '}').ok_or_else(bad)?;
                                    let hex: String = cs[i + 1..i + close].iter().collect();
                                    let ch = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32).ok_or_else(bad)?;
                                    text.push(ch);
                                    i += close + 1;
                                }
                                e => return Err(anyhow!("line {line}: unknown escape '\\{}' in a string", e.escape_debug())),
                            }
                        }
                        c => text.push(c),
                    }
                }
                toks.push((Tok::Str(text), start_line));
            }
            '(' | ')' | '{' | '}' | '[' | ']' | ',' | ':' | '=' | '+' | '-' | '/' => {
                toks.push((Tok::Punct(c), line));
                i += 1;
            }
            c => return Err(anyhow!("line {line}: unexpected character {c:?}")),
        }
    }
    // End of input is reported on the last line that has something on it.
    let last = toks.last().map_or(1, |t: &(Tok, usize)| t.1);
    toks.push((Tok::Eof, last));
    Ok(toks)
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Parses the text format and verifies the result. Errors are one line and name the line.
pub fn parse(s: &str) -> Result<Graph> {
    let toks = lex(s)?;
    let mut p = Parser { toks, pos: 0 };
    p.keyword("graph", "at the start")?;
    let g = p.graph(0)?;
    if p.peek() != &Tok::Eof {
        return Err(p.err("end of input after the graph"));
    }
    crate::verify(&g).map_err(|e| anyhow!("{e:#}"))?;
    Ok(g)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

/// An attribute value as written; each op reads the kinds it expects.
#[derive(Clone, Debug)]
enum Val {
    /// A number with its sign, as written (`-3`, `1e-6`, `-inf`).
    Num(String),
    /// A bare word (`true`, `none`, `f32`, `inf`, or a dimension symbol).
    Word(String),
    /// A symbolic dimension written with an offset or quoted.
    Dim(Dim),
    List(Vec<Dim>),
}

struct Attrs {
    op: String,
    line: usize,
    items: Vec<(String, Val, usize, bool)>,
}

impl Attrs {
    fn take(&mut self, key: &str) -> Result<(Val, usize)> {
        match self.items.iter_mut().find(|(k, ..)| k == key) {
            Some((_, v, line, used)) => {
                *used = true;
                Ok((v.clone(), *line))
            }
            None => Err(anyhow!("line {}: {} needs attribute '{key}'", self.line, self.op)),
        }
    }

    fn bad(&self, key: &str, line: usize, what: &str, v: &Val) -> anyhow::Error {
        let shown = match v {
            Val::Num(s) | Val::Word(s) => s.clone(),
            Val::Dim(d) => dim(d),
            Val::List(ds) => dims(ds),
        };
        anyhow!("line {line}: attribute '{key}' of {} must be {what}, found '{shown}'", self.op)
    }

    fn usize(&mut self, key: &str) -> Result<usize> {
        let (v, line) = self.take(key)?;
        match &v {
            Val::Num(s) if !s.starts_with(['-', '+']) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| self.bad(key, line, "a non-negative integer", &v))
    }

    fn i64(&mut self, key: &str) -> Result<i64> {
        let (v, line) = self.take(key)?;
        int(&v).ok_or_else(|| self.bad(key, line, "an integer", &v))
    }

    fn opt_i64(&mut self, key: &str) -> Result<Option<i64>> {
        let (v, line) = self.take(key)?;
        match &v {
            Val::Word(w) if w == "none" => Ok(None),
            _ => int(&v).map(Some).ok_or_else(|| self.bad(key, line, "an integer or none", &v)),
        }
    }

    fn f64(&mut self, key: &str) -> Result<f64> {
        let (v, line) = self.take(key)?;
        let parsed = match &v {
            Val::Num(s) => {
                let (neg, body) = match s.strip_prefix('-') {
                    Some(b) => (true, b),
                    None => (false, s.strip_prefix('+').unwrap_or(s)),
                };
                let x = match body {
                    "inf" => Some(f64::INFINITY),
                    "NaN" | "nan" => Some(f64::NAN),
                    _ if body.starts_with(|c: char| c.is_ascii_digit()) => body.parse::<f64>().ok(),
                    _ => None,
                };
                x.map(|x| if neg { -x } else { x })
            }
            Val::Word(w) if w == "inf" => Some(f64::INFINITY),
            Val::Word(w) if w == "NaN" || w == "nan" => Some(f64::NAN),
            _ => None,
        };
        parsed.ok_or_else(|| self.bad(key, line, "a number", &v))
    }

    /// An attribute that may be left out (`None`).
    fn opt_usize(&mut self, key: &str) -> Result<Option<usize>> {
        if self.items.iter().any(|(k, ..)| k == key) {
            self.usize(key).map(Some)
        } else {
            Ok(None)
        }
    }

    /// An optional boolean attribute, `default` when it is absent.
    fn opt_bool(&mut self, key: &str, default: bool) -> Result<bool> {
        if self.items.iter().any(|(k, ..)| k == key) {
            self.bool(key)
        } else {
            Ok(default)
        }
    }

    fn bool(&mut self, key: &str) -> Result<bool> {
        let (v, line) = self.take(key)?;
        match &v {
            Val::Word(w) if w == "true" => Ok(true),
            Val::Word(w) if w == "false" => Ok(false),
            _ => Err(self.bad(key, line, "true or false", &v)),
        }
    }

    fn dtype(&mut self, key: &str) -> Result<DType> {
        let (v, line) = self.take(key)?;
        match &v {
            Val::Word(w) => dtype_named(w),
            _ => None,
        }
        .ok_or_else(|| self.bad(key, line, "f32 or i64", &v))
    }

    fn dim(&mut self, key: &str) -> Result<Dim> {
        let (v, line) = self.take(key)?;
        match &v {
            Val::Num(_) => int(&v).filter(|&n| n >= 0).map(|n| Dim { sym: None, offset: n, per: 1 }),
            Val::Word(w) => Some(Dim::sym(w)),
            Val::Dim(d) => Some(d.clone()),
            Val::List(_) => None,
        }
        .ok_or_else(|| self.bad(key, line, "a dimension", &v))
    }

    fn dims(&mut self, key: &str) -> Result<Vec<Dim>> {
        let (v, line) = self.take(key)?;
        match v {
            Val::List(ds) => Ok(ds),
            v => Err(self.bad(key, line, "a list of dimensions", &v)),
        }
    }

    fn indices(&mut self, key: &str) -> Result<Vec<usize>> {
        let (v, line) = self.take(key)?;
        let parsed = match &v {
            Val::List(ds) => ds
                .iter()
                .map(|d| match d.sym {
                    None if d.offset >= 0 && d.per == 1 => usize::try_from(d.offset).ok(),
                    _ => None,
                })
                .collect::<Option<Vec<usize>>>(),
            _ => None,
        };
        parsed.ok_or_else(|| self.bad(key, line, "a list of non-negative integers", &v))
    }

    /// Every attribute must have been read.
    fn done(self) -> Result<()> {
        match self.items.iter().find(|(.., used)| !used) {
            Some((k, _, line, _)) => Err(anyhow!("line {line}: {} has no attribute '{k}'", self.op)),
            None => Ok(()),
        }
    }
}

fn int(v: &Val) -> Option<i64> {
    match v {
        Val::Num(s) => s.parse().ok(),
        _ => None,
    }
}

fn dtype_named(s: &str) -> Option<DType> {
    [DType::F32, DType::I64].into_iter().find(|d| d.name() == s)
}

/// The op named `name` with its attributes, the body of a scan excepted (filled in later).
fn op_named(name: &str, a: &mut Attrs) -> Result<Option<Op>> {
    if let Some(u) = Op::UNARY.iter().find(|&&u| Op::Unary(u).name() == name) {
        return Ok(Some(Op::Unary(*u)));
    }
    if let Some(b) = Op::BINARY.iter().find(|&&b| Op::Binary(b).name() == name) {
        return Ok(Some(Op::Binary(*b)));
    }
    let dummy_reduce = |kind| Op::Reduce { kind, axis: 0, keepdim: false };
    if let Some(&kind) = Op::REDUCE.iter().find(|&&k| dummy_reduce(k).name() == name) {
        return Ok(Some(Op::Reduce { kind, axis: a.usize("axis")?, keepdim: a.bool("keepdim")? }));
    }
    Ok(Some(match name {
        "const" => Op::Const { value: a.f64("value")?, dtype: a.dtype("dtype")? },
        "iota" => Op::Iota { len: a.dim("len")?, dtype: a.dtype("dtype")? },
        "cast" => Op::Cast { to: a.dtype("to")? },
        "matmul" => Op::MatMul,
        "reshape" => Op::Reshape { shape: a.dims("shape")? },
        "transpose" => Op::Transpose { perm: a.indices("perm")? },
        "broadcast" => Op::Broadcast { shape: a.dims("shape")? },
        "slice" => Op::Slice { axis: a.usize("axis")?, start: a.i64("start")?, end: a.opt_i64("end")? },
        "concat" => Op::Concat { axis: a.usize("axis")? },
        "pad" => Op::Pad { axis: a.usize("axis")?, before: a.usize("before")?, after: a.usize("after")? },
        "gather" => Op::Gather { axis: a.usize("axis")? },
        "one_hot" => Op::OneHot { depth: a.usize("depth")? },
        "scatter_add" => Op::ScatterAdd { depth: a.usize("depth")? },
        "tri_mask" => Op::TriMask { fill: a.f64("fill")?, window: a.opt_usize("window")? },
        "barrier" => Op::Barrier,
        "stop_gradient" => Op::StopGradient,
        "scan" => Op::Scan(Box::new(Scan {
            axis: a.usize("axis")?,
            chunk: a.usize("chunk")?,
            carries: a.usize("carries")?,
            seqs: a.usize("seqs")?,
            body: Graph::default(),
            reverse: a.opt_bool("reverse", false)?,
        })),
        "grad" => Op::Grad(Box::new(Grad { wrt: a.indices("wrt")?, body: Graph::default() })),
        "fused" => Op::Fused(Box::new(Fused { body: Graph::default() })),
        _ => return Ok(None),
    }))
}

/// The values of one graph under construction.
struct Scope {
    g: Graph,
    names: HashMap<String, ValueId>,
}

impl Scope {
    fn define(&mut self, name: &str, t: Type, line: usize) -> Result<ValueId> {
        if self.names.contains_key(name) {
            return Err(anyhow!("line {line}: %{name} is defined twice"));
        }
        let v = ValueId(self.g.types.len() as u32);
        self.g.types.push(t);
        self.names.insert(name.to_string(), v);
        Ok(v)
    }

    fn lookup(&self, name: &str, line: usize) -> Result<ValueId> {
        self.names.get(name).copied().ok_or_else(|| anyhow!("line {line}: %{name} is not defined"))
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }

    fn peek_at(&self, k: usize) -> &Tok {
        &self.toks[(self.pos + k).min(self.toks.len() - 1)].0
    }

    fn line(&self) -> usize {
        self.toks[self.pos].1
    }

    fn next(&mut self) -> Tok {
        let t = self.toks[self.pos].0.clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn err(&self, expected: &str) -> anyhow::Error {
        anyhow!("line {}: expected {expected}, found {}", self.line(), self.peek())
    }

    fn is_punct(&self, c: char) -> bool {
        self.peek() == &Tok::Punct(c)
    }

    fn eat(&mut self, c: char) -> bool {
        let yes = self.is_punct(c);
        if yes {
            self.next();
        }
        yes
    }

    fn punct(&mut self, c: char, context: &str) -> Result<()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.err(&format!("'{c}' {context}")))
        }
    }

    fn keyword(&mut self, kw: &str, context: &str) -> Result<()> {
        if matches!(self.peek(), Tok::Ident(s) if s == kw) {
            self.next();
            Ok(())
        } else {
            Err(self.err(&format!("'{kw}' {context}")))
        }
    }

    /// An identifier or a string.
    fn name(&mut self, what: &str) -> Result<String> {
        match self.peek().clone() {
            Tok::Ident(s) | Tok::Str(s) => {
                self.next();
                Ok(s)
            }
            _ => Err(self.err(what)),
        }
    }

    fn value(&mut self, what: &str) -> Result<String> {
        match self.peek().clone() {
            Tok::Value(s) => {
                self.next();
                Ok(s)
            }
            _ => Err(self.err(what)),
        }
    }

    /// `-`? number, as text with its sign.
    fn signed_num(&mut self) -> Option<String> {
        let sign = match self.peek() {
            Tok::Punct('-') => "-",
            Tok::Punct('+') => "+",
            _ => "",
        };
        let k = usize::from(!sign.is_empty());
        match self.peek_at(k).clone() {
            Tok::Num(n) => {
                self.pos += k;
                self.next();
                Some(format!("{sign}{n}"))
            }
            Tok::Ident(w) if !sign.is_empty() && matches!(w.as_str(), "inf" | "NaN" | "nan") => {
                self.pos += k;
                self.next();
                Some(format!("{sign}{w}"))
            }
            _ => None,
        }
    }

    /// An optional `+k` / `-k` after a dimension symbol.
    fn dim_offset(&mut self) -> Result<i64> {
        if !matches!(self.peek(), Tok::Punct('+' | '-')) || !matches!(self.peek_at(1), Tok::Num(_)) {
            return Ok(0);
        }
        let line = self.line();
        let text = self.signed_num().unwrap_or_default();
        text.parse().map_err(|_| anyhow!("line {line}: dimension offset {text} is not a 64-bit integer"))
    }

    fn dim(&mut self) -> Result<Dim> {
        let line = self.line();
        if let Some(text) = self.signed_num() {
            return match text.parse::<i64>() {
                Ok(n) if n >= 0 => Ok(Dim { sym: None, offset: n, per: 1 }),
                _ => Err(anyhow!("line {line}: dimension {text} is not a non-negative 64-bit integer")),
            };
        }
        // A chunk count with an offset is parenthesised: `(T-1)/16`.
        let paren = self.eat('(');
        let sym = self.name("a dimension (integer, symbol or chunk count)")?;
        let offset = self.dim_offset()?;
        if paren {
            self.punct(')', "after a parenthesised dimension")?;
            if !self.is_punct('/') {
                return Err(self.err("'/' after a parenthesised dimension"));
            }
        } else if offset != 0 && self.is_punct('/') {
            return Err(anyhow!("line {line}: a chunk count with an offset is written ({}{offset:+})/N", name(&sym)));
        }
        let per = self.dim_per()?;
        Ok(Dim { sym: Some(sym), offset, per })
    }

    /// An optional `/N` (N ≥ 1) after a dimension: the chunk length of a chunk count.
    fn dim_per(&mut self) -> Result<usize> {
        if !self.eat('/') {
            return Ok(1);
        }
        let line = self.line();
        match self.next() {
            Tok::Num(n) => match n.parse::<usize>() {
                Ok(p) if p >= 1 => Ok(p),
                _ => Err(anyhow!("line {line}: chunk length {n} is not a positive integer")),
            },
            t => Err(anyhow!("line {line}: expected a chunk length after '/', found {t}")),
        }
    }

    fn dim_list(&mut self, context: &str) -> Result<Vec<Dim>> {
        self.punct('[', context)?;
        let mut ds = Vec::new();
        if !self.eat(']') {
            loop {
                ds.push(self.dim()?);
                if self.eat(']') {
                    break;
                }
                self.punct(',', "or ']' in a dimension list")?;
            }
        }
        Ok(ds)
    }

    fn ty(&mut self) -> Result<Type> {
        let dtype = match self.peek() {
            Tok::Ident(s) => dtype_named(s),
            _ => None,
        }
        .ok_or_else(|| self.err("a type (f32[...] or i64[...])"))?;
        self.next();
        let shape = self.dim_list("after the element type")?;
        Ok(Type::new(dtype, shape))
    }

    fn attr_value(&mut self) -> Result<Val> {
        if self.is_punct('[') {
            return Ok(Val::List(self.dim_list("")?));
        }
        if let Some(n) = self.signed_num() {
            return Ok(Val::Num(n));
        }
        match self.peek().clone() {
            Tok::Ident(w) => {
                let d = self.dim()?;
                Ok(if d.offset == 0 && d.per == 1 { Val::Word(w) } else { Val::Dim(d) })
            }
            Tok::Str(_) | Tok::Punct('(') => Ok(Val::Dim(self.dim()?)),
            _ => Err(self.err("an attribute value")),
        }
    }

    fn attrs(&mut self, op: &str, line: usize) -> Result<Attrs> {
        let mut a = Attrs { op: op.to_string(), line, items: Vec::new() };
        if !self.eat('{') {
            return Ok(a);
        }
        if self.eat('}') {
            return Ok(a);
        }
        loop {
            let key_line = self.line();
            let key = match self.peek().clone() {
                Tok::Ident(k) => k,
                _ => return Err(self.err("an attribute name")),
            };
            self.next();
            if a.items.iter().any(|(k, ..)| *k == key) {
                return Err(anyhow!("line {key_line}: attribute '{key}' is given twice"));
            }
            self.punct('=', &format!("after attribute name '{key}'"))?;
            let v = self.attr_value()?;
            a.items.push((key, v, key_line, false));
            if self.eat('}') {
                return Ok(a);
            }
            self.punct(',', "or '}' after an attribute")?;
        }
    }

    /// `name(args) { nodes return outs }`, after its `graph` or `body` keyword.
    fn graph(&mut self, depth: usize) -> Result<Graph> {
        if depth > MAX_DEPTH {
            return Err(anyhow!("line {}: scan bodies nest more than {MAX_DEPTH} deep", self.line()));
        }
        let gname = self.name("a graph name")?;
        let mut sc = Scope { g: Graph::new(&gname), names: HashMap::new() };
        self.punct('(', "after the graph name")?;
        if !self.eat(')') {
            loop {
                let line = self.line();
                let v = self.value("an argument ('%name: type input|param \"name\"') or ')'")?;
                self.punct(':', "after the argument value")?;
                let t = self.ty()?;
                let kind = match self.peek() {
                    Tok::Ident(k) if k == "input" => ArgKind::Input,
                    Tok::Ident(k) if k == "param" => ArgKind::Param,
                    _ => return Err(self.err("'input' or 'param' after the argument type")),
                };
                self.next();
                let aname = match self.peek().clone() {
                    Tok::Str(s) => {
                        self.next();
                        s
                    }
                    _ => return Err(self.err("a quoted argument name")),
                };
                let value = sc.define(&v, t, line)?;
                sc.g.args.push(Arg { name: aname, kind, value });
                if self.eat(')') {
                    break;
                }
                self.punct(',', "or ')' after an argument")?;
                if self.eat(')') {
                    break;
                }
            }
        }
        self.punct('{', "to open the graph body")?;
        loop {
            if matches!(self.peek(), Tok::Ident(k) if k == "return") {
                self.next();
                break;
            }
            self.node(&mut sc, depth)?;
        }
        if !self.is_punct('}') {
            loop {
                let oname = self.name("an output name")?;
                self.punct('=', "after the output name")?;
                let line = self.line();
                let v = self.value("a value after '='")?;
                let v = sc.lookup(&v, line)?;
                sc.g.outputs.push((oname, v));
                if !self.eat(',') {
                    break;
                }
            }
        }
        self.punct('}', "to close the graph body")?;
        Ok(sc.g)
    }

    fn node(&mut self, sc: &mut Scope, depth: usize) -> Result<()> {
        let mut results = Vec::new();
        if matches!(self.peek(), Tok::Value(_)) {
            loop {
                let line = self.line();
                results.push((self.value("a result value")?, line));
                if self.eat('=') {
                    break;
                }
                self.punct(',', "or '=' after a result value")?;
            }
        }
        let line = self.line();
        let opname = match self.peek().clone() {
            Tok::Ident(s) => s,
            _ if results.is_empty() => return Err(self.err("a node ('%v = op(...)') or 'return'")),
            _ => return Err(self.err("an op name")),
        };
        self.next();
        self.punct('(', &format!("after op name '{opname}'"))?;
        let mut inputs = Vec::new();
        if !self.eat(')') {
            loop {
                let vline = self.line();
                let v = self.value("an operand value")?;
                inputs.push(sc.lookup(&v, vline)?);
                if self.eat(')') {
                    break;
                }
                self.punct(',', "or ')' after an operand")?;
            }
        }
        let mut attrs = self.attrs(&opname, line)?;
        let mut op = op_named(&opname, &mut attrs)?.ok_or_else(|| anyhow!("line {line}: unknown op '{opname}'"))?;
        attrs.done()?;
        let mut types = Vec::new();
        if self.eat(':') {
            loop {
                types.push(self.ty()?);
                if !self.eat(',') {
                    break;
                }
            }
        }
        if types.len() != results.len() {
            return Err(anyhow!("line {line}: {opname} has {} results but {} result types", results.len(), types.len()));
        }
        if let Some(body) = op.body_mut() {
            self.keyword("body", "after the result types")?;
            *body = self.graph(depth + 1)?;
        }
        let in_types: Vec<&Type> = inputs.iter().map(|&v| sc.g.ty(v)).collect();
        let inferred = infer(&op, &in_types).map_err(|e| anyhow!("line {line}: {opname}: {e:#}"))?;
        if inferred.len() != types.len() {
            return Err(anyhow!("line {line}: {opname} gives {} results, {} are written", inferred.len(), types.len()));
        }
        for ((r, _), (written, t)) in results.iter().zip(types.iter().zip(&inferred)) {
            if written != t {
                return Err(anyhow!("line {line}: %{r} is typed {}, but {opname} gives {}", ty(written), ty(t)));
            }
        }
        let mut outputs = Vec::new();
        for ((r, rline), t) in results.iter().zip(types) {
            outputs.push(sc.define(r, t, *rline)?);
        }
        sc.g.nodes.push(Node { op, inputs, outputs });
        Ok(())
    }
}
