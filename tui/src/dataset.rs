//! `dml dataset make`: a seeded sample image dataset (sides 96..=640, JPEG
//! and PNG mixed; smooth gradients and shapes with noise), the same bytes
//! for the same seed.

use crate::sdfs::report::size;
use anyhow::{Context, Result};
use dml_tui::error::ClientError;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageFormat, RgbImage};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Sides of the generated images, in pixels.
pub const MIN_SIDE: u32 = 96;
pub const MAX_SIDE: u32 = 640;
/// Share of JPEGs (the rest are PNGs), in percent.
const JPEG_PERCENT: u64 = 60;
const JPEG_QUALITY: u8 = 85;

/// SplitMix64: small, seedable, and stable across crate versions.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u32
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn colour(&mut self) -> [f32; 3] {
        [
            self.unit() * 255.0,
            self.unit() * 255.0,
            self.unit() * 255.0,
        ]
    }
}

/// One image of the dataset: its file name and encoded bytes.
pub struct Sample {
    pub name: String,
    pub format: ImageFormat,
    pub bytes: Vec<u8>,
}

enum Shape {
    Disc { cx: f32, cy: f32, r: f32 },
    Rect { x0: f32, y0: f32, x1: f32, y1: f32 },
}

impl Shape {
    fn contains(&self, x: f32, y: f32) -> bool {
        match *self {
            Shape::Disc { cx, cy, r } => (x - cx).powi(2) + (y - cy).powi(2) <= r * r,
            Shape::Rect { x0, y0, x1, y1 } => x >= x0 && x < x1 && y >= y0 && y < y1,
        }
    }
}

/// Image `index` of the dataset of `seed`.
pub fn sample(seed: u64, index: u32) -> Result<Sample> {
    let mut rng = Rng::new(seed ^ u64::from(index).wrapping_mul(0xd6e8_feb8_6659_fd93));
    let (w, h) = (rng.range(MIN_SIDE, MAX_SIDE), rng.range(MIN_SIDE, MAX_SIDE));
    let jpeg = rng.next() % 100 < JPEG_PERCENT;
    // A diagonal gradient between two colours, then shapes, then noise.
    let (a, b) = (rng.colour(), rng.colour());
    let angle = rng.unit() * std::f32::consts::TAU;
    let (dx, dy) = (angle.cos(), angle.sin());
    let shapes: Vec<(Shape, [f32; 3])> = (0..rng.range(1, 6))
        .map(|_| {
            let (fw, fh) = (w as f32, h as f32);
            let shape = if rng.next().is_multiple_of(2) {
                Shape::Disc {
                    cx: rng.unit() * fw,
                    cy: rng.unit() * fh,
                    r: (0.05 + 0.25 * rng.unit()) * fw.min(fh),
                }
            } else {
                let (x0, y0) = (rng.unit() * fw, rng.unit() * fh);
                Shape::Rect {
                    x0,
                    y0,
                    x1: x0 + (0.1 + 0.4 * rng.unit()) * fw,
                    y1: y0 + (0.1 + 0.4 * rng.unit()) * fh,
                }
            };
            (shape, rng.colour())
        })
        .collect();
    let noise = 4.0 + rng.unit() * 20.0;
    let diag = (w as f32).hypot(h as f32);
    let mut img = RgbImage::new(w, h);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (fx, fy) = (x as f32, y as f32);
        let t = (((fx * dx + fy * dy) / diag) + 1.0) / 2.0;
        let mut c = [0.0f32; 3];
        for i in 0..3 {
            c[i] = a[i] + (b[i] - a[i]) * t;
        }
        if let Some((_, colour)) = shapes.iter().rev().find(|(s, _)| s.contains(fx, fy)) {
            c = *colour;
        }
        let n = (rng.unit() - 0.5) * noise;
        *px = image::Rgb(c.map(|v| (v + n).clamp(0.0, 255.0) as u8));
    }
    let mut bytes = Vec::new();
    let (format, ext) = if jpeg {
        img.write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY))
            .context("encode a JPEG")?;
        (ImageFormat::Jpeg, "jpg")
    } else {
        img.write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png)
            .context("encode a PNG")?;
        (ImageFormat::Png, "png")
    };
    Ok(Sample {
        name: format!("img-{index:05}.{ext}"),
        format,
        bytes,
    })
}

/// What `make` wrote.
pub struct Made {
    pub dir: PathBuf,
    pub jpeg: u32,
    pub png: u32,
    pub bytes: u64,
}

/// Writes images `0..count` of the dataset of `seed` into `dir`, two threads at a time.
pub fn make(dir: &Path, count: u32, seed: u64) -> Result<Made> {
    std::fs::create_dir_all(dir).map_err(|e| ClientError::io("create", dir, e))?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4)) as u32;
    let results: Vec<Result<(ImageFormat, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..count)
                        .step_by(threads as usize)
                        .map(|i| {
                            let img = sample(seed, i)?;
                            let path = dir.join(&img.name);
                            std::fs::write(&path, &img.bytes)
                                .map_err(|e| ClientError::io("write", &path, e))?;
                            Ok((img.format, img.bytes.len() as u64))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(anyhow::anyhow!("an image thread panicked"))])
            })
            .collect()
    });
    let mut made = Made {
        dir: dir.to_path_buf(),
        jpeg: 0,
        png: 0,
        bytes: 0,
    };
    for r in results {
        let (format, bytes) = r?;
        if format == ImageFormat::Jpeg {
            made.jpeg += 1;
        } else {
            made.png += 1;
        }
        made.bytes += bytes;
    }
    Ok(made)
}

/// Runs `dml dataset make`.
pub fn run_make(dir: &Path, count: u32, seed: u64, json: bool) -> Result<()> {
    let m = make(dir, count, seed)?;
    if json {
        println!(
            "{}",
            json!({"dir": m.dir, "images": m.jpeg + m.png, "jpeg": m.jpeg, "png": m.png, "bytes": m.bytes, "seed": seed})
        );
    } else {
        println!(
            "wrote {} images ({} JPEG, {} PNG, {}) to {} (seed {seed}); load them with: dml sdfs load {} datasets/sample",
            m.jpeg + m.png,
            m.jpeg,
            m.png,
            size(m.bytes),
            m.dir.display(),
            m.dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn dataset_has_the_count_varied_sizes_both_formats_and_decodes() {
        let dir = std::env::temp_dir().join(format!("dml-dataset-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = make(&dir, 24, 7).unwrap();
        assert_eq!(m.jpeg + m.png, 24);
        assert!(m.jpeg > 0 && m.png > 0, "{} JPEG, {} PNG", m.jpeg, m.png);
        let paths = files(&dir);
        assert_eq!(paths.len(), 24);
        let mut sizes = BTreeSet::new();
        for p in &paths {
            let img = image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let (w, h) = (img.width(), img.height());
            assert!((MIN_SIDE..=MAX_SIDE).contains(&w) && (MIN_SIDE..=MAX_SIDE).contains(&h));
            let guessed = image::guess_format(&std::fs::read(p).unwrap()).unwrap();
            let ext = p.extension().unwrap().to_str().unwrap();
            assert_eq!(
                guessed == ImageFormat::Jpeg,
                ext == "jpg",
                "{}",
                p.display()
            );
            sizes.insert((w, h));
        }
        assert!(sizes.len() > 20, "sizes should vary: {sizes:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = sample(3, 5).unwrap();
        let b = sample(3, 5).unwrap();
        assert_eq!((a.name.as_str(), &a.bytes), (b.name.as_str(), &b.bytes));
        let c = sample(4, 5).unwrap();
        assert_ne!(a.bytes, c.bytes);
        assert_ne!(sample(3, 6).unwrap().bytes, a.bytes);
    }

    #[test]
    fn images_are_not_flat() {
        let s = sample(1, 0).unwrap();
        let img = image::load_from_memory(&s.bytes).unwrap().to_rgb8();
        let distinct: BTreeSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        assert!(distinct.len() > 100, "{} colours", distinct.len());
    }
}
