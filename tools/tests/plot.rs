//! Loss curves render to a PNG of the requested size.

use tttc_tools::plot::{loss_curves, Series};

#[test]
fn draws_a_png() {
    let dir = std::env::temp_dir().join(format!("tttc-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("loss.png");
    let train = Series { label: "train".into(), points: (0..50).map(|i| (i as f64, 5.5 - (i as f64).sqrt() * 0.4)).collect() };
    let val = Series { label: "validation".into(), points: (0..6).map(|i| (i as f64 * 10.0, 5.6 - i as f64 * 0.5)).collect() };
    loss_curves(&path, "tiny TTT-Linear", &[train, val]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height, big-endian, at bytes 16..24.
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 900);
    assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 560);
    std::fs::remove_dir_all(&dir).unwrap();
}
