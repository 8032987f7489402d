//! Capped reads of regular files.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The most bytes a file may hold, with what it is for the error message (`"a config.json"`).
#[derive(Clone, Copy, Debug)]
pub struct Cap {
    pub what: &'static str,
    pub bytes: u64,
}

impl Cap {
    /// Text a person writes: config.json, model.toml, trainer.json, tokenizer.json.
    pub const CONFIG: Cap = Cap { what: "a config file", bytes: 16 << 20 };

    pub fn new(what: &'static str, bytes: u64) -> Cap {
        Cap { what, bytes }
    }
}

/// The bytes of the regular file at `path` (links followed), refused in one line when it is
/// something else (a folder, a FIFO, a device) or larger than `cap`.
pub fn read(path: &Path, cap: Cap) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is {}, not a regular file", path.display(), kind(&meta));
    }
    if meta.len() > cap.bytes {
        bail!("{} holds {} bytes, more than {} can ({})", path.display(), meta.len(), cap.what, human(cap.bytes));
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: never take more than the cap.
    file.take(cap.bytes + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > cap.bytes {
        bail!("{} grew past {} while it was read", path.display(), human(cap.bytes));
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub fn read_text(path: &Path, cap: Cap) -> Result<String> {
    String::from_utf8(read(path, cap)?).map_err(|e| anyhow::anyhow!("{} is not UTF-8 text (byte {})", path.display(), e.utf8_error().valid_up_to()))
}

/// What a file that is not regular is, in words.
pub(crate) fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Bytes in binary units: `16 MiB`.
pub fn human(bytes: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", units[u])
    }
}
