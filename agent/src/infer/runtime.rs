//! ONNX Runtime loading and sessions: finding `libonnxruntime.so`, loading it
//! once per process, one [`Session`] per model checked against its registry
//! entry, and softmax top-k.

use super::error::InferError;
use dml_shared::infer::{Prediction, TOP_K};
use dml_shared::models::ModelSpec;
use ndarray::{Array2, ArrayView4, Ix2};
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Finds the ONNX Runtime library: `configured` (inference.ort_dylib), then
/// `ORT_DYLIB_PATH`, then `<dir>/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`
/// for each ancestor of the running executable, then of the working directory.
pub fn find_dylib(configured: Option<&Path>) -> Result<PathBuf, InferError> {
    if let Some(p) = configured {
        return existing(p, "inference.ort_dylib");
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        return existing(Path::new(&p), "ORT_DYLIB_PATH");
    }
    dml_shared::ort_lib::search_venvs().map_err(|searched| InferError::DylibNotFound { searched })
}

fn existing(p: &Path, from: &'static str) -> Result<PathBuf, InferError> {
    if p.is_file() {
        Ok(std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
    } else {
        Err(InferError::DylibMissing {
            from,
            path: p.to_path_buf(),
        })
    }
}

/// The library ONNX Runtime was loaded from.
static LOADED: Mutex<Option<PathBuf>> = Mutex::new(None);
/// Set once loading succeeded; sessions take the environment from here.
static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();

/// Loads ONNX Runtime from `dylib` for the whole process. Calling it again
/// with the same library does nothing; with another library is an error.
pub fn init(dylib: &Path) -> Result<(), InferError> {
    let requested = std::fs::canonicalize(dylib).map_err(|e| InferError::DylibLoad {
        path: dylib.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = loaded.as_ref() {
        return if *path == requested {
            Ok(())
        } else {
            Err(InferError::AlreadyLoaded {
                loaded: path.clone(),
                requested,
            })
        };
    }
    let load_err = |reason: String| InferError::DylibLoad {
        path: requested.clone(),
        reason,
    };
    // ort checks the library exports the C API and is at least the version
    // it was built for (1.31), and reports both as errors.
    let env = ort::init_from(&requested)
        .map_err(|e| load_err(e.to_string()))?
        .with_name("dml-agent")
        .with_telemetry(false)
        .build()
        .map_err(|e| load_err(e.to_string()))?;
    let _ = ENV.set(env);
    *loaded = Some(requested);
    Ok(())
}

/// The library [`init`] loaded, if any.
pub fn loaded_dylib() -> Option<PathBuf> {
    LOADED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// One loaded model, checked against its registry entry.
pub struct Session {
    session: ort::session::Session,
    spec: ModelSpec,
    output: String,
}

impl Session {
    /// Loads `onnx` and checks its first input is `[N,3,S,S]` float32 with
    /// S = `spec.input_size` and its first output `[N, labels]`.
    pub fn load(
        onnx: &Path,
        spec: &ModelSpec,
        intra_threads: usize,
    ) -> Result<Session, InferError> {
        let env = ENV.get().ok_or(InferError::NotInitialized)?;
        let load_err = |reason: String| InferError::ModelLoad {
            model: spec.name.clone(),
            path: onnx.to_path_buf(),
            reason,
        };
        match std::fs::metadata(onnx) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(load_err("not a regular file".into())),
            Err(e) => return Err(load_err(e.to_string())),
        }
        let opt = |e: ort::Error<_>| load_err(format!("session options: {e}"));
        let session = ort::session::Session::builder(env)
            .map_err(|e| load_err(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(opt)?
            .with_intra_threads(intra_threads)
            .map_err(opt)?
            .with_inter_threads(1)
            .map_err(opt)?
            .with_intra_op_spinning(false)
            .map_err(opt)?
            .with_inter_op_spinning(false)
            .map_err(opt)?
            .commit_from_file(onnx)
            .map_err(|e| load_err(e.to_string()))?;
        let output = check_contract(&session, spec)?;
        Ok(Session {
            session,
            spec: spec.clone(),
            output,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Runs a `[N,3,S,S]` batch and returns the `[N, labels]` logits.
    pub fn logits(&mut self, batch: ArrayView4<f32>) -> Result<Array2<f32>, InferError> {
        let s = self.spec.input_size as usize;
        let (n, c, h, w) = batch.dim();
        if n == 0 || c != 3 || h != s || w != s {
            return Err(InferError::BatchShape {
                model: self.spec.name.clone(),
                found: format!("[{n},{c},{h},{w}]"),
                expected: format!("[N,3,{s},{s}] with N >= 1"),
            });
        }
        let run_err = |reason: String| InferError::Run {
            model: self.spec.name.clone(),
            reason,
        };
        let batch = batch.as_standard_layout();
        let input = TensorRef::from_array_view(&batch).map_err(|e| run_err(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![input])
            .map_err(|e| run_err(e.to_string()))?;
        let value = outputs
            .get(self.output.as_str())
            .ok_or_else(|| run_err(format!("no output \"{}\"", self.output)))?;
        let arr = value
            .try_extract_array::<f32>()
            .map_err(|e| run_err(e.to_string()))?;
        let classes = self.spec.labels.len();
        if arr.shape() != [n, classes] {
            return Err(run_err(format!(
                "output shape {:?} is not [{n}, {classes}]",
                arr.shape()
            )));
        }
        let arr = arr
            .into_dimensionality::<Ix2>()
            .map_err(|e| run_err(e.to_string()))?;
        Ok(arr.to_owned())
    }

    /// Runs a batch and returns each row's top-5, best first.
    pub fn run(&mut self, batch: ArrayView4<f32>) -> Result<Vec<Vec<Prediction>>, InferError> {
        let logits = self.logits(batch)?;
        let labels = self.spec.labels.clone();
        Ok(logits
            .rows()
            .into_iter()
            .map(|row| match row.as_slice() {
                Some(s) => top_k(s, &labels, TOP_K),
                None => top_k(&row.to_vec(), &labels, TOP_K),
            })
            .collect())
    }
}

/// Checks the session's signature against the registry; returns the name
/// of the output to read.
fn check_contract(session: &ort::session::Session, spec: &ModelSpec) -> Result<String, InferError> {
    let bad = |reason: String| InferError::ModelContract {
        model: spec.name.clone(),
        reason,
    };
    let s = i64::from(spec.input_size);
    let classes = spec.labels.len() as i64;
    let inputs = session.inputs();
    let input = match inputs {
        [one] => one,
        [] => return Err(bad("the model has no inputs".into())),
        more => {
            return Err(bad(format!(
                "the model has {} inputs; one image input is expected",
                more.len()
            )));
        }
    };
    let want_in = format!("[N,3,{s},{s}]");
    let (ty, shape) = tensor_of(input.dtype())
        .ok_or_else(|| bad(format!("input \"{}\" is not a tensor", input.name())))?;
    let dim_ok = |got: i64, want: i64| got == want || got < 0;
    let in_ok =
        shape.len() == 4 && dim_ok(shape[1], 3) && dim_ok(shape[2], s) && dim_ok(shape[3], s);
    if !in_ok {
        return Err(bad(format!(
            "input shape {} does not match the registry ({want_in})",
            show_shape(shape)
        )));
    }
    if ty != TensorElementType::Float32 {
        return Err(bad(format!(
            "input \"{}\" has element type {ty:?}; float32 is expected",
            input.name()
        )));
    }
    let output = session
        .outputs()
        .first()
        .ok_or_else(|| bad("the model has no outputs".into()))?;
    let want_out = format!("[N,{classes}]");
    let (ty, shape) = tensor_of(output.dtype())
        .ok_or_else(|| bad(format!("output \"{}\" is not a tensor", output.name())))?;
    if !(shape.len() == 2 && dim_ok(shape[1], classes)) {
        return Err(bad(format!(
            "output shape {} does not match the registry ({want_out}, one per label)",
            show_shape(shape)
        )));
    }
    if ty != TensorElementType::Float32 {
        return Err(bad(format!(
            "output \"{}\" has element type {ty:?}; float32 is expected",
            output.name()
        )));
    }
    Ok(output.name().to_string())
}

fn tensor_of(t: &ValueType) -> Option<(TensorElementType, &[i64])> {
    match t {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, &shape[..])),
        _ => None,
    }
}

/// `[N,3,64,64]`: a dynamic first dimension shows as N, others as ?.
fn show_shape(shape: &[i64]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| match (i, d) {
            (0, d) if d < 0 => "N".into(),
            (_, d) if d < 0 => "?".into(),
            (_, d) => d.to_string(),
        })
        .collect();
    format!("[{}]", dims.join(","))
}

/// Softmax over `logits` (shifted by the maximum, summed in f64) and the `k`
/// most probable classes, best first; ties go to the lower class index.
pub fn top_k(logits: &[f32], labels: &[String], k: usize) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&x| f64::from(x - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| Prediction {
            class: i as u32,
            label: labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class {i}")),
            score: (exps[i] / sum) as f32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("l{i}")).collect()
    }

    #[test]
    fn top_k_is_sorted_best_first_and_softmax_sums_to_one() {
        let logits = [1.0f32, 3.0, -2.0, 3.5, 0.0, 2.0, 10.0];
        let all = top_k(&logits, &labels(7), 7);
        let classes: Vec<u32> = all.iter().map(|p| p.class).collect();
        assert_eq!(classes, [6, 3, 1, 5, 0, 4, 2]);
        assert_eq!(all[0].label, "l6");
        let sum: f32 = all.iter().map(|p| p.score).sum();
        assert!((sum - 1.0).abs() < 1e-6, "{sum}");
        // exp(10) / sum(exp(x)), computed directly.
        let direct: f64 = logits.iter().map(|&x| f64::from(x).exp()).sum();
        assert!((f64::from(all[0].score) - 10f64.exp() / direct).abs() < 1e-6);
        let five = top_k(&logits, &labels(7), TOP_K);
        assert_eq!(five.len(), 5);
        assert_eq!(five[..], all[..5]);
    }

    #[test]
    fn top_k_is_stable_for_huge_logits() {
        let p = top_k(&[1000.0, 999.0, -1000.0], &labels(3), 2);
        assert_eq!((p[0].class, p[1].class), (0, 1));
        assert!(p.iter().all(|p| p.score.is_finite()));
        let e = 1f64.exp();
        assert!((f64::from(p[0].score) - e / (e + 1.0)).abs() < 1e-6);
    }

    #[test]
    fn top_k_with_fewer_classes_than_k_or_none() {
        assert_eq!(top_k(&[0.5, 0.5], &labels(2), 5).len(), 2);
        assert!(top_k(&[], &labels(0), 5).is_empty());
        let ties = top_k(&[0.5, 0.5], &labels(2), 2);
        assert_eq!((ties[0].class, ties[1].class), (0, 1));
        assert!((ties[0].score - 0.5).abs() < 1e-7);
    }

    #[test]
    fn configured_dylib_that_does_not_exist_is_an_error_with_the_fix() {
        let e = find_dylib(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, InferError::DylibMissing { .. }), "{msg}");
        assert!(msg.contains("/nonexistent/libonnxruntime.so"), "{msg}");
        assert!(msg.contains("inference.ort_dylib"), "{msg}");
        assert!(msg.contains("bash scripts/setup.sh"), "{msg}");
    }

    #[test]
    fn a_file_that_is_not_a_library_is_an_error_not_a_panic() {
        let path = std::env::temp_dir().join(format!("dml-not-ort-{}.so", std::process::id()));
        std::fs::write(&path, b"not a shared library").unwrap();
        let e = init(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        let msg = e.to_string();
        // Either it failed to load, or another test already loaded the real one.
        assert!(
            matches!(
                e,
                InferError::DylibLoad { .. } | InferError::AlreadyLoaded { .. }
            ),
            "{msg}"
        );
        assert!(msg.contains("dml-not-ort-"), "{msg}");
    }

    #[test]
    fn sessions_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Session>();
    }

    #[test]
    fn not_found_lists_the_places_and_the_fix() {
        let e = InferError::DylibNotFound {
            searched: vec![PathBuf::from("/a/.venv/lib/python3*/x")],
        };
        let msg = e.to_string();
        assert!(msg.contains("/a/.venv/lib/python3*/x"), "{msg}");
        assert!(
            msg.contains("bash scripts/setup.sh") && msg.contains("ORT_DYLIB_PATH"),
            "{msg}"
        );
    }

    #[test]
    fn shapes_show_dynamic_dimensions() {
        assert_eq!(show_shape(&[-1, 3, 64, 64]), "[N,3,64,64]");
        assert_eq!(show_shape(&[1, 3, -1, -1]), "[1,3,?,?]");
    }
}
