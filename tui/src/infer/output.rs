//! `dml get-output` formats: one JSON object per image and line (JSONL), or
//! CSV with one row per image; pure functions, no IO.

use crate::cli::OutputFormat;
use dml_shared::infer::{ImageResult, Outcome, TOP_K};
use serde_json::{Value, json};
use std::path::Path;

/// The format asked for, else CSV for a FILE ending in `.csv`, else JSONL.
pub fn pick_format(asked: Option<OutputFormat>, file: Option<&Path>) -> OutputFormat {
    asked.unwrap_or_else(|| {
        let csv = file
            .and_then(|f| f.extension())
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if csv {
            OutputFormat::Csv
        } else {
            OutputFormat::Jsonl
        }
    })
}

/// One image as a JSON object: `predictions` (best first) or `error`.
pub fn result_json(r: &ImageResult) -> Value {
    match &r.outcome {
        Outcome::Top(top) => json!({
            "index": r.index,
            "image": r.image,
            "predictions": top
                .iter()
                .map(|p| json!({"class": p.class, "label": p.label, "score": p.score}))
                .collect::<Vec<_>>(),
        }),
        Outcome::Error(e) => json!({"index": r.index, "image": r.image, "error": e}),
    }
}

pub fn jsonl(results: &[ImageResult]) -> String {
    results
        .iter()
        .map(|r| result_json(r).to_string() + "\n")
        .collect()
}

/// A CSV field, quoted when it holds a comma, quote, CR or LF (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `index,image,error,class_1,label_1,score_1,...` up to [`TOP_K`].
pub fn csv_header() -> String {
    let mut cols = vec!["index".to_string(), "image".into(), "error".into()];
    for k in 1..=TOP_K {
        cols.extend([
            format!("class_{k}"),
            format!("label_{k}"),
            format!("score_{k}"),
        ]);
    }
    cols.join(",") + "\n"
}

pub fn csv(results: &[ImageResult]) -> String {
    let mut out = csv_header();
    for r in results {
        let mut row = vec![r.index.to_string(), csv_field(&r.image)];
        match &r.outcome {
            Outcome::Top(top) => {
                row.push(String::new());
                for k in 0..TOP_K {
                    match top.get(k) {
                        Some(p) => row.extend([
                            p.class.to_string(),
                            csv_field(&p.label),
                            format!("{:.6}", p.score),
                        ]),
                        None => row.extend([String::new(), String::new(), String::new()]),
                    }
                }
            }
            Outcome::Error(e) => {
                row.push(csv_field(e));
                row.extend(std::iter::repeat_n(String::new(), 3 * TOP_K));
            }
        }
        out += &(row.join(",") + "\n");
    }
    out
}

pub fn render(format: OutputFormat, results: &[ImageResult]) -> String {
    match format {
        OutputFormat::Jsonl => jsonl(results),
        OutputFormat::Csv => csv(results),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::infer::Prediction;

    fn top(labels: &[&str]) -> ImageResult {
        ImageResult {
            index: 7,
            image: "datasets/sample/a,b.jpg".into(),
            outcome: Outcome::Top(
                labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| Prediction {
                        class: i as u32 * 10,
                        label: l.to_string(),
                        score: 0.5 / (i + 1) as f32,
                    })
                    .collect(),
            ),
        }
    }

    /// A minimal RFC 4180 reader, to check that rows come back as written.
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let mut rows = vec![];
        let mut row = vec![];
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => field.push(c),
                (false, '"') => quoted = true,
                (false, ',') => row.push(std::mem::take(&mut field)),
                (false, '\n') => {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                (false, c) => field.push(c),
            }
        }
        rows
    }

    #[test]
    fn csv_quotes_labels_with_commas_and_quotes() {
        let labels = ["tench, Tinca tinca", "say \"cheese\"", "plain", "a\nb", "x"];
        let text = csv(&[
            top(&labels),
            ImageResult {
                index: 8,
                image: "b.png".into(),
                outcome: Outcome::Error("cannot decode: bad, \"header\"".into()),
            },
        ]);
        assert!(text.contains("\"tench, Tinca tinca\""), "{text}");
        assert!(text.contains("\"say \"\"cheese\"\"\""), "{text}");
        let rows = parse_csv(&text);
        assert_eq!(rows.len(), 3, "{text}");
        let width = 3 + 3 * TOP_K;
        assert!(rows.iter().all(|r| r.len() == width), "{rows:?}");
        assert_eq!(rows[0][..4], ["index", "image", "error", "class_1"]);
        assert_eq!(rows[1][1], "datasets/sample/a,b.jpg");
        assert_eq!(rows[1][2], "");
        for (k, l) in labels.iter().enumerate() {
            assert_eq!(rows[1][4 + 3 * k], *l);
        }
        assert_eq!(rows[1][3], "0");
        assert_eq!(rows[1][5], "0.500000");
        assert_eq!(rows[2][2], "cannot decode: bad, \"header\"");
        assert_eq!(rows[2][3], "");
    }

    #[test]
    fn jsonl_has_one_object_per_line_with_escaped_labels() {
        let text = jsonl(&[
            top(&["tench, Tinca tinca", "say \"cheese\""]),
            ImageResult {
                index: 1,
                image: "x.png".into(),
                outcome: Outcome::Error("no such file".into()),
            },
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let a: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(a["index"], 7);
        assert_eq!(a["predictions"][1]["label"], "say \"cheese\"");
        assert_eq!(a["predictions"][0]["class"], 0);
        assert!(a.get("error").is_none());
        let b: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(b["error"], "no such file");
        assert!(b.get("predictions").is_none());
    }

    #[test]
    fn format_follows_the_flag_then_the_file_name() {
        let p = |s: &str| Some(Path::new(s).to_path_buf());
        assert_eq!(pick_format(None, None), OutputFormat::Jsonl);
        assert_eq!(pick_format(None, p("o.CSV").as_deref()), OutputFormat::Csv);
        assert_eq!(
            pick_format(None, p("o.jsonl").as_deref()),
            OutputFormat::Jsonl
        );
        assert_eq!(
            pick_format(Some(OutputFormat::Jsonl), p("o.csv").as_deref()),
            OutputFormat::Jsonl
        );
        assert_eq!(
            pick_format(Some(OutputFormat::Csv), None),
            OutputFormat::Csv
        );
    }
}
