//! The agent's preprocessing and ONNX Runtime inference against an
//! independent numpy + onnxruntime implementation
//! (`scripts/models/reference.py`), on seeded PNGs of varied sizes and kinds,
//! plus the runtime's error paths. Needs the repo's `.venv` (made by
//! `bash scripts/setup.sh`); without it the tests fail and say so.

use dml_agent::infer::error::InferError;
use dml_agent::infer::preprocess::{preprocess, stack};
use dml_agent::infer::runtime::{self, Session, find_dylib, top_k};
use dml_shared::models::{ModelSpec, Registry};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

const TOLERANCE: f64 = 1e-4;
const SETUP_HINT: &str = "run `bash scripts/setup.sh` (creates .venv with onnxruntime, numpy and pillow, and builds assets/models/tiny.onnx)";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tiny() -> ModelSpec {
    Registry::builtin().get("tiny").unwrap().clone()
}

fn tiny_onnx() -> PathBuf {
    let p = repo().join("assets/models/tiny.onnx");
    assert!(p.is_file(), "{} is missing; {SETUP_HINT}", p.display());
    p
}

/// Loads ONNX Runtime from the repo's .venv (or the configured place).
fn ready() {
    let dylib = find_dylib(None).unwrap_or_else(|e| panic!("{e}"));
    runtime::init(&dylib).unwrap_or_else(|e| panic!("{e}"));
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("dml-numerics-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// splitmix64: seeded noise without depending on a crate's sequence.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A smooth gradient in 0..1 at (x, y) for channel c plus noise, as 0..=max.
    fn pixel(&mut self, x: u32, y: u32, w: u32, h: u32, c: u32, max: f64) -> f64 {
        let fx = f64::from(x) / f64::from(w.max(2) - 1);
        let fy = f64::from(y) / f64::from(h.max(2) - 1);
        let base = match c {
            0 => fx,
            1 => fy,
            2 => 0.5 + 0.5 * (6.0 * fx + 4.0 * fy).sin(),
            _ => 1.0 - 0.5 * fx,
        };
        let noise = (self.next() % 1000) as f64 / 1000.0 - 0.5;
        ((0.8 * base + 0.3 * noise).clamp(0.0, 1.0) * max).round()
    }
}

/// Writes the test images; returns their paths.
fn write_images(dir: &Path) -> Vec<PathBuf> {
    use image::{DynamicImage, ImageBuffer, Luma, Rgb, Rgba};
    let mut noise = Noise(0x5eed);
    let mut out = Vec::new();
    // (name, width, height, kind)
    let specs: [(&str, u32, u32, &str); 8] = [
        ("rgb_100x80", 100, 80, "rgb"),
        ("rgb_500x300", 500, 300, "rgb"),
        ("rgb_64x64", 64, 64, "rgb"),
        ("rgb_37x211", 37, 211, "rgb"),
        // Short side already 72, width 101: no resize, crop at 18.5 -> 18.
        ("rgb_101x72", 101, 72, "rgb"),
        ("grey_120x90", 120, 90, "grey"),
        ("rgba_99x150", 99, 150, "rgba"),
        ("grey16_60x107", 60, 107, "grey16"),
    ];
    for (name, w, h, kind) in specs {
        let img: DynamicImage = match kind {
            "rgb" => ImageBuffer::from_fn(w, h, |x, y| {
                Rgb([0, 1, 2].map(|c| noise.pixel(x, y, w, h, c, 255.0) as u8))
            })
            .into(),
            "rgba" => ImageBuffer::from_fn(w, h, |x, y| {
                Rgba([0, 1, 2, 3].map(|c| noise.pixel(x, y, w, h, c, 255.0) as u8))
            })
            .into(),
            "grey" => {
                ImageBuffer::from_fn(w, h, |x, y| Luma([noise.pixel(x, y, w, h, 2, 255.0) as u8]))
                    .into()
            }
            _ => ImageBuffer::from_fn(w, h, |x, y| {
                Luma([noise.pixel(x, y, w, h, 2, 65535.0) as u16])
            })
            .into(),
        };
        let path = dir.join(format!("{name}.png"));
        img.save(&path).unwrap();
        out.push(path);
    }
    out
}

/// Runs the numpy reference; returns its JSON.
fn reference(spec: &ModelSpec, model: &Path, images: &[PathBuf]) -> serde_json::Value {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing; {SETUP_HINT}",
        python.display()
    );
    let triple = |v: [f32; 3]| format!("{},{},{}", v[0], v[1], v[2]);
    let out = Command::new(&python)
        .arg(repo().join("scripts/models/reference.py"))
        .arg("--model")
        .arg(model)
        .args(["--input-size", &spec.input_size.to_string()])
        .args(["--resize", &spec.resize.to_string()])
        .args(["--mean", &triple(spec.mean), "--std", &triple(spec.std)])
        .arg("--dump-input")
        .args(images)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {SETUP_HINT}", python.display()));
    assert!(
        out.status.success(),
        "reference.py failed ({}): {}\n{SETUP_HINT}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reference.py prints JSON")
}

fn rows(v: &serde_json::Value, key: &str) -> Vec<Vec<f64>> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("reference output has no {key}"))
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// Largest |a - b| over equally long rows.
fn max_diff<'a>(a: impl IntoIterator<Item = &'a f32>, b: &[f64]) -> f64 {
    let a: Vec<f64> = a.into_iter().map(|&x| f64::from(x)).collect();
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn rust_preprocessing_and_inference_match_the_numpy_reference() {
    compare_with_reference(&tiny(), &tiny_onnx());
}

/// The same comparison for the full-size models built by
/// `scripts/models/build_models.py` into `.dml/models/built` (slow in debug):
/// `cargo test -p dml-agent --release --test numerics -- --ignored full_size`
#[test]
#[ignore]
fn full_size_models_match_the_numpy_reference() {
    for name in ["resnet50", "inceptionv3"] {
        let spec = Registry::builtin().get(name).unwrap().clone();
        let path = repo().join(".dml/models/built").join(&spec.file);
        assert!(
            path.is_file(),
            "{} is missing; run scripts/models/build_models.py",
            path.display()
        );
        println!("{name}:");
        compare_with_reference(&spec, &path);
    }
}

fn compare_with_reference(spec: &ModelSpec, model: &Path) {
    ready();
    let spec = spec.clone();
    let model = model.to_path_buf();
    let dir = TempDir::new(&format!("match-{}", spec.name));
    let images = write_images(&dir.0);

    let inputs: Vec<_> = images
        .iter()
        .map(|p| {
            preprocess(&std::fs::read(p).unwrap(), &spec)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect();
    let batch = stack(&inputs);
    let mut session = Session::load(&model, &spec, 1).unwrap();
    let logits = session.logits(batch.view()).unwrap();
    let top = session.run(batch.view()).unwrap();

    let want = reference(&spec, &model, &images);
    let (want_in, want_logits, want_probs) = (
        rows(&want, "inputs"),
        rows(&want, "logits"),
        rows(&want, "probs"),
    );
    assert_eq!(want_in.len(), images.len());

    let (mut worst_in, mut worst_logit, mut worst_prob) = (0f64, 0f64, 0f64);
    for (i, path) in images.iter().enumerate() {
        let name = path.file_name().unwrap().to_string_lossy();
        let d_in = max_diff(inputs[i].iter(), &want_in[i]);
        let d_logit = max_diff(logits.row(i).iter(), &want_logits[i]);
        let all = top_k(logits.row(i).as_slice().unwrap(), &spec.labels, 1000);
        let mut probs = vec![0f32; all.len()];
        for p in &all {
            probs[p.class as usize] = p.score;
        }
        let d_prob = max_diff(probs.iter(), &want_probs[i]);
        println!("{name}: max |diff| input {d_in:.2e}, logits {d_logit:.2e}, probs {d_prob:.2e}");
        assert!(
            d_in < TOLERANCE,
            "{name}: preprocessed input differs by {d_in}"
        );
        assert!(d_logit < TOLERANCE, "{name}: logits differ by {d_logit}");
        assert!(
            d_prob < TOLERANCE,
            "{name}: probabilities differ by {d_prob}"
        );

        // The top-5: best first, each score the reference's probability,
        // and no class outside it clearly more probable.
        let five = &top[i];
        assert_eq!(five.len(), 5);
        assert!(five.windows(2).all(|w| w[0].score >= w[1].score));
        let mut sorted = want_probs[i].clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for p in five {
            assert_eq!(p.label, spec.labels[p.class as usize]);
            let r = want_probs[i][p.class as usize];
            assert!(
                (f64::from(p.score) - r).abs() < TOLERANCE,
                "{name}: {p:?} vs {r}"
            );
            assert!(
                r >= sorted[4] - TOLERANCE,
                "{name}: {p:?} is not in the reference top-5"
            );
        }
        worst_in = worst_in.max(d_in);
        worst_logit = worst_logit.max(d_logit);
        worst_prob = worst_prob.max(d_prob);
    }
    println!(
        "worst over {} images: input {worst_in:.2e}, logits {worst_logit:.2e}, probs {worst_prob:.2e}",
        images.len()
    );
}

#[test]
fn a_registry_shape_mismatch_names_both_shapes() {
    ready();
    let mut spec = tiny();
    spec.input_size = 224;
    let e = Session::load(&tiny_onnx(), &spec, 1)
        .err()
        .expect("must fail");
    let msg = e.to_string();
    assert!(matches!(e, InferError::ModelContract { .. }), "{msg}");
    assert!(msg.contains("\"tiny\""), "{msg}");
    assert!(msg.contains("[N,3,64,64]"), "{msg}");
    assert!(msg.contains("[N,3,224,224]"), "{msg}");

    let mut spec = tiny();
    spec.labels = Arc::new((0..10).map(|i| i.to_string()).collect());
    let msg = Session::load(&tiny_onnx(), &spec, 1)
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains("[N,1000]") && msg.contains("[N,10]"), "{msg}");
}

#[test]
fn a_missing_or_corrupt_model_file_is_an_error_naming_the_path() {
    ready();
    let spec = tiny();
    let dir = TempDir::new("badmodel");
    let missing = dir.0.join("nope.onnx");
    let msg = Session::load(&missing, &spec, 1)
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains(&*missing.to_string_lossy()), "{msg}");

    let corrupt = dir.0.join("corrupt.onnx");
    std::fs::write(&corrupt, b"this is not a protobuf model at all").unwrap();
    let e = Session::load(&corrupt, &spec, 1).err().expect("must fail");
    let msg = e.to_string();
    assert!(matches!(e, InferError::ModelLoad { .. }), "{msg}");
    assert!(msg.contains(&*corrupt.to_string_lossy()), "{msg}");
}

#[test]
fn a_batch_of_the_wrong_shape_is_an_error() {
    ready();
    let spec = tiny();
    let mut session = Session::load(&tiny_onnx(), &spec, 1).unwrap();
    let wrong = ndarray::Array4::<f32>::zeros((2, 3, 32, 32));
    let msg = session.run(wrong.view()).unwrap_err().to_string();
    assert!(msg.contains("[2,3,32,32]") && msg.contains("64"), "{msg}");
    let empty = ndarray::Array4::<f32>::zeros((0, 3, 64, 64));
    assert!(session.run(empty.view()).is_err());
}

#[test]
fn init_is_idempotent_and_refuses_another_library() {
    ready();
    let dylib = find_dylib(None).unwrap();
    runtime::init(&dylib).unwrap();
    assert_eq!(
        runtime::loaded_dylib(),
        Some(std::fs::canonicalize(&dylib).unwrap())
    );
    let dir = TempDir::new("otherlib");
    let other = dir.0.join("libonnxruntime.so");
    std::fs::write(&other, b"x").unwrap();
    let e = runtime::init(&other).unwrap_err();
    assert!(matches!(e, InferError::AlreadyLoaded { .. }), "{e}");
}

#[test]
fn text_and_corrupt_image_files_are_errors() {
    let spec = tiny();
    let dir = TempDir::new("badimg");
    let images = write_images(&dir.0);
    let mut png = std::fs::read(&images[0]).unwrap();
    png.truncate(png.len() * 2 / 3);
    let e = preprocess(&png, &spec).unwrap_err();
    assert!(matches!(e, InferError::Decode { .. }), "{e}");
    for b in png.iter_mut().skip(40) {
        *b ^= 0x5a;
    }
    assert!(preprocess(&png, &spec).is_err());
    let e = preprocess(b"id,label\n1,cat\n", &spec).unwrap_err();
    assert!(e.to_string().contains("not a PNG or JPEG"), "{e}");
}

/// Not a check: prints how long preprocessing a 500x375 image and a tiny
/// batch take. `cargo test -p dml-agent --release --test numerics -- --ignored --nocapture`
#[test]
#[ignore]
fn timing() {
    ready();
    let spec = tiny();
    let dir = TempDir::new("timing");
    let mut noise = Noise(7);
    let img = image::RgbImage::from_fn(500, 375, |x, y| {
        image::Rgb([0, 1, 2].map(|c| noise.pixel(x, y, 500, 375, c, 255.0) as u8))
    });
    let path = dir.0.join("t.png");
    img.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let resnet = Registry::builtin().get("resnet50").unwrap().clone();
    let reps = 50;
    for s in [&spec, &resnet] {
        let t = Instant::now();
        for _ in 0..reps {
            preprocess(&bytes, s).unwrap();
        }
        println!(
            "preprocess 500x375 PNG for {} ({}px): {:.2} ms",
            s.name,
            s.input_size,
            t.elapsed().as_secs_f64() * 1e3 / f64::from(reps)
        );
    }
    let one = preprocess(&bytes, &spec).unwrap();
    let mut session = Session::load(&tiny_onnx(), &spec, 1).unwrap();
    for n in [1usize, 8, 32] {
        let batch = stack(&vec![one.clone(); n]);
        session.run(batch.view()).unwrap();
        let t = Instant::now();
        for _ in 0..reps {
            session.run(batch.view()).unwrap();
        }
        println!(
            "tiny batch {n}: {:.3} ms per batch",
            t.elapsed().as_secs_f64() * 1e3 / f64::from(reps)
        );
    }
}
